"""Data and CHC: gram chc (image-text pairs -> topics -> visual domains) and gram data check (a CoOp data root)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..autocast import AUTOCAST
from ..backbones.registry import SPEC_FORMS, resolve_device
from .common import Entry, HelpFormatter, add_command, add_device_arg

TITLE = "data and CHC"


def add_commands(sub: argparse._SubParsersAction) -> list[Entry]:
    text = "CHC: image-text pairs -> topics -> visual domains (the meta-training tasks)"
    p = add_command(sub, "chc", text, "Cross-Modal Hierarchical Clustering: image-text pairs -> topics -> visual "
                                      "domains, the tasks GRAM meta-trains on (docs/CHC.md)")
    _add_chc_run_args(p)
    _add_chc_clustering_args(p)
    p.set_defaults(fn=cmd_chc)

    check = "check a CoOp data root: split sizes vs the published ones, missing images"
    p = add_command(sub, "data", "data tools: gram data check ROOT")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    p = data_sub.add_parser("check", help=check, formatter_class=HelpFormatter,
                            description="check a CoOp data root: split sizes against the published ones, missing "
                                        "image files (exit 1 when anything is wrong)")
    p.add_argument("root", type=Path, help="data root holding imagenet/, caltech-101/, ... (CoOp's layout)")
    p.add_argument("--datasets", nargs="+", default=None,
                   help="names to check (default: every dataset whose folder is under ROOT)")
    p.add_argument("--sample", type=int, default=None,
                   help="check only N seeded random image files per dataset (default: every file)")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample")
    p.add_argument("--format", choices=["markdown", "plain"], default="markdown", help="layout of the table")
    p.set_defaults(fn=cmd_data_check)
    return [("chc", text), ("data check", check)]


def _add_chc_run_args(p: argparse.ArgumentParser) -> None:
    """What gram chc reads and writes, and where and in how many jobs it runs."""
    from ..chc.config import FeatureConfig
    from ..chc.pipeline import STAGES

    d_feat = FeatureConfig()
    p.add_argument("--pairs", required=True,
                   help="openclipart, noto-emoji, iconify[:N][?key=value&...] (the Iconify icon sets, docs/DATA.md), "
                        "folder:PATH (images + captions file), wds:GLOB (tar shards), or A+B (one after the other)")
    p.add_argument("--exclude-images", nargs="+", default=None, metavar="DIR",
                   help="iconify: also remove every icon that matches an image under these folders (your own "
                        "evaluation sets; the shipped ones are always removed) (default: none)")
    p.add_argument("--exclude-sets", nargs="+", default=None, metavar="PREFIX",
                   help="iconify: leave out these icon sets, e.g. noto twemoji (default: none)")
    p.add_argument("--backbone", required=True, help=f"backbone spec (image features): {', '.join(SPEC_FORMS)}")
    p.add_argument("--out", required=True, type=Path, help="hierarchy folder (rerun the same command to resume)")
    p.add_argument("--features", type=Path, default=None, help="feature store folder (default: OUT/features)")
    add_device_arg(p, "torch device of the backbone")
    p.add_argument("--stage", choices=list(STAGES), default="all",
                   help="features / assign: this job's shards only; fit: the topic model; "
                        "cluster: whatever is left, then topic words, domains, report")
    p.add_argument("--shard-index", type=int, default=0,
                   help="this job's index (with --num-shards, e.g. a SLURM array)")
    p.add_argument("--num-shards", type=int, default=1, help="number of jobs sharing the features and assign stages")
    p.add_argument("--executor", choices=["serial", "process", "ray"], default="serial",
                   help="where per-shard and per-topic work runs (ray: pip install 'gramprompt[ray]')")
    p.add_argument("--workers", type=int, default=2, help="processes of the process executor")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local one)")
    p.add_argument("--text-model", default=d_feat.text_model,
                   help="sentence-transformers model name or path for captions (default: offline all-MiniLM-L6-v2)")
    p.add_argument("--batch-size", type=int, default=d_feat.batch_size, help="pairs per encoding batch")
    p.add_argument("--feature-dtype", choices=["float32", "float16"], default=d_feat.dtype,
                   help="storage type of the feature arrays (float16 halves the disk at scale)")
    p.add_argument("--image-autocast", choices=sorted(AUTOCAST), default=None,
                   help="bf16: the image tower under bfloat16 autocast, the captions fp32 (the topics unchanged); "
                        "1.4x faster features on a CPU with AVX512-BF16, domains within k-means seed noise "
                        "(docs/CHC.md) (default: fp32)")
    p.add_argument("--stems", action="store_true",
                   help="also store the backbone's image stems (float16; default backbone), so VPT/UNIGRAM "
                        "meta-training reads them instead of decoding every image again")
    p.add_argument("--shard-size", type=int, default=1000, help="pairs per shard of listed sources")
    p.add_argument("--no-report", action="store_true", help="skip the PNG report")
    p.add_argument("--show", type=int, default=20, help="topics to print")


def _add_chc_clustering_args(p: argparse.ArgumentParser) -> None:
    """The filter, topic and domain settings of CHC (defaults: BERTopic's, docs/CHC.md)."""
    from ..chc.config import DomainConfig, TopicConfig

    d_topic, d_dom = TopicConfig(), DomainConfig()
    p.add_argument("--filter-threshold", type=float, default=None,
                   help="drop pairs with image-text cosine below this (default: keep every pair)")
    p.add_argument("--filter-quantile", type=float, default=None,
                   help="drop this lowest fraction of pairs by cosine (default: keep every pair)")
    p.add_argument("--umap-neighbors", type=int, default=d_topic.umap_neighbors, help="UMAP's n_neighbors")
    p.add_argument("--umap-components", type=int, default=d_topic.umap_components,
                   help="dimensions UMAP reduces the caption embeddings to")
    p.add_argument("--min-cluster-size", type=int, default=d_topic.min_cluster_size,
                   help="HDBSCAN's smallest topic, in pairs")
    p.add_argument("--min-samples", type=int, default=d_topic.min_samples,
                   help="HDBSCAN's min_samples (default: --min-cluster-size, as HDBSCAN)")
    p.add_argument("--clusterer", choices=["hdbscan", "sklearn"], default=d_topic.clusterer,
                   help="HDBSCAN implementation: the hdbscan package or sklearn.cluster.HDBSCAN")
    p.add_argument("--noise", choices=["drop", "reassign"], default=d_topic.noise,
                   help="HDBSCAN noise pairs: leave out, or give to the nearest topic")
    p.add_argument("--duplicates", choices=["merge", "disambiguate"], default=d_topic.duplicates,
                   help="topics with the same top word: merge them, or name them apart")
    p.add_argument("--fit-size", type=int, default=d_topic.fit_size, help="fit UMAP + HDBSCAN on this many pairs")
    p.add_argument("--assign", choices=["predict", "centroid"], default=d_topic.assign,
                   help="pairs outside the fit: hdbscan.approximate_predict or nearest topic centroid")
    p.add_argument("--stop-words", nargs="*", default=[],
                   help="extra words never to use as topic words (default: none)")
    p.add_argument("--word-min-share", type=float, default=d_topic.word_min_share,
                   help="count a cluster in Eq. 3's L_w only if the word is this share of its words "
                        "(0: Eq. 3 exactly; e.g. 0.002 against stray captions at scale)")
    p.add_argument("--domains", type=int, default=d_dom.domains, help="visual domains per topic (U)")
    p.add_argument("--min-domain-size", type=int, default=d_dom.min_domain_size,
                   help="a topic gets at most (its size / this) domains")
    p.add_argument("--seed", type=int, default=0, help="seed of UMAP, the fit sample and the domain k-means")
    p.add_argument("--agreement", default=None, metavar="FIELD",
                   help="also score topics against this metadata field (ARI/NMI), e.g. category for openclipart "
                        "or iconify (the set's own theme of the icon) (default: none)")
    p.add_argument("--domain-agreement", default=None, metavar="FIELD",
                   help="also measure whether visual domains follow this metadata field within topics (NMI "
                        "against a within-topic shuffle), e.g. set for iconify (each set is one drawing style) "
                        "(default: none)")


def _chc_config(a: argparse.Namespace):
    from ..chc.config import CHCConfig, DomainConfig, FeatureConfig, FilterConfig, TopicConfig

    return CHCConfig(
        FeatureConfig(a.text_model, a.batch_size, a.feature_dtype, a.stems, image_autocast=a.image_autocast),
        FilterConfig(a.filter_threshold, a.filter_quantile),
        TopicConfig(umap_neighbors=a.umap_neighbors, umap_components=a.umap_components,
                    min_cluster_size=a.min_cluster_size, min_samples=a.min_samples, clusterer=a.clusterer,
                    noise=a.noise, duplicates=a.duplicates, fit_size=a.fit_size, assign=a.assign,
                    word_min_share=a.word_min_share,
                    extra_stop_words=tuple(a.stop_words)),
        DomainConfig(domains=a.domains, min_domain_size=a.min_domain_size),
        seed=a.seed, shard_size=a.shard_size)


def cmd_chc(a: argparse.Namespace) -> int:
    from ..chc.executor import make_executor
    from ..chc.pipeline import run_chc
    from ..chc.report import topic_table
    from ..data.pairs.iconify_source import exclusion_summary, with_exclusions

    executor = make_executor(a.executor, a.workers, a.ray_address)
    a.pairs = with_exclusions(a.pairs, a.exclude_images, a.exclude_sets)
    h = run_chc(a.pairs, a.backbone, a.out, _chc_config(a), executor, a.stage, a.shard_index, a.num_shards,
                a.features, resolve_device(a.device), report=not a.no_report, agreement_field=a.agreement,
                domain_field=a.domain_agreement)
    if h is None:
        print(f"stage {a.stage} done (job {a.shard_index} of {a.num_shards}) in {a.out}")
        return 0
    print(" ".join(f"{k}={v}" for k, v in h.info["counts"].items()))
    source_report = (a.features or a.out / "features") / "source.json"
    if source_report.exists():
        print(exclusion_summary(json.loads(source_report.read_text())))
    print(topic_table(h, limit=a.show))
    if a.agreement:
        score = json.loads((a.out / "report" / "agreement.json").read_text())
        print(f"agreement with {a.agreement}: ARI {score['ari']:.3f} NMI {score['nmi']:.3f} "
              f"({score['pairs']} pairs, {score['classes']} classes, {score['topics']} topics)")
    if a.domain_agreement:
        score = json.loads((a.out / "report" / "domain_agreement.json").read_text())
        print(f"domains against {a.domain_agreement} within {score['topics']} topics: NMI {score['nmi']:.3f} "
              f"(shuffled {score['nmi_shuffled']:.3f})")
    print(f"hierarchy written to {a.out}")
    return 0


def cmd_data_check(a: argparse.Namespace) -> int:
    """Table of the datasets under ROOT against their published sizes; 1 when anything is wrong."""
    from ..data.check import ALL_DATASETS, all_ok, check_root, dataset_folder, render

    rows = check_root(a.root, a.datasets, sample=a.sample, seed=a.seed)
    if rows:
        print(render(rows, markdown=a.format == "markdown"))
    else:
        print(f"no CoOp dataset folder under {a.root} (layouts: docs/DATASETS.md)")
    checked = {r.dataset for r in rows}
    absent = [f"{n} ({dataset_folder(n)}/)" for n in ALL_DATASETS if n not in checked]
    if a.datasets is None and absent:
        print("not present, skipped: " + ", ".join(absent))
    return 0 if all_ok(rows) else 1
