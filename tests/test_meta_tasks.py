"""Task sampler invariants: one support domain per class, queries over all domains, disjoint sets."""
from __future__ import annotations

import numpy as np
import pytest

from gramprompt.meta.tasks import TaskConfig, TaskSampler


def fabricated(sizes):
    """Items with topic t and domain d, sizes[t][d] of each; returns topic, domain arrays."""
    topic, domain = [], []
    for t, per_domain in enumerate(sizes):
        for d, n in enumerate(per_domain):
            topic += [t] * n
            domain += [d] * n
    return np.array(topic), np.array(domain)


SIZES = [[10, 8, 6], [12, 12, 3], [9, 9, 9], [20, 5, 5], [7, 7, 7], [3, 2, 1], [30, 0, 0]]
NAMES = [f"topic{t}" for t in range(len(SIZES))]


def test_task_invariants():
    topic, domain = fabricated(SIZES)
    sampler = TaskSampler(topic, domain, NAMES, TaskConfig(ways=4, support_shots=4, query_shots=6))
    assert sampler.skipped == {"too_small_topics": 1}  # topic 5 has 6 items < 4 + 6
    rng = np.random.default_rng(0)
    for _ in range(50):
        task = sampler.sample(rng)
        assert len(set(task.topics.tolist())) == 4 and 5 not in task.topics
        assert task.classnames == [NAMES[t] for t in task.topics]
        assert not set(task.support.tolist()) & set(task.query.tolist())
        assert np.bincount(task.support_labels).tolist() == [4] * 4
        assert np.bincount(task.query_labels).tolist() == [6] * 4
        for k, t in enumerate(task.topics):
            s, q = task.support[task.support_labels == k], task.query[task.query_labels == k]
            assert (topic[s] == t).all() and (topic[q] == t).all()
            assert len(set(domain[s].tolist())) == 1  # ONE domain per class
            present = {d for d, n in enumerate(SIZES[t]) if n > 0}
            assert set(domain[q].tolist()) == present  # queries span every domain of the topic


def test_queries_are_balanced_over_domains():
    topic, domain = fabricated([[40, 4, 4], [40, 4, 4]])
    sampler = TaskSampler(topic, domain, ["a", "b"], TaskConfig(ways=2, support_shots=2, query_shots=6))
    task = sampler.sample(np.random.default_rng(3))
    for k in range(2):
        q = task.query[task.query_labels == k]
        counts = np.bincount(domain[q], minlength=3)
        assert counts.min() >= 1 and counts.max() <= 4  # not 6 from the big domain


def test_same_seed_same_tasks():
    topic, domain = fabricated(SIZES)
    sampler = TaskSampler(topic, domain, NAMES, TaskConfig(ways=3))
    a = [sampler.sample(np.random.default_rng(7)) for _ in range(2)]
    assert np.array_equal(a[0].support, a[1].support) and np.array_equal(a[0].query, a[1].query)
    other = sampler.sample(np.random.default_rng(8))
    assert not np.array_equal(a[0].query, other.query)


def test_no_domain_shift_ablation_mixes_support_domains():
    topic, domain = fabricated([[10, 10, 10]] * 3)
    sampler = TaskSampler(topic, domain, NAMES[:3], TaskConfig(ways=3, support_shots=6, domain_shift=False))
    rng = np.random.default_rng(0)
    mixed = [len(set(domain[t.support[t.support_labels == 0]].tolist())) > 1 for t in
             (sampler.sample(rng) for _ in range(20))]
    assert sum(mixed) >= 18


def test_supervised_tasks_and_clear_errors():
    labels = np.repeat(np.arange(5), 12)
    sampler = TaskSampler.supervised(labels, list("abcde"), TaskConfig(ways=5, support_shots=4, query_shots=8))
    task = sampler.sample(np.random.default_rng(0))
    assert sorted(task.classnames) == list("abcde")
    assert (labels[task.support] == task.topics[task.support_labels]).all()
    with pytest.raises(ValueError, match="only 5 topics"):
        TaskSampler.supervised(labels, list("abcde"), TaskConfig(ways=6))
    with pytest.raises(ValueError, match="ways"):
        TaskConfig(ways=1)


def test_pretraining_images_are_labelled_over_every_usable_topic():
    topic, domain = fabricated(SIZES)
    sampler = TaskSampler(topic, domain, NAMES, TaskConfig(ways=4, support_shots=4, query_shots=6))
    usable = [t for t in range(len(SIZES)) if t != 5]  # topic 5 is too small for a task, so it is left out
    assert sampler.classnames == [NAMES[t] for t in usable]
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(20):
        batch = sampler.sample_images(rng, 30)
        assert batch.classnames == sampler.classnames and len(set(batch.rows.tolist())) == 30
        assert [batch.classnames[k] for k in batch.labels] == [NAMES[t] for t in topic[batch.rows]]
        seen |= set(topic[batch.rows].tolist())
    assert seen == set(usable)
    everything = sampler.sample_images(rng, 10_000)  # capped at every image, each once
    assert sorted(everything.rows.tolist()) == np.flatnonzero(topic != 5).tolist()
    again = sampler.sample_images(np.random.default_rng(0), 30)
    assert np.array_equal(again.rows, sampler.sample_images(np.random.default_rng(0), 30).rows)


def test_supervised_classes_get_visual_domains_and_one_support_domain_per_class():
    """The "- CHC" source keeps the domain shift: k-means domains inside each class (CHC's domain stage)."""
    from gramprompt.chc.config import DomainConfig
    from gramprompt.meta.run import class_domains

    rng = np.random.default_rng(0)
    classes, looks, per = 4, 3, 12  # every class is photographed in 3 planted looks
    labels = np.repeat(np.arange(classes), looks * per)
    look = np.tile(np.repeat(np.arange(looks), per), classes)
    centres = rng.normal(size=(classes, looks, 16)) * 5
    feats = centres[labels, look] + 0.1 * rng.normal(size=(len(labels), 16))
    domain = class_domains(feats, labels, DomainConfig(domains=3, min_domain_size=5), seed=0)
    for c in range(classes):  # the planted looks are found again (up to renumbering)
        mine = labels == c
        assert len(set(domain[mine].tolist())) == 3
        assert len({(a, b) for a, b in zip(look[mine], domain[mine])}) == 3
    assert np.array_equal(domain, class_domains(feats, labels, DomainConfig(domains=3, min_domain_size=5), seed=0))
    names = list("abcd")
    sampler = TaskSampler.supervised(labels, names, TaskConfig(ways=3, support_shots=4, query_shots=6), domain)
    for _ in range(20):
        task = sampler.sample(rng)
        for k in range(3):
            s, q = task.support[task.support_labels == k], task.query[task.query_labels == k]
            assert len(set(domain[s].tolist())) == 1  # ONE domain per class in the support set ...
            assert len(set(domain[q].tolist())) == 3  # ... queries from all of them
    flat = TaskSampler.supervised(labels, names, TaskConfig(ways=3))  # without domains: one per class
    assert all(len(parts) == 1 for parts in flat.domains.values())
