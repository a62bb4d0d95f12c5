"""What a PyTorch model is to cerebro: :class:`TorchEstimator` and the names it understands.

``TorchEstimator.__init__`` only validates and stores its arguments (scikit-learn style);
everything that needs the data (one forward pass, the loss on a few rows) happens in
:func:`cerebro.frameworks.torch.spec.make_spec`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Sequence

import torch
from torch import nn

from cerebro._checks import check_int, param_error
from cerebro.frameworks.base import snake_case

__all__ = [
    "TorchEstimator",
    "LOSS_NAMES",
    "METRIC_NAMES",
    "INTERVALS",
    "loss_list",
    "loss_label",
    "metric_label",
    "metric_names_for",
    "metric_pairs",
    "split_scheduler",
    "model_parameter_ids",
    "check_optimizer_params",
    "check_scheduler",
]

OWNER = "TorchEstimator"

#: loss names -> the torch.nn.functional loss they stand for (see ``functions.py``)
LOSS_NAMES = ("cross_entropy", "nll", "mse", "l1", "mae", "huber", "smooth_l1", "bce", "bce_with_logits")
#: metric names; ``acc`` is an alias of ``accuracy`` (reported under the name given)
METRIC_NAMES = ("accuracy", "acc", "mae", "mse")
#: when a learning-rate scheduler steps: once per MOP epoch, or after every batch
INTERVALS = ("epoch", "step")
_SCHEDULER_KEYS = ("scheduler", "interval")


def loss_label(loss: Any) -> str:
    """How a loss is named in messages: the name, the module's class, the function's name."""
    if isinstance(loss, str):
        return repr(loss)
    if isinstance(loss, nn.Module):
        return type(loss).__name__
    return getattr(loss, "__name__", None) or type(loss).__name__


def metric_label(metric: Any) -> str:
    """The reported name of a metric: the name given, or a callable's snake-cased name."""
    if isinstance(metric, str):
        return metric
    name = getattr(metric, "__name__", None)
    if isinstance(name, str) and name:
        return snake_case(name)
    return snake_case(type(metric).__name__)


def loss_list(loss: Any) -> list:
    """One loss per model output: a list/tuple of losses means one output per entry."""
    return list(loss) if isinstance(loss, (list, tuple)) else [loss]


def metric_pairs(loss: Any, metrics: Sequence[Any]) -> list[tuple[int, Any]]:
    """``(output index, metric)`` for every reported metric, in order.

    A flat list applies to every output; with several outputs, a list of lists (one list per
    output) gives each output its own metrics.
    """
    k = len(loss_list(loss))
    metrics = list(metrics)
    if metrics and all(isinstance(m, (list, tuple)) for m in metrics):
        return [(i, m) for i, group in enumerate(metrics) for m in group]
    return [(i, m) for i in range(k) for m in metrics]


def metric_names_for(loss: Any, metrics: Sequence[Any]) -> list[str]:
    """``["loss", ...]`` for this loss and metrics.

    One output: ``loss`` then every metric's name.  Several outputs (``loss`` a list of k
    losses): ``loss`` (their sum), ``output_<i>_loss`` for each output, then
    ``output_<i>_<metric>`` for each metric of each output.  Repeated names get ``_1``, ``_2``...
    """
    k = len(loss_list(loss))
    names = ["loss"]
    pairs = metric_pairs(loss, metrics)
    if k == 1:
        candidates = [metric_label(m) for _, m in pairs]
    else:
        names += [f"output_{i}_loss" for i in range(k)]
        candidates = [f"output_{i}_{metric_label(m)}" for i, m in pairs]
    seen: dict[str, int] = {name: 1 for name in names}
    for name in candidates:
        if name in seen:
            index = seen[name]
            seen[name] += 1
            name = f"{name}_{index}"
        seen[name] = 1
        names.append(name)
    return names


def split_scheduler(lr_scheduler: Any) -> tuple[Any, str | None]:
    """``(scheduler or callable or None, interval)`` of a validated ``lr_scheduler`` argument."""
    if lr_scheduler is None:
        return None, None
    if isinstance(lr_scheduler, Mapping):
        return lr_scheduler["scheduler"], lr_scheduler.get("interval", "epoch")
    return lr_scheduler, "epoch"


def model_parameter_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters()}


def check_optimizer_params(model: nn.Module, optimizer: Any, what: str = "optimizer") -> None:
    """Raise unless every parameter ``optimizer`` updates is a parameter of ``model`` (by identity)."""
    own = model_parameter_ids(model)
    foreign = sum(1 for group in optimizer.param_groups for p in group["params"] if id(p) not in own)
    if foreign:
        total = sum(len(group["params"]) for group in optimizer.param_groups)
        raise ValueError(
            f"The '{what}' parameter of {OWNER} must be built on this model's parameters, e.g. "
            f"torch.optim.{type(optimizer).__name__}(model.parameters(), ...); {foreign} of the "
            f"{total} parameters it updates are not parameters of the model (was it built on another "
            "copy of the model?). Pass a callable params -> optimizer to build it on each copy."
        )


