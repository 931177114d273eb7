"""Seeded split functions: base/new, few-shot, stratified, validation shots."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from gramprompt.data.dataset import ClassificationDataset, Sample
from gramprompt.data.splits import (
    NotEnoughShotsError,
    base_new_split,
    few_shot,
    grouped_split,
    stratified_split,
)


def _samples(per_class: dict[int, int]) -> list[Sample]:
    """Sources are unique strings 'c<label>_<i>' so selections can be compared."""
    return [Sample(f"c{label}_{i}", label) for label, n in per_class.items() for i in range(n)]


def _dataset(num_classes: int, per_class: int = 2) -> ClassificationDataset:
    counts = {c: per_class for c in range(num_classes)}
    return ClassificationDataset(
        name="fake",
        classnames=[f"class{c}" for c in range(num_classes)],
        train=_samples(counts),
        test=_samples(counts),
        val=_samples({c: 1 for c in range(num_classes)}),
    )


PAPER_BASE_NEW = {
    "ImageNet": (1000, 500, 500),
    "Caltech101": (100, 50, 50),
    "OxfordPets": (37, 19, 18),
    "StanfordCars": (196, 98, 98),
    "Flowers102": (102, 51, 51),
    "Food101": (101, 51, 50),
    "FGVCAircraft": (100, 50, 50),
    "SUN397": (397, 199, 198),
    "DTD": (47, 24, 23),
    "EuroSAT": (10, 5, 5),
    "UCF101": (101, 51, 50),
}


@pytest.mark.parametrize("name", sorted(PAPER_BASE_NEW))
def test_base_new_counts_match_paper(name: str) -> None:
    total, n_base, n_new = PAPER_BASE_NEW[name]
    base, new = base_new_split(_dataset(total, per_class=1))
    assert (base.num_classes, new.num_classes) == (n_base, n_new)
    assert len(base.train) == n_base and len(new.test) == n_new


def test_base_new_relabels_and_keeps_input() -> None:
    ds = ClassificationDataset(
        name="toy",
        classnames=["a", "b", "c", "d", "e"],
        train=[Sample("t4", 4), Sample("t0", 0), Sample("t3", 3), Sample("t2", 2), Sample("t1", 1)],
        test=[Sample("s3", 3), Sample("s2", 2)],
        val=[Sample("v1", 1), Sample("v4", 4)],
    )
    before = (list(ds.train), list(ds.test), list(ds.val), list(ds.classnames))
    base, new = base_new_split(ds)
    # ceil(5/2) = 3 base classes a, b, c (labels 0..2); new d, e relabelled 3->0, 4->1.
    assert base.classnames == ["a", "b", "c"] and new.classnames == ["d", "e"]
    assert base.train == [Sample("t0", 0), Sample("t2", 2), Sample("t1", 1)]
    assert new.train == [Sample("t4", 1), Sample("t3", 0)]
    assert base.test == [Sample("s2", 2)] and new.test == [Sample("s3", 0)]
    assert base.val == [Sample("v1", 1)] and new.val == [Sample("v4", 1)]
    assert base.name == new.name == "toy"
    assert (ds.train, ds.test, ds.val, ds.classnames) == before


def test_few_shot_same_seed_same_selection() -> None:
    samples = _samples({0: 20, 1: 20, 2: 20})
    a = few_shot(samples, 4, seed=1)
    assert a == few_shot(samples, 4, seed=1)
    assert a != few_shot(samples, 4, seed=2)


def test_few_shot_counts_and_order() -> None:
    samples = _samples({2: 10, 0: 7, 1: 5})
    picked = few_shot(samples, 3, seed=0)
    assert [s.label for s in picked] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len(set(s.source for s in picked)) == 9
    for label in (0, 1, 2):  # within a class, input order is kept
        idx = [int(str(s.source).split("_")[1]) for s in picked if s.label == label]
        assert idx == sorted(idx)


def test_few_shot_matches_default_rng_draws() -> None:
    # Independent truth: same generator, classes visited in sorted order.
    samples = _samples({1: 6, 0: 5})
    rng = np.random.default_rng(7)
    want0 = sorted(rng.choice(5, size=2, replace=False))
    want1 = sorted(rng.choice(6, size=2, replace=False))
    expected = [Sample(f"c0_{i}", 0) for i in want0] + [Sample(f"c1_{i}", 1) for i in want1]
    assert few_shot(samples, 2, seed=7) == expected


def test_few_shot_all_samples_when_shots_equal_count() -> None:
    samples = _samples({0: 3, 1: 3})
    assert few_shot(samples, 3, seed=5) == samples


def test_not_enough_shots_error_message() -> None:
    samples = _samples({0: 16, 1: 2, 2: 16})
    with pytest.raises(NotEnoughShotsError, match=r"class 1 has 2 sample\(s\) but 16 shot") as info:
        few_shot(samples, 16, seed=0)
    assert (info.value.label, info.value.available, info.value.requested) == (1, 2, 16)
    assert isinstance(info.value, ValueError)


def test_allow_fewer_takes_all() -> None:
    samples = _samples({0: 16, 1: 2})
    picked = few_shot(samples, 4, seed=0, allow_fewer=True)
    assert [s.label for s in picked].count(0) == 4
    assert [s for s in picked if s.label == 1] == [Sample("c1_0", 1), Sample("c1_1", 1)]


def test_empty_class_is_an_error_even_with_allow_fewer() -> None:
    samples = _samples({0: 5, 2: 5})  # label 1 has nothing
    for allow in (False, True):
        with pytest.raises(NotEnoughShotsError, match="class 1 has 0"):
            few_shot(samples, 2, seed=0, allow_fewer=allow)
    with pytest.raises(NotEnoughShotsError, match=r"class 'd' \(label 3\) has 0"):
        few_shot(samples + _samples({1: 5}), 2, seed=0, classnames=list("abcd"))


def test_few_shot_rejects_bad_shots() -> None:
    with pytest.raises(ValueError):
        few_shot(_samples({0: 3}), 0, seed=0)
    assert few_shot([], 2, seed=0) == []


def test_stratified_split_counts_and_determinism() -> None:
    samples = _samples({0: 10, 1: 20})
    train, test = stratified_split(samples, seed=3)
    # 30% of 30 = 9 test samples, stratified: 3 of class 0, 6 of class 1.
    assert len(test) == 9 and len(train) == 21
    assert [s.label for s in test].count(0) == 3
    assert sorted(map(str, (s.source for s in train + test))) == sorted(
        map(str, (s.source for s in samples))
    )
    assert (train, test) == stratified_split(samples, seed=3)
    assert test != stratified_split(samples, seed=4)[1]
    _, test_half = stratified_split(samples, test_fraction=0.5, seed=0)
    assert len(test_half) == 15


def test_stratified_split_needs_two_per_class() -> None:
    with pytest.raises(ValueError, match=r"\[1\]"):
        stratified_split(_samples({0: 5, 1: 1}))


def test_validation_view_holds_out_part_of_train_never_test():
    from gramprompt.data.registry import load_dataset, spec_name
    from gramprompt.prompts import template_for

    full = load_dataset("digits")
    val = load_dataset("val:digits")
    key = lambda s: s.source.tobytes()  # noqa: E731 (digits are in-memory arrays)
    train, test = {key(s) for s in full.train}, {key(s) for s in full.test}
    val_train, val_test = [key(s) for s in val.train], [key(s) for s in val.test]
    assert set(val_test) <= train and not set(val_test) & test  # chosen on train images only
    assert not set(val_train) & set(val_test) and set(val_train) | set(val_test) == train
    assert abs(len(val_test) - 0.3 * len(full.train)) <= 1
    assert {s.label for s in val.test} == set(range(10)) and val.classnames == full.classnames
    assert val.name == spec_name("val:digits") == "digits@val"
    assert template_for("emoji-groups@val") == template_for("emoji-groups") == "an emoji of {}."
    again = load_dataset("val:digits")
    assert [key(s) for s in again.test] == val_test  # seeded: the same view every time


def test_validation_view_uses_a_shipped_val_split():
    from gramprompt.data.dataset import ClassificationDataset, Sample
    from gramprompt.data.splits import validation_view

    ds = ClassificationDataset("x", ["a", "b"], [Sample("t0", 0), Sample("t1", 1)], [Sample("z", 0)],
                               val=[Sample("v0", 0), Sample("v1", 1)])
    view = validation_view(ds)
    assert [s.source for s in view.test] == ["v0", "v1"] and [s.source for s in view.train] == ["t0", "t1"]


def test_validation_spec_of_a_validation_spec_is_refused():
    import pytest

    from gramprompt.data.dataset import DatasetError
    from gramprompt.data.registry import parse_spec

    with pytest.raises(DatasetError, match="validation view of a validation view"):
        parse_spec("val:val:digits")
    assert parse_spec("val:digits") == ("val", ("digits",))


def test_grouped_split_keeps_groups_whole_within_the_budget() -> None:
    names = ["a", "b"]
    groups = [f"a/f{i // 3}" for i in range(30)] + [f"b/g{i}" for i in range(10)]
    samples = [Sample(f"x{i}.png", int(g.startswith("b/"))) for i, g in enumerate(groups)]
    train, test = grouped_split(samples, groups, names, 0.3, seed=0)
    assert sorted(s.source for s in train + test) == sorted(s.source for s in samples)
    group_of = {s.source: g for s, g in zip(samples, groups)}
    assert not {group_of[s.source] for s in train} & {group_of[s.source] for s in test}
    assert Counter(s.label for s in test) == {0: 9, 1: 3}  # ceil(0.3 * n) images, whole groups
    assert test == [s for s in samples if s in test]  # input order kept
    assert (train, test) == grouped_split(samples, groups, names, 0.3, seed=0)
    assert test != grouped_split(samples, groups, names, 0.3, seed=1)[1]


def test_grouped_split_first_group_goes_even_over_budget_and_others_do_not_move_it() -> None:
    # class "a": one group of 5 images and four of 1; ceil(0.3 * 9) = 3 < 5
    groups = ["big"] * 5 + ["s1", "s2", "s3", "s4"]
    samples = [Sample(f"a{i}", 0) for i in range(9)]
    for seed in range(20):
        _, test = grouped_split(samples, groups, ["a"], 0.3, seed=seed)
        first = np.random.default_rng([seed, __import__("zlib").crc32(b"a")]).permutation(5)[0]
        assert (len(test) >= 5) == (first == 0)  # "big" (sorted first) is in test iff drawn first
        assert 1 <= len(test) <= 5
    # adding a class leaves class "a"'s draw as it was
    more = samples + [Sample(f"b{i}", 1) for i in range(4)]
    with_b = grouped_split(more, groups + ["t0", "t0", "t1", "t2"], ["a", "b"], 0.3, seed=3)[1]
    assert [s for s in with_b if s.label == 0] == grouped_split(samples, groups, ["a"], 0.3, seed=3)[1]


def test_grouped_split_refuses_a_one_group_class_and_a_bad_fraction() -> None:
    samples = [Sample("a", 0), Sample("b", 0), Sample("c", 1), Sample("d", 1)]
    with pytest.raises(ValueError, match="'x' has 1"):
        grouped_split(samples, [5, 5, 6, 7], ["x", "y"], 0.3, seed=0)
    with pytest.raises(ValueError, match="test_fraction"):
        grouped_split(samples, [1, 2, 3, 4], ["x", "y"], 1.0)


def test_samples_sha256_follows_contents_labels_and_order_not_paths(tmp_path) -> None:
    import shutil

    import numpy as np

    from gramprompt.data.dataset import Sample, samples_sha256

    (tmp_path / "a").mkdir()
    for i in range(2):
        (tmp_path / "a" / f"{i}.png").write_bytes(bytes([i]) * 10)
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # the same files elsewhere (another machine's install)
    files = lambda d, labels=(0, 1): [Sample(str(tmp_path / d / f"{i}.png"), lb) for i, lb in enumerate(labels)]  # noqa: E731
    digest = samples_sha256(files("a"))
    assert samples_sha256(files("b")) == digest
    assert samples_sha256(files("a", (1, 0))) != digest  # labels
    assert samples_sha256(files("a")[::-1]) != digest  # order
    (tmp_path / "b" / "1.png").write_bytes(b"\x02" * 10)
    assert samples_sha256(files("b")) != digest  # contents
    arrays = [Sample(np.zeros((2, 2), np.uint8), 0)]
    assert samples_sha256(arrays) != samples_sha256([Sample(np.zeros((2, 3), np.uint8), 0)])  # shape counts
    assert samples_sha256([Sample(b"\x00" * 10, 0), Sample(b"\x01" * 10, 1)]) == digest  # encoded bytes = file bytes
