"""Image loading and preprocessing against hand-computed values."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gramprompt.data.images import (
    CLIP_MEAN,
    CLIP_STD,
    ImageLoadError,
    ImageTransform,
    load_batch,
    load_image,
    random_resized_crop_params,
)

MEAN = (0.5, 0.25, 0.0)
STD = (0.5, 0.25, 1.0)


def _save(path: Path, arr: np.ndarray) -> str:
    Image.fromarray(arr).save(path)
    return str(path)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_load_image_grey_array_becomes_rgb() -> None:
    img = load_image(np.full((4, 6), 7, dtype=np.uint8))
    assert img.mode == "RGB" and img.size == (6, 4)
    assert np.asarray(img)[0, 0].tolist() == [7, 7, 7]


def test_load_image_path_roundtrip(tmp_path: Path) -> None:
    arr = np.zeros((5, 3, 3), dtype=np.uint8)
    arr[..., 1] = 200
    img = load_image(_save(tmp_path / "a.png", arr))
    assert img.mode == "RGB" and img.size == (3, 5)
    assert np.array_equal(np.asarray(img), arr)


def test_load_image_composites_transparency_on_white(tmp_path: Path) -> None:
    # Fully transparent pixels store black; half-transparent red over white is
    # 255, 255 - 0.5 * 255 ~= 128, 128 (Pillow's integer blend may round either way).
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)
    rgba[0, 1] = (255, 0, 0, 128)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = np.asarray(load_image(tmp_path / "rgba.png")).astype(int)
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1, 0] == 255 and abs(out[0, 1, 1] - 127) <= 1 and abs(out[0, 1, 2] - 127) <= 1
    assert out[1].tolist() == [[255, 255, 255]] * 2

    la = np.zeros((1, 2, 2), dtype=np.uint8)
    la[0, 0] = (40, 255)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert np.asarray(load_image(tmp_path / "la.png")).tolist() == [[[40] * 3, [255] * 3]]

    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 0, 0, 200] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png", transparency=0)
    img = load_image(tmp_path / "p.png")
    assert img.mode == "RGB" and np.asarray(img).tolist() == [[[255] * 3, [0, 0, 200]]]

    grey = Image.fromarray(np.array([[0, 90]], dtype=np.uint8), "L")
    grey.save(tmp_path / "l.png", transparency=0)
    assert np.asarray(load_image(tmp_path / "l.png")).tolist() == [[[255] * 3, [90] * 3]]


def test_load_image_opaque_palette_unchanged(tmp_path: Path) -> None:
    pal = Image.new("P", (1, 1))
    pal.putpalette([0, 0, 0] + [0] * 765)
    pal.save(tmp_path / "p.png")  # no transparency key: black stays black
    assert np.asarray(load_image(tmp_path / "p.png")).tolist() == [[[0, 0, 0]]]


def test_load_image_scales_16bit_grey_png(tmp_path: Path) -> None:
    # round(v / 257): 128 -> 0.498 -> 0, 129 -> 0.502 -> 1, 32767 -> 127.498, 32768 -> 127.502
    values = np.array([[0, 128, 129], [32767, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as raw:
        assert raw.mode.startswith("I")  # really stored and read as 16-bit
    out = np.asarray(load_image(tmp_path / "g16.png"))
    assert out[..., 0].tolist() == [[0, 0, 1], [127, 128, 255]]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()


def _with_orientation(path: Path, orientation: int, fmt: str) -> None:
    """A 3 x 2 (w x h) grey image [[10, 20, 30], [40, 50, 60]] stored unrotated plus an EXIF tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = np.array([[10, 20, 30], [40, 50, 60]], dtype=np.uint8)
    Image.fromarray(stored).save(path, format=fmt, exif=exif)


@pytest.mark.parametrize("orientation, shown", [
    (6, [[40, 10], [50, 20], [60, 30]]),  # 6: turn 90 degrees clockwise to display
    (8, [[30, 60], [20, 50], [10, 40]]),  # 8: turn 90 degrees counter-clockwise
])
def test_load_image_applies_exif_orientation(tmp_path: Path, orientation: int, shown: list) -> None:
    _with_orientation(tmp_path / "o.png", orientation, "PNG")
    img = load_image(tmp_path / "o.png")
    assert img.size == (2, 3)
    assert np.asarray(img)[..., 0].tolist() == shown


def test_load_image_rotates_exif_jpeg(tmp_path: Path) -> None:
    _with_orientation(tmp_path / "o.jpg", 6, "JPEG")
    assert load_image(tmp_path / "o.jpg").size == (2, 3)


def test_load_image_rejects_bad_arrays() -> None:
    with pytest.raises(TypeError):
        load_image(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError):
        load_image(np.zeros((4, 4, 2), dtype=np.uint8))


