from pathlib import Path

import pytest

from gramprompt.eval.metrics import harmonic_mean
from gramprompt.eval.table import (base2new_table, collect, paper_table, render, significance_table, spread_table,
                                   transfer_significance_table, transfer_spread_table, transfer_table)
from gramprompt.runs import RunDir


def _write(root: Path, name: str, summary: dict) -> None:
    RunDir.create(root / name, {"name": name}).write_summary(summary)


def _b2n(dataset, method, seed, base, new, **extra):
    return {"dataset": dataset, "method": method, "backbone": "ViT-B/16", "shots": 16,
            "seed": seed, "base": base, "new": new, "h": 0.0, **extra}


def _rows(table: str) -> list[list[str]]:
    lines = [l for l in table.splitlines() if l.startswith("|")][2:]  # drop header + rule
    return [[c.strip() for c in l.strip("|").split("|")] for l in lines]


def _row(table: str, first: str, method: str) -> list[str]:
    (row,) = [r for r in _rows(table) if r[0] == first and r[1] == method]
    return row


@pytest.fixture
def three_seed_runs(tmp_path):
    # Fabricated: base 80/82/84 -> 82.00 ± 2.00, new 60/63/66 -> 63.00 ± 3.00,
    # H = 2*82*63/(82+63) = 10332/145 = 71.2552 -> 71.26.
    for seed, b, n in [(1, 80.0, 60.0), (2, 82.0, 63.0), (3, 84.0, 66.0)]:
        _write(tmp_path, f"digits/coop/seed{seed}", _b2n("digits", "coop", seed, b, n))
    (tmp_path / "digits" / "coop" / "unfinished").mkdir()  # no summary: ignored
    return tmp_path


def test_collect_recursive_and_dedup(three_seed_runs):
    found = collect([three_seed_runs, three_seed_runs / "digits"])
    assert sorted(s["seed"] for s in found) == [1, 2, 3]


def test_three_seed_mean_std_by_hand(three_seed_runs):
    table = base2new_table(collect([three_seed_runs]))
    assert table.splitlines()[0] == "| Dataset | Method | Base | New | H | seeds |"
    assert _row(table, "digits", "coop") == ["digits", "coop", "82.00 ± 2.00", "63.00 ± 3.00",
                                             "71.26", "1, 2, 3"]
    assert _row(table, "Average", "coop")[2:5] == ["82.00", "63.00", "71.26"]


def test_dataset_h_is_harmonic_of_seed_means_not_mean_of_h(tmp_path):
    # Seeds (100, 0) and (0, 100): each per-seed H is 0, but H of the means (50, 50) is 50.
    _write(tmp_path, "s1", _b2n("d", "m", 1, 100.0, 0.0))
    _write(tmp_path, "s2", _b2n("d", "m", 2, 0.0, 100.0))
    assert _row(base2new_table(collect([tmp_path])), "d", "m")[4] == "50.00"


def test_average_h_is_harmonic_of_averages_not_mean_of_h(tmp_path):
    # Dataset A: 90/10 (H 18); dataset B: 10/90 (H 18). Mean of H = 18, but the average
    # row uses Base = 50, New = 50 -> H = 50.
    _write(tmp_path, "a", _b2n("A", "coop", 1, 90.0, 10.0))
    _write(tmp_path, "b", _b2n("B", "coop", 1, 10.0, 90.0))
    table = base2new_table(collect([tmp_path]))
    assert _row(table, "A", "coop")[4] == "18.00" and _row(table, "B", "coop")[4] == "18.00"
    assert _row(table, "Average", "coop")[2:6] == ["50.00", "50.00", "50.00", "2 datasets"]


def test_average_row_reproduces_paper_unigram_and_clip(tmp_path):
    # Two datasets whose means average to the paper's Table 1 average rows.
    runs = [
        _b2n("X", "UNIGRAM", 1, 80.00, 75.00), _b2n("Y", "UNIGRAM", 1, 80.68, 76.84),  # 80.34/75.92
        _b2n("X", "CLIP", 1, 69.00, 74.00), _b2n("Y", "CLIP", 1, 69.68, 74.44),  # 69.34/74.22
    ]
    table = base2new_table(runs)
    assert _row(table, "Average", "UNIGRAM")[2:5] == ["80.34", "75.92", "78.07"]
    assert _row(table, "Average", "CLIP")[2:5] == ["69.34", "74.22", "71.70"]


