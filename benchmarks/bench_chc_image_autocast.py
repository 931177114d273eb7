"""Benchmark: CHC image features under bf16 autocast (``gram chc --image-autocast bf16``) against fp32.

Encodes the same pairs twice with the fast feature path, fp32 (the reference) and with the image tower under
bf16 autocast, in this process, and reports the time of each and their ratio. Then what bf16 changes downstream:
captions stay fp32, so the topics are unchanged; the visual domains are k-means on the image features inside each
topic, so each topic of a given hierarchy (``--hierarchy``, made from fp32 features of the same pairs) is clustered
into domains from both feature sets with the same seed, and their agreement (adjusted Rand index, pairs-weighted over
topics) is set beside the agreement of two fp32 clusterings that differ only in the k-means seed: the noise the
domains have anyway.

    python benchmarks/bench_chc_image_autocast.py --pairs openclipart --hierarchy runs/offline/chc
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from sklearn.metrics import adjusted_rand_score

from _common import fmt_s, machine_info, markdown_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="openclipart", help="pair source (default openclipart)")
    parser.add_argument("--hierarchy", default="runs/offline/chc",
                        help="a CHC folder made from fp32 features of --pairs (default runs/offline/chc)")
    parser.add_argument("--shards", type=int, default=None, help="encode only the first N shards (default all)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default torch's)")
    parser.add_argument("--other-seed", type=int, default=1000, help="offset of the k-means seed of the noise row")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from gramprompt.backbones import load_backbone
    from gramprompt.chc.config import DomainConfig, FeatureConfig
    from gramprompt.chc.domains import cluster_domains
    from gramprompt.chc.features import FeatureExtractor, load_text_model
    from gramprompt.chc.store import FeatureStore
    from gramprompt.data.pairs import open_pair_source

    source = open_pair_source(args.pairs, 1000)
    shards = range(source.num_shards() if args.shards is None else min(args.shards, source.num_shards()))
    backbone = load_backbone("default")
    text_model = load_text_model("default", backbone.device)
    times, stores = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, autocast in (("fp32", None), ("bf16", "bf16")):
            ex = FeatureExtractor(backbone, text_model, FeatureConfig(reuse=False, image_autocast=autocast))
            ex.run_shard(source, 0, f"{tmp}/warm-{name}")  # model warm-up (oneDNN primitives), not timed
            t0 = time.perf_counter()
            for i in shards:
                ex.run_shard(source, i, f"{tmp}/{name}")
            times[name] = time.perf_counter() - t0
            store = FeatureStore(f"{tmp}/{name}")
            stores[name] = (store.column("key"), np.concatenate([c for _, c in store.chunks("img")]),
                            np.concatenate([c for _, c in store.chunks("text")]))
    keys, img32, txt32 = stores["fp32"]
    keys16, img16, txt16 = stores["bf16"]
    assert keys == keys16
    row = {k: i for i, k in enumerate(keys)}
    cos = (img32 * img16).sum(1)

    h = pq.read_table(f"{args.hierarchy}/hierarchy.parquet", columns=["key", "kept", "topic"]).to_pydict()
    topics: dict[int, list[int]] = {}
    for key, kept, topic in zip(h["key"], h["kept"], h["topic"]):
        if kept and key in row:
            topics.setdefault(int(topic), []).append(row[key])
    cfg = DomainConfig()
    same, other, weights = [], [], []
    for t, members in sorted(topics.items()):
        rows = np.array(members)
        a = cluster_domains(img32[rows], cfg, int(t))
        if a.max() == 0:
            continue  # one domain: nothing to compare
        same.append(adjusted_rand_score(a, cluster_domains(img16[rows], cfg, int(t))))
        other.append(adjusted_rand_score(a, cluster_domains(img32[rows], cfg, int(t) + args.other_seed)))
        weights.append(len(rows))
    w = np.asarray(weights, float)

    print("# CHC image features: bf16 autocast on the image tower against fp32\n")
    print(machine_info())
    print(f"pairs: {args.pairs}, {len(keys)} encoded in {len(shards)} shard(s); "
          f"torch threads {torch.get_num_threads()}\n")
    print(markdown_table(["features", "time", "pairs/s", "speed-up"], [
        ["fp32 (reference)", fmt_s(times["fp32"]), f"{len(keys) / times['fp32']:.1f}", "1.00x"],
        ["bf16 image tower", fmt_s(times["bf16"]), f"{len(keys) / times['bf16']:.1f}",
         f"{times['fp32'] / times['bf16']:.2f}x"]]))
    print()
    print(markdown_table(["what bf16 changes", "value"], [
        ["caption embeddings (topics' input) bit-identical", str(bool(np.array_equal(txt32, txt16)))],
        ["image feature cosine, bf16 vs fp32: mean / 1st percentile / min",
         f"{cos.mean():.4f} / {np.percentile(cos, 1):.4f} / {cos.min():.4f}"],
        [f"domains, ARI bf16 vs fp32, same k-means seed ({len(w)} topics with >1 domain, pairs-weighted)",
         f"{np.average(same, weights=w):.3f}"],
        ["domains, ARI fp32 vs fp32, another k-means seed (the noise floor)", f"{np.average(other, weights=w):.3f}"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
