"""``gram drift``: drift per epoch from run folders, regulated runs against their twin without R_phi*, the
verdict, bad input; and one real tiny tuning run whose logged drift is its prompts' distance from init."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from gramprompt.backbones import load_backbone
from gramprompt.cli import main
from gramprompt.errors import GramError
from gramprompt.eval.drift import RATIO_LIMIT, find_runs, report, shown_epochs, twins
from gramprompt.meta.checkpoint import save_gram
from gramprompt.meta.regulator import RegulatorConfig, init_regulator
from gramprompt.prompts import build_method
from gramprompt.runs import load_prompts

LITERAL = [0.14, 14.5, 27.7, 35.0, 42.0, 48.0, 54.0, 59.0, 63.0, 65.8]  # benchmarks/README.md's shape
PLAIN = [0.01, 1.2, 2.0, 2.6, 3.1, 3.5, 3.8, 4.0, 4.2, 4.3]


def _config(seed=1, init="/ckpt/gram.safetensors", regulator=True, label="coop+gram", dataset="coop:Caltech101:/d"):
    return {"protocol": "base2new", "backbone": "hf:clip", "datasets": [dataset], "method": "coop", "label": label,
            "shots": 16, "seed": seed, "init": init, "regulator": regulator, "max_test_per_class": None,
            "tune": {"epochs": 10, "batch_size": 1, "lr": 0.002}, "init_sha256": "abc"}


def _run(folder: Path, config: dict, drifts, extra_records=()) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    records = [{"epoch": e, "lr": 0.002, "loss": 1.0, "train_acc": 50.0, "skipped_steps": 0, "drift": d}
               for e, d in enumerate(drifts, 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*records, *extra_records]))
    return folder


def _pair(root: Path, regulated, plain, seed=1) -> None:
    _run(root / "Caltech101" / "coop+gram" / f"seed{seed}", _config(seed), regulated)
    _run(root / "Caltech101" / "coop+gram-theta" / f"seed{seed}",
         _config(seed, regulator=False, label="coop+gram-theta"), plain)


def test_a_literal_like_regulated_run_is_called_drifted(tmp_path, capsys):
    runs = tmp_path / "runs"
    _pair(runs, LITERAL, PLAIN)
    _run(runs / "Caltech101" / "coop" / "seed1", _config(init=None, label="coop"), [0.1 * e for e in range(1, 11)])
    text, drifted = report([runs])
    assert drifted
    assert "regulated drift 15.3x the unregulated: R_phi* drifted" in text
    assert "| Caltech101/coop+gram/seed1 | Caltech101 | 1 | theta* + R_phi* | 0.14 | 14.5 |" in text
    assert "| Caltech101/coop+gram-theta/seed1 | Caltech101 | 1 | theta* only |" in text
    assert "| Caltech101/coop/seed1 | Caltech101 | 1 | fresh init |" in text
    assert all(f"epoch {e}" in text for e in range(1, 11))
    assert main(["drift", str(runs)]) == 1  # drifted: exit 1, as `gram data check` does when something is wrong
    assert "Verdict: R_phi* drifted in 1 of 1" in capsys.readouterr().out


@pytest.mark.parametrize("final, expected", [(6.0, "1.4x"), (14.3, "3.3x")])
def test_bounded_like_is_within_the_limit_and_scale_invariant_like_is_not(tmp_path, final, expected):
    _pair(tmp_path, [*PLAIN[:-1], final], PLAIN)
    text, drifted = report([tmp_path])
    assert f"regulated drift {expected} the unregulated" in text
    assert drifted == (final / PLAIN[-1] > RATIO_LIMIT)
    assert ("no drift (within 2x)" in text) != drifted


def test_only_the_same_training_is_a_twin(tmp_path):
    _pair(tmp_path, LITERAL, PLAIN, seed=1)
    _run(tmp_path / "Caltech101" / "coop+gram" / "seed2", _config(2), LITERAL)  # its twin is missing
    _run(tmp_path / "EuroSAT" / "coop+gram-theta" / "seed2",
         _config(2, regulator=False, dataset="coop:EuroSAT:/d"), PLAIN)  # another dataset: no twin of seed2
    runs = find_runs([tmp_path])
    pairs, alone = twins(runs)
    assert [(r.name, p.name) for r, p in pairs] == [("Caltech101/coop+gram/seed1", "Caltech101/coop+gram-theta/seed1")]
    assert [r.name for r in alone] == ["Caltech101/coop+gram/seed2"]
    assert "Caltech101/coop+gram/seed2: no twin without R_phi* here" in report([tmp_path])[0]


def test_many_epochs_show_first_middle_last_and_the_last_record_of_an_epoch_wins(tmp_path):
    eval_records = [{"epoch": 3, "test_base": 50.0, "test_new": 40.0}, {"epoch": 50, "drift": 99.0}]
    _run(tmp_path / "long", _config(init=None), [float(e) for e in range(1, 51)], eval_records)
    (run,) = find_runs([tmp_path / "long"])
    assert run.drifts[50] == 99.0 and run.drifts[3] == 3.0 and len(run.drifts) == 50
    assert shown_epochs([run]) == [1, 25, 50]
    text = report([tmp_path / "long"])[0]
    assert "| epoch 1 | epoch 25 | epoch 50 |" in text and text.count("epoch 2 ") == 0
    assert "no run here was tuned with an R_phi*" in text


def test_unfinished_runs_compare_at_the_last_epoch_both_logged(tmp_path):
    _pair(tmp_path, LITERAL[:4], PLAIN)  # the regulated run was killed after epoch 4
    text, drifted = report([tmp_path])
    assert f"(epoch 4): drift 35 with R_phi*, 2.6 without; regulated drift {35 / 2.6:.1f}x" in text and drifted
    assert "| 35 | - |" in text


def test_the_limit_is_a_positive_ratio(tmp_path, capsys):
    _pair(tmp_path, [*PLAIN[:-1], 6.0], PLAIN)  # 1.4x
    assert main(["drift", str(tmp_path), "--limit", "1.2"]) == 1 and "R_phi* drifted" in capsys.readouterr().out
    for bad in ("0", "-1", "nan"):
        assert main(["drift", str(tmp_path), "--limit", bad]) == 2
        assert "--limit must be a positive ratio" in capsys.readouterr().err


def test_the_regulator_form_is_read_from_the_checkpoint(tmp_path):
    theta = {"text_ctx": torch.zeros(4, 8)}
    ckpt = tmp_path / "meta" / "gram.safetensors"
    save_gram(ckpt, theta, init_regulator(theta, RegulatorConfig(form="bounded")),
              {"method": "coop", "regulator": RegulatorConfig(form="bounded").metadata()})
    plain = tmp_path / "plain.safetensors"
    save_gram(plain, theta, {}, {"method": "coop"})
    _run(tmp_path / "runs" / "gram", _config(init=str(ckpt)), PLAIN)
    _run(tmp_path / "runs" / "prompts", _config(init=str(plain)), PLAIN)  # no phi*: not a regulated run
    text = report([tmp_path / "runs"])[0]
    assert "theta* + R_phi* (bounded)" in text and "init (no R_phi* in it)" in text
    assert [r.name for r in twins(find_runs([tmp_path / "runs"]))[1]] == ["gram"]


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such folder"),
    (lambda p: p.mkdir(), "holds no few-shot run folder"),
    (lambda p: (p.mkdir(), (p / "config.yaml").write_text("protocol: base2new\nmethod: coop\n")), "has no metrics.jsonl"),
    (lambda p: (p.mkdir(), (p / "config.yaml").write_text("protocol: meta-train\nmethod: coop\n"),
                (p / "metrics.jsonl").write_text('{"iteration": 1}\n')), "not a few-shot run folder"),
    (lambda p: (p.mkdir(), (p / "config.yaml").write_text("protocol: [unclosed\n"),
                (p / "metrics.jsonl").write_text("")), "config.yaml is unreadable"),
    (lambda p: _run(p / "old", _config(init=None), []), "made before gram logged drift"),
])
def test_bad_input_is_a_clear_error(tmp_path, capsys, make, message):
    target = tmp_path / "target"
    make(target)
    with pytest.raises(GramError, match=message):
        report([target])
    assert main(["drift", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gram: error:") and message in err and len(err.strip().splitlines()) == 1


def test_a_real_tiny_run_logs_its_distance_from_init_and_a_biased_regulator_drifts(tiny_clip_dir, tmp_path, capsys):
    """gram fewshot from a GRAM checkpoint whose literal R_phi* has a bias (beta = tanh(0.5) per value), with and
    without it: the logged drift is ||prompts - theta*||, and the verdict says the biased R_phi* drifted."""
    theta = build_method("coop", load_backbone(f"hf:{tiny_clip_dir}")).init_params(torch.Generator().manual_seed(3))
    phi = init_regulator(theta, RegulatorConfig(form="literal"))
    phi["text_ctx.b_beta"].fill_(0.5)  # the paper form's non-vanishing bias, exaggerated
    ckpt = tmp_path / "meta" / "gram.safetensors"
    save_gram(ckpt, theta, phi, {"method": "coop", "regulator": RegulatorConfig(form="literal").metadata()})
    runs = tmp_path / "runs"
    for label, extra in (("coop+gram", []), ("coop+gram-theta", ["--no-regulator"])):
        code = main(["fewshot", "--backbone", f"hf:{tiny_clip_dir}", "--method", "coop", "--dataset", "digits",
                     "--shots", "2", "--seed", "1", "--epochs", "3", "--batch-size", "4", "--lr", "0.05",
                     "--max-test-per-class", "2", "--label", label, "--init", str(ckpt), *extra,
                     "--out", str(runs / label)])
        assert code == 0
    capsys.readouterr()
    for label in ("coop+gram", "coop+gram-theta"):
        (run,) = find_runs([runs / label])
        tuned = load_prompts(runs / label)[0]["text_ctx"]
        by_hand = math.sqrt(((tuned.double() - theta["text_ctx"].double()) ** 2).sum().item())
        assert sorted(run.drifts) == [1, 2, 3] and run.drifts[3] == pytest.approx(by_hand, rel=1e-5)
    assert main(["drift", str(runs)]) == 1
    out = capsys.readouterr().out
    assert "theta* + R_phi* (literal)" in out and "theta* only" in out
    assert "coop+gram vs coop+gram-theta (epoch 3)" in out and "R_phi* drifted" in out
