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
