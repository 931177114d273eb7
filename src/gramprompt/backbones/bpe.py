"""OpenAI CLIP's BPE tokenizer, built offline from the vocabulary file that ships in ``open_clip_torch``.

Real HF checkpoints carry their own tokenizer files; this is for checkpoints we create locally
(random-weight CLIPs for tests, benchmarks and the offline demo), so that they tokenize real
text into real CLIP token ids and sequence lengths.
"""
from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

INSTALL_HINT = "pip install --no-deps open_clip_torch  (only its vocabulary file is used)"


def bpe_vocab_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"the CLIP BPE vocabulary needs the open_clip_torch package: {INSTALL_HINT}")
    path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall: {INSTALL_HINT}")
    return path


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table, in vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(c) for c in printable] + [chr(256 + i) for i in range(len(extra))]


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    lines = gzip.open(bpe_vocab_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_bpe_tokenizer(model_max_length: int = 77):
    """A ``transformers.CLIPTokenizer`` with OpenAI CLIP's 49408-token vocabulary."""
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)
