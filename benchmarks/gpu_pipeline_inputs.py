"""Inputs for running the GPU smoke config end to end on a machine that has no dataset packages and no network.

`gram experiment run vit_b16/smoke` needs CC3M shards, a sentence-transformers caption model and CLIP weights; a bare
GPU machine has none of them. This writes, into OUT (small enough to copy there):

* ``OUT/pairs``: N real image-text pairs from the ``openclipart`` source (images shrunk to <= 224 px, PNG) with a
  ``captions.jsonl``, a ``folder:`` pair source;
* ``OUT/text``: a random-weight sentence-transformers model (2-layer BERT, width 64, mean pooling) over MiniLM's
  WordPiece vocabulary, for CHC's caption embeddings. It exercises the loading and embedding code; its topics mean
  nothing.

The CLIP ViT-B/16 is built on the GPU machine itself (600 MB; ``build_random_clip``). Then, there::

    gram experiment run vit_b16/smoke --device cuda --set backbone=hf:CLIP --set hierarchy.pairs=folder:OUT/pairs \\
        --set hierarchy.chc.features.text_model=OUT/text --set datasets=[digits] ...

(benchmarks/gpu_check.sh, its ``--pipeline`` part, runs exactly that.)

    python benchmarks/gpu_pipeline_inputs.py OUT [--pairs 800]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch


def write_pairs(out: Path, n: int, max_side: int = 224) -> int:
    from gramprompt.data.images import load_image
    from gramprompt.data.pairs import open_pair_source

    source = open_pair_source(f"openclipart:{n}")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(source.num_shards()):
        for pair in source.read_shard(index).pairs:
            image = load_image(pair.image).convert("RGB")
            image.thumbnail((max_side, max_side))
            name = f"{len(rows):05d}.png"
            image.save(out / name)
            rows.append({"path": name, "caption": pair.caption})
    (out / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def write_text_model(out: Path, seed: int = 0) -> None:
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from gramprompt.backbones.default.towers import minilm_path

    tokenizer = BertTokenizerFast(str(Path(minilm_path()) / "vocab.txt"), do_lower_case=True)
    with torch.random.fork_rng(devices=[]):  # HF initializes from the global RNG
        torch.manual_seed(seed)
        bert = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=128, max_position_embeddings=128))
    hf = out.parent / (out.name + "-hf")
    bert.save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    word = models.Transformer(str(hf), max_seq_length=64)
    SentenceTransformer(modules=[word, models.Pooling(word.get_word_embedding_dimension(), "mean")]).save(str(out))
    shutil.rmtree(hf)  # the saved model holds its own copy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--pairs", type=int, default=800, help="openclipart pairs (evenly spaced; default 800)")
    args = parser.parse_args(argv)
    n = write_pairs(args.out / "pairs", args.pairs)
    write_text_model(args.out / "text")
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{n} pairs and a random sentence model in {args.out} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