def test_rows_grouped_by_dataset_then_method_in_first_appearance_order():
    runs = [_b2n("B", "gram", 1, 1, 1), _b2n("A", "coop", 1, 1, 1), _b2n("A", "gram", 1, 1, 1),
            _b2n("B", "coop", 1, 1, 1)]
    order = [(r[0], r[1]) for r in _rows(base2new_table(runs))]
    assert order == [("B", "gram"), ("B", "coop"), ("A", "gram"), ("A", "coop"),
                     ("Average", "gram"), ("Average", "coop")]


def test_refuses_to_pool_duplicate_seeds_or_mixed_shots():
    with pytest.raises(ValueError, match="seed"):
        base2new_table([_b2n("d", "m", 1, 1, 1), _b2n("d", "m", 1, 2, 2)])
    with pytest.raises(ValueError, match="shots"):
        base2new_table([_b2n("d", "m", 1, 1, 1), _b2n("d", "m", 2, 2, 2, shots=4)])


def _transfer(method, seed, source, targets):
    return {"dataset": "imagenet", "method": method, "seed": seed, "protocol": "transfer",
            "source": source, "targets": targets}


def test_transfer_table_by_hand():
    # source 70/71/72 -> 71.00 ± 1.00; dtd 40/42/44 -> 42.00 ± 2.00; eurosat 50 x3 -> 50.00 ± 0.00;
    # per-seed target averages 45/46/47 -> 46.00 ± 1.00.
    runs = [_transfer("coop", s, src, {"dtd": d, "eurosat": 50.0})
            for s, src, d in [(1, 70.0, 40.0), (2, 71.0, 42.0), (3, 72.0, 44.0)]]
    runs.append(_transfer("gram", 1, 73.0, {"eurosat": 60.0, "dtd": 50.0}))  # key order differs
    table = transfer_table(runs)
    assert "### Transfer from imagenet" in table
    header = [l for l in table.splitlines() if l.startswith("|")][0]
    assert header == "| Method | imagenet (source) | dtd | eurosat | Average | seeds |"
    rows = {r[0]: r for r in _rows(table)}
    assert rows["coop"] == ["coop", "71.00 ± 1.00", "42.00 ± 2.00", "50.00 ± 0.00",
                            "46.00 ± 1.00", "1, 2, 3"]
    assert rows["gram"][1:5] == ["73.00 ± 0.00", "50.00 ± 0.00", "60.00 ± 0.00", "55.00 ± 0.00"]


def test_transfer_target_sets_get_separate_tables():
    runs = [_transfer("coop", 1, 70.0, {"dtd": 40.0}),
            _transfer("coop", 1, 70.0, {"imagenet_sketch": 48.0, "imagenet_r": 76.0})]
    assert transfer_table(runs).count("### Transfer from imagenet") == 2


def test_render_picks_applicable_tables(three_seed_runs, tmp_path_factory):
    out = render([three_seed_runs])
    assert "## Base-to-new" in out and "## Transfer" not in out
    other = tmp_path_factory.mktemp("xfer")
    _write(other, "t1", _transfer("coop", 1, 70.0, {"dtd": 40.0}))
    both = render([three_seed_runs, other])
    assert "## Base-to-new" in both and "## Transfer" in both
    assert "No finished runs" in render([tmp_path_factory.mktemp("empty")])


# --- hierarchies and significance -----------------------------------------------------------------------

def _hier(dataset, label, seed, hierarchy, base, new, **extra):
    return {"protocol": "base2new", "dataset": dataset, "label": label, "method": "coop", "seed": seed,
            "hierarchy": hierarchy, "base": base, "new": new, **extra}


def _bits(run: dict, base: str, new: str) -> dict:
    """``run`` with per-image correctness whose accuracies match Base and New."""
    return {**run, "base": 100.0 * base.count("1") / len(base), "new": 100.0 * new.count("1") / len(new),
            "correct": {"base": base, "new": new}}


