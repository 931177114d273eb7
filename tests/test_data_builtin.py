"""The bundled sklearn digits dataset."""
from __future__ import annotations

import numpy as np

from gramprompt.data.builtin import BUILTIN_DATASETS, load_digits_dataset
from gramprompt.data.images import load_image


def test_digits_dataset() -> None:
    ds = load_digits_dataset()
    assert ds.name == "digits"
    assert ds.classnames == ["zero", "one", "two", "three", "four",
                             "five", "six", "seven", "eight", "nine"]
    # 1797 images, 30% test: ceil(539.1) = 540 test.
    assert (len(ds.train), len(ds.test), ds.val) == (1257, 540, [])
    assert {s.label for s in ds.test} == set(range(10))
    for s in ds.train[:20]:
        assert isinstance(s.source, np.ndarray)
        assert s.source.dtype == np.uint8 and s.source.shape == (8, 8)
    assert max(int(s.source.max()) for s in ds.train) == 255  # 16 -> 255
    assert load_image(ds.train[0].source).size == (8, 8)


def test_digits_pixel_scaling_hand_computed() -> None:
    # The first sklearn digit is a zero whose top row is 0 0 5 13 9 1 0 0:
    # 5 * 255/16 = 79.69 -> 80, 13 -> 207.19 -> 207, 9 -> 143.44 -> 143, 1 -> 15.94 -> 16.
    ds = load_digits_dataset(test_fraction=0.3, seed=0)
    top_row = [0, 0, 80, 207, 143, 16, 0, 0]
    zeros = [s for s in ds.train + ds.test if s.label == 0]
    assert any(s.source[0].tolist() == top_row for s in zeros)


def test_digits_seeded() -> None:
    a, b, c = load_digits_dataset(seed=0), load_digits_dataset(seed=0), load_digits_dataset(seed=1)
    assert [s.label for s in a.test] == [s.label for s in b.test]
    assert all(np.array_equal(x.source, y.source) for x, y in zip(a.test, b.test))
    assert not all(np.array_equal(x.source, y.source) for x, y in zip(a.test, c.test))
    assert len(load_digits_dataset(test_fraction=0.5).test) == 899


def test_registry_of_builtins() -> None:
    assert BUILTIN_DATASETS["digits"]().name == "digits"
