"""Rasterizing Iconify icons on demand into a cache that CHC reads.

Icons are rendered in batches of at most ``CHUNK`` icons of one set, to one uncompressed tar of PNGs
per batch plus a JSON sidecar: each image's picture hash and pixel digest (its thumbnail in a
``.thumbs.npy`` beside it), and the icons that gave no image (blank, or a render error) with the
reason. The sidecar is written last and atomically, so it marks a finished batch; a set's rendered
icons are the union of its sidecars. Only icons no sidecar names are rendered: ``iconify:N`` renders
about the N icons it needs, a later larger corpus renders only what it adds, a killed run redoes only
unfinished batches, and every selection of sets shares the renders. Batches run in a process pool
with a progress bar.

The rasterizer is resvg (PyPI ``resvg-py``, Rust, no system library), chosen over CairoSVG and
PyMuPDF by ``benchmarks/bench_svg_render.py`` (speed and agreement on a seeded sample of icons).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from gramprompt.data.image_hash import THUMB, picture_hash, pixel_digest, thumbnail
from gramprompt.data.pairs.iconify import IconSet, read_set, set_icons

CHUNK = 1000
RENDER_VERSION = 5  # bump when the SVG built for an icon, the rendering or the cache layout changes


class RenderError(RuntimeError):
    pass


def _png_to_rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode in ("RGBA", "LA", "PA"):
            white = Image.new("RGBA", img.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")
        return img.convert("RGB")


def render_resvg(svg: str, size: int) -> Image.Image:
    import resvg_py

    try:
        data = resvg_py.svg_to_bytes(svg_string=svg, width=size, height=size, background="#ffffff",
                                     skip_system_fonts=True)
    except Exception as exc:  # the binding raises plain exceptions for unparseable SVG
        raise RenderError(str(exc)) from exc
    return _png_to_rgb(bytes(data))


def render_cairosvg(svg: str, size: int) -> Image.Image:
    import cairosvg

    try:
        data = cairosvg.svg2png(bytestring=svg.encode(), output_width=size, output_height=size,
                                background_color="white")
    except Exception as exc:
        raise RenderError(str(exc)) from exc
    return _png_to_rgb(data)


def render_pymupdf(svg: str, size: int) -> Image.Image:
    import pymupdf

    try:
        with pymupdf.open(stream=svg.encode(), filetype="svg") as doc:
            page = doc[0]
            pix = page.get_pixmap(matrix=pymupdf.Matrix(size / page.rect.width, size / page.rect.height), alpha=True)
            rgba = Image.frombytes("RGBA", (pix.width, pix.height), pix.samples)
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    except Exception as exc:
        raise RenderError(str(exc)) from exc
    return img if img.size == (size, size) else img.resize((size, size), Image.Resampling.BILINEAR)


RENDERERS: dict[str, Callable[[str, int], Image.Image]] = {
    "resvg": render_resvg, "cairosvg": render_cairosvg, "pymupdf": render_pymupdf,
}


def is_blank(image: Image.Image) -> bool:
    """Nothing drawn: every pixel the same colour."""
    lo, hi = zip(*image.getextrema()) if image.mode != "L" else ((image.getextrema()[0],), (image.getextrema()[1],))
    return lo == hi


@dataclass(frozen=True)
class RenderSpec:
    root: str
    size: int = 224
    renderer: str = "resvg"
    drop_style: bool = True

    def folder(self, cache: Path) -> Path:
        package = json.loads((Path(self.root) / "package.json").read_text()).get("version", "unknown") \
            if (Path(self.root) / "package.json").is_file() else "unknown"
        return cache / f"v{RENDER_VERSION}-{package}" / f"{self.renderer}-{self.size}"


def batch_paths(folder: Path, prefix: str, names: Sequence[str]) -> tuple[Path, Path]:
    """A batch's tar of PNGs and its sidecar (written last: the batch is finished when it exists),
    named by the icons it holds, so a rerun after a kill forms and finds the same batch."""
    digest = hashlib.sha1("\n".join(names).encode()).hexdigest()[:16]
    base = folder / prefix / digest
    return base.with_suffix(".tar"), base.with_suffix(".json")


def thumbs_path(sidecar: Path) -> Path:
    """The batch's ``image_hash.thumbnail`` rows, in sidecar order."""
    return sidecar.with_suffix(".thumbs.npy")


