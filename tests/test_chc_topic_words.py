"""Eq. 3 against scores computed by hand, and the duplicate-word rules."""
from __future__ import annotations

import math
from collections import Counter

import pytest

from gramprompt.chc.topic_words import count_words, name_topics, regroup, tfidf_scores, tokenize, topic_words

# clusters 0..3 and a noise caption (-1) that must count neither in L nor in L_w
CAPTIONS = ["the cat dog", "cat", "dog bird", "bird bird", "fish cat", "horse", "fish fish fish zebra"]
LABELS = [0, 0, 1, 1, 2, 3, -1]


def test_tokenize_drops_stop_words_digits_and_short_words():
    assert tokenize("The 2 cats, a DOG and x-ray 4k!") == ["cats", "dog", "ray"]


def test_eq3_matches_hand_computed_scores():
    counts = count_words(CAPTIONS, LABELS)
    assert set(counts) == {0, 1, 2, 3}  # noise is not a cluster
    assert counts[0] == Counter(cat=2, dog=1)  # "the" is a stop word
    scores = tfidf_scores(counts)
    L = 4  # L_cat = 2, L_dog = 2, L_bird = 1, L_fish = 1 (the noise caption does not count), L_horse = 1
    expected = {
        0: {"cat": 2 / 3 * math.log(L / 3), "dog": 1 / 3 * math.log(L / 3)},
        1: {"dog": 1 / 4 * math.log(L / 3), "bird": 3 / 4 * math.log(L / 2)},
        2: {"fish": 1 / 2 * math.log(L / 2), "cat": 1 / 2 * math.log(L / 3)},
        3: {"horse": 1 * math.log(L / 2)},
    }
    assert scores.keys() == expected.keys()
    for label, words in expected.items():
        assert scores[label] == pytest.approx(words, rel=1e-12)
    top = topic_words(counts)
    assert [top[k].words[0] for k in range(4)] == ["cat", "bird", "fish", "horse"]
    assert top[1].scores[0] == pytest.approx(0.75 * math.log(2))
    assert top[0].num_words == 3


def test_eq3_ties_break_by_count_then_alphabet():
    # L = 2: a word in one cluster scores log(2/2) = 0, so all exclusive words tie at 0
    counts = {0: Counter(zebra=1, apple=1, mango=3), 1: Counter(kiwi=2, apple=1)}
    top = topic_words(counts)
    assert top[0].words == ("mango", "zebra", "apple")  # 0, 0 (count 3 > 1), then apple < 0
    assert top[1].words[0] == "kiwi"


def test_duplicate_top_words_merge_and_recompute():
    counts = {0: Counter(dog=20, puppy=2), 1: Counter(dog=20, cartoon=3), 2: Counter(car=6), 3: Counter(tree=4)}
    remap, words, names = name_topics(counts, "merge")
    assert remap == {0: 0, 1: 0, 2: 1, 3: 2}
    assert names == {0: "dog", 1: "car", 2: "tree"}
    merged = regroup(counts, remap)
    assert merged[0] == Counter(dog=40, puppy=2, cartoon=3)
    assert words[0].words[0] == "dog"
    assert words[0].scores[0] == pytest.approx(40 / 45 * math.log(3 / 2))  # Eq. 3 on the merged L = 3


def test_duplicate_top_words_disambiguate():
    counts = {0: Counter(dog=20, puppy=2), 1: Counter(dog=20, cartoon=3), 2: Counter(car=6), 3: Counter(tree=4)}
    remap, _, names = name_topics(counts, "disambiguate")
    assert remap == {0: 0, 1: 1, 2: 2, 3: 3}
    assert names == {0: "dog puppy", 1: "dog cartoon", 2: "car", 3: "tree"}
    with pytest.raises(ValueError, match="merge"):
        name_topics(counts, "vote")


def test_min_share_keeps_stray_words_out_of_the_cluster_frequency():
    # "kiwi" is cluster 0's word; one stray caption carries it into clusters 1 and 2
    counts = {0: Counter(kiwi=50, fruit=10), 1: Counter(boat=60, kiwi=1), 2: Counter(tree=60, kiwi=1)}
    exact = tfidf_scores(counts)
    assert exact[0]["kiwi"] == pytest.approx(50 / 60 * math.log(3 / 4))  # L_w = 3: negative
    assert topic_words(counts)[0].words[0] == "fruit"
    robust = tfidf_scores(counts, min_share=0.05)  # 1/61 < 5%: clusters 1, 2 do not count
    assert robust[0]["kiwi"] == pytest.approx(50 / 60 * math.log(3 / 2))
    assert topic_words(counts, min_share=0.05)[0].words[0] == "kiwi"