def test_three_hierarchies_by_five_seeds_are_fifteen_runs_of_one_cell():
    # Hierarchy h scores base 70 + h, new 60 + h on every seed: cell means over 15 runs 72 / 62.
    runs = [_hier("A", "gram", s, h, 70.0 + h, 60.0 + h) for h in (1, 2, 3) for s in range(1, 6)]
    runs += [_hier("A", "coop", s, None, 70.0, 60.0) for s in range(1, 6)]
    table = paper_table(runs, [("coop", "CoOp"), ("gram", "GRAM")], ["A"])
    assert table.splitlines()[0] == "| Method | Avg Base | Avg New | Avg H | H over hierarchies | A (B / N / H) |"
    rows = {r[0]: r for r in _rows(table)}
    # per-hierarchy H: H(71, 61) = 65.62, H(73, 63) = 67.63
    assert rows["GRAM"][1:5] == ["72.00", "62.00", f"**{harmonic_mean(72, 62):.2f}**", "65.62–67.63 (n=3)"]
    assert rows["CoOp"][4] == "–"
    assert _row(base2new_table(runs), "A", "gram")[5] == "1, 2, 3, 4, 5 (hierarchies 1, 2, 3)"


def test_seed_spread_is_each_seeds_h_of_the_dataset_averages_by_hand():
    # seed 1: Base (70 + 80) / 2 = 75, New (50 + 70) / 2 = 60 -> H = 2*75*60/135 = 66.667
    # seed 2: Base 85, New 65 -> H = 2*85*65/150 = 73.667; mean 70.17, sample std 4.95
    runs = [_hier("A", "coop", 1, None, 70.0, 50.0), _hier("B", "coop", 1, None, 80.0, 70.0),
            _hier("A", "coop", 2, None, 80.0, 60.0), _hier("B", "coop", 2, None, 90.0, 70.0),
            _hier("A", "coop", 3, None, 10.0, 10.0)]  # seed 3 lacks B: left out
    runs += [_hier(ds, "gram", s, h, 60.0 + h, 60.0 + h) for ds in "AB" for s in (1, 2) for h in (0, 1)]
    rows = {r[0]: r[1] for r in _rows(spread_table(runs, [("coop", "CoOp"), ("gram", "GRAM")], ["A", "B"]))}
    assert rows["CoOp"] == "70.17 ± 4.95 (n=2)"
    assert rows["GRAM"] == "h0: 60.00 ± 0.00 (n=2); h1: 61.00 ± 0.00 (n=2)"


def test_no_hierarchy_column_without_several_hierarchies(three_seed_runs):
    table = paper_table(collect([three_seed_runs]), [("coop", "CoOp")], ["digits"])
    assert "H over hierarchies" not in table


def test_refuses_a_repeated_hierarchy_and_seed_or_mixed_hierarchy_runs():
    with pytest.raises(ValueError, match="more than once"):
        paper_table([_hier("A", "g", 1, 2, 1, 1), _hier("A", "g", 1, 2, 2, 2)], [("g", "G")], ["A"])
    with pytest.raises(ValueError, match="hierarchy"):
        paper_table([_hier("A", "g", 1, 2, 1, 1), _hier("A", "g", 2, None, 2, 2)], [("g", "G")], ["A"])


def _sig_rows(table: str) -> dict[str, list[str]]:
    return {r[0]: r for r in _rows(table.split("\n\n")[0])}


def test_significance_table_pooled_and_per_hierarchy():
    # Two datasets, 2 seeds. The base row gets half of each split right; GRAM on hierarchy 1 gets all right,
    # on hierarchy 2 exactly what the base row gets (its interval is exactly [0, 0]).
    half = ("1100", "10")
    runs = []
    for ds in ("A", "B"):
        for s in (1, 2):
            runs.append(_bits(_hier(ds, "coop", s, None, 0, 0), *half))
            runs.append(_bits(_hier(ds, "gram", s, 1, 0, 0), "1111", "11"))
            runs.append(_bits(_hier(ds, "gram", s, 2, 0, 0), *half))
    table = significance_table(runs, [("gram", "GRAM", "coop", "CoOp")], ["A", "B"], replicates=200)
    assert table.splitlines()[0] == ("| Row | vs | ΔBase [95% interval] | ΔNew [95% interval] | ΔH [95% interval] "
                                     "| per hierarchy ΔH [95% interval] | holds on every hierarchy |")
    row = _sig_rows(table)["GRAM"]
    # pooled: GRAM 75 / 75 vs 50 / 50 -> +25.00 each
    assert row[1] == "CoOp" and all(cell.startswith("+25.00 [") for cell in row[2:5])
    h1, h2 = row[5].split("; ")
    assert h1.startswith("h1: +50.00 [+") and h2 == "h2: +0.00 [+0.00, +0.00]"
    assert row[6] == "no"
    assert "Paired bootstrap, 200 replicates" in table and "Not tested" not in table