def check_scheduler(scheduler: Any, optimizer: Any) -> None:
    """Raise unless ``scheduler`` is an LRScheduler that cerebro can step on ``optimizer``."""
    lr_sched = torch.optim.lr_scheduler
    if isinstance(scheduler, lr_sched.ReduceLROnPlateau):
        raise param_error(
            OWNER, "lr_scheduler",
            "a scheduler that depends on the epoch or step count only (ReduceLROnPlateau needs a "
            "validation metric at every step, which the workers do not have)",
            scheduler,
        )
    if not isinstance(scheduler, lr_sched.LRScheduler):
        raise param_error(
            OWNER, "lr_scheduler", "a torch.optim.lr_scheduler.LRScheduler (or a callable optimizer -> scheduler)",
            scheduler, TypeError,
        )
    if optimizer is not None and scheduler.optimizer is not optimizer:
        raise ValueError(
            f"The 'lr_scheduler' parameter of {OWNER} must be built on the estimator's optimizer; "
            f"this {type(scheduler).__name__} steps another optimizer."
        )


def _check_loss_item(item: Any) -> None:
    expected = (
        f"an nn.Module, a callable (output, target) -> scalar tensor, or one of the names "
        f"{', '.join(map(repr, LOSS_NAMES))} (a list of them for a model with several outputs)"
    )
    if isinstance(item, str):
        if item not in LOSS_NAMES:
            raise param_error(OWNER, "loss", expected, item)
    elif not callable(item):
        raise param_error(OWNER, "loss", expected, item, TypeError)


def _check_metric(item: Any) -> None:
    expected = (
        f"a sequence of metric names ({', '.join(map(repr, METRIC_NAMES))}) or callables "
        "(output, target) -> scalar"
    )
    if isinstance(item, str):
        if item not in METRIC_NAMES:
            raise ValueError(
                f"The 'metrics' parameter of {OWNER} names an unknown metric {item!r}; "
                f"the known names are {list(METRIC_NAMES)} (or pass a callable (output, target) -> scalar)."
            )
    elif not callable(item):
        raise param_error(OWNER, "metrics", expected, item, TypeError)


