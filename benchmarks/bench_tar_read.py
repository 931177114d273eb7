"""Reading one image of a WebDataset shard: gramprompt's per-shard offset index against ``tarfile``.

Meta-training VPT / UNIGRAM on a CC3M-style hierarchy decodes images in the order tasks draw them,
i.e. at random positions in random shards. ``load_pair_image("SHARD.tar#MEMBER")`` seeks to the
member through an index built on the first read of a shard; the reference is the plain ``tarfile``
lookup (``tarfile.open`` + ``extractfile``), which reads every header before the member. Both
decode the JPEG with ``gramprompt.data.images.load_image``. The shard is synthetic (seeded noise
JPEGs, WebDataset naming ``KEY.jpg`` / ``KEY.txt``), built in a temporary directory.
"""
from __future__ import annotations

import argparse
import io
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _common import fmt_ms, load_average, machine_info, markdown_table


def build_shard(path: Path, samples: int, side: int, seed: int) -> list[str]:
    """A WebDataset tar of ``samples`` (JPEG, caption) pairs; returns the image members in order."""
    rng = np.random.default_rng(seed)
    # one noise image per 64 samples, re-encoded at a different quality each time: realistic JPEG sizes, fast to build
    bases = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(max(1, samples // 64))]
    members = []
    with tarfile.open(path, "w") as tar:
        for i in range(samples):
            buf = io.BytesIO()
            Image.fromarray(bases[i % len(bases)]).save(buf, format="JPEG", quality=70 + i % 20)
            for name, data in ((f"{i:09d}.jpg", buf.getvalue()), (f"{i:09d}.txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            members.append(f"{i:09d}.jpg")
    return members


def read_with_tarfile(archive: Path, member: str) -> Image.Image:
    from gramprompt.data.images import load_image

    with tarfile.open(archive) as tar:
        return load_image(tar.extractfile(member).read())


def timed(fn, items) -> list[float]:
    times = []
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: a 500-sample shard, 64 px")
    parser.add_argument("--samples", type=int, help="samples in the shard (default 10000, CC3M's shard size)")
    parser.add_argument("--side", type=int, help="image side in pixels (default 256)")
    parser.add_argument("--reads", type=int, default=200, help="random reads through the index (default 200)")
    parser.add_argument("--reference-reads", type=int, help="random reads through tarfile (default 10; 5 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images and of the read order")
    args = parser.parse_args(argv)
    samples = args.samples or (500 if args.quick else 10_000)
    side = args.side or (64 if args.quick else 256)
    ref_reads = args.reference_reads or (5 if args.quick else 10)

    from gramprompt.data.pairs.base import _tar_index, load_pair_image

    print(machine_info())
    with tempfile.TemporaryDirectory(prefix="gramprompt-bench-tar-") as tmp:
        shard = Path(tmp) / "000000.tar"
        t0 = time.perf_counter()
        members = build_shard(shard, samples, side, args.seed)
        print(f"shard: {samples:,} samples ({side} px JPEG + caption), {shard.stat().st_size / 2**20:,.1f} MiB, "
              f"built in {time.perf_counter() - t0:.1f} s")
        rng = np.random.default_rng(args.seed + 1)
        order = [members[i] for i in rng.integers(0, len(members), args.reads + 1)]

        _tar_index.cache_clear()
        first = timed(lambda m: load_pair_image(f"{shard}#{m}"), order[:1])[0]  # builds the index
        indexed = timed(lambda m: load_pair_image(f"{shard}#{m}"), order[1:])
        reference = timed(lambda m: read_with_tarfile(shard, m), order[1:1 + ref_reads])
        same = np.array_equal(np.asarray(load_pair_image(f"{shard}#{order[1]}")),
                              np.asarray(read_with_tarfile(shard, order[1])))

    ind, ref = statistics.median(indexed), statistics.median(reference)
    print()
    print(markdown_table(
        ["method", "first read of the shard", "per image (median)", "reads", "speed-up per image"],
        [["tarfile lookup (reference)", fmt_ms(reference[0]), fmt_ms(ref), str(len(reference)), "1.0x"],
         ["offset index (`load_pair_image`)", fmt_ms(first), fmt_ms(ind), str(len(indexed)), f"{ref / ind:,.0f}x"]]))
    print(f"\nSame pixels from both: {same}. Reads at random positions; each includes the JPEG decode."
          f"{load_average().replace(' | ', ' End of run: ')}")


if __name__ == "__main__":
    main()
