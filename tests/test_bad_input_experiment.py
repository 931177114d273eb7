"""Bad experiment configs: every problem is found before any job starts (``plan`` finds them too) and
reported as one ``ConfigError`` (one ``gram: error:`` message, exit 2) rather than a traceback."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gramprompt.cli import main
from gramprompt.experiments.config import ConfigError, load_experiment


def _tiny(tmp_path: Path, ckpt: Path, **extra) -> Path:
    data = {"name": "tiny", "protocol": "base2new", "backbone": f"hf:{ckpt}", "root": str(tmp_path / "root"),
            "datasets": ["digits"], "seeds": [1], "shots": 2,
            "fewshot": {"max_test_per_class": 5, "tune": {"epochs": 1, "batch_size": 4, "warmup_epochs": 0,
                                                          "feature_views": 1}},
            "rows": [{"label": "zeroshot", "method": "zeroshot"}], **extra}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _gram(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("override,message", [
    ("fewshot.tune=[1, 2]", "fewshot.tune: expected a mapping, got [1, 2]"),
    ("shots=two", "shots: expected int, got 'two'"),
    ("seeds=[1, x]", "seeds[1]: expected int, got 'x'"),
    ("fewshot.max_test_per_class=all", "fewshot.max_test_per_class: expected int or null, got 'all'"),
    ("fewshot.allow_fewer_shots=1", "fewshot.allow_fewer_shots: expected bool, got 1"),
    ("meta.tasks.ways=five", "meta.tasks.ways: expected int, got 'five'"),
    ("meta.lr_theta=fast", "meta.lr_theta: expected float, got 'fast'"),
    ("meta.regulator=shared", "meta.regulator: expected a mapping, got 'shared'"),
    ("variants.coop.meta.iterations=many", "variants.coop: meta.iterations: expected int, got 'many'"),
    ("variants.coop.prompt.init_std=[1]", "variants.coop.prompt.init_std: expected float, got [1]"),
    ("hierarchy.chc.topics.umap_neighbors=[15]", "hierarchy.chc.topics.umap_neighbors: expected int, got [15]"),
    ("hierarchy.chc.topics.extra_stop_words=[a, 1]", "hierarchy.chc.topics.extra_stop_words[1]: expected str"),
    ("rows=[{label: a, method: coop, prompt: {text_tokens: four}}]", "rows[0].prompt.text_tokens: expected int"),
    ("rows=[{label: a}]", "rows[0]: missing key(s) ['method']"),
    ("tables=[{title: t, rows: coop}]", "tables[0].rows: expected a list, got 'coop'"),
    ("seeds=[1,", "--set seeds=[1,: not valid YAML"),
])
def test_a_value_of_the_wrong_type_is_one_config_error(override, message):
    with pytest.raises(ConfigError) as err:
        load_experiment("offline/base2new", [override])
    assert message in str(err.value)


def test_type_errors_are_reported_together_and_by_gram_as_one_error(capsys):
    code, err = _gram(["experiment", "plan", "offline/base2new", "--set", "shots=two", "--set", "seeds=[x]",
                       "--set", "rows=[{label: a, method: coop, prompt: {text_tokens: four}}]"], capsys)
    assert code == 2 and err.startswith("gram: error:") and "Traceback" not in err
    assert "3 problems" in err and "shots:" in err and "seeds[0]:" in err and "rows[0].prompt.text_tokens:" in err


def test_a_float_written_as_1e_3_is_a_float():
    """YAML 1.1 (PyYAML) reads ``1e-3`` as a string; a float field takes it as the number it spells."""
    exp = load_experiment("offline/base2new", ["fewshot.tune.lr=1e-3"])
    assert exp.fewshot_config(exp.rows[0], 1).tune.lr == 0.001


def test_plan_names_every_unknown_dataset_method_and_variant_at_once(capsys):
    code, err = _gram(["experiment", "plan", "offline/base2new",
                       "--set", "datasets=[digits, digitz, 'coop:NoSuchSet:/data', 'imagefolder:', 'foo:bar']",
                       "--set", "rows=[{label: a, method: coopp}, {label: b, method: coop, variant: nope}]",
                       "--set", "variants.coop.method=vptt"], capsys)
    assert code == 2 and err.startswith("gram: error:") and "7 problems" in err
    for culprit in ("'digitz'", "NoSuchSet", "'imagefolder:'", "'foo:bar'", "'coopp'", "'nope'", "'vptt'"):
        assert culprit in err, culprit


def test_a_variant_s_supervised_dataset_is_checked():
    with pytest.raises(ConfigError, match="variants.unigram-supervised.supervised: 'clipart-categoriez'"):
        load_experiment("offline/ablations", ["variants.unigram-supervised.supervised=clipart-categoriez"])


@pytest.mark.parametrize("spec_or_row", ["imagefolder:{missing}", "coop:OxfordPets:{missing}", "init"])
def test_plan_fails_on_a_local_path_that_does_not_exist(spec_or_row, tmp_path, tiny_clip_dir, capsys):
    missing = tmp_path / "no" / "such"
    extra = ({"rows": [{"label": "coop", "method": "coop", "init": str(missing)}]} if spec_or_row == "init" else
             {"datasets": ["digits", spec_or_row.format(missing=missing)]})
    cfg = _tiny(tmp_path, tiny_clip_dir, **extra)
    code, err = _gram(["experiment", "plan", str(cfg)], capsys)
    assert code == 2 and str(missing) in err and "does not exist" in err


def test_run_starts_no_job_when_a_later_dataset_is_missing(tmp_path, tiny_clip_dir, capsys):
    missing = tmp_path / "pets"
    cfg = _tiny(tmp_path, tiny_clip_dir, datasets=["digits", f"imagefolder:{missing}"])
    code, err = _gram(["experiment", "run", str(cfg)], capsys)
    assert code == 2 and str(missing) in err
    assert not (tmp_path / "root").exists()  # digits was not run first