@lru_cache(maxsize=4)
def _set_icons(spec: RenderSpec, iconset: IconSet) -> dict[str, str]:
    """name -> SVG of every drawable icon of a set (one worker renders several batches of a set)."""
    data = read_set(Path(spec.root), iconset.prefix)
    return {icon.meta["name"]: icon.svg for icon in set_icons(data, iconset, spec.size, spec.drop_style)}


def render_batch(job: tuple[RenderSpec, IconSet, tuple[str, ...], str]) -> None:
    """Render the named icons of one set into ``folder`` unless their sidecar exists (what gave no image is
    recorded in the sidecar, and counted by the selection that walks it)."""
    spec, iconset, names, folder = job
    tar_path, side_path = batch_paths(Path(folder), iconset.prefix, names)
    if side_path.exists():
        return
    render = RENDERERS[spec.renderer]
    svgs = _set_icons(spec, iconset)
    side: dict[str, Any] = {"name": [], "hash": [], "digest": [], "skipped": {}}
    thumbs = []
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tar_path.with_suffix(".tar.tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name in names:
            try:
                img = render(svgs[name], spec.size)
            except RenderError:
                side["skipped"][name] = "render_error"
                continue
            if is_blank(img):
                side["skipped"][name] = "blank_render"
                continue
            buf = io.BytesIO()
            img.save(buf, format="PNG", compress_level=3)
            info = tarfile.TarInfo(f"{name}.png")
            info.size, info.mtime = buf.tell(), 0
            buf.seek(0)
            tar.addfile(info, buf)
            side["name"].append(name)
            side["hash"].append(f"{picture_hash(img):064x}")
            thumbs.append(thumbnail(img))
            side["digest"].append(pixel_digest(img))
    os.replace(tmp, tar_path)
    np.save(thumbs_path(side_path), np.asarray(thumbs, np.uint8).reshape(len(thumbs), THUMB * THUMB))
    side_tmp = side_path.with_suffix(".json.tmp")
    side_tmp.write_text(json.dumps(side))
    os.replace(side_tmp, side_path)


@dataclass
class Rendered:
    """One rendered icon: where its PNG is, its picture hash, pixel digest and thumbnail."""

    tar: str
    hash: str
    digest: str
    thumb: np.ndarray


def read_renders(folder: Path, prefix: str) -> tuple[dict[str, Rendered], dict[str, str]]:
    """Every finished batch of a set: name -> :class:`Rendered`, and name -> why it gave no image."""
    done: dict[str, Rendered] = {}
    skipped: dict[str, str] = {}
    for side_path in sorted((folder / prefix).glob("*.json")):
        side = json.loads(side_path.read_text())
        thumbs = np.load(thumbs_path(side_path))
        tar = str(side_path.with_suffix(".tar"))
        for name, ph, dg, th in zip(side["name"], side["hash"], side["digest"], thumbs, strict=True):
            done[name] = Rendered(tar, ph, dg, th)
        skipped.update(side.get("skipped", {}))
    return done, skipped


def render_missing(spec: RenderSpec, needs: dict[IconSet, Sequence[str]], folder: Path,
                   workers: int | None = None) -> None:
    """Render the icons of ``needs`` (set -> names) that no finished batch of ``folder`` holds."""
    jobs = []
    for iconset, names in needs.items():
        done, skipped = read_renders(folder, iconset.prefix)
        missing = sorted(set(names) - done.keys() - skipped.keys())
        jobs += [(spec, iconset, tuple(missing[i:i + CHUNK]), str(folder)) for i in range(0, len(missing), CHUNK)]
    if not jobs:
        return
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    bar = tqdm(total=sum(len(j[2]) for j in jobs), desc=f"render icons ({spec.renderer}, {spec.size}px)", unit="icon")
    if workers == 1:
        for job in jobs:
            render_batch(job)
            bar.update(len(job[2]))
    else:
        # jobs go in set order, so each worker's set cache (_set_icons) is reused across a set's batches
        with ProcessPoolExecutor(workers) as pool:
            for job, _ in zip(jobs, pool.map(render_batch, jobs, chunksize=1), strict=True):
                bar.update(len(job[2]))
    bar.close()
