"""The paired hierarchical bootstrap of an average-H difference (eval.significance), checked against a plain
loop over the same resampling indices and against hand-computed values; and the per-image correctness that
base-to-new and transfer summaries store for it."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml

from gramprompt.eval import significance
from gramprompt.eval.metrics import harmonic_mean
from gramprompt.eval.significance import SPLITS, draw_indices, paired_h_bootstrap, replicate_stats


def _cells(rng, hierarchies, seeds, sizes, p):
    """dataset -> (base, new) random correctness with success rate ``p``."""
    return {ds: tuple(rng.random((hierarchies, seeds, n)) < p for n in ns) for ds, ns in sizes.items()}


def _reference(a, b, idx, r):
    """Replicate ``r`` the slow way: gather the resampled hierarchies x seeds x images, take plain means."""
    means = []
    for cells, h in ((a, idx.hierarchies[0][r]), (b, idx.hierarchies[1][r])):
        split_means = []
        for i, split in enumerate(SPLITS):
            per_ds = []
            for ds in sorted(cells):
                picked = cells[ds][i][h][:, idx.seeds[ds][r]][:, :, idx.images[ds, split][r]]
                per_ds.append(100.0 * picked.mean())
            split_means.append(sum(per_ds) / len(per_ds))
        means.append(split_means)
    (ba, na), (bb, nb) = means
    return ba - bb, na - nb, harmonic_mean(ba, na) - harmonic_mean(bb, nb)


SIZES = {"A": (7, 5), "B": (4, 6)}  # dataset -> (base images, new images)


def test_vectorized_replicates_match_a_loop_over_the_same_indices():
    rng = np.random.default_rng(3)
    a, b = _cells(rng, 3, 4, SIZES, 0.7), _cells(rng, 1, 4, SIZES, 0.6)
    idx = draw_indices(a, b, 40, np.random.default_rng(11))
    fast = replicate_stats(a, b, idx)
    slow = np.array([_reference(a, b, idx, r) for r in range(40)])
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-9)


def test_interval_is_the_percentile_of_the_reference_replicates_in_chunks(monkeypatch):
    # Chunks of 7 replicates (40 = 5 x 7 + 5): the bootstrap draws them one after another from one generator.
    monkeypatch.setattr(significance, "_CHUNK_NUMBERS", 7 * 7)  # widest cell: 7 images
    rng = np.random.default_rng(5)
    a, b = _cells(rng, 2, 3, SIZES, 0.8), _cells(rng, 1, 3, SIZES, 0.6)
    ref_rng, slow = np.random.default_rng(9), []
    for n in (7, 7, 7, 7, 7, 5):
        idx = draw_indices(a, b, n, ref_rng)
        slow += [_reference(a, b, idx, r) for r in range(n)]
    d = paired_h_bootstrap(a, b, replicates=40, level=0.9, rng=9)
    (base, new, h) = (tuple(np.quantile(column, [0.05, 0.95])) for column in np.array(slow).T)
    assert (d.low, d.high) == pytest.approx(h, abs=1e-9)
    assert d.base_interval == pytest.approx(base, abs=1e-9) and d.new_interval == pytest.approx(new, abs=1e-9)


def test_point_estimates_by_hand():
    # A: a base 3/4 (75), new 1/4 (25); b base 2/4 (50), new 2/4 (50).
    # B: a base 2 hierarchies x 2 seeds all correct (100), new 4 of 8 (50); b base 1/2, new 1/2 (50, 50).
    # a: Base (75 + 100)/2 = 87.5, New (25 + 50)/2 = 37.5, H = 2*87.5*37.5/125 = 52.5; b: 50 / 50 / 50.
    t, f = True, False
    a = {"A": (np.array([[[t, t, f, t]], [[t, t, f, t]]]), np.array([[[t, f, f, f]], [[t, f, f, f]]])),
         "B": (np.ones((2, 2, 2), bool), np.array([[[t, f], [t, f]], [[f, t], [f, t]]]))}
    b = {"A": (np.array([[[t, f, f, t]]]), np.array([[[t, t, f, f]]])),
         "B": (np.array([[[t, f], [f, t]]]), np.array([[[f, t], [t, f]]]))}
    d = paired_h_bootstrap(a, b, replicates=20)
    assert (d.d_base, d.d_new, d.d_h) == pytest.approx((37.5, -12.5, 2.5))
    assert d.hierarchies == (2, 1) and d.seeds == 3 and d.replicates == 20 and d.level == 0.95


def test_identical_rows_give_exactly_zero():
    rng = np.random.default_rng(0)
    a = _cells(rng, 1, 3, SIZES, 0.6)
    d = paired_h_bootstrap(a, {k: (v[0].copy(), v[1].copy()) for k, v in a.items()}, replicates=300)
    assert (d.d_base, d.d_new, d.d_h, d.low, d.high) == (0.0, 0.0, 0.0, 0.0, 0.0) and d.side == 0
    assert d.base_interval == d.new_interval == (0.0, 0.0)


def test_a_row_right_wherever_the_other_is_wrong_is_significantly_better():
    rng = np.random.default_rng(1)
    b = _cells(rng, 1, 3, {"A": (40, 40), "B": (30, 50)}, 0.7)
    a = {ds: (np.ones_like(x), np.ones_like(y)) for ds, (x, y) in b.items()}
    d = paired_h_bootstrap(a, b)
    assert 0 < d.low <= d.d_h <= d.high and d.side == 1
    flipped = paired_h_bootstrap(b, a)
    assert flipped.high < 0 and flipped.side == -1


def test_deterministic_by_seed_and_generator():
    rng = np.random.default_rng(2)
    a, b = _cells(rng, 3, 3, SIZES, 0.7), _cells(rng, 1, 3, SIZES, 0.65)
    first = paired_h_bootstrap(a, b, replicates=200)
    assert paired_h_bootstrap(a, b, replicates=200) == first
    assert paired_h_bootstrap(a, b, replicates=200, rng=np.random.default_rng(0)) == first
    other = paired_h_bootstrap(a, b, replicates=200, rng=1)
    assert (other.d_h, other.d_base) == (first.d_h, first.d_base) and (other.low, other.high) != (first.low, first.high)


def test_large_test_sets_run_in_bounded_chunks():
    rng = np.random.default_rng(4)
    a, b = _cells(rng, 3, 5, {"big": (10_000, 10_000)}, 0.8), _cells(rng, 1, 5, {"big": (10_000, 10_000)}, 0.79)
    d = paired_h_bootstrap(a, b, replicates=300)
    assert d.low <= d.d_h <= d.high


@pytest.mark.parametrize("change", ["dataset", "images", "seeds", "hierarchies", "level"])
def test_refuses_what_cannot_be_paired(change):
    rng = np.random.default_rng(0)
    a, b = _cells(rng, 2, 3, SIZES, 0.7), _cells(rng, 1, 3, SIZES, 0.7)
    kw = {}
    if change == "dataset":
        del b["B"]
    elif change == "images":
        b["A"] = (b["A"][0][:, :, :-1], b["A"][1])
    elif change == "seeds":
        b["A"] = (b["A"][0][:, :2], b["A"][1][:, :2])
    elif change == "hierarchies":
        a["A"] = (a["A"][0][:1], a["A"][1][:1])
    else:
        kw["level"] = 1.0
    with pytest.raises(ValueError):
        paired_h_bootstrap(a, b, **kw)


# --- transfer: accuracy averaged over targets -------------------------------------------------------------

def _target_cells(rng, hierarchies, seeds, sizes, p):
    return {t: rng.random((hierarchies, seeds, n)) < p for t, n in sizes.items()}


def _target_reference(a, b, idx, r):
    """Replicate ``r`` the slow way: one seed draw for every target, plain means of the gathered cells."""
    means = []
    for cells, h in ((a, idx.hierarchies[0][r]), (b, idx.hierarchies[1][r])):
        means.append(np.mean([100.0 * cells[t][h][:, idx.seeds[r]][:, :, idx.images[t][r]].mean() for t in sorted(cells)]))
    return means[0] - means[1]


TARGETS = {"X": 5, "Y": 8, "Z": 3}


def test_transfer_replicates_match_a_loop_and_share_the_seed_draw():
    rng = np.random.default_rng(7)
    a, b = _target_cells(rng, 3, 4, TARGETS, 0.7), _target_cells(rng, 1, 4, TARGETS, 0.6)
    idx = significance.draw_target_indices(a, b, 40, np.random.default_rng(1))
    assert idx.seeds.shape == (40, 4)  # one draw of the seeds, not one per target
    fast = significance.target_replicate_stats(a, b, idx)
    np.testing.assert_allclose(fast, [_target_reference(a, b, idx, r) for r in range(40)], rtol=0, atol=1e-9)


def test_transfer_point_estimate_by_hand_and_identical_rows():
    t, f = True, False
    # a: X 3/4 on both hierarchies, Y 1/2 -> (75 + 50) / 2 = 62.5; b: X 1/4, Y 2/2 -> (25 + 100) / 2 = 62.5
    a = {"X": np.array([[[t, t, f, t]], [[t, f, t, t]]]), "Y": np.array([[[t, f]], [[f, t]]])}
    b = {"X": np.array([[[t, f, f, f]]]), "Y": np.array([[[t, t]]])}
    d = significance.paired_mean_bootstrap(a, b, replicates=50)
    assert d.d == pytest.approx(0.0) and d.hierarchies == (2, 1) and d.seeds == 1 and d.low < 0 < d.high
    same = significance.paired_mean_bootstrap(b, {k: v.copy() for k, v in b.items()}, replicates=50)
    assert (same.d, same.low, same.high, same.side) == (0.0, 0.0, 0.0, 0)
    better = significance.paired_mean_bootstrap({k: np.ones_like(v) for k, v in b.items()}, b, replicates=200)
    assert better.side == 1 and better.d == pytest.approx(100 - 62.5)


@pytest.mark.parametrize("change", ["target", "images", "seeds", "level"])
def test_transfer_refuses_what_cannot_be_paired(change):
    rng = np.random.default_rng(0)
    a, b = _target_cells(rng, 2, 3, TARGETS, 0.7), _target_cells(rng, 1, 3, TARGETS, 0.7)
    kw = {}
    if change == "target":
        del b["Y"]
    elif change == "images":
        b["X"] = b["X"][:, :, :-1]
    elif change == "seeds":
        a["X"] = a["X"][:, :2]
    else:
        kw["level"] = 0.0
    with pytest.raises(ValueError):
        significance.paired_mean_bootstrap(a, b, **kw)


# --- summaries -------------------------------------------------------------------------------------------

def test_base_to_new_and_transfer_summaries_store_per_image_correctness(backbone):
    from gramprompt.data.registry import load_dataset
    from gramprompt.data.splits import base_new_split
    from gramprompt.eval.protocols import FewShotConfig, base_to_new, transfer
    from gramprompt.tuning.config import TuneConfig

    digits = load_dataset("digits")
    cfg = FewShotConfig(method="coop", shots=1, seed=1, max_test_per_class=2,
                        tune=TuneConfig(epochs=1, batch_size=8, warmup_epochs=0, feature_views=1))
    s = base_to_new(backbone, digits, cfg)
    base, new = base_new_split(digits)
    for split, classes in (("base", base), ("new", new)):
        bits = s["correct"][split]
        assert set(bits) <= {"0", "1"} and len(bits) == 2 * classes.num_classes
        assert s[split] == 100.0 * bits.count("1") / len(bits)
    target = dataclasses.replace(new, name="digits-new")
    t = transfer(backbone, base, [target], cfg)
    assert t["source"] == 100.0 * t["correct"]["source"].count("1") / len(t["correct"]["source"])
    bits = t["correct"]["targets"]["digits-new"]
    assert t["targets"]["digits-new"] == 100.0 * bits.count("1") / len(bits)


def test_report_prints_the_significance_of_compare_rows(tmp_path, tiny_clip_dir):
    from gramprompt.experiments.config import load_experiment
    from gramprompt.experiments.report import experiment_tables
    from gramprompt.experiments.runner import expected_run_config, plan

    data = {"name": "sig", "protocol": "base2new", "backbone": f"hf:{tiny_clip_dir}", "root": str(tmp_path / "root"),
            "datasets": ["digits"], "seeds": [1, 2], "shots": 2,
            "rows": [{"label": "zeroshot", "method": "zeroshot"}, {"label": "coop", "method": "coop", "title": "CoOp"},
                     {"label": "coop-b", "method": "coop", "title": "CoOp B", "compare": ["coop"]}],
            "tables": [{"title": "all"}, {"title": "no base row", "rows": ["zeroshot", "coop-b"]}]}
    (tmp_path / "sig.yaml").write_text(yaml.safe_dump(data))
    exp = load_experiment(tmp_path / "sig.yaml")
    bits = {"coop": ("1100", "1000"), "coop-b": ("1111", "1110")}
    for job in [j for j in plan(exp) if j.kind == "run" and j.row.label in bits]:
        job.out.mkdir(parents=True)
        (job.out / "config.yaml").write_text(yaml.safe_dump(expected_run_config(exp, job)))
        b, n = bits[job.row.label]
        (job.out / "summary.json").write_text(json.dumps(
            {"protocol": "base2new", "dataset": "digits", "label": job.row.label, "method": "coop", "seed": job.seed,
             "shots": 2, "backbone": "x", "base": 25.0 * b.count("1"), "new": 25.0 * n.count("1"),
             "correct": {"base": b, "new": n}}))
    out = experiment_tables(exp)
    # coop 50 / 25 -> H 33.33; coop-b 100 / 75 -> H 85.71: dH = +52.38, and every replicate is > 0.
    # Base and New: half the 4 images differ (by +1): a resample of 4 draws none (or all) of them with p = 1/16
    # > 2.5%, so both intervals run from 0 to 100.
    assert "| CoOp B | CoOp | +50.00 [+0.00, +100.00] | +50.00 [+0.00, +100.00] | +52.38 [" in out
    assert "| – | n/a |" in out
    assert out.count("Paired bootstrap") == 1  # the second table lacks the base row: no comparison
    assert "4 of 6 runs finished" in out
