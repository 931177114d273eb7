"""Inputs at CC3M scale: images read from WebDataset tars by offset, and a bounded image cache for meta-training."""
from __future__ import annotations

import io
import tarfile
import time

import numpy as np
import torch
from PIL import Image

from gramprompt.backbones import load_backbone
from gramprompt.data.images import ImageLoadError
from gramprompt.data.pairs import load_pair_image
from gramprompt.meta.inputs import ImageInputs


def _png(colour: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((6, 6, 3), colour, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_tar_members_are_read_by_offset_and_a_rewritten_tar_is_reindexed(tmp_path):
    shard = tmp_path / "00000.tar"
    _tar(shard, {f"{i:05d}.png": _png(10 * i) for i in range(20)} | {"00003.txt": b"a caption"})
    for i in (0, 7, 19):
        assert np.asarray(load_pair_image(f"{shard}#{i:05d}.png"))[0, 0, 0] == 10 * i
    try:
        load_pair_image(f"{shard}#missing.png")
        raise AssertionError("a missing member must raise")
    except ImageLoadError as err:
        assert "missing.png" in str(err)
    time.sleep(0.01)
    _tar(shard, {"00007.png": _png(200)})  # same name, new content: the cached index must not be reused
    assert np.asarray(load_pair_image(f"{shard}#00007.png"))[0, 0, 0] == 200


def test_image_cache_is_bounded_and_gives_the_uncached_values(tiny_clip_dir, tmp_path):
    backbone = load_backbone(f"hf:{tiny_clip_dir}")
    sources = []
    for i in range(12):
        sources.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(np.full((20, 20, 3), 20 * i, np.uint8)).save(sources[-1])
    reference = ImageInputs(backbone, sources)  # 4 GiB: everything stays
    one = reference.batch(np.arange(12)).pixels
    per_image = one[0].nbytes
    small = ImageInputs(backbone, sources, cache_bytes=3 * per_image)
    rng = np.random.default_rng(0)
    for _ in range(10):
        rows = rng.integers(0, 12, 5)
        torch.testing.assert_close(small.batch(rows).pixels, one[torch.from_numpy(rows)], rtol=0, atol=0)
        assert len(small._cache) <= 3
    assert len(reference._cache) == 12
    assert small.batch(np.array([1])).pixels.device == backbone.device