def test_significance_holds_on_every_hierarchy_and_base_rows_are_na():
    runs = []
    for s in (1, 2, 3):
        runs.append(_bits(_hier("A", "coop", s, None, 0, 0), "110100", "1010"))
        runs += [_bits(_hier("A", "gram", s, h, 0, 0), "111111", "1111") for h in (4, 7, 9)]
        runs.append(_bits(_hier("A", "coop2", s, None, 0, 0), "111101", "1110"))
    table = significance_table(runs, [("gram", "GRAM", "coop", "CoOp"), ("coop", "CoOp", "coop2", "CoOp 2")], ["A"],
                               replicates=300)
    rows = _sig_rows(table)
    assert [x.split(":")[0] for x in rows["GRAM"][5].split("; ")] == ["h4", "h7", "h9"]
    assert rows["GRAM"][6] == "yes (> 0)"
    assert rows["CoOp"][5:] == ["–", "n/a"]


def test_significance_point_values_match_the_paper_table_averages():
    rng = __import__("random").Random(0)

    def bits(n, p):
        return "".join("1" if rng.random() < p else "0" for _ in range(n))

    runs = [_bits(_hier(ds, lb, s, None, 0, 0), bits(20, p), bits(16, p - 0.1))
            for ds in ("A", "B", "C") for s in (1, 2, 3) for lb, p in (("coop", 0.6), ("gram", 0.7))]
    avg = {r[0]: r for r in _rows(paper_table(runs, [("coop", "CoOp"), ("gram", "GRAM")], ["A", "B", "C"]))}
    row = _sig_rows(significance_table(runs, [("gram", "GRAM", "coop", "CoOp")], ["A", "B", "C"], replicates=50))["GRAM"]
    for col, i in ((2, 1), (3, 2)):
        assert float(row[col].split(" [")[0]) == pytest.approx(float(avg["GRAM"][i]) - float(avg["CoOp"][i]), abs=0.011)
    h = lambda r: float(r[3].strip("*"))  # noqa: E731
    assert float(row[4].split(" ")[0]) == pytest.approx(h(avg["GRAM"]) - h(avg["CoOp"]), abs=0.011)


def test_old_summaries_without_correctness_print_dashes_not_errors():
    runs = [_b2n("A", "coop", s, 50.0, 40.0) for s in (1, 2)] + [_b2n("A", "gram", s, 60.0, 40.0) for s in (1, 2)]
    table = significance_table(runs, [("gram", "GRAM", "coop", "CoOp"), ("gram", "GRAM", "vpt", "VPT")], ["A"])
    rows = [r for r in _rows(table.split("\n\n")[0])]
    # H(60, 40) - H(50, 40) = 48 - 44.44 = +3.56
    assert rows[0] == ["GRAM", "CoOp", "+10.00 [–]", "+0.00 [–]", "+3.56 [–]", "–", "n/a"]
    assert rows[1] == ["GRAM", "VPT", "–", "–", "–", "–", "n/a"]
    assert "Not tested: GRAM vs CoOp: gram on A/base: runs without per-image correctness" in table
    assert "GRAM vs VPT: no runs of vpt on A" in table


def _transfer_bits(label, seed, hierarchy, source, targets):
    """A transfer run from "src" whose accuracies match its per-image correctness."""
    acc = lambda bits: 100.0 * bits.count("1") / len(bits)  # noqa: E731
    return {"protocol": "transfer", "dataset": "src", "label": label, "method": "coop", "seed": seed,
            "hierarchy": hierarchy, "source": acc(source), "targets": {t: acc(b) for t, b in targets.items()},
            "correct": {"source": source, "targets": targets}}


