"""Table 6's meta-training ablations end to end through ``meta_train``: "- meta-learning" pre-trains
over all topics and leaves no regulator; "- CHC" keeps visual domains inside the labelled classes.
Both record what they did, so a folder made by the former versions is never resumed as theirs."""
from __future__ import annotations

import pytest
import yaml

from gramprompt.backbones import load_backbone
from gramprompt.chc.config import DomainConfig
from gramprompt.errors import GramError
from gramprompt.meta.checkpoint import load_gram, regulated_grad_transform
from gramprompt.meta.run import meta_train, supervised_tasks
from gramprompt.meta.tasks import TaskConfig
from gramprompt.meta.trainer import MetaConfig
from gramprompt.prompts import build_method

from test_meta_cli import small_hierarchy

TASKS = TaskConfig(ways=3, support_shots=2, query_shots=2)


def test_pretraining_over_all_topics_records_itself_and_refuses_a_former_folder(tiny_clip_dir, tmp_path):
    backbone = load_backbone(f"hf:{tiny_clip_dir}")
    small_hierarchy(tmp_path, backbone.embed_dim)
    cfg = MetaConfig(mode="pretrain", iterations=2, task_batch=2, tasks=TASKS)
    path, state = meta_train(tmp_path / "h", backbone, "coop", tmp_path / "pre", cfg)
    theta, phi, info = load_gram(path)
    assert phi == {} and state.phi == {} and regulated_grad_transform(path) is None
    assert info["pretrain"] == {"classes": 6, "batch": 2 * 3 * 4}  # every topic; a meta-batch's images
    config = tmp_path / "pre" / "config.yaml"
    former = yaml.safe_load(config.read_text())
    del former["pretrain"]  # as written before pre-training classified over all topics
    config.write_text(yaml.safe_dump(former, sort_keys=False))
    with pytest.raises(GramError, match="pretrain"):
        meta_train(tmp_path / "h", backbone, "coop", tmp_path / "pre", cfg)


def test_supervised_meta_training_keeps_the_domain_shift(tiny_clip_dir, tmp_path):
    backbone = load_backbone(f"hf:{tiny_clip_dir}")
    cfg = MetaConfig(iterations=1, task_batch=1, tasks=TASKS)
    path, _ = meta_train("digits", backbone, "coop", tmp_path / "sup", cfg, supervised=True)
    info = load_gram(path)[2]
    assert info["class_domains"] == {"domains": 3, "min_domain_size": 5, "batch_size": 1024, "n_init": 3}
    assert info["class_domains"] == vars(DomainConfig())  # CHC's domain stage, its defaults
    sampler, _ = supervised_tasks(build_method("coop", backbone), "digits", cfg)
    assert all(len(parts) == 3 for parts in sampler.domains.values())  # ~100 images a class: U = 3 domains
    off = MetaConfig(iterations=1, task_batch=1, tasks=TaskConfig(ways=3, support_shots=2, query_shots=2,
                                                                   domain_shift=False))
    path, _ = meta_train("digits", backbone, "coop", tmp_path / "flat", off, supervised=True)
    assert load_gram(path)[2]["class_domains"] is None
