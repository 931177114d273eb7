"""A look at a hierarchy: topic-size histogram, an image grid of topics x domains, a Markdown table."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from gramprompt.chc.hierarchy import Hierarchy
from gramprompt.data.images import ImageLoadError
from gramprompt.data.pairs import load_pair_image

logger = logging.getLogger(__name__)


def sizes_histogram(h: Hierarchy, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = np.array([t.size for t in h.topics])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(sizes, bins=np.unique(np.geomspace(max(1, sizes.min()), sizes.max() + 1, 30).astype(int)))
    ax.set_xscale("log")
    ax.set_xlabel("pairs per topic")
    ax.set_ylabel("topics")
    ax.set_title(f"{len(sizes)} topics, {int(sizes.sum())} pairs kept")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def image_grid(h: Hierarchy, path: Path, topics: int = 6, domains: int = 3, per_domain: int = 3,
               seed: int = 0, thumb: int = 72) -> None:
    """Rows = the largest ``topics`` topics, columns = ``per_domain`` images of each of the first
    ``domains`` domains; a light rule separates domains. Unreadable images stay blank."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    chosen = sorted(h.topics, key=lambda t: -t.size)[:topics]
    label_w, gap = 130, 6
    width = label_w + domains * (per_domain * thumb + gap)
    grid = Image.new("RGB", (width, len(chosen) * (thumb + 4) + 4), "white")
    draw = ImageDraw.Draw(grid)
    failed = 0
    for r, t in enumerate(chosen):
        y = 4 + r * (thumb + 4)
        draw.text((4, y + thumb // 2 - 6), f"{t.word} ({t.size})", fill="black")
        for d in range(min(domains, len(t.domains))):
            rows = np.flatnonzero((h.topic == t.id) & (h.domain == d))
            pick = rng.choice(rows, min(per_domain, len(rows)), replace=False)
            x0 = label_w + d * (per_domain * thumb + gap)
            draw.line([(x0 - gap // 2, y), (x0 - gap // 2, y + thumb)], fill=(200, 200, 200))
            for j, row in enumerate(sorted(pick)):
                try:
                    img = load_pair_image(h.sources[row])
                except (ImageLoadError, OSError) as err:
                    failed += 1
                    if failed == 1:
                        logger.warning("report grid: cannot load %s (%s); its cell stays blank", h.sources[row], err)
                    continue
                img.thumbnail((thumb, thumb))
                grid.paste(img, (x0 + j * thumb + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
    grid.save(path)


def topic_table(h: Hierarchy, limit: int | None = None, words: int = 5) -> str:
    lines = ["| id | topic word | size | domains | top words (Eq. 3 score) |", "|---|---|---|---|---|"]
    for t in sorted(h.topics, key=lambda t: -t.size)[:limit]:
        top = ", ".join(f"{w} ({s:.3f})" for w, s in t.top_words[:words])
        lines.append(f"| {t.id} | {t.word} | {t.size} | {'/'.join(map(str, t.domains))} | {top} |")
    return "\n".join(lines)


def write_report(h: Hierarchy, out: str | os.PathLike, grid_topics: int = 6, field: str | None = None,
                 domain_field: str | None = None) -> Path:
    """``out/report/``: sizes.png, grid.png and report.md (counts, the topic table and, with
    ``field``, the agreement of topics with that metadata field, also in agreement.json; with
    ``domain_field``, whether domains follow that field, also in domain_agreement.json)."""
    folder = Path(out) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    sizes_histogram(h, folder / "sizes.png")
    image_grid(h, folder / "grid.png", topics=grid_topics, seed=int(h.info.get("config", {}).get("seed", 0)))
    counts = h.info.get("counts", {})
    lines = ["# CHC hierarchy", "", f"Pairs: `{h.info.get('pairs', '?')}`, backbone: `{h.info.get('backbone', '?')}`.",
             "", "| " + " | ".join(counts) + " |", "|" + "---|" * len(counts),
             "| " + " | ".join(str(v) for v in counts.values()) + " |", "",
             "![topic sizes](sizes.png)", "", "![topics x domains](grid.png)", "", topic_table(h), ""]
    if field is not None:
        score = agreement(h, field)
        (folder / "agreement.json").write_text(json.dumps({"field": field, **score}, indent=1))
        lines += [f"Agreement with `{field}` over {score['pairs']} kept pairs ({score['classes']} classes, "
                  f"{score['topics']} topics): ARI {score['ari']:.3f}, NMI {score['nmi']:.3f}.", ""]
    if domain_field is not None:
        score = domain_agreement(h, domain_field)
        (folder / "domain_agreement.json").write_text(json.dumps({"field": domain_field, **score}, indent=1))
        lines += [f"Domains against `{domain_field}` within {score['topics']} topics ({score['pairs']} pairs): "
                  f"NMI {score['nmi']:.3f} (shuffled within topics: {score['nmi_shuffled']:.3f}).", ""]
    (folder / "report.md").write_text("\n".join(lines))
    return folder


def agreement(h: Hierarchy, field: str) -> dict[str, float | int]:
    """ARI and NMI of the kept pairs' topics against a metadata field of the pairs (e.g.
    openclipart's top-level ``category``), a label-free check that topics mean something. Pairs
    without the field (or with it empty, e.g. icons of a set without categories) are left out."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    store = h.store()
    meta = [json.loads(m).get(field) for m in store.column("meta")]
    rows = [r for r in np.flatnonzero(h.kept) if meta[h.rows[r]] not in (None, "")]
    if not rows:
        raise ValueError(f"no kept pair has a {field!r} field in its metadata")
    truth = [meta[h.rows[r]] for r in rows]
    pred = h.topic[rows]
    return {"pairs": len(rows), "classes": len(set(truth)), "topics": int(len(set(pred.tolist()))),
            "ari": float(adjusted_rand_score(truth, pred)), "nmi": float(normalized_mutual_info_score(truth, pred))}


def domain_agreement(h: Hierarchy, field: str, seed: int = 0) -> dict[str, float | int]:
    """Do the visual domains inside topics follow a metadata field (e.g. an icon's ``set``, i.e. its
    drawing style)? The NMI of domain against ``field`` within each topic that has two or more domains
    and field values, averaged weighted by topic size; beside it the same with the field shuffled
    within each topic (seeded), the value domains unrelated to the field would get."""
    from sklearn.metrics import normalized_mutual_info_score

    store = h.store()
    meta = np.asarray([json.loads(m).get(field) or "" for m in store.column("meta")], dtype=object)
    rng = np.random.default_rng(seed)
    nmi, shuffled, weights = [], [], []
    for t in h.topics:
        rows = np.flatnonzero((h.topic == t.id) & (h.domain >= 0))
        values = meta[h.rows[rows]]
        if len(set(h.domain[rows].tolist())) < 2 or len(set(values.tolist())) < 2:
            continue
        nmi.append(normalized_mutual_info_score(values, h.domain[rows]))
        shuffled.append(normalized_mutual_info_score(rng.permutation(values), h.domain[rows]))
        weights.append(len(rows))
    if not weights:
        raise ValueError(f"no topic has two domains and two values of {field!r}")
    return {"topics": len(weights), "pairs": int(sum(weights)), "nmi": float(np.average(nmi, weights=weights)),
            "nmi_shuffled": float(np.average(shuffled, weights=weights))}
