from pathlib import Path

import pytest

from gramprompt.eval.table import base2new_table, collect, render, transfer_table
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
