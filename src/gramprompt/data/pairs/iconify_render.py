"""Rasterizing Iconify icons once into a shard cache that CHC reads.

Each icon set is rendered in chunks of ``CHUNK`` icons (sorted by name) to one uncompressed tar of
PNGs per chunk, plus a JSON sidecar with each image's picture hash and pixel digest (and its thumbnail in a
``.thumbs.npy`` beside it). The sidecar
is written last and atomically, so it marks a finished chunk: a killed run redoes only unfinished
chunks, and every selection of sets shares the renders. Chunks run in a process pool with a
progress bar.

The rasterizer is resvg (PyPI ``resvg-py``, Rust, no system library), chosen over CairoSVG and
PyMuPDF by ``benchmarks/bench_svg_render.py`` (speed and agreement on a seeded sample of icons).
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from gramprompt.data.image_hash import picture_hash, pixel_digest, thumbnail
from gramprompt.data.pairs.iconify import IconSet, read_set, set_icons

CHUNK = 1000
RENDER_VERSION = 4  # bump when the SVG built for an icon or the rendering changes


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


def chunk_paths(folder: Path, prefix: str, index: int) -> tuple[Path, Path]:
    """A chunk's tar of PNGs and its sidecar (written last: the chunk is finished when it exists)."""
    base = folder / prefix / f"{index:05d}"
    return base.with_suffix(".tar"), base.with_suffix(".json")


def thumbs_path(sidecar: Path) -> Path:
    """The chunk's ``image_hash.thumbnail`` rows, in sidecar order."""
    return sidecar.with_suffix(".thumbs.npy")


@lru_cache(maxsize=4)
def _set_data(root: str, prefix: str) -> dict:
    return read_set(Path(root), prefix)


def render_chunk(job: tuple[RenderSpec, IconSet, int, str]) -> dict[str, int]:
    """Render chunk ``index`` of one set into ``folder`` unless its sidecar exists; returns counts."""
    spec, iconset, index, folder = job
    tar_path, side_path = chunk_paths(Path(folder), iconset.prefix, index)
    if side_path.exists():
        return {}
    render = RENDERERS[spec.renderer]
    icons = set_icons(_set_data(spec.root, iconset.prefix), iconset, spec.size, spec.drop_style)[index * CHUNK:(index + 1) * CHUNK]
    counts: Counter[str] = Counter()
    side: dict[str, list] = {"name": [], "hash": [], "digest": []}
    thumbs = []
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tar_path.with_suffix(".tar.tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for icon in icons:
            name = icon.meta["name"]
            try:
                img = render(icon.svg, spec.size)
            except RenderError:
                counts["render_error"] += 1
                continue
            if is_blank(img):
                counts["blank_render"] += 1
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
    np.save(thumbs_path(side_path), np.asarray(thumbs, np.uint8).reshape(len(thumbs), -1))
    side["counts"] = dict(counts)
    side_tmp = side_path.with_suffix(".json.tmp")
    side_tmp.write_text(json.dumps(side))
    os.replace(side_tmp, side_path)
    return dict(counts)


def num_chunks(num_icons: int) -> int:
    return max(1, -(-num_icons // CHUNK))


def render_sets(spec: RenderSpec, sets: Sequence[IconSet], sizes: dict[str, int], folder: Path,
                workers: int | None = None) -> None:
    """Render every unfinished chunk of ``sets`` (``sizes``: drawable icons per set) into ``folder``."""
    jobs = [(spec, s, i, str(folder)) for s in sets for i in range(num_chunks(sizes[s.prefix]))
            if not chunk_paths(folder, s.prefix, i)[1].exists()]
    if not jobs:
        return
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    bar = tqdm(total=len(jobs), desc=f"render icons ({spec.renderer}, {spec.size}px)", unit="chunk")
    if workers == 1:
        for job in jobs:
            render_chunk(job)
            bar.update()
    else:
        # sets are rendered in order, so each worker's set cache (_set_data) is reused across chunks
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(render_chunk, jobs, chunksize=1):
                bar.update()
    bar.close()


def read_sidecar(folder: Path, prefix: str, index: int) -> tuple[dict, np.ndarray]:
    side = chunk_paths(folder, prefix, index)[1]
    return json.loads(side.read_text()), np.load(thumbs_path(side))