def test_transfer_seed_spread_by_hand_per_hierarchy():
    # CoOp: seed 1 (T1 50, T2 100) -> 75, seed 2 (0, 50) -> 25: 50.00 ± 35.36 (sample std of 75, 25).
    # GRAM on hierarchy 0: 100 and 87.5 -> 93.75 ± 8.84; on hierarchy 1: 50 and 50 -> 50.00 ± 0.00.
    runs = [_transfer_bits("coop", 1, None, "1", {"T1": "10", "T2": "1111"}),
            _transfer_bits("coop", 2, None, "1", {"T1": "00", "T2": "0110"}),
            _transfer_bits("gram", 1, 0, "1", {"T1": "11", "T2": "1111"}),
            _transfer_bits("gram", 2, 0, "1", {"T1": "11", "T2": "1110"}),
            _transfer_bits("gram", 1, 1, "1", {"T1": "10", "T2": "0110"}),
            _transfer_bits("gram", 2, 1, "1", {"T1": "10", "T2": "0110"})]
    table = transfer_spread_table(runs, [("coop", "CoOp"), ("gram", "GRAM"), ("none", "Nothing run")], "src",
                                  ["T1", "T2"])
    rows = _sig_rows(table)
    assert rows["CoOp"][1:] == ["50.00 ± 35.36", "1, 2"]
    assert rows["GRAM"][1:] == ["h0: 93.75 ± 8.84; h1: 50.00 ± 0.00", "1, 2 (hierarchies 0, 1)"]
    assert "Nothing run" not in rows


def test_transfer_significance_source_and_target_average_per_hierarchy():
    # CoOp: source 2/4, T1 1/2, T2 2/4 -> target average 50. GRAM on hierarchy 0: source 4/4, T1 2/2,
    # T2 4/4 -> +50 on both; on hierarchy 1: the same bits as CoOp -> exactly 0.
    runs = []
    for s in (1, 2):
        runs.append(_transfer_bits("coop", s, None, "1100", {"T1": "10", "T2": "0110"}))
        runs.append(_transfer_bits("gram", s, 0, "1111", {"T1": "11", "T2": "1111"}))
        runs.append(_transfer_bits("gram", s, 1, "1100", {"T1": "10", "T2": "0110"}))
    table = transfer_significance_table(runs, [("gram", "GRAM", "coop", "CoOp")], "src", ["T1", "T2"],
                                        replicates=200)
    assert table.splitlines()[0] == ("| Row | vs | ΔSource [95% interval] | ΔAverage over targets [95% interval] "
                                     "| per hierarchy ΔAverage [95% interval] | holds on every hierarchy |")
    row = _sig_rows(table)["GRAM"]
    assert row[2].startswith("+25.00 [") and row[3].startswith("+25.00 [")  # pooled over both hierarchies
    h0, h1 = row[4].split("; ")
    assert h0.startswith("h0: +50.00 [+") and h1 == "h1: +0.00 [+0.00, +0.00]" and row[5] == "no"
    # summaries without per-image correctness: not tested, and why
    old = [{k: v for k, v in r.items() if k != "correct"} for r in runs]
    row = _sig_rows(transfer_significance_table(old, [("gram", "GRAM", "coop", "CoOp")], "src", ["T1", "T2"]))["GRAM"]
    assert row[2:] == ["–", "–", "–", "n/a"]


def test_runs_on_other_test_images_are_not_paired():
    # Same lengths, so only the recorded digest of the test images tells the splits apart; runs from before
    # the digest (none recorded) still pair.
    def runs(digest_b):
        out = []
        for s in (1, 2):
            out.append(_bits(_hier("A", "coop", s, None, 0, 0, test_sha256={"base": "x", "new": "y"}), "1100", "10"))
            gram = _hier("A", "gram", s, None, 0, 0) if digest_b is None else \
                _hier("A", "gram", s, None, 0, 0, test_sha256={"base": digest_b, "new": "y"})
            out.append(_bits(gram, "1111", "11"))
        return out

    comparison = [("gram", "GRAM", "coop", "CoOp")]
    other = significance_table(runs("z"), comparison, ["A"], replicates=50)
    assert _sig_rows(other)["GRAM"][2:5] == ["+50.00 [–]"] * 3  # the means differ; no interval
    assert "A/base: the runs were evaluated on different test images (test_sha256 differs)" in other
    for digest in ("x", None):
        same = significance_table(runs(digest), comparison, ["A"], replicates=50)
        assert "Not tested" not in same and _sig_rows(same)["GRAM"][2].startswith("+50.00 [")