def test_corrupt_missing_and_truncated_files_raise(tmp_path: Path) -> None:
    garbage = tmp_path / "x.jpg"
    garbage.write_bytes(b"definitely not a jpeg" * 10)
    with pytest.raises(ImageLoadError, match="x.jpg"):
        load_image(garbage)
    with pytest.raises(ImageLoadError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    rng = np.random.default_rng(0)
    good = _save(tmp_path / "t.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = Path(good).read_bytes()
    Path(good).write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="t.png"):
        load_image(good)
    assert issubclass(ImageLoadError, ValueError)


def test_eval_constant_colour_hand_computed() -> None:
    img = Image.new("RGB", (20, 13), (255, 51, 0))
    out = ImageTransform(size=8, mean=MEAN, std=STD).eval(img)
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32
    # (255/255 - 0.5)/0.5 = 1 ; (51/255 - 0.25)/0.25 = -0.2 ; (0 - 0)/1 = 0
    expected = torch.tensor([1.0, -0.2, 0.0]).view(3, 1, 1).expand(3, 8, 8)
    assert torch.allclose(out, expected, atol=1e-6)


def test_eval_center_crops_the_long_side() -> None:
    # 30x10 image of three 10-column stripes; shorter side already 10, so no resize:
    # the centre 10x10 crop is exactly the middle (green) stripe.
    arr = np.zeros((10, 30, 3), dtype=np.uint8)
    arr[:, :10, 0] = 255
    arr[:, 10:20, 1] = 255
    arr[:, 20:, 2] = 255
    out = ImageTransform(size=10, mean=(0, 0, 0), std=(1, 1, 1)).eval(Image.fromarray(arr))
    assert torch.equal(out[1], torch.ones(10, 10))
    assert torch.equal(out[0], torch.zeros(10, 10)) and torch.equal(out[2], torch.zeros(10, 10))
    # Portrait: rows instead of columns.
    out_t = ImageTransform(size=10, mean=(0, 0, 0), std=(1, 1, 1)).eval(
        Image.fromarray(np.ascontiguousarray(arr.transpose(1, 0, 2)))
    )
    assert torch.equal(out_t[1], torch.ones(10, 10))


def test_default_normalisation_is_clip() -> None:
    t = ImageTransform(size=4)
    assert t.mean == CLIP_MEAN and t.std == CLIP_STD
    assert t.scale == (0.08, 1.0) and t.ratio == (3 / 4, 4 / 3) and t.flip_p == 0.5
    out = t.eval(Image.new("RGB", (4, 4), (0, 0, 0)))
    assert torch.allclose(out[:, 0, 0], -torch.tensor(CLIP_MEAN) / torch.tensor(CLIP_STD))


def test_transform_validates_fields() -> None:
    with pytest.raises(ValueError):
        ImageTransform(size=0)
    with pytest.raises(ValueError):
        ImageTransform(size=4, scale=(0.5, 0.1))
    with pytest.raises(ValueError):
        ImageTransform(size=4, flip_p=1.5)


def test_train_deterministic_per_seed() -> None:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    t = ImageTransform(size=16, mean=MEAN, std=STD)
    a, b = t.train(img, _gen(3)), t.train(img, _gen(3))
    c = t.train(img, _gen(4))
    assert a.shape == (3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_train_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ImageTransform(size=8).train(Image.new("RGB", (20, 20)), _gen(0))
    assert torch.equal(torch.rand(3), expected)


def test_train_flip_happens() -> None:
    # Left half black, right half white; the crop covers the whole image (scale 1, ratio
    # equal to the image's), so the only change is the flip.
    arr = np.zeros((8, 8, 3), dtype=np.uint8)
    arr[:, 4:] = 255
    img = Image.fromarray(arr)
    kwargs = dict(size=8, mean=(0, 0, 0), std=(1, 1, 1), scale=(1.0, 1.0), ratio=(1.0, 1.0))

    def flipped(t: ImageTransform, seed: int) -> bool:
        out = t.train(img, _gen(seed))
        return bool(out[0, 0, 0] > out[0, 0, -1])

    half = ImageTransform(**kwargs)
    results = {flipped(half, s) for s in range(20)}
    assert results == {True, False}
    assert not any(flipped(ImageTransform(**kwargs, flip_p=0.0), s) for s in range(10))
    assert all(flipped(ImageTransform(**kwargs, flip_p=1.0), s) for s in range(10))


def test_crop_params_within_bounds_and_scale() -> None:
    g = _gen(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_params(100, 60, (0.08, 1.0), (3 / 4, 4 / 3), g)
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 100
        assert 0 < h and 0 < w
        assert w * h >= 0.08 * 6000 * 0.9  # rounding slack


def test_crop_params_fallback_hand_computed() -> None:
    # A 100x1 strip: every sampled box is at least 2 pixels high, so all 10 attempts miss.
    # Fallback: image ratio 100 > 4/3 -> h = 1, w = round(1 * 4/3) = 1, centred: left = 49.
    assert random_resized_crop_params(100, 1, (0.08, 1.0), (3 / 4, 4 / 3), _gen(0)) == (0, 49, 1, 1)
    # Tall strip 1x100: ratio 0.01 < 3/4 -> w = 1, h = round(1 / 0.75) = 1, top = 49.
    assert random_resized_crop_params(1, 100, (0.08, 1.0), (3 / 4, 4 / 3), _gen(0)) == (49, 0, 1, 1)


def test_load_batch_skips_bad_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good1 = _save(tmp_path / "g1.png", np.full((6, 6, 3), 10, dtype=np.uint8))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00garbage")
    good2 = np.full((6, 6), 20, dtype=np.uint8)
    missing = str(tmp_path / "nope.png")
    t = ImageTransform(size=4, mean=(0, 0, 0), std=(1, 1, 1))
    with caplog.at_level(logging.WARNING, logger="gramprompt.data.images"):
        batch, kept = load_batch([good1, str(bad), good2, missing], t.eval)
    assert kept == [0, 2]
    assert batch is not None and batch.shape == (2, 3, 4, 4)
    assert torch.allclose(batch[0], torch.full((3, 4, 4), 10 / 255))
    assert torch.allclose(batch[1], torch.full((3, 4, 4), 20 / 255))
    [record] = [r for r in caplog.records if r.name == "gramprompt.data.images"]
    assert record.levelno == logging.WARNING
    assert "skipped 2 " in record.getMessage() and "bad.jpg" in record.getMessage()


def test_load_batch_all_bad(tmp_path: Path) -> None:
    batch, kept = load_batch([str(tmp_path / "a.png")], ImageTransform(size=4).eval)
    assert batch is None and kept == []