class TorchEstimator:
    """What a model is: a ``torch.nn.Module``, its optimizer, its loss and metrics.

    Args:
        model: any ``torch.nn.Module``, including a class defined in the user's script or
            notebook (shipped to the workers by value with cloudpickle).  Its ``forward`` takes
            one tensor per input (a single-input model gets the feature columns concatenated,
            float32, shape ``(batch, width)``: reshape inside the model, e.g. ``nn.Unflatten``)
            and returns one tensor, or a tuple/list of tensors for several outputs.
        optimizer: a ``torch.optim.Optimizer`` built on this model's parameters, or a callable
            ``params -> optimizer`` (called with ``model.parameters()`` when the spec is made).
            Its ``state_dict`` (moments, step counts, per-group hyperparameters) hops with the
            weights.
        loss: an ``nn.Module`` or a callable ``(output, target) -> scalar tensor``, or one of
            the names in :data:`LOSS_NAMES`.  Named losses (and the matching ``nn`` loss modules)
            adapt the target: class labels become int64 for ``cross_entropy``/``nll``; for the
            regression and binary losses the target becomes the output's float dtype and, when
            it has as many values as the output (output ``(n, 1)``, label ``(n,)``), the
            output's shape.  Other callables get the label tensor as it comes.  For a model
            with several outputs, a list with one loss per output; the training loss is their
            sum.
        metrics: names from :data:`METRIC_NAMES` or callables ``(output, target) -> scalar``
            (a mean over the batch), reported as row-weighted means.  ``accuracy``: for an
            output with more than one column, ``argmax(output, 1) == target``; for one column
            (or a vector), ``(output > 0.5) == target``, or ``output > 0`` when the loss is
            ``bce_with_logits``.  With several outputs, a flat list is computed on every output
            and a list of lists (one per output) gives each output its own; they are reported as
            ``output_<i>_<name>``.
        batch_size: rows per gradient step, an int >= 1.
        lr_scheduler: None; a ``torch.optim.lr_scheduler.LRScheduler`` built on ``optimizer``;
            a callable ``optimizer -> scheduler``; or Lightning's dict form
            ``{"scheduler": <scheduler or callable>, "interval": "epoch" | "step"}``.
            ``"epoch"`` (the default) steps once at the end of every MOP epoch (after the
            model's last sub-epoch of the epoch), ``"step"`` after every batch.  Its
            ``state_dict`` hops too.
    """

    framework = "torch"

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        loss: Any,
        metrics: Sequence[Any] = (),
        batch_size: int = 32,
        *,
        lr_scheduler: Any = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise param_error(OWNER, "model", "a torch.nn.Module", model, TypeError)
        if isinstance(optimizer, torch.optim.Optimizer):
            check_optimizer_params(model, optimizer)
        elif not callable(optimizer):
            raise param_error(
                OWNER, "optimizer", "a torch.optim.Optimizer built on model.parameters() or a callable params -> optimizer",
                optimizer, TypeError,
            )
        if isinstance(loss, (list, tuple)):
            if not loss:
                raise param_error(OWNER, "loss", "a loss, or a non-empty list of losses (one per output)", loss)
            for item in loss:
                _check_loss_item(item)
        else:
            _check_loss_item(loss)
        if metrics is None:
            metrics = ()
        if isinstance(metrics, str) or not isinstance(metrics, (list, tuple)):
            raise param_error(OWNER, "metrics", "a list or tuple of metric names or callables", metrics, TypeError)
        if metrics and all(isinstance(m, (list, tuple)) for m in metrics):
            outputs = len(loss_list(loss))
            if outputs == 1 or len(metrics) != outputs:
                raise ValueError(
                    f"The 'metrics' parameter of {OWNER} is a list of {len(metrics)} lists; that form needs a "
                    f"model with as many outputs (a list of {len(metrics)} losses); the loss is for {outputs}."
                )
            for group in metrics:
                for item in group:
                    _check_metric(item)
        else:
            for item in metrics:
                _check_metric(item)
        batch_size = check_int(OWNER, "batch_size", batch_size, minimum=1)
        self._check_lr_scheduler(lr_scheduler, optimizer)
        self.model = model
        self.optimizer = optimizer
        self.loss = loss
        self.metrics = tuple(metrics)
        self.batch_size = batch_size
        self.lr_scheduler = lr_scheduler

    @staticmethod
    def _check_lr_scheduler(lr_scheduler: Any, optimizer: Any) -> None:
        if lr_scheduler is None:
            return
        scheduler = lr_scheduler
        if isinstance(lr_scheduler, Mapping):
            unknown = sorted(set(map(str, lr_scheduler)) - set(_SCHEDULER_KEYS))
            if unknown or "scheduler" not in lr_scheduler:
                raise param_error(
                    OWNER, "lr_scheduler",
                    "a dict with the key 'scheduler' and optionally 'interval' ('epoch' or 'step')"
                    + (f"; unknown keys {unknown}" if unknown else ""),
                    dict(lr_scheduler),
                )
            interval = lr_scheduler.get("interval", "epoch")
            if interval not in INTERVALS:
                raise ValueError(
                    f"The 'interval' of the 'lr_scheduler' parameter of {OWNER} must be 'epoch' or 'step'. "
                    f"Got {interval!r} instead."
                )
            scheduler = lr_scheduler["scheduler"]
        if isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler) or not callable(scheduler):
            if not isinstance(optimizer, torch.optim.Optimizer) and isinstance(
                    scheduler, torch.optim.lr_scheduler.LRScheduler):
                raise ValueError(
                    f"The 'lr_scheduler' parameter of {OWNER} is a scheduler instance, but 'optimizer' is a "
                    "callable: pass the scheduler as a callable optimizer -> scheduler too."
                )
            check_scheduler(scheduler, optimizer if isinstance(optimizer, torch.optim.Optimizer) else None)

    @property
    def interval(self) -> str | None:
        """When the scheduler steps (``"epoch"`` or ``"step"``); None without a scheduler."""
        return split_scheduler(self.lr_scheduler)[1]

    def metric_names(self) -> list[str]:
        """``["loss", ...]``: what every train and evaluation pass of this model reports."""
        return metric_names_for(self.loss, self.metrics)

    def __repr__(self) -> str:
        opt = type(self.optimizer).__name__ if isinstance(self.optimizer, torch.optim.Optimizer) else "<callable>"
        sched = self.lr_scheduler
        if sched is not None:
            inner, interval = split_scheduler(sched)
            sched = f"{type(inner).__name__ if not _is_plain_callable(inner) else '<callable>'}/{interval}"
        losses = [loss_label(x) for x in loss_list(self.loss)]
        return (
            f"TorchEstimator(model={type(self.model).__name__}, optimizer={opt}, "
            f"loss={losses[0] if len(losses) == 1 else losses}, "
            f"metrics={[metric_label(m) for _, m in metric_pairs(self.loss, self.metrics)]}, "
            f"batch_size={self.batch_size}" + (f", lr_scheduler={sched}" if sched is not None else "") + ")"
        )


def _is_plain_callable(obj: Callable) -> bool:
    return not isinstance(obj, (torch.optim.lr_scheduler.LRScheduler, torch.optim.Optimizer))
