"""`gram chc` on bad input: one clear error that names the culprit and what to do."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from gramprompt.chc.config import CHCConfig
from gramprompt.chc.pipeline import build_hierarchy
from gramprompt.chc.store import FeatureStore, write_shard
from gramprompt.chc.synthetic import write_mixture
from gramprompt.cli import main
from gramprompt.data.dataset import DatasetError
from gramprompt.data.pairs import FolderPairSource


def topic_config(neighbors: int, min_cluster_size: int) -> CHCConfig:
    cfg = CHCConfig()
    cfg.topics.umap_neighbors, cfg.topics.min_cluster_size = neighbors, min_cluster_size
    return cfg


def test_too_few_pairs_names_the_limiting_option(tmp_path):
    write_mixture(tmp_path / "f", 12, 2, 2)
    store = FeatureStore(tmp_path / "f")
    with pytest.raises(ValueError, match="too few") as neighbors:  # 12 pairs: 15 neighbours need 16
        build_hierarchy(store, topic_config(neighbors=15, min_cluster_size=5), tmp_path / "a")
    assert "--umap-neighbors 15" in str(neighbors.value) and "--min-cluster-size" not in str(neighbors.value)
    with pytest.raises(ValueError, match="too few") as size:
        build_hierarchy(store, topic_config(neighbors=4, min_cluster_size=20), tmp_path / "b")
    assert "--min-cluster-size 20" in str(size.value) and "--umap-neighbors" not in str(size.value)


def test_no_usable_pair_says_what_was_skipped(tmp_path):
    empty = np.zeros((0, 4), np.float32)
    rows = {c: [] for c in ("key", "caption", "source", "sim", "meta")}
    write_shard(tmp_path / "f", 0, empty, empty, rows, {"pairs": 0, "missing_image": 3, "bad_row": 2})
    with pytest.raises(ValueError, match="no pair to cluster") as err:
        build_hierarchy(FeatureStore(tmp_path / "f"), CHCConfig(), tmp_path / "h")
    assert "missing_image 3" in str(err.value) and "bad_row 2" in str(err.value)


def write_captions(root, lines):
    root.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 6)).save(root / "a.png")
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return root


def test_jsonl_without_path_and_caption_fields_names_file_line_and_fields(tmp_path):
    root = write_captions(tmp_path / "pairs", [{"image": "a.png", "text": "a black square"}] * 3)
    with pytest.raises(DatasetError, match=r"captions\.jsonl line 1: missing field\(s\) path, caption") as err:
        FolderPairSource(root).num_shards()
    assert "found image, text" in str(err.value)
    # the first object line is the header: a malformed line before it is only a bad row
    (root / "captions.jsonl").write_text("{oops\n" + json.dumps({"path": "a.png"}) + "\n")
    with pytest.raises(DatasetError, match=r"line 2: missing field\(s\) caption"):
        FolderPairSource(root).num_shards()


def test_gram_chc_reports_missing_fields_as_one_error_line(tmp_path, capsys):
    root = write_captions(tmp_path / "pairs", [{"file": "a.png", "caption": "a black square"}])
    args = ["chc", "--pairs", f"folder:{root}", "--backbone", "default", "--out", str(tmp_path / "h")]
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gram:")]
    assert len(err) == 1 and err[0].startswith("gram: error:")
    assert "captions.jsonl line 1: missing field(s) path" in err[0] and "too few" not in err[0]


def test_gram_chc_rerun_with_another_shard_size_is_one_error_line(tiny_clip_dir, tmp_path, capsys):
    root = write_captions(tmp_path / "pairs", [{"path": "a.png", "caption": "a black square"}])
    out = tmp_path / "h"
    args = ["chc", "--pairs", f"folder:{root}", "--backbone", f"hf:{tiny_clip_dir}", "--out", str(out),
            "--stage", "features"]
    assert main([*args, "--shard-size", "5"]) == 0
    capsys.readouterr()
    assert main([*args, "--shard-size", "4"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gram:")]
    assert len(err) == 1 and "shard_size: 5 on disk, 4 now" in err[0]
    assert f"delete {out / 'features'}" in err[0]


def test_json_nested_too_deeply_is_a_counted_bad_row_not_a_traceback(tmp_path):
    """Reliability probe: ``[[[...]]]`` in captions.jsonl or a WebDataset .json member raised RecursionError."""
    import io
    import tarfile

    from gramprompt.data.pairs import open_pair_source

    deep = "[" * 100_000 + "]" * 100_000
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "captions.jsonl").write_text(json.dumps({"path": "a.png", "caption": "a red square"}) + "\n" + deep + "\n")
    shard = open_pair_source(f"folder:{tmp_path}").read_shard(0)
    assert len(shard.pairs) == 1 and shard.counts["bad_row"] == 1

    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for name, data in (("k.png", png.getvalue()), ("k.txt", b"a red square"), ("k.json", deep.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    shard = open_pair_source(f"wds:{tmp_path}/s.tar").read_shard(0)
    assert len(shard.pairs) == 1 and shard.pairs[0].meta == {} and shard.counts["bad_json"] == 1
