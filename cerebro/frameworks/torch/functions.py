"""Losses and metrics as the workers call them: names resolved to torch functions, targets adapted.

A named loss (and the matching ``torch.nn`` loss module) adapts the target tensor to the
output before the call:

* ``"class"`` losses (``cross_entropy``, ``nll``, ``nn.CrossEntropyLoss``, ``nn.NLLLoss``):
  integer class labels as int64 (a ``(n, 1)`` label column becomes ``(n,)``); a float target
  with the output's shape is kept as class probabilities (cross entropy only);
* ``"value"`` losses (``mse``, ``l1``/``mae``, ``huber``, ``smooth_l1``, ``bce``,
  ``bce_with_logits`` and their modules): the output's float dtype and, when the target has as
  many values as the output (output ``(n, 1)``, label ``(n,)``), the output's shape.  A target
  of another size is refused (torch would broadcast it silently).

Any other callable gets the target as it comes.  Metric callables get the same (output,
target) pair as the loss of their output.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .estimator import loss_label, loss_list, metric_names_for, metric_pairs

__all__ = ["OutputLoss", "Metric", "resolve_losses", "resolve_metrics", "adapt_target"]

_FUNCTIONAL: dict[str, tuple[str, Callable]] = {
    "cross_entropy": ("class", F.cross_entropy),
    "nll": ("class", F.nll_loss),
    "mse": ("value", F.mse_loss),
    "l1": ("value", F.l1_loss),
    "mae": ("value", F.l1_loss),
    "huber": ("value", F.huber_loss),
    "smooth_l1": ("value", F.smooth_l1_loss),
    "bce": ("value", F.binary_cross_entropy),
    "bce_with_logits": ("value", F.binary_cross_entropy_with_logits),
}

_CLASS_MODULES = (nn.CrossEntropyLoss, nn.NLLLoss)
_VALUE_MODULES = (nn.MSELoss, nn.L1Loss, nn.HuberLoss, nn.SmoothL1Loss, nn.BCELoss, nn.BCEWithLogitsLoss)


def target_kind(loss: Any) -> str:
    """``"class"``, ``"value"`` or ``"raw"`` (passed through) for a loss as the user gave it."""
    if isinstance(loss, str):
        return _FUNCTIONAL[loss][0]
    if isinstance(loss, _CLASS_MODULES):
        return "class"
    if isinstance(loss, _VALUE_MODULES):
        return "value"
    return "raw"


def adapt_target(kind: str, output: torch.Tensor, target: torch.Tensor, soft_ok: bool = True) -> torch.Tensor:
    """The target as a loss of ``kind`` expects it for ``output`` (see the module docstring)."""
    if kind == "class":
        if soft_ok and target.is_floating_point() and tuple(target.shape) == tuple(output.shape):
            return target.to(output.dtype)
        if target.ndim == output.ndim and target.ndim >= 2 and target.shape[1] == 1:
            target = target.reshape(target.shape[0], *target.shape[2:])
        return target.long()
    if kind == "value":
        if output.is_floating_point() and target.dtype != output.dtype:
            target = target.to(output.dtype)
        if tuple(target.shape) != tuple(output.shape):
            if target.numel() != output.numel():
                raise ValueError(
                    f"the target of shape {tuple(target.shape)} does not match the output of shape "
                    f"{tuple(output.shape)} (a loss on values needs one target value per output value)"
                )
            target = target.reshape(output.shape)
        return target
    return target


class OutputLoss:
    """The loss of one output: the user's loss (name, module or callable) plus target adaptation."""

    def __init__(self, loss: Any, device: torch.device | None = None) -> None:
        self.spec = loss
        self.label = loss_label(loss)
        self.kind = target_kind(loss)
        self.logits = loss == "bce_with_logits" if isinstance(loss, str) else isinstance(loss, nn.BCEWithLogitsLoss)
        if isinstance(loss, str):
            self.fn = _FUNCTIONAL[loss][1]
        else:
            if isinstance(loss, nn.Module) and device is not None:
                loss = loss.to(device)
            self.fn = loss
        self.soft_ok = loss != "nll" and not isinstance(loss, nn.NLLLoss)

    def target(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return adapt_target(self.kind, output, target, self.soft_ok)

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(output, target)


def _accuracy(logits: bool) -> Callable:
    threshold = 0.0 if logits else 0.5

    def accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.ndim >= 2 and output.shape[1] > 1:  # class scores along dim 1, as cross_entropy
            predicted = output.argmax(dim=1)
            if tuple(target.shape) == tuple(output.shape):  # one-hot / probabilities
                target = target.argmax(dim=1)
            elif target.ndim == output.ndim:  # (n, 1, ...) labels
                target = target.reshape(predicted.shape)
            return (predicted == target.reshape(predicted.shape).long()).double().mean()
        predicted = output.reshape(-1) > threshold
        return (predicted == (target.reshape(-1) > 0.5)).double().mean()

    return accuracy


def _mae(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    target = adapt_target("value", output, target)
    return (output - target).abs().mean()


def _mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    target = adapt_target("value", output, target)
    return (output - target).square().mean()


class Metric:
    """One reported metric: its name, the output it reads and the function (a per-batch mean)."""

    def __init__(self, name: str, output: int, fn: Callable, label: str) -> None:
        self.name = name
        self.output = output
        self.fn = fn
        self.label = label

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> Any:
        return self.fn(output, target)


def resolve_losses(loss: Any, device: torch.device | None = None) -> list[OutputLoss]:
    return [OutputLoss(item, device) for item in loss_list(loss)]


def resolve_metrics(loss: Any, metrics: Any, losses: list[OutputLoss]) -> list[Metric]:
    """The metrics in the order of :func:`metric_names_for` (after ``loss`` and per-output losses)."""
    names = metric_names_for(loss, metrics)[1 + (len(losses) if len(losses) > 1 else 0):]
    out = []
    pairs = metric_pairs(loss, metrics)
    for name, (index, metric) in zip(names, pairs):
        if isinstance(metric, str):
            if metric in ("accuracy", "acc"):
                fn = _accuracy(losses[index].logits)
            elif metric == "mae":
                fn = _mae
            else:
                fn = _mse
            label = repr(metric)
        else:
            fn = metric
            label = getattr(metric, "__name__", None) or type(metric).__name__
        out.append(Metric(name, index, fn, label))
    return out
