"""gramprompt: GRAM and UNIGRAM, gradient-regulated meta-prompt learning for CLIP-like models."""

__version__ = "0.1.0"
