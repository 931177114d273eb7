"""The scale study's table and figure: paired differences per corpus size, by hand (tests/test_table.py's
runs: the base row gets half of each split right, GRAM on one hierarchy all of it, on the other the same)."""
from __future__ import annotations

import numpy as np

from gramprompt.eval.table import compare_rows
from gramprompt.experiments.scale import ScalePoint, scale_figure, scale_table
from test_table import _bits, _hier


def _runs(gain: bool) -> list[dict]:
    runs = []
    for ds in ("A", "B"):
        for s in (1, 2):
            runs.append(_bits(_hier(ds, "coop", s, None, 0, 0), "1100", "10"))
            runs.append(_bits(_hier(ds, "gram", s, 1, 0, 0), *(("1111", "11") if gain else ("1100", "10"))))
            runs.append(_bits(_hier(ds, "gram", s, 2, 0, 0), "1100", "10"))
    return runs


def _point(pairs: int, gain: bool) -> ScalePoint:
    d, per = compare_rows(_runs(gain), "gram", "coop", ["A", "B"], replicates=200)
    return ScalePoint(f"size{pairs}", f"corpus:{pairs}", pairs, "GRAM vs CoOp", d, tuple(per))


def test_scale_table_by_hand():
    points = [_point(100_000, True), _point(1_000, False),
              ScalePoint("later", "corpus:big", None, "GRAM vs CoOp", None, (), "no runs of gram on A")]
    lines = scale_table(points).splitlines()
    assert lines[0].startswith("| Comparison | corpus | pairs | ΔBase [95%] | ΔNew [95%] | ΔH [95%] |")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:5]]
    assert [r[2] for r in rows] == ["–", "1,000", "100,000"]  # by size
    assert rows[1][3:7] == ["+0.00 [+0.00, +0.00]"] * 3 + ["h1: +0.00 [+0.00, +0.00]; h2: +0.00 [+0.00, +0.00]"]
    assert rows[2][5].startswith("+25.00 [") and rows[2][6].startswith("h1: +50.00 [+") and rows[2][7] == "no"
    assert "Not tested: later: GRAM vs CoOp: no runs of gram on A" in lines[-1]


def test_scale_figure_draws_each_difference_with_its_interval():
    points = [_point(1_000, False), _point(100_000, True)]
    fig = scale_figure(points)
    base, new, h = fig.axes
    assert [ax.get_xscale() for ax in (base, new, h)] == ["log"] * 3
    for ax, key in ((base, "base"), (new, "new"), (h, "h")):
        line = ax.get_lines()[1]  # after the zero line
        x, y = line.get_data()
        assert np.allclose(x, [1_000, 100_000]) and np.allclose(y, [0.0, 25.0])
        bars = [c for c in ax.collections if c.get_segments()][0].get_segments()
        want = [points[1].pooled.base_interval if key == "base" else points[1].pooled.new_interval if key == "new"
                else (points[1].pooled.low, points[1].pooled.high)]
        assert np.allclose([bars[1][0][1], bars[1][1][1]], want[0])
    hier = [ln for ln in h.get_lines()[2:] if len(ln.get_xdata()) == 2]  # the per-hierarchy marks at 100k
    assert sorted(hier[-1].get_ydata()) == [0.0, 50.0]
