"""Few-shot tuning hyperparameters and the learning-rate schedule.

Defaults are CoCoOp's schedule, which the GRAM paper uses for every method: SGD (momentum 0.9,
weight decay 5e-4) at lr 0.002, batch size 1, 10 epochs, cosine decay per epoch, and one
warm-up epoch at a constant 1e-5.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..autocast import check_autocast
from ..finite import check_rate


@dataclass
class TuneConfig:
    epochs: int = 10
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 1
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    # Methods that leave the image encoder frozen train on cached features: this many randomly
    # augmented views of every training image are encoded once, epoch e uses view e % views.
    # views == epochs reproduces per-epoch augmentation exactly; 0 disables augmentation.
    feature_views: int = 4
    eval_batch_size: int = 64
    # A learning-rate multiplier per parameter group of the method (its ``groups``: "text", "visual",
    # "meta_net"), e.g. {"visual": 0.3} for joint tuning (0 freezes the group); a group not named here trains at lr.
    lr_scale: dict[str, float] = field(default_factory=dict)
    # PromptSRC's Gaussian prompt aggregation (``tuning.gpa``): with a mean, the tuned prompts are the mean of each
    # epoch's weighted by N(epoch; gpa_mean, gpa_std); None returns the last epoch's, as every other method does
    gpa_mean: float | None = None
    gpa_std: float = 1.0
    # "bf16": each step's forward and backward under bf16 autocast (``gramprompt.autocast``), the prompts and the
    # momentum fp32; None: fp32 throughout (the default: the one proven equal to the official code)
    autocast: str | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("epochs, batch_size and eval_batch_size must be >= 1")
        if self.feature_views < 0 or self.warmup_epochs < 0:
            raise ValueError("feature_views and warmup_epochs must be >= 0")
        check_rate("the learning rate (--lr)", self.lr)  # at the config, so `experiment plan` refuses it too
        check_rate("warmup_lr", self.warmup_lr)
        if not (math.isfinite(self.gpa_std) and self.gpa_std > 0) or (
                self.gpa_mean is not None and not math.isfinite(self.gpa_mean)):
            raise ValueError(f"gpa_mean must be finite and gpa_std > 0, got {self.gpa_mean}, {self.gpa_std}")
        check_autocast(self.autocast)
        bad = {k: v for k, v in self.lr_scale.items() if not (math.isfinite(v) and v >= 0)}
        if bad:
            raise ValueError(f"lr_scale values must be finite and >= 0, got {bad}")


def lr_at_epoch(cfg: TuneConfig, epoch: int) -> float:
    """Learning rate for 0-based ``epoch``: Dassl's constant warm-up followed by its cosine schedule.

    Dassl steps the cosine scheduler (T_max = epochs) once per finished epoch, so after the
    warm-up epochs epoch e trains at lr * (1 + cos(pi * e / epochs)) / 2.
    """
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
