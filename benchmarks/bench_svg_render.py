"""Which SVG rasterizer renders the Iconify corpus: speed and agreement on a seeded sample of icons.

There is no ground-truth raster, so fidelity is measured as agreement: each renderer's picture is
compared with the other two (mean absolute grey difference, and the share of icons that differ by more
than 8 grey levels on average); a renderer that disagrees with two that agree with each other is the
one that is wrong, which a contact sheet of the largest disagreements (``--sheet``) lets you check by eye.
Speed is icons per second in this process, one core, render only (no PNG encoding or hashing).

    python benchmarks/bench_svg_render.py --per-set 3 --sheet /tmp/render-disagreements.png

Needs the optional renderers: ``pip install 'gramprompt[render]'`` (cairosvg also needs libcairo).
"""
from __future__ import annotations

import argparse
import random
import time

import numpy as np
from PIL import Image

from gramprompt.data.pairs.iconify import Selection, find_iconify_root, read_collections, read_set, select_sets, set_icons
from gramprompt.data.pairs.iconify_render import RENDERERS, RenderError


def sample_icons(per_set: int, seed: int, size: int) -> list:
    root = find_iconify_root()
    rng = random.Random(seed)
    icons = []
    for s in select_sets(read_collections(root), Selection()):
        drawn = set_icons(read_set(root, s.prefix), s, size)
        icons += [(s, icon) for icon in rng.sample(drawn, min(per_set, len(drawn)))]
    return icons


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-set", type=int, default=3, help="icons sampled from each permissive set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--sheet", default=None, help="write the 12 largest disagreements as a PNG contact sheet")
    a = ap.parse_args()
    icons = sample_icons(a.per_set, a.seed, a.size)
    names = []
    grey: dict[str, list] = {}
    secs: dict[str, float] = {}
    fails: dict[str, int] = {}
    for name, render in RENDERERS.items():
        try:
            render('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>', 8)
        except (ImportError, OSError) as exc:  # not installed, or cairosvg without libcairo
            print(f"{name}: not available ({type(exc).__name__}: {exc})")
            continue
        except RenderError:
            pass
        names.append(name)
        out, failed = [], 0
        start = time.perf_counter()
        for _, icon in icons:
            try:
                out.append(render(icon.svg, a.size))
            except RenderError:
                out.append(None)
                failed += 1
        secs[name] = time.perf_counter() - start
        grey[name] = [None if im is None else np.asarray(im.convert("L"), np.float32) for im in out]
        fails[name] = failed
    ref = "resvg"
    print(f"\n{len(icons)} icons ({a.per_set} per permissive set, seed {a.seed}), {a.size} px, one core\n")
    print("| renderer | icons/s | x resvg | errors | " + " | ".join(f"MAD vs {o} | >8 vs {o}" for o in names) + " |")
    print("|---|---|---|---|" + "---|---|" * len(names))
    worst = []
    for n in names:
        cells = []
        for o in names:
            d = [float(np.abs(x - y).mean()) for x, y in zip(grey[n], grey[o]) if x is not None and y is not None]
            cells += [f"{np.mean(d):.2f}" if d else "-", f"{np.mean(np.asarray(d) > 8):.1%}" if d else "-"]
            if n < o:
                worst += [(v, i, n, o) for i, v in enumerate(
                    float(np.abs(x - y).mean()) if x is not None and y is not None else -1.0
                    for x, y in zip(grey[n], grey[o]))]
        rate = len(icons) / secs[n]
        print(f"| {n} | {rate:.0f} | {rate / (len(icons) / secs[ref]):.2f} | {fails[n]} | " + " | ".join(cells) + " |")
    print("\nper set category, mean abs grey difference against resvg:")
    cats = sorted({s.category for s, _ in icons})
    for cat in cats:
        idx = [i for i, (s, _) in enumerate(icons) if s.category == cat]
        row = []
        for n in names:
            if n == ref:
                continue
            d = [float(np.abs(grey[n][i] - grey[ref][i]).mean()) for i in idx
                 if grey[n][i] is not None and grey[ref][i] is not None]
            row.append(f"{n} {np.mean(d):.2f}" if d else f"{n} -")
        print(f"  {cat or '(none)'} ({len(idx)} icons): " + ", ".join(row))
    if a.sheet:
        worst.sort(reverse=True)
        rows = []
        for _, i, n, o in worst[:12]:
            tiles = [Image.fromarray(grey[r][i].astype(np.uint8)).resize((96, 96)) for r in names if grey[r][i] is not None]
            row = Image.new("L", (96 * len(names), 96), 255)
            for k, t in enumerate(tiles):
                row.paste(t, (96 * k, 0))
            rows.append(row)
            print(f"  disagreement {icons[i][1].key}: {n} vs {o}")
        sheet = Image.new("L", (96 * len(names), 96 * len(rows)), 255)
        for k, r in enumerate(rows):
            sheet.paste(r, (0, 96 * k))
        sheet.save(a.sheet)
        print(f"contact sheet (columns: {', '.join(names)}) written to {a.sheet}")


if __name__ == "__main__":
    main()
