"""Shared fixtures: a random-weight tiny CLIP saved to and loaded from a local HF directory."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager

import pytest
import torch

from gramprompt.backbones import load_backbone
from gramprompt.backbones.random_clip import build_random_clip


# CHC feature shards are shared through a machine-wide cache (chc/reuse.py): tests get their own,
# so that no test reads a shard another run left there.
os.environ["GRAM_FEATURE_CACHE"] = tempfile.mkdtemp(prefix="gram-feature-cache-")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    return build_random_clip(tmp_path_factory.mktemp("tiny_clip"), "tiny", seed=0)


@pytest.fixture(scope="session")
def backbone(tiny_clip_dir):
    return load_backbone(f"hf:{tiny_clip_dir}")


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@contextmanager
def full_length(backbone):
    """Run the text tower over all 77 positions (the untruncated reference)."""
    backbone.truncate = False
    try:
        yield backbone
    finally:
        backbone.truncate = True
