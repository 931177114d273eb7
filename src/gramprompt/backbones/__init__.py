"""Frozen dual encoders behind one protocol (see :mod:`.base`)."""
from .base import Backbone, TokenizedText
from .hf_clip import BackboneError, HFCLIPBackbone
from .registry import load_backbone

__all__ = ["Backbone", "BackboneError", "HFCLIPBackbone", "TokenizedText", "load_backbone"]
