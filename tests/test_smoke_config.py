"""vit_b16/smoke, the first GPU run: it plans, it is the paper-scale recipe on fewer pairs, its GRAM rows are the
twins `gram drift` compares; and the recipe's noisy-pair filter is the one docs/REPRODUCE.md runs CHC with."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from gramprompt.cli import main
from gramprompt.eval.drift import twin_key
from gramprompt.eval.protocols import run_config
from gramprompt.experiments.config import load_experiment

REPRODUCE = Path(__file__).resolve().parents[1] / "docs" / "REPRODUCE.md"


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Dummy paths for the variables the vit_b16 configs read (plan checks that the data root exists)."""
    (tmp_path / "data").mkdir()
    for var, sub in (("GRAM_DATA", "data"), ("GRAM_RUNS", "runs"), ("GRAM_CC3M", "cc3m"),
                     ("GRAM_HIERARCHY", "chc")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    return tmp_path


def test_gram_experiment_plan_lists_chc_one_meta_training_and_three_runs(env, capsys):
    assert main(["experiment", "plan", "vit_b16/smoke"]) == 0
    out = capsys.readouterr().out
    jobs = [line.split()[:3] for line in out.splitlines() if line.startswith("  ") and line.split()[0] in ("pending", "waiting")]
    assert jobs == [["pending", "chc", "chc"], ["pending", "meta", "coop"], ["pending", "run", "Caltech101/coop/seed1"],
                    ["waiting", "run", "Caltech101/coop+gram/seed1"],  # for the coop variant's theta* and phi*
                    ["waiting", "run", "Caltech101/coop+gram-theta/seed1"]]
    assert "1 seed(s), 16 shots" in out and str(env / "runs" / "vit_b16-smoke") in out


def test_the_smoke_is_the_paper_scale_recipe_on_a_few_cc3m_shards(env):
    smoke, full = load_experiment("vit_b16/smoke"), load_experiment("vit_b16/base2new")
    assert smoke.backbone == full.backbone and smoke.fewshot == full.fewshot == {"tune": {"batch_size": 1, "epochs": 10}}
    # the same meta-training (the regulator form _vit_b16.yaml sets included) and CHC settings
    assert smoke.meta_config(smoke.variants["coop"]) == full.meta_config(full.variants["coop"])
    assert smoke.hierarchy.chc_config() == full.hierarchy.chc_config()
    assert smoke.hierarchy.pairs == f"wds:{env / 'cc3m'}/{{00000..00004}}.tar" and smoke.hierarchy.path is None
    assert smoke.root != full.root  # its coop variant (another hierarchy) never replaces the tables' one
    assert smoke.datasets == (f"coop:Caltech101:{env / 'data'}",) and smoke.seeds == (1,) and smoke.shots == 16


def test_the_gram_rows_are_twins_for_gram_drift(env):
    exp = load_experiment("vit_b16/smoke")
    rows = {r.label: r for r in exp.rows}
    assert list(rows) == ["coop", "coop+gram", "coop+gram-theta"]
    configs = {label: run_config(exp.backbone, list(exp.datasets), exp.fewshot_config(rows[label], 1, "/m/gram.safetensors"),
                                 exp.protocol) for label in ("coop+gram", "coop+gram-theta")}
    assert configs["coop+gram"]["regulator"] is True and configs["coop+gram-theta"]["regulator"] is False
    assert twin_key(configs["coop+gram"]) == twin_key(configs["coop+gram-theta"])


def test_the_recipe_filters_noisy_pairs_as_reproduce_md_runs_chc(env):
    cfg = load_experiment("vit_b16/base2new").hierarchy.chc_config()
    assert (cfg.filter.quantile, cfg.filter.threshold) == (0.1, None)
    chc_command = re.search(r'CHC="([^"]*)"', REPRODUCE.read_text()).group(1)
    assert "--filter-quantile 0.1" in chc_command


def test_fig1a_theta_only_row_is_the_twin_of_table1_gram_row(env):
    """docs/REPRODUCE.md: `gram drift` on the base2new runs judges every dataset once Fig. 1a's runs exist."""
    table1, fig1a = load_experiment("vit_b16/base2new"), load_experiment("vit_b16/init_sensitivity")
    assert table1.group == fig1a.group
    gram = next(r for r in table1.rows if r.label == "coop+gram")
    theta = next(r for r in fig1a.rows if r.label == "coop-theta")
    keys = {twin_key(run_config(e.backbone, [e.datasets[0]], e.fewshot_config(row, 1, "/m/gram.safetensors"), e.protocol))
            for e, row in ((table1, gram), (fig1a, theta))}
    assert len(keys) == 1 and (gram.regulator, theta.regulator) == (True, False)
