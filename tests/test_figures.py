"""gram figure fig1a / fig3a / fig3b from recorded run folders: the PNGs and the numbers behind them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from matplotlib.colors import to_hex
from PIL import Image

from gramprompt.cli import main
from gramprompt.eval import figures
from gramprompt.eval.metrics import harmonic_mean

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# (dataset, label) -> {seed: (base, new)}
B2N = {
    ("d1", "coop-random-1"): {1: (80.0, 60.0), 2: (70.0, 50.0), 3: (75.0, 40.0)},
    ("d1", "coop-phrase-a-photo-of-a"): {1: (78.0, 62.0), 2: (76.0, 58.0), 3: (77.0, 60.0)},
    ("d1", "coop+gram"): {1: (82.0, 70.0), 2: (84.0, 68.0), 3: (83.0, 72.0)},
    ("d2", "coop-random-1"): {1: (60.0, 30.0), 2: (62.0, 34.0), 3: (64.0, 32.0)},
    ("d2", "coop-phrase-a-photo-of-a"): {1: (66.0, 40.0), 2: (64.0, 44.0), 3: (65.0, 42.0)},
    ("d2", "coop+gram"): {1: (70.0, 50.0), 2: (72.0, 48.0), 3: (71.0, 52.0)},
    ("d1", "coop-random-2"): {1: (50.0, 20.0), 2: (52.0, 22.0)},  # d1 only: not in the Average panel
}


def _write_run(folder: Path, summary: dict, records: list[dict] = ()) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"protocol: {summary.get('protocol', 'base2new')}\n")
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def _summary(dataset: str, label: str, seed: int, base: float, new: float, **extra) -> dict:
    return {"protocol": "base2new", "dataset": dataset, "method": "coop", "label": label, "backbone": "default",
            "shots": 16, "seed": seed, "init": None, "base": base, "new": new, "h": harmonic_mean(base, new),
            "train_images": 80, "base_classes": 5, "new_classes": 5, "seconds": 1.0, **extra}


@pytest.fixture
def b2n_runs(tmp_path) -> Path:
    root = tmp_path / "fig1a"
    for (ds, label), seeds in B2N.items():
        for seed, (b, n) in seeds.items():
            _write_run(root / ds / label / f"seed{seed}", _summary(ds, label, seed, b, n, init_seed=seed + 10),
                       [{"epoch": 1, "lr": 1e-5, "loss": 1.0, "train_acc": 50.0, "skipped_steps": 0}])
    return root


# (dataset, label, seed) -> per-epoch (test_base, test_new)
EPOCHS = {
    ("d1", "coop", 1): [(50.0, 40.0), (60.0, 35.0), (70.0, 30.0)],
    ("d1", "coop", 2): [(52.0, 42.0), (62.0, 37.0), (72.0, 28.0)],
    ("d2", "coop", 1): [(40.0, 20.0), (44.0, 18.0), (48.0, 16.0)],
    ("d1", "coop+gram", 1): [(60.0, 50.0), (66.0, 51.0), (70.0, 52.0)],
    ("d1", "coop+gram", 2): [(62.0, 48.0), (68.0, 49.0), (72.0, 50.0)],
    ("d2", "coop+gram", 1): [(50.0, 30.0), (54.0, 31.0), (56.0, 33.0)],
}


def _epoch_log(accs: list[tuple[float, float]]) -> list[dict]:
    """A metrics.jsonl as base_to_new writes it with eval_every_epoch: training record, then test record."""
    out = []
    for e, (b, n) in enumerate(accs, 1):
        out.append({"epoch": e, "lr": 0.002, "loss": 1.0 / e, "train_acc": 50.0 + e, "skipped_steps": 0})
        out.append({"epoch": e, "test_base": b, "test_new": n})
    return out


@pytest.fixture
def epoch_runs(tmp_path) -> Path:
    root = tmp_path / "fig3a"
    for (ds, label, seed), accs in EPOCHS.items():
        _write_run(root / ds / label / f"seed{seed}", _summary(ds, label, seed, *accs[-1]), _epoch_log(accs))
    return root


ALIGN = {"coop": [0.1, 0.3, 0.2, 0.6], "vpt": [-0.2, 0.0, 0.4, 0.5]}


def _meta_log(values: list[float], every: int = 10) -> list[dict]:
    """A gram meta-train metrics.jsonl: a record per iteration, statistics every ``every``."""
    out = []
    for it in range(1, every * len(values) + 1):
        rec = {"iteration": it, "meta_loss": 0.3, "skipped": 0}
        if it % every == 0:
            rec |= {"query_loss_before": 0.35, "query_acc_before": 90.0, "query_loss_after": 0.29,
                    "query_acc_after": 91.0, "alignment": values[it // every - 1]}
        out.append(rec)
    return out


@pytest.fixture
def meta_runs(tmp_path) -> list[Path]:
    folders = []
    for name, values in ALIGN.items():
        folder = tmp_path / "meta" / name
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("protocol: meta-train\n")
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _meta_log(values)))
        folders.append(folder)
    return folders


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width >= 400 and img.height >= 300


# ---------------------------------------------------------------- Fig. 1a


def test_fig1a_data_means_over_seeds_and_the_average_panel(b2n_runs):
    data = figures.fig1a_data(figures.base2new_summaries([b2n_runs]), "base")
    assert list(data) == ["d1", "d2", "Average"]
    d1 = {p.label: p for p in data["d1"]}
    assert set(d1) == {"coop-random-1", "coop-random-2", "coop-phrase-a-photo-of-a", "coop+gram"}
    assert d1["coop-random-1"].values == (80.0, 70.0, 75.0) and d1["coop-random-1"].keys == (1, 2, 3)
    assert d1["coop-random-1"].mean == pytest.approx(75.0)
    assert d1["coop-random-2"].mean == pytest.approx(51.0)
    # the Average panel: labels on every dataset only; dots are the per-dataset means
    avg = {p.label: p for p in data["Average"]}
    assert set(avg) == {"coop-random-1", "coop-phrase-a-photo-of-a", "coop+gram"}
    assert avg["coop+gram"].values == pytest.approx((83.0, 71.0)) and avg["coop+gram"].keys == ("d1", "d2")
    assert avg["coop+gram"].mean == pytest.approx(77.0)

    # H of a bar is the H of mean base and mean new (as gram table computes it), dots the per-seed H
    h = {p.label: p for p in figures.fig1a_data(figures.base2new_summaries([b2n_runs]), "h")["d1"]}
    assert h["coop-random-1"].mean == pytest.approx(harmonic_mean(75.0, 50.0))
    assert h["coop-random-1"].values == pytest.approx((harmonic_mean(80, 60), harmonic_mean(70, 50),
                                                       harmonic_mean(75, 40)))
    avg_h = {p.label: p for p in figures.fig1a_data(figures.base2new_summaries([b2n_runs]), "h")["Average"]}
    assert avg_h["coop+gram"].mean == pytest.approx(harmonic_mean((83 + 71) / 2, (70 + 50) / 2))
    new = {p.label: p for p in figures.fig1a_data(figures.base2new_summaries([b2n_runs]), "new")["d2"]}
    assert new["coop-phrase-a-photo-of-a"].mean == pytest.approx(42.0)


def test_fig1a_only_selects_and_orders_and_bad_input_is_refused(b2n_runs, tmp_path):
    summaries = figures.base2new_summaries([b2n_runs])
    data = figures.fig1a_data(summaries, "h", only=["coop+gram", "coop-random-1"])
    assert [p.label for p in data["d2"]] == ["coop+gram", "coop-random-1"]
    with pytest.raises(ValueError, match="no runs labelled"):
        figures.fig1a_data(summaries, "h", only=["nope"])
    with pytest.raises(ValueError, match="metric"):
        figures.fig1a_data(summaries, "acc")
    with pytest.raises(ValueError, match="appear more than once"):
        figures.fig1a_data(summaries + [summaries[0]], "h")
    with pytest.raises(ValueError, match="highlight"):
        figures.fig1a(summaries, highlight=["coop+nothing"])
    with pytest.raises(ValueError, match="no finished base-to-new runs"):
        figures.base2new_summaries([tmp_path / "empty"])


def test_fig1a_and_fig3a_take_a_grams_runs_on_several_hierarchies(tmp_path):
    # the same seed on two CHC hierarchies is two repeats of one cell (as in the tables); the same
    # (hierarchy, seed) twice is still refused
    s = [_summary("d1", "coop+gram", 1, 80.0, 60.0, hierarchy=0), _summary("d1", "coop+gram", 1, 70.0, 50.0, hierarchy=1),
         _summary("d1", "coop+gram", 2, 90.0, 40.0, hierarchy=0)]
    (point,) = figures.fig1a_data(s, "base")["d1"]
    assert point.keys == ((0, 1), (0, 2), (1, 1)) and point.values == (80.0, 90.0, 70.0)
    assert point.mean == pytest.approx(80.0)
    with pytest.raises(ValueError, match=r"1 \(hierarchy 0\) appear more than once"):
        figures.fig1a_data(s + [s[0]], "base")
    root = tmp_path / "h"
    for i, (h, seed) in enumerate([(0, 1), (1, 1)]):
        _write_run(root / f"h{h}" / f"seed{seed}", _summary("d1", "coop+gram", seed, 50.0 + i, 40.0, hierarchy=h),
                   _epoch_log([(40.0 + 10 * i, 30.0), (50.0 + 10 * i, 40.0)]))
    runs = figures.epoch_runs([root])
    assert sorted(r.hierarchy for r in runs) == [0, 1]
    (curve,) = figures.fig3a_data(runs)
    assert curve.runs == 2 and curve.base == pytest.approx((45.0, 55.0))
    with pytest.raises(ValueError, match="appear more than once"):
        figures.fig3a_data(runs + [runs[0]])


def test_fig1a_bars_colours_and_order(b2n_runs):
    fig = figures.fig1a(figures.base2new_summaries([b2n_runs]), metric="new")
    ax = fig.axes[0]  # d1
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["coop-random-1", "coop-random-2", "coop-phrase-a-photo-of-a", "coop+gram"]  # theta* last
    bars = list(ax.containers[0])
    heights = [bar.get_height() for bar in bars]
    assert heights == pytest.approx([50.0, 21.0, 60.0, 70.0])
    colours = [to_hex(bar.get_facecolor()) for bar in bars]
    assert colours[0] == colours[1] == figures.NEUTRAL["random"]
    assert colours[2] == figures.NEUTRAL["phrase"] and colours[3] == figures.HIGHLIGHT[0]  # default: "gram" rows
    assert sum(len(c.get_offsets()) for c in ax.collections) == 3 + 2 + 3 + 3  # one dot per seed


def test_fig1a_cli_writes_a_png(b2n_runs, tmp_path, capsys):
    out = tmp_path / "figs" / "fig1a.png"
    argv = ["figure", "fig1a", str(b2n_runs), "--out", str(out), "--metric", "new", "--highlight", "coop+gram"]
    assert main(argv) == 0
    _assert_png(out)
    assert str(out) in capsys.readouterr().out


# ---------------------------------------------------------------- Fig. 3a


def test_fig3a_data_mean_over_seeds_then_datasets(epoch_runs):
    runs = figures.epoch_runs([epoch_runs])
    assert len(runs) == 6 and all(r.epochs == (1, 2, 3) for r in runs)
    curves = {c.label: c for c in figures.fig3a_data(runs)}
    coop = curves["coop"]
    assert coop.datasets == ("d1", "d2") and coop.runs == 3 and coop.epochs == (1, 2, 3)
    # d1: mean of seeds 1, 2; d2: seed 1; then the mean of the two datasets
    assert coop.base == pytest.approx(((51 + 40) / 2, (61 + 44) / 2, (71 + 48) / 2))
    assert coop.new == pytest.approx(((41 + 20) / 2, (36 + 18) / 2, (29 + 16) / 2))
    assert curves["coop+gram"].new == pytest.approx(((49 + 30) / 2, (50 + 31) / 2, (51 + 33) / 2))
    assert [c.label for c in figures.fig3a_data(runs, only=["coop+gram"])] == ["coop+gram"]


def test_fig3a_refuses_what_would_not_compare(epoch_runs, tmp_path):
    runs = figures.epoch_runs([epoch_runs])
    d2_gram = [r for r in runs if not (r.label == "coop+gram" and r.dataset == "d2")]
    with pytest.raises(ValueError, match="different datasets"):
        figures.fig3a_data(d2_gram)
    short = _write_run(tmp_path / "short", _summary("d1", "coop", 9, 1.0, 1.0), _epoch_log([(1.0, 1.0)]))
    with pytest.raises(ValueError, match="different epochs"):
        figures.fig3a_data(figures.epoch_runs([epoch_runs, short]))
    with pytest.raises(ValueError, match="appear more than once"):
        figures.fig3a_data(runs + runs[:1])


def test_fig3a_lines_solid_base_dashed_new(epoch_runs):
    fig = figures.fig3a(figures.fig3a_data(figures.epoch_runs([epoch_runs])))
    lines = fig.axes[0].get_lines()
    assert [line.get_linestyle() for line in lines] == ["-", "--", "-", "--"]
    assert list(lines[0].get_ydata()) == pytest.approx([45.5, 52.5, 59.5])
    assert "2 datasets" in fig.get_suptitle()


def test_fig3a_cli_png_and_the_missing_records_message(epoch_runs, b2n_runs, tmp_path, capsys, caplog):
    out = tmp_path / "fig3a.png"
    assert main(["figure", "fig3a", str(epoch_runs), "--out", str(out)]) == 0
    _assert_png(out)
    # the points behind the figure, printed: coop's epoch 1 is Base (51 + 40) / 2, New (41 + 20) / 2
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| epoch | coop Base | New | H | coop+gram Base | New | H |"
    h = 2 * 45.5 * 30.5 / (45.5 + 30.5)
    assert table[2].startswith(f"| 1 | 45.50 | 30.50 | {h:.2f} | ") and table[4].startswith("| 3 | 59.50 | ")
    # runs without per-epoch records: an error saying how to get them, one line
    assert main(["figure", "fig3a", str(b2n_runs), "--out", str(tmp_path / "no.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gram: error:") and "--eval-every-epoch" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "no.png").exists()
    # mixed: the runs with records are plotted, the others named in a warning
    assert main(["figure", "fig3a", str(epoch_runs), str(b2n_runs), "--out", str(tmp_path / "mixed.png")]) == 0
    assert "skipped 20 run(s)" in caplog.text


# ---------------------------------------------------------------- Fig. 3b


def test_alignment_records_and_moving_average():
    log = _meta_log([0.5, 0.1, 0.3]) + [{"iteration": 20, "meta_loss": 0.1, "alignment": 0.7}]  # a resumed redo
    assert figures.alignment_records(log) == ((10, 20, 30), (0.5, 0.7, 0.3))
    assert figures.moving_average([1.0, 2.0, 3.0, 4.0], 1) == [1.0, 2.0, 3.0, 4.0]
    assert figures.moving_average([1.0, 2.0, 3.0, 4.0], 2) == pytest.approx([1.0, 1.5, 2.5, 3.5])
    assert figures.moving_average([1.0, 2.0, 3.0, 4.0], 3) == pytest.approx([1.0, 1.5, 2.0, 3.0])
    with pytest.raises(ValueError, match="smooth"):
        figures.moving_average([1.0], 0)


def test_fig3b_series_legend_and_smoothing(meta_runs, tmp_path):
    series = figures.alignment_series(meta_runs)
    assert [s.label for s in series] == ["coop", "vpt"]
    assert series[0].iterations == (10, 20, 30, 40) and series[0].values == pytest.approx(ALIGN["coop"])
    assert [s.label for s in figures.alignment_series(meta_runs, ["a", "b"])] == ["a", "b"]
    fig = figures.fig3b(series, smooth=2)
    lines = [line for line in fig.axes[0].get_lines() if line.get_label() == "vpt"]
    assert list(lines[0].get_ydata()) == pytest.approx([-0.2, -0.1, 0.2, 0.45])
    other = tmp_path / "other" / "coop"
    other.mkdir(parents=True)
    (other / "metrics.jsonl").write_text(json.dumps({"iteration": 1, "meta_loss": 1.0}) + "\n")
    with pytest.raises(ValueError, match="no `alignment` records"):
        figures.alignment_series([other])
    (other / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _meta_log([0.1])))
    assert [s.label for s in figures.alignment_series([meta_runs[0], other])] == ["meta/coop", "other/coop"]


def test_fig3b_pools_a_label_and_draws_the_unregulated_alignment(tmp_path):
    folders = []
    for h, (values, raw) in enumerate((([0.2, 0.4, 0.6], [0.1, 0.1, 0.2]), ([0.4, 0.6, 0.8, 0.9], [0.3, 0.3, 0.4, 0.5]))):
        folder = tmp_path / f"h{h}" / "unigram"
        folder.mkdir(parents=True)
        log = _meta_log(values)
        for rec in log:
            if "alignment" in rec:
                rec["alignment_raw"] = raw[rec["iteration"] // 10 - 1]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
        folders.append(folder)
    (series,) = figures.alignment_series(folders, ["UNIGRAM", "UNIGRAM"])
    # iterations both logged (the second ran longer); means by hand
    assert series.runs == 2 and series.iterations == (10, 20, 30)
    assert series.values == pytest.approx((0.3, 0.5, 0.7)) and series.raw == pytest.approx((0.2, 0.2, 0.3))
    lines = {line.get_label(): line for line in figures.fig3b([series]).axes[0].get_lines()}
    assert list(lines["UNIGRAM (mean of 2)"].get_ydata()) == pytest.approx([0.3, 0.5, 0.7])
    assert lines["UNIGRAM: unregulated gradient"].get_linestyle() == "--"
    # a folder without the raw records: its series has none, and no dashed line
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _meta_log([0.1, 0.2, 0.3])))
    (mixed,) = figures.alignment_series([folders[0], tmp_path / "old"], ["x", "x"])
    assert mixed.raw is None and mixed.values == pytest.approx((0.15, 0.3, 0.45))
    # a run without a regulator logs the same value twice: no second line
    (tmp_path / "plain").mkdir()
    log = _meta_log([0.1, 0.2, 0.3])
    for rec in log:
        if "alignment" in rec:
            rec["alignment_raw"] = rec["alignment"]
    (tmp_path / "plain" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    (plain,) = figures.alignment_series([tmp_path / "plain"])
    assert plain.raw is None and plain.values == pytest.approx((0.1, 0.2, 0.3))
    # the summary by hand: thirds of 3 logged points are single points
    table = figures.alignment_table([series, plain]).splitlines()
    assert table[2] == "| UNIGRAM | 2 | 0.300 | 0.700 | +0.400 | 0.200 | 0.300 | +0.400 |"
    assert table[3] == "| plain | 1 | 0.100 | 0.300 | +0.200 | - | - | - |"


def test_fig3b_cli(meta_runs, tmp_path, capsys):
    out = tmp_path / "fig3b.png"
    assert main(["figure", "fig3b", *map(str, meta_runs), "--out", str(out), "--smooth", "3",
                 "--labels", "CoOp+GRAM", "VPT+GRAM"]) == 0
    _assert_png(out)
    assert main(["figure", "fig3b", *map(str, meta_runs), "--out", str(out), "--labels", "one"]) == 2
    assert "--labels gives 1 name(s) for 2 run folder(s)" in capsys.readouterr().err
    assert main(["figure", "fig3b", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "no such run folder" in capsys.readouterr().err
