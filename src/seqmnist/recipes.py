"""Recipes: the optimiser and the learning rate at every step, from a run's settings.

The learning rate is a function of the step alone (warm-up, then the schedule), set before every
step, so a resumed run needs no scheduler state to continue exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "step", "cosine")


def make_optimizer(
    name: str, parameters: Iterable[torch.nn.Parameter], lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """sgd (plain, the seed's), momentum and nesterov (SGD with ``momentum``), adam, adamw (decoupled weight
    decay, Loshchilov & Hutter 2019), rmsprop (Tieleman & Hinton 2012)."""
    parameters = list(parameters)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, weight_decay=weight_decay)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(
            parameters, lr=lr, momentum=momentum, nesterov=name == "nesterov", weight_decay=weight_decay
        )
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    return torch.optim.RMSprop(parameters, lr=lr, weight_decay=weight_decay)


def plain_sgd(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every step is p -= lr grad and nothing else: SGD with one group, no momentum, no weight
    decay, not maximising, PyTorch's own per-tensor update (what a model's fused step reproduces)."""
    if type(optimizer) is not torch.optim.SGD or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    return group["momentum"] == 0 and group["weight_decay"] == 0 and not group["maximize"] and not group["fused"]


def learning_rate(
    lr: float,
    schedule: str,
    step: int,
    steps_per_epoch: int,
    epochs: int,
    warmup: float,
    decay_every: int,
    decay: float,
) -> float:
    """The rate for optimiser step ``step`` (0-based): a linear warm-up over ``warmup`` epochs, then
    constant, divided by 1/``decay`` every ``decay_every`` epochs (step), or a cosine to zero at the
    last step (cosine)."""
    warm = warmup * steps_per_epoch
    if step < warm:
        return lr * (step + 1) / warm
    if schedule == "constant":
        return lr
    if schedule == "step":
        return lr * decay ** (step // (decay_every * steps_per_epoch))
    total = epochs * steps_per_epoch
    progress = (step - warm) / max(1.0, total - warm)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
