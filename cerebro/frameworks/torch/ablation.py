"""Leave-one-component-out variants of a :class:`TorchEstimator` (``AblationStudy``).

Only ``nn.Sequential`` models: a child is dropped by its name in ``named_children()`` (the
names of ``nn.Sequential(OrderedDict(...))`` or the index strings ``"0"``, ``"1"``...; the
remaining children keep their names), and a smaller input replaces the first ``nn.Linear``
by a fresh one taking ``input_width`` features.  The variant gets freshly initialised
parameters (``reset_parameters()`` of every submodule that has one, drawing from torch's
global generator, which the driver seeds), a fresh optimizer of the same class with the same
param-group hyperparameters (a callable optimizer is simply called again), and the same loss,
metrics, batch size and scheduler form.
"""

from __future__ import annotations

import copy
import inspect
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from cerebro.errors import CerebroError

from .estimator import TorchEstimator

__all__ = ["ablate"]

_SKIP_ARGS = ("self", "optimizer", "last_epoch", "verbose")


def _parameter_names(model: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def _fresh_optimizer(optimizer: torch.optim.Optimizer, old: nn.Module, new: nn.Module) -> torch.optim.Optimizer:
    names = _parameter_names(old)
    new_params = dict(new.named_parameters())
    groups = []
    for group in optimizer.param_groups:
        params = [new_params[names[id(p)]] for p in group["params"] if names.get(id(p)) in new_params]
        if not params:
            continue
        hyper = {k: v for k, v in group.items() if k not in ("params", "initial_lr", "param_names")}
        if "initial_lr" in group:  # a scheduler changed lr at construction: start from the base value
            hyper["lr"] = group["initial_lr"]
        hyper = {k: (v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)) for k, v in hyper.items()}
        groups.append({"params": params, **hyper})
    if not groups:
        raise CerebroError("the ablated model has none of the parameters the optimizer updated")
    try:
        return type(optimizer)(groups, **copy.deepcopy(optimizer.defaults))
    except Exception as exc:
        raise CerebroError(
            f"cannot build a fresh {type(optimizer).__name__} for the ablated model ({type(exc).__name__}: {exc}); "
            "pass the optimizer as a callable params -> optimizer instead."
        ) from exc


def _fresh_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer) -> Any:
    cls = type(scheduler)
    hint = ("pass the scheduler as a callable optimizer -> scheduler instead "
            "(e.g. lr_scheduler=lambda opt: StepLR(opt, step_size=1)).")
    kwargs = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name in _SKIP_ARGS:
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or not hasattr(scheduler, name):
            raise CerebroError(f"cannot rebuild the {cls.__name__} scheduler for the ablated model "
                               f"(its argument {name!r} is not an attribute); {hint}")
        kwargs[name] = copy.deepcopy(getattr(scheduler, name))
    try:
        return cls(optimizer, **kwargs)
    except Exception as exc:
        raise CerebroError(f"cannot rebuild the {cls.__name__} scheduler for the ablated model "
                           f"({type(exc).__name__}: {exc}); {hint}") from exc


def _first_weighted(module: nn.Module) -> tuple[nn.Module, str, nn.Module] | None:
    """(parent, attribute name, submodule) of the first submodule (depth first) with parameters of its own."""
    for path, sub in module.named_modules():
        if path and any(True for _ in sub.parameters(recurse=False)):
            parent_path, _, name = path.rpartition(".")
            return (module.get_submodule(parent_path) if parent_path else module), name, sub
    return None


def ablate(estimator: TorchEstimator, *, drop_layer: str | None = None, input_width: int | None = None) -> TorchEstimator:
    """A copy of ``estimator`` without layer ``drop_layer`` and/or taking ``input_width`` features."""
    if not isinstance(estimator, TorchEstimator):
        raise TypeError(f"ablate needs a TorchEstimator; got {type(estimator).__name__}.")
    model = estimator.model
    if not isinstance(model, nn.Sequential):
        raise CerebroError(
            f"ablating a torch model needs an nn.Sequential; the model is a {type(model).__name__}. "
            "Build the variant in estimator_gen_fn instead."
        )
    children = OrderedDict((name, copy.deepcopy(child)) for name, child in model.named_children())
    if drop_layer is not None:
        if drop_layer not in children:
            raise CerebroError(f"the model has no layer named {drop_layer!r}; its layers are {list(children)}")
        del children[drop_layer]
    new_model = nn.Sequential(children)
    new_model.train(model.training)
    if input_width is not None:
        width = int(input_width)
        found = _first_weighted(new_model)
        if found is None or not isinstance(found[2], nn.Linear):
            what = "none" if found is None else type(found[2]).__name__
            raise CerebroError(
                "leaving out a feature column needs a model whose first layer with weights is an nn.Linear; "
                f"this model's is {what}."
            )
        parent, name, linear = found
        setattr(parent, name, nn.Linear(width, linear.out_features, bias=linear.bias is not None,
                                        device=linear.weight.device, dtype=linear.weight.dtype))
    with torch.no_grad():
        for sub in new_model.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
    optimizer = estimator.optimizer
    new_optimizer = _fresh_optimizer(optimizer, model, new_model) if isinstance(optimizer, torch.optim.Optimizer) \
        else optimizer
    lr_scheduler = estimator.lr_scheduler
    if lr_scheduler is not None:
        inner = lr_scheduler["scheduler"] if isinstance(lr_scheduler, dict) else lr_scheduler
        if isinstance(inner, torch.optim.lr_scheduler.LRScheduler):
            inner = _fresh_scheduler(inner, new_optimizer)
        lr_scheduler = {**lr_scheduler, "scheduler": inner} if isinstance(lr_scheduler, dict) else inner
    return TorchEstimator(new_model, new_optimizer, estimator.loss, estimator.metrics, estimator.batch_size,
                          lr_scheduler=lr_scheduler)
