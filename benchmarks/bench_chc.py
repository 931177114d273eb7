"""Benchmark: Cross-Modal Hierarchical Clustering (``gramprompt.chc``), pairs per second per stage.

Stages, on a synthetic feature store (``chc.synthetic.write_mixture``: 20 topics x 3 visual
domains, 384-d caption and 512-d image features) except the two feature extractors:

* caption embedding: the offline MiniLM (``features.load_text_model("default")``,
  ``embed_captions``) on the store's synthetic captions;
* image features: the offline default backbone (``backbone_features``: image encoder plus the
  backbone's own caption encoding for the image-caption similarity) on random 224x224 images;
* UMAP fit, HDBSCAN fit, assignment of the pairs outside the fitted subsample (umap.transform +
  hdbscan.approximate_predict) and k-means domains per topic, timed inside
  ``pipeline.build_hierarchy`` (fit -> assign -> topic words + domains) run in a fresh
  subprocess per size, at 10k and 100k pairs with the default ``fit_size`` (100k: everything is
  fitted), and on the scale path (100k pairs, ``fit_size`` 20k, 80k assigned).

The end-to-end figure of the issue: ``build_hierarchy`` on 100k pairs in < 3 min and < 4 GB peak
RSS (each size in its own process; peak RSS = the child's VmHWM, see ``peak_rss``). Every child first
runs a small fit (a few thousand pairs) to compile umap/pynndescent's numba code, which the
on-disk cache (``NUMBA_CACHE_DIR``) does not fully cover; the stage times exclude that warm-up,
the "cold" total adds it back. Memory flatness of the scale path: with one model fitted on 20k
pairs, the assignment stage (``pipeline.assign_stage``) alone in fresh processes over 50k, 100k
and 200k pairs; the peak RSS should not grow with the number of assigned pairs.

References in the same run: the ``hdbscan`` package vs ``sklearn.cluster.HDBSCAN`` on the same
reduced 10k embedding, and nearest-centroid vs ``approximate_predict`` labelling of the same
transformed pairs.

    python benchmarks/bench_chc.py            # ~8-10 min on 2 cores
    python benchmarks/bench_chc.py --quick    # ~2.5 min: 2k/5k pairs, scale 10k (fit 5k), memory 5k/15k
    python benchmarks/bench_chc.py --tiny     # ~50 s, the smoke test's size
    python benchmarks/bench_chc.py --json chc.json

--quick and --tiny skip the warm-up, so their stage times include numba's compilation and are not
representative. --quick fits 5k rather than 2k on the scale path: below 4096 fitted pairs UMAP uses
exact neighbours and its transform is ~8x slower per pair, a different code path from the one at scale.

Synthetic stores live in a temporary directory, removed at the end. No assertion on time.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import numpy as np

# umap-learn and hdbscan compile with numba in every fresh process unless the cache persists;
# set before they are imported (they are imported lazily below) and inherited by the children.
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "gramprompt" / "numba"))

TARGET_S, TARGET_BYTES = 180.0, 4e9  # the target for 100k pairs: < 3 min, < 4 GB
SCRIPT = Path(__file__).resolve()

PRESETS = {  # sizes are pairs; "fit" None = the library default (CHCConfig().topics.fit_size)
    "full": dict(captions=2000, images=128, batch=32, sizes=(10_000, 100_000), fit=None,
                 scale=(100_000, 20_000), memory=(50_000, 100_000, 200_000), shard_rows=10_000,
                 ref_rows=10_000, warmup=True),
    # quick: the scale fit stays >= 4096 pairs, where UMAP switches from exact neighbours to NN-descent
    # as at scale (below, umap.transform calls numba's cosine per pair through sklearn: ~8x slower)
    "quick": dict(captions=256, images=32, batch=32, sizes=(2_000, 5_000), fit=None,
                  scale=(10_000, 5_000), memory=(5_000, 15_000), shard_rows=1_000, ref_rows=2_000, warmup=False),
    "tiny": dict(captions=32, images=8, batch=8, sizes=(), fit=None,
                 scale=(1_000, 500), memory=(750, 1_500), shard_rows=250, ref_rows=200, warmup=False),
}


# --------------------------------------------------------------------------- helpers

def rss_now() -> int:
    """Resident set size of this process now, in bytes (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss() -> int:
    """Peak RSS of this process so far, in bytes: VmHWM, the high-water mark of this process's own
    memory map. Not ``ru_maxrss``: on Linux a child started by fork + exec inherits the parent's
    high-water mark there, so it would report at least the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak if sys.platform == "darwin" else peak * 1024


def fmt_n(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"{n:,}"


def fmt_rate(pairs: int, seconds: float) -> str:
    return f"{pairs / seconds:,.0f}" if seconds > 0 and pairs else "-"


def fmt_gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB"


def fmt_mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:,.0f} MB"


def prefix_store(full: Path, dest: Path, rows: int, shard_rows: int) -> Path:
    """A store of the first ``rows`` pairs of ``full``: symlinks to its first shards (no copy)."""
    if rows % shard_rows:
        raise ValueError(f"{rows} pairs is not a whole number of {shard_rows}-row shards")
    for kind, stem, ext in (("img_emb", "img_emb", "npy"), ("text_emb", "text_emb", "npy"),
                            ("metadata", "metadata", "parquet")):
        (dest / kind).mkdir(parents=True, exist_ok=True)
        for i in range(rows // shard_rows):
            name = f"{stem}_{i:05d}.{ext}"
            (dest / kind / name).symlink_to(full / kind / name)
    return dest


def run_child(argv: list[str]) -> tuple[dict, float]:
    """Run this script with ``--child ...`` in a fresh interpreter; its result JSON and wall time."""
    result = Path(argv[argv.index("--result") + 1])
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(SCRIPT), *argv], check=True, stdout=sys.stderr)
    return json.loads(result.read_text()), time.perf_counter() - t0


# --------------------------------------------------------------------------- child processes

def warm_up(n: int, seed: int) -> float:
    """Compile umap/pynndescent/hdbscan's numba code with a small fit + assignment (seconds)."""
    from gramprompt.chc.config import TopicConfig
    from gramprompt.chc.topics import assign, fit_topics

    rng = np.random.default_rng(seed + 12345)
    centers = rng.standard_normal((8, 384))
    x = centers[rng.integers(0, 8, n + 200)] + 0.5 * rng.standard_normal((n + 200, 384))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    t0 = time.perf_counter()
    model = fit_topics(x[:n], np.arange(n), TopicConfig(), seed)
    assign(model, x[n:])
    return time.perf_counter() - t0


def child_build(args: argparse.Namespace) -> dict:
    """``build_hierarchy`` on one store, with its stages timed from inside."""
    from gramprompt.chc import pipeline, topics
    from gramprompt.chc.config import CHCConfig
    from gramprompt.chc.store import FeatureStore

    res: dict = {"rss_imports": rss_now()}
    res["warmup_s"] = warm_up(args.warmup_size, args.seed) if args.warmup_size else 0.0
    seconds: dict[str, float] = defaultdict(float)
    pairs: dict[str, int] = defaultdict(int)

    def timed(name, fn, count=None):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            seconds[name] += time.perf_counter() - t0
            if count is not None:
                pairs[name] += count(a)
            return out
        return wrapper

    # build_hierarchy and fit_topics look these up as module globals at call time
    topics._reduce_fit = timed("umap_fit", topics._reduce_fit, lambda a: len(a[1]))
    topics._cluster_fit = timed("hdbscan_fit", topics._cluster_fit, lambda a: len(a[1]))
    pipeline.fit_stage = timed("fit_stage", pipeline.fit_stage)
    pipeline.assign_stage = timed("assign_stage", pipeline.assign_stage)
    pipeline.assign = timed("assign", pipeline.assign, lambda a: len(a[1]))
    pipeline.cluster_stage = timed("cluster_stage", pipeline.cluster_stage)
    pipeline.topic_domains_job = timed("domains", pipeline.topic_domains_job, lambda a: len(a[0][1]))

    cfg = CHCConfig(seed=args.seed)
    if args.fit_size:
        cfg.topics.fit_size = args.fit_size
    store = FeatureStore(args.store)
    res["rss_before"] = rss_now()
    t0 = time.perf_counter()
    h = pipeline.build_hierarchy(store, cfg, args.out)
    res["build_s"] = time.perf_counter() - t0
    res["peak_rss"] = peak_rss()
    np.save(Path(args.out) / "bench_topic.npy", h.topic)
    np.save(Path(args.out) / "bench_domain.npy", h.domain)
    counts = h.info["counts"]
    res.update(pairs=len(store), fit_size=cfg.topics.fit_size, seconds=dict(seconds), counted=dict(pairs),
               clusters=counts["clusters"], topics=counts["topics"], kept=counts["kept"], noise=counts["noise"])
    return res


def child_assign(args: argparse.Namespace) -> dict:
    """``pipeline.assign_stage`` alone, with a model fitted elsewhere (``--model-dir``)."""
    from gramprompt.chc import pipeline
    from gramprompt.chc.config import CHCConfig
    from gramprompt.chc.executor import SerialExecutor
    from gramprompt.chc.store import FeatureStore

    out = Path(args.out)
    (out / "topics").mkdir(parents=True, exist_ok=True)
    for name in ("model.pkl", "fit.json"):
        (out / "topics" / name).symlink_to(Path(args.model_dir) / "topics" / name)
    cfg = CHCConfig(seed=args.seed)
    cfg.topics.fit_size = args.fit_size
    assigned = [0]
    assign = pipeline.assign

    def counting_assign(model, x, *a, **kw):
        assigned[0] += len(x)
        return assign(model, x, *a, **kw)

    pipeline.assign = counting_assign
    store = FeatureStore(args.store)
    res = {"rss_before": rss_now(), "warmup_s": 0.0}
    if args.warmup_size:  # numba compiles part of umap.transform in every process; the model stays cached
        t0 = time.perf_counter()
        model = pipeline._load_model(str(out / "topics" / "model.pkl"))
        model.reducer.transform(store.gather("text", np.arange(args.warmup_size)))
        res["warmup_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pipeline.assign_stage(store, cfg, out, SerialExecutor())
    res.update(seconds=time.perf_counter() - t0, peak_rss=peak_rss(), pairs=len(store), assigned=assigned[0])
    return res


# --------------------------------------------------------------------------- parent measurements

def bench_text(captions: list[str]) -> tuple[float, float, str]:
    import torch

    from gramprompt.chc.features import embed_captions, load_text_model

    t0 = time.perf_counter()
    model = load_text_model("default")
    load_s = time.perf_counter() - t0
    embed_captions(model, captions[:64])  # warm-up
    t0 = time.perf_counter()
    emb = embed_captions(model, captions, batch_size=64)
    seconds = time.perf_counter() - t0
    tokens = np.mean([len(model.tokenizer(c)["input_ids"]) for c in captions[:256]])
    del model
    return seconds, load_s, (f"{emb.shape[1]}-d, batch 64, ~{tokens:.0f} tokens/caption, "
                             f"torch threads {torch.get_num_threads()}")


def bench_images(n: int, batch: int, captions: list[str], seed: int) -> tuple[float, float, float, str]:
    import torch

    from gramprompt.backbones import load_backbone
    from gramprompt.chc.features import backbone_features
    from gramprompt.data.images import load_image

    t0 = time.perf_counter()
    bb = load_backbone("default")
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(n)]
    t0 = time.perf_counter()
    pixels = torch.stack([bb.transform.eval(load_image(a)) for a in arrays])
    prep_s = time.perf_counter() - t0
    backbone_features(bb, pixels[:batch], captions[:batch])  # warm-up
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        img, _ = backbone_features(bb, pixels[start:start + batch], captions[start:start + batch])
    seconds = time.perf_counter() - t0
    return seconds, prep_s, load_s, f"{img.shape[1]}-d, batch {batch}"


def bench_clusterers(z: np.ndarray, repeats: int) -> dict:
    """The hdbscan package vs sklearn.cluster.HDBSCAN, both as ``make_clusterer`` configures them."""
    from sklearn.metrics import adjusted_rand_score

    from gramprompt.chc.config import TopicConfig
    from gramprompt.chc.topics import _cluster_fit, make_clusterer

    times: dict[str, list[float]] = {"hdbscan": [], "sklearn": []}
    labels = {}
    for _ in range(repeats):  # interleaved: slow drift of the machine hits both alike
        for name in times:
            clusterer = make_clusterer(TopicConfig(clusterer=name))
            t0 = time.perf_counter()
            labels[name] = _cluster_fit(clusterer, z)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"rows": len(z), "hdbscan_s": med["hdbscan"], "sklearn_s": med["sklearn"],
            "ari": float(adjusted_rand_score(labels["hdbscan"], labels["sklearn"])),
            "clusters": {k: int(v.max()) + 1 for k, v in labels.items()}}


