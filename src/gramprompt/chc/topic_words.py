"""Topic words by the paper's cluster-wise TF-IDF (Eq. 3), exactly as written.

    TFIDF(w, l) = N_{w,l} / N_l * log(L / (L_w + 1))

with N_{w,l} the count of word w in cluster l (all its captions taken as one document), N_l the
number of words in cluster l, L the number of clusters and L_w the number of clusters that
contain w. This is not BERTopic's c-TF-IDF (which uses log(1 + A / f_w) over average words per
cluster). Noise (label -1) is not a cluster: it counts neither in L nor in L_w.

Eq. 3 has two properties worth knowing: a word in L - 1 clusters or more scores <= 0, and with
L <= 2 every word scores <= 0. Ties (equal scores, e.g. all zero when L = 2) are broken by the
raw count N_{w,l}, then alphabetically, so the result is deterministic.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

# words of two or more letters; digits and punctuation never make a class name
WORD = re.compile(r"[^\W\d_]{2,}")


def tokenize(caption: str, stop_words: frozenset[str] = ENGLISH_STOP_WORDS) -> list[str]:
    """Lower-cased words of ``caption`` without stop words."""
    return [w for w in WORD.findall(caption.lower()) if w not in stop_words]


def count_words(captions: Iterable[str], labels: Iterable[int],
                stop_words: frozenset[str] = ENGLISH_STOP_WORDS) -> dict[int, Counter[str]]:
    """Word counts per cluster label (noise, label < 0, skipped). Streams: feed it chunks and
    merge the results with ``merge_counts`` to stay within memory on millions of captions."""
    counts: dict[int, Counter[str]] = {}
    for caption, label in zip(captions, labels, strict=True):
        if label < 0:
            continue
        counts.setdefault(int(label), Counter()).update(tokenize(caption, stop_words))
    return counts


def merge_counts(into: dict[int, Counter[str]], other: dict[int, Counter[str]]) -> dict[int, Counter[str]]:
    for label, counter in other.items():
        into.setdefault(label, Counter()).update(counter)
    return into


@dataclass(frozen=True)
class TopicWords:
    """The ranked words of one cluster: ``words[0]`` is the topic word Y^l."""

    label: int
    words: tuple[str, ...]
    scores: tuple[float, ...]
    num_words: int  # N_l


def tfidf_scores(counts: dict[int, Counter[str]], min_share: float = 0.0) -> dict[int, dict[str, float]]:
    """Eq. 3 for every word of every cluster in ``counts`` (noise must already be out).

    ``min_share`` > 0 departs from Eq. 3 on purpose: a cluster counts in L_w only if w makes up
    at least that fraction of its words. At scale a few misassigned captions carry a topic's word
    into most clusters, which drives its score to <= 0 everywhere (see docs/CHC.md); 0 = exact."""
    num_clusters = len(counts)
    clusters_with: Counter[str] = Counter()
    for counter in counts.values():
        total = sum(counter.values())
        clusters_with.update(w for w, n in counter.items() if n > 0 and n >= min_share * total)
    scores = {}
    for label, counter in counts.items():
        total = sum(counter.values())
        scores[label] = {w: (n / total) * float(np.log(num_clusters / (clusters_with[w] + 1)))
                         for w, n in counter.items() if n > 0}
    return scores


def topic_words(counts: dict[int, Counter[str]], top: int = 10, min_share: float = 0.0) -> dict[int, TopicWords]:
    """The ``top`` highest-scoring words per cluster (ties: higher count, then alphabetical)."""
    out = {}
    for label, word_scores in tfidf_scores(counts, min_share).items():
        ranked = sorted(word_scores, key=lambda w: (-word_scores[w], -counts[label][w], w))[:top]
        out[label] = TopicWords(label, tuple(ranked), tuple(word_scores[w] for w in ranked),
                                sum(counts[label].values()))
    return out


def resolve_duplicates(words: dict[int, TopicWords], mode: str = "merge") -> tuple[dict[int, int], dict[int, str]]:
    """Clusters that share a top word become one class (``merge``) or get distinct names
    (``disambiguate``: the shared word plus the cluster's best word not shared by another
    cluster of that group, e.g. "dog puppy" and "dog cartoon").

    Returns ``(remap, names)``: old label -> new label (labels renumbered 0..T-1 in order of
    first label), and new label -> class name. Merged clusters keep the word.
    """
    if mode not in ("merge", "disambiguate"):
        raise ValueError(f"duplicate topic words: mode must be 'merge' or 'disambiguate', got {mode!r}")
    labels = sorted(words)
    groups: dict[str, list[int]] = {}
    for label in labels:
        groups.setdefault(words[label].words[0] if words[label].words else f"topic{label}", []).append(label)
    remap: dict[int, int] = {}
    names: dict[int, str] = {}
    for word, members in sorted(groups.items(), key=lambda kv: kv[1][0]):
        if mode == "merge" or len(members) == 1:
            new = len(names)
            names[new] = word
            remap.update({m: new for m in members})
            continue
        for m in members:
            others = {w for o in members if o != m for w in words[o].words[:3]}
            extra = next((w for w in words[m].words[1:] if w not in others and w != word), str(m))
            new = len(names)
            names[new] = f"{word} {extra}"
            remap[m] = new
    return remap, _unique(names)


def regroup(counts: dict[int, Counter[str]], remap: dict[int, int]) -> dict[int, Counter[str]]:
    """Counts under new labels (clusters mapped to the same label are summed)."""
    out: dict[int, Counter[str]] = {}
    for label, counter in counts.items():
        out.setdefault(remap[label], Counter()).update(counter)
    return dict(sorted(out.items()))


def name_topics(counts: dict[int, Counter[str]], mode: str = "merge", top: int = 10, min_share: float = 0.0,
                ) -> tuple[dict[int, int], dict[int, TopicWords], dict[int, str]]:
    """Topic words per cluster, with clusters that share a top word resolved by ``mode``.

    Merging changes L and the counts, so Eq. 3 is recomputed on the merged clusters until no
    two share a top word. Returns (old label -> topic id, topic id -> TopicWords, topic id ->
    class name).
    """
    remap_total = {label: label for label in counts}
    while True:
        words = topic_words(counts, top, min_share)
        remap, names = resolve_duplicates(words, mode)
        if mode == "disambiguate" or len(names) == len(words):
            counts = regroup(counts, remap)
            words = {remap[old]: TopicWords(remap[old], w.words, w.scores, w.num_words)
                     for old, w in words.items()}
            return {old: remap[mid] for old, mid in remap_total.items()}, words, names
        counts = regroup(counts, remap)
        remap_total = {old: remap[mid] for old, mid in remap_total.items()}


def _unique(names: dict[int, str]) -> dict[int, str]:
    """Last resort so class names never collide (a disambiguated name equal to another topic)."""
    seen: Counter[str] = Counter()
    out = {}
    for label, name in names.items():
        seen[name] += 1
        out[label] = name if seen[name] == 1 else f"{name} {seen[name]}"
    return out
