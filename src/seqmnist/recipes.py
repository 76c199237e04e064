"""Recipes: the optimiser and the learning rate at every step, from a run's settings.

The learning rate is a function of the step alone (warm-up, then the schedule), set before every
step, so a resumed run needs no scheduler state to continue exactly; the plateau schedule's also of
the validation accuracies so far, which the run keeps in its metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fnmatch import fnmatch
from typing import TYPE_CHECKING

import torch

from .errors import SeqmnistError
from .model import SequenceClassifier

if TYPE_CHECKING:  # config imports this module's choices
    from .config import RecipeSettings

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "step", "cosine", "plateau")
CLIP_MODES = ("norm", "value")


class EngineSGD(torch.optim.SGD):
    """Plain SGD, p <- p - lr grad, whose gradients come from the model's own fused pass (the CPU
    engine's two compiled passes) rather than from autograd.

    Chosen by :func:`make_optimizer` for plain SGD where the model has such a pass; the training loop
    then calls :meth:`step_on` with the batch. The update is ``p.add_(grad, alpha=-lr)``, the kernel
    ``torch.optim.SGD`` runs for a tensor without momentum or weight decay, so the weights are the
    same bits (tests hold them equal); what it saves is autograd's and the optimiser's machinery,
    0.5-1.2 ms a batch, most of a small model's batch. Its parameter groups are SGD's, so a
    checkpoint loads into either, and :meth:`step` after a ``backward()`` is SGD's own step.
    """

    def __init__(self, model: SequenceClassifier, lr: float):
        super().__init__(model.parameters(), lr=lr)
        self.model = model

    @torch.no_grad()
    def step_on(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One step on sequences x with labels y; returns the batch's mean loss."""
        loss, grads = self.model.fused_gradients(x, y)
        (group,) = self.param_groups
        for parameter, grad in zip(group["params"], grads, strict=True):
            parameter.add_(grad, alpha=-group["lr"])
        return loss


def make_optimizer(model: SequenceClassifier, recipe: RecipeSettings, own_step: bool = False) -> torch.optim.Optimizer:
    """The recipe's optimiser over the model's parameters: sgd (plain, the seed's), momentum and nesterov
    (SGD with momentum), adam, adamw (decoupled weight decay, Loshchilov & Hutter 2019), rmsprop (Tieleman &
    Hinton 2012). With ``own_step`` (nothing is to come between the gradient and the update: the fast path,
    no clipping), plain SGD is :class:`EngineSGD` where the model has a fused pass. The model's recurrent
    parameters (its ``recurrent``) may learn at ``recurrent_lr`` times the rate and without weight decay, as
    IndRNN's and S4's recipes do; its biases without weight decay, as IndRNN's does."""
    r = recipe
    groups = parameter_groups(model, r.weight_decay, r.recurrent_lr, r.decay_recurrent, r.decay_biases)
    if r.optimizer == "sgd":
        if own_step and not r.weight_decay and len(groups) == 1 and model.has_fused_pass():
            return EngineSGD(model, r.lr)
        return torch.optim.SGD(groups, lr=r.lr)
    if r.optimizer in ("momentum", "nesterov"):
        return torch.optim.SGD(groups, lr=r.lr, momentum=r.momentum, nesterov=r.optimizer == "nesterov")
    if r.optimizer == "adam":
        return torch.optim.Adam(groups, lr=r.lr)
    if r.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=r.lr)
    if r.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=r.lr)
    raise SeqmnistError(f"--optimizer must be one of {', '.join(OPTIMIZERS)} (got {r.optimizer!r})")


def recurrent_names(model: SequenceClassifier) -> set[str]:
    """The names of the parameters the model declares recurrent (``model.recurrent``: names or patterns)."""
    return {name for name, _ in model.named_parameters() if any(fnmatch(name, p) for p in model.recurrent)}


def bias_names(model: SequenceClassifier) -> set[str]:
    """The vectors that are not recurrent weights: biases, and a normalisation's scale and shift."""
    return {name for name, p in model.named_parameters() if p.dim() == 1} - recurrent_names(model)


def parameter_groups(
    model: SequenceClassifier,
    weight_decay: float,
    recurrent_lr: float,
    decay_recurrent: bool,
    decay_biases: bool = True,
) -> list[dict]:
    """One group of every parameter where the recurrent ones and the biases are treated as the rest (so a
    run's optimiser state has the one group it always had); else the others, then the recurrent ones with
    their own rate (``lr_scale``, which the schedule multiplies) and decay, then (without ``decay_biases``)
    the biases without decay."""
    if recurrent_lr == 1.0 and decay_recurrent and decay_biases:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay, "lr_scale": 1.0}]
    recurrent = recurrent_names(model)
    biases = set() if decay_biases else bias_names(model)
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if n not in recurrent | biases], "weight_decay": weight_decay, "lr_scale": 1.0},
        {
            "params": [p for n, p in named if n in recurrent],
            "weight_decay": weight_decay if decay_recurrent else 0.0,
            "lr_scale": recurrent_lr,
        },
    ]
    if biases:
        groups.append({"params": [p for n, p in named if n in biases], "weight_decay": 0.0, "lr_scale": 1.0})
    return groups


def clip_gradients(parameters: list[torch.nn.Parameter], clip: float, mode: str) -> None:
    """Clip the gradients: their norm to ``clip`` (norm), or each element to +-``clip`` (value, IndRNN's)."""
    if mode == "norm":
        torch.nn.utils.clip_grad_norm_(parameters, clip)
    else:
        torch.nn.utils.clip_grad_value_(parameters, clip)


def plateau_cuts(val_accs: Sequence[float], patience: int) -> int:
    """How often the plateau schedule has cut the rate after these validation accuracies (NaN: an epoch
    not evaluated): once for every ``patience`` evaluations in a row without a better one than the best
    so far, counting anew after a cut. Unlike IndRNN's code, the patience does not halve after a cut
    and the best weights are not reloaded."""
    cuts, best, waited = 0, -math.inf, 0
    for acc in val_accs:
        if math.isnan(acc):
            continue
        if acc > best:
            best, waited = acc, 0
            continue
        waited += 1
        if waited == patience:
            cuts, waited = cuts + 1, 0
    return cuts


def learning_rate(recipe: RecipeSettings, step: int, cuts: int = 0) -> float:
    """The rate for optimiser step ``step`` (0-based) of a run of ``recipe.batches`` steps an epoch: a linear
    warm-up over ``warmup_epochs`` (``warmup``, at most a quarter of the run), then constant, divided by
    1/``decay`` every ``decay_every`` epochs (step), a cosine to zero at the last step (cosine), or times
    ``decay`` for each of the plateau's ``cuts`` (:func:`plateau_cuts`)."""
    r, per_epoch = recipe, recipe.batches
    warm = r.warmup_epochs * per_epoch
    if step < warm:
        return r.lr * (step + 1) / warm
    if r.schedule == "constant":
        return r.lr
    if r.schedule == "step":
        return r.lr * r.decay ** (step // (r.decay_every * per_epoch))
    if r.schedule == "plateau":
        return r.lr * r.decay**cuts
    total = r.epochs * per_epoch
    progress = (step - warm) / max(1.0, total - warm)
    return r.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