def bench_labelling(model, x: np.ndarray, repeats: int) -> dict:
    """approximate_predict vs nearest centroid on the same umap.transform output."""
    import hdbscan

    from gramprompt.chc.topics import _renumber_like_fit, nearest_centroid

    model.reducer.transform(x[:50])  # warm-up: numba compiles part of transform in every process
    t0 = time.perf_counter()
    z = np.asarray(model.reducer.transform(x), dtype=np.float32)
    transform_s = time.perf_counter() - t0
    times: dict[str, list[float]] = {"predict": [], "centroid": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        raw, _ = hdbscan.approximate_predict(model.clusterer, z)
        pred = _renumber_like_fit(model, np.asarray(raw, np.int64))
        times["predict"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cent = nearest_centroid(z, model.centroids)
        times["centroid"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    hit = pred >= 0
    return {"rows": len(x), "transform_s": transform_s, "predict_s": med["predict"], "centroid_s": med["centroid"],
            "agree": float((pred[hit] == cent[hit]).mean()) if hit.any() else float("nan"),
            "noise": float((~hit).mean())}


def ari(truth: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    kept = pred >= 0
    return float(adjusted_rand_score(truth[kept], pred[kept])) if kept.any() else float("nan")


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (~2 min): 2k/5k pairs, memory at 4k/8k")
    parser.add_argument("--tiny", action="store_true", help="smallest smoke run (tests): 1k/2k pairs")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers to PATH")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and of CHC")
    parser.add_argument("--topics", type=int, default=20, help="synthetic topics (default 20)")
    parser.add_argument("--domains", type=int, default=3, help="synthetic visual domains per topic (default 3)")
    parser.add_argument("--repeats", type=int, help="repeats of the reference timings (median; default 3)")
    parser.add_argument("--warmup", dest="warmup", action="store_true", default=None,
                        help="numba warm-up fit in each child before timing (default: on, off with --quick/--tiny)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false")
    child = parser.add_argument_group("child process (internal)")
    child.add_argument("--child", choices=("build", "assign"), help=argparse.SUPPRESS)
    child.add_argument("--store", help=argparse.SUPPRESS)
    child.add_argument("--out", help=argparse.SUPPRESS)
    child.add_argument("--result", help=argparse.SUPPRESS)
    child.add_argument("--model-dir", help=argparse.SUPPRESS)
    child.add_argument("--fit-size", type=int, default=0, help=argparse.SUPPRESS)
    child.add_argument("--warmup-size", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        res = child_build(args) if args.child == "build" else child_assign(args)
        Path(args.result).write_text(json.dumps(res))
        return 0

    # only here: _common imports torch, which would inflate the children's RSS
    from _common import fmt_s, machine_info, markdown_table

    from gramprompt.chc.config import CHCConfig
    from gramprompt.chc.store import FeatureStore
    from gramprompt.chc.synthetic import write_mixture
    from gramprompt.chc.topics import TopicModel

    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    p = PRESETS[mode]
    warmup = p["warmup"] if args.warmup is None else args.warmup
    repeats = args.repeats or 3
    default_fit = CHCConfig().topics.fit_size
    fit = p["fit"] or default_fit
    scale_n, scale_fit = p["scale"]
    largest = max(*p["sizes"], scale_n, *p["memory"])
    shard_rows = p["shard_rows"]
    t_start = time.perf_counter()
    loads = [os.getloadavg()[0]] if hasattr(os, "getloadavg") else []

    print("## Cross-Modal Hierarchical Clustering (gramprompt.chc): throughput per stage, 100k target, memory")
    print()
    print(machine_info())
    print(f"NUMBA_CACHE_DIR={os.environ['NUMBA_CACHE_DIR']}")
    stage_rows: list[dict] = []

    def stage(name: str, pairs: int, seconds: float, note: str = "") -> None:
        stage_rows.append({"stage": name, "pairs": pairs, "seconds": seconds, "note": note})

    with tempfile.TemporaryDirectory(prefix="gramprompt-bench-chc-") as tmp:
        tmp = Path(tmp)
        print(f"  writing a synthetic store of {largest:,} pairs ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        truth = write_mixture(tmp / "store", largest, args.topics, args.domains, args.seed, shard_rows=shard_rows)
        write_s = time.perf_counter() - t0
        full = FeatureStore(tmp / "store")
        captions = full.column("caption")

        # 1a. feature extraction (this process; torch)
        print("  caption embedding ...", file=sys.stderr, flush=True)
        text_s, text_load, text_note = bench_text(captions[:p["captions"]])
        stage("caption embedding (offline MiniLM, `embed_captions`)", p["captions"], text_s,
              f"{text_note}; model load {fmt_s(text_load)} excluded")
        print("  image features ...", file=sys.stderr, flush=True)
        img_s, prep_s, img_load, img_note = bench_images(p["images"], p["batch"], captions, args.seed)
        stage("image features (default backbone, `backbone_features`)", p["images"], img_s,
              f"{img_note}; random 224x224 images; decode + eval transform {fmt_s(prep_s)} and "
              f"backbone load {fmt_s(img_load)} excluded")

        # 1b + 2. build_hierarchy per size, each in a fresh process
        runs = [(n, fit, f"{fmt_n(n)}") for n in p["sizes"]] + [(scale_n, scale_fit, f"{fmt_n(scale_n)}-scale")]
        builds: dict[str, dict] = {}
        for n, fit_size, tag in runs:
            store = tmp / f"store-{n}"
            if not store.exists():
                prefix_store(tmp / "store", store, n, shard_rows)
            # the warm-up must take the path the real fit takes: umap uses exact neighbours below 4096 pairs
            wsize = (4500 if min(n, fit_size) >= 4096 else 1000) if warmup else 0
            print(f"  build_hierarchy on {n:,} pairs (fit {min(n, fit_size):,}) in a fresh process ...",
                  file=sys.stderr, flush=True)
            res, wall = run_child(["--child", "build", "--store", str(store), "--out", str(tmp / f"out-{tag}"),
                                   "--result", str(tmp / f"res-{tag}.json"), "--fit-size", str(fit_size),
                                   "--warmup-size", str(wsize), "--seed", str(args.seed)])
            res["wall_s"] = wall
            topic = np.load(tmp / f"out-{tag}" / "bench_topic.npy")
            domain = np.load(tmp / f"out-{tag}" / "bench_domain.npy")
            res["ari_topic"] = ari(truth.topic[:n], topic)
            res["ari_domain"] = ari(truth.topic[:n] * args.domains + truth.domain[:n],
                                    np.where(topic >= 0, topic * 16 + domain, -1))
            builds[tag] = res
            sec, cnt = res["seconds"], res["counted"]
            fitted = cnt.get("umap_fit", 0)
            label = f" (fit_size {fmt_n(fit_size)})" if tag.endswith("scale") else ""
            stage(f"UMAP fit{label}", fitted, sec.get("umap_fit", 0.0), f"{fmt_n(n)} pairs, {fmt_n(fitted)} fitted")
            stage(f"HDBSCAN fit{label}", fitted, sec.get("hdbscan_fit", 0.0),
                  f"{res['clusters']} clusters -> {res['topics']} topics")
            if cnt.get("assign"):
                stage(f"assignment (transform + approximate_predict){label}", cnt["assign"], sec["assign"],
                      f"assign stage incl. shard reads/writes: {fmt_s(sec['assign_stage'])}")
            stage(f"k-means domains per topic{label}", cnt.get("domains", 0), sec.get("domains", 0.0),
                  f"{res['topics']} topics, incl. gathering their image features")

        # 3. memory of the assignment stage alone, model fitted once (the scale run's)
        mem: list[dict] = []
        for n in p["memory"]:
            store = tmp / f"store-{n}"
            if not store.exists():
                prefix_store(tmp / "store", store, n, shard_rows)
            print(f"  assignment stage on {n:,} pairs (fit {scale_fit:,}) in a fresh process ...",
                  file=sys.stderr, flush=True)
            res, wall = run_child(["--child", "assign", "--store", str(store), "--out", str(tmp / f"assign-{n}"),
                                   "--result", str(tmp / f"assign-{n}.json"), "--fit-size", str(scale_fit),
                                   "--model-dir", str(tmp / f"out-{fmt_n(scale_n)}-scale"), "--seed", str(args.seed),
                                   "--warmup-size", str(200 if warmup else 0)])
            res["wall_s"] = wall
            mem.append(res)

        # 4. references, in this process
        print("  references: hdbscan vs sklearn, approximate_predict vs nearest centroid ...",
              file=sys.stderr, flush=True)
        ref_run = f"out-{fmt_n(p['sizes'][0])}" if p["sizes"] else f"out-{fmt_n(scale_n)}-scale"
        z = TopicModel.load(tmp / ref_run / "topics" / "model.pkl").fit_embedding
        clus = bench_clusterers(z, repeats)
        scale_model = TopicModel.load(tmp / f"out-{fmt_n(scale_n)}-scale" / "topics" / "model.pkl")
        outside = np.setdiff1d(np.arange(scale_n), scale_model.fit_rows)[:p["ref_rows"]]
        lab = bench_labelling(scale_model, FeatureStore(tmp / f"store-{scale_n}").gather("text", outside), repeats)
    loads.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
    total_s = time.perf_counter() - t_start

    # ---------------------------------------------------------------- report
    if mode != "full":
        print(f"--{mode}: smoke sizes; stage times include numba JIT (no warm-up) and are not representative")
    print(f"data: synthetic mixture ({args.topics} topics x {args.domains} domains, 384-d text / 512-d image "
          f"features, {shard_rows:,}-row shards, seed {args.seed}), written in {fmt_s(write_s)}; CHCConfig defaults "
          f"(UMAP 15 neighbours -> 5-d cosine, HDBSCAN min_cluster_size 10, fit_size {fmt_n(default_fit)}, "
          f"assign_chunk {fmt_n(CHCConfig().topics.assign_chunk)}, 3 domains) unless stated; serial executor")
    print()
    print("### Throughput per stage")
    print()
    print(markdown_table(["stage", "pairs", "seconds", "pairs/s", "notes"],
                         [[r["stage"], f"{r['pairs']:,}", fmt_s(r["seconds"]), fmt_rate(r["pairs"], r["seconds"]),
                           r["note"]] for r in stage_rows]))
    print()
    print("UMAP and HDBSCAN are fitted on min(pairs, fit_size) pairs, so at the default fit_size every pair up "
          "to 100k is fitted and none is assigned; the scale rows fit a subsample and assign the rest.")
    print()
    print("### End to end: `pipeline.build_hierarchy` (fit -> assign -> topic words + domains), one process per size")
    print()
    e2e_rows = []
    for tag, r in builds.items():
        sec = r["seconds"]
        other = r["build_s"] - sec.get("fit_stage", 0) - sec.get("assign_stage", 0) - sec.get("cluster_stage", 0)
        words = sec.get("cluster_stage", 0) - sec.get("domains", 0)
        fitted = r["counted"].get("umap_fit", 0)
        e2e_rows.append([
            f"{r['pairs']:,}", f"{fitted:,} / {r['counted'].get('assign', 0):,}",
            fmt_s(sec.get("fit_stage", 0)), fmt_s(sec.get("assign_stage", 0)), fmt_s(words),
            fmt_s(sec.get("domains", 0)), fmt_s(other), f"**{fmt_s(r['build_s'])}**",
            fmt_s(r["warmup_s"]) if r["warmup_s"] else "-", fmt_s(r["wall_s"]), f"**{fmt_gb(r['peak_rss'])}**",
            fmt_gb(r["rss_before"]), f"{r['topics']} ({r['kept'] / r['pairs']:.1%})",
            f"{r['ari_topic']:.3f} / {r['ari_domain']:.3f}"])
    print(markdown_table(["pairs", "fitted / assigned", "fit stage", "assign stage", "topic words", "domains",
                          "other (save, reads)", "build_hierarchy", "numba warm-up", "process wall",
                          "peak RSS", "RSS before build", "topics (kept)", "ARI topic / topic x domain"], e2e_rows))
    print()
    print("fit stage = subsample read + UMAP + HDBSCAN (+ model pickle); process wall = the child from start to "
          "exit (interpreter, imports, numba warm-up, build_hierarchy, result files); peak RSS = the child's "
          "VmHWM; ARI against the synthetic ground truth on the kept pairs.")
    target_n = 100_000
    target = next((r for tag, r in builds.items() if r["pairs"] == target_n and not tag.endswith("scale")), None)
    verdicts = {}
    if target is not None:
        cold = target["build_s"] + target["warmup_s"]
        ok_t, ok_m = cold < TARGET_S, target["peak_rss"] < TARGET_BYTES
        verdicts = {"seconds_cold": cold, "meets_time": ok_t, "meets_memory": ok_m}
        print(f"Target (100k pairs, default fit_size): build_hierarchy {fmt_s(target['build_s'])} warm, "
              f"{fmt_s(cold)} counting the per-process numba warm-up ({'meets' if ok_t else 'misses'} < 3 min); "
              f"peak RSS {fmt_gb(target['peak_rss'])} ({'meets' if ok_m else 'misses'} < 4 GB).")
    else:
        print(f"Target (100k pairs): not measured at --{mode} sizes.")
    print()
    print(f"### Memory of the assignment stage alone (model fitted once on {fmt_n(scale_fit)} of "
          f"{fmt_n(scale_n)} pairs), one process per size")
    print()
    print(markdown_table(["pairs", "assigned", "seconds", "pairs/s", "numba warm-up", "RSS before", "peak RSS"],
                         [[f"{r['pairs']:,}", f"{r['assigned']:,}", fmt_s(r["seconds"]),
                           fmt_rate(r["assigned"], r["seconds"]), fmt_s(r["warmup_s"]) if r["warmup_s"] else "-",
                           fmt_mb(r["rss_before"]), f"**{fmt_mb(r['peak_rss'])}**"] for r in mem]))
    print()
    flat = mem[-1]["peak_rss"] / mem[0]["peak_rss"]
    growth = (mem[-1]["peak_rss"] - mem[0]["peak_rss"]) / max(1, mem[-1]["assigned"] - mem[0]["assigned"])
    print(f"Peak RSS of the largest / smallest: **{flat:.2f}x** for {mem[-1]['assigned'] / mem[0]['assigned']:.1f}x "
          f"the assigned pairs ({growth:,.0f} bytes per extra assigned pair; a 384-d float32 row is 1,536 bytes). "
          f"RSS before = after imports, before the model is loaded; the numba warm-up (model load + "
          f"umap.transform of 200 pairs) is in the peak but not in the seconds.")
    print()
    print("### References, same run")
    print()
    ref_rows = [
        [f"HDBSCAN fit on the reduced {fmt_n(clus['rows'])} embedding (5-d)", "`hdbscan` package "
         "(prediction_data=True)", fmt_s(clus["hdbscan_s"]), "`sklearn.cluster.HDBSCAN`", fmt_s(clus["sklearn_s"]),
         f"**{clus['sklearn_s'] / clus['hdbscan_s']:.1f}x** (reference / library)",
         f"ARI between the two {clus['ari']:.3f}; clusters {clus['clusters']['hdbscan']} / "
         f"{clus['clusters']['sklearn']}"],
        [f"labelling {lab['rows']:,} transformed pairs", "`hdbscan.approximate_predict` (library default)",
         fmt_s(lab["predict_s"]), "nearest centroid", fmt_s(lab["centroid_s"]),
         f"**{lab['predict_s'] / lab['centroid_s']:.1f}x** (library / reference)",
         f"agree on {lab['agree']:.1%} of the predicted pairs; predict noise {lab['noise']:.1%}"],
        [f"whole assignment of {lab['rows']:,} pairs (umap.transform {fmt_s(lab['transform_s'])} + labelling)",
         "approximate_predict", fmt_s(lab["transform_s"] + lab["predict_s"]), "nearest centroid",
         fmt_s(lab["transform_s"] + lab["centroid_s"]),
         f"{(lab['transform_s'] + lab['predict_s']) / (lab['transform_s'] + lab['centroid_s']):.2f}x "
         "(library / reference)",
         "umap.transform dominates either way"],
    ]
    print(markdown_table(["measurement", "library", "time", "reference", "time", "speed ratio (slower / faster)",
                          "notes"], ref_rows))
    print()
    print(f"Timing: time.perf_counter, one pass per stage (references: median of {repeats}, interleaved). "
          f"Whole run {fmt_s(total_s)}; load average (1 min) at start {loads[0]:.2f}, at end {loads[-1]:.2f} "
          f"on {os.cpu_count()} logical CPUs (other processes share the cores).")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": date.today().isoformat(), "mode": mode, "machine": machine_info(), "load_average": loads,
            "total_s": total_s, "stages": stage_rows, "build_hierarchy": builds, "target": verdicts,
            "assign_memory": mem, "assign_memory_ratio": flat, "ref_clusterers": clus, "ref_labelling": lab,
        }, indent=1, default=float))
        print(f"numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
