"""Whether visual domains follow a metadata field (e.g. an icon's set = its drawing style), against
hand-computed NMI values on a hand-made hierarchy."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from gramprompt.chc.report import domain_agreement


def _hierarchy(sets: list[str], topic: list[int], domain: list[int]):
    meta = [json.dumps({"set": s}) for s in sets]
    store = SimpleNamespace(column=lambda name: meta)
    topics = [SimpleNamespace(id=t) for t in sorted(set(topic) - {-1})]
    return SimpleNamespace(store=lambda: store, topics=topics, topic=np.asarray(topic), domain=np.asarray(domain),
                           rows=np.arange(len(sets)))


def test_domains_that_are_the_sets_score_one_and_unrelated_ones_zero():
    # topic 0: domains split exactly by set; topic 1: every domain holds both sets equally (NMI 0)
    sets = ["a", "a", "b", "b", "a", "b", "a", "b", "c"]
    topic = [0, 0, 0, 0, 1, 1, 1, 1, -1]
    domain = [0, 0, 1, 1, 0, 0, 1, 1, -1]
    score = domain_agreement(_hierarchy(sets, topic, domain), "set")
    assert score["topics"] == 2 and score["pairs"] == 8
    assert score["nmi"] == pytest.approx((4 * 1.0 + 4 * 0.0) / 8)
    assert 0.0 <= score["nmi_shuffled"] <= 1.0


def test_no_topic_with_two_domains_and_two_values_is_an_error():
    with pytest.raises(ValueError, match="no topic"):
        domain_agreement(_hierarchy(["a", "a"], [0, 0], [0, 1]), "set")
