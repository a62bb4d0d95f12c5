"""The spec of a torch configuration (:class:`TorchSpec`), made once in the driver.

:func:`make_spec` copies the model, optimizer and scheduler through one cloudpickle round
trip (so the optimizer of the copy updates the copy's parameters, and the user's objects are
never touched), checks that the copy ships and trains, and records:

* ``config``: one ``cloudpickle.dumps`` of the module, optimizer and scheduler together, with
  the loss and metrics as the user gave them.  Classes from the user's ``__main__`` (a
  script, ``python -``, a notebook) or from a module the workers cannot import by name are
  shipped by value.
* ``initial_state``: the state bytes (``state.py``) of the copy.
* ``arch_key``: which configurations may share one built model in a worker.  A worker
  swaps state in with ``load_state_dict``, which restores every parameter and persistent
  buffer, the whole optimizer state *and its param groups' hyperparameters* (lr, betas,
  weight decay, momentum...), and the scheduler's whole ``__dict__`` except the optimizer
  (``gamma``, ``step_size``, ``base_lrs``, ...).  So the key hashes a cloudpickle of
  everything else: the module with its restorable tensors replaced by (type, shape, dtype,
  requires_grad) -- its class and code, every other attribute (a Dropout's ``p``, hooks,
  plain tensor attributes and non-persistent buffers by value) --; the optimizer's class, the
  non-numeric entries of its defaults and which parameters (by position) each param group
  holds; the scheduler's class(es) and what its ``state_dict`` does not return as is (e.g.
  LambdaLR's functions, which it saves as None); the loss, metrics, scheduler interval and
  the input shapes.  Configurations that differ only in weights, learning rate, betas,
  weight decay, momentum or a StepLR's gamma share a key; a different layer width, Dropout
  rate, activation, optimizer class, loss, metric or LambdaLR function does not.
"""

from __future__ import annotations

import hashlib
import io
import numbers
from dataclasses import dataclass
from typing import Any, Sequence

import cloudpickle
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cerebro.errors import CerebroError
from cerebro.frameworks.arrays import LabelUse, check_label_fit, feature_arrays, target_arrays
from cerebro.frameworks.base import Spec
from cerebro.frameworks.shipping import shipped_by_value

from .estimator import (
    OWNER,
    check_optimizer_params,
    check_scheduler,
    loss_list,
    metric_names_for,
    split_scheduler,
)
from .model import CONFIG_FORMAT, CONFIG_VERSION, TorchModel, as_outputs, model_from_config, to_tensor
from .state import pack_state

__all__ = ["TorchSpec", "make_spec", "arch_key", "unpicklable_part"]

INPUT_DTYPE = "float32"


@dataclass(frozen=True, repr=False)
class TorchSpec(Spec):
    """Everything a worker needs to build one torch configuration's model (picklable bytes)."""

    output_widths: tuple[int, ...] = ()
    interval: str | None = None
    framework: str = "torch"

    def info(self) -> dict[str, Any]:
        return {"input_shapes": self.input_shapes, "input_dtypes": self.input_dtypes,
                "output_widths": self.output_widths}


# ------------------------------------------------------------------ shipping code by value



def _fails_to_pickle(obj: Any) -> Exception | None:
    try:
        cloudpickle.loads(cloudpickle.dumps(obj))
    except Exception as exc:  # noqa: BLE001 - any failure means it cannot ship
        return exc
    return None


def unpicklable_part(module: nn.Module) -> tuple[str, Any, Exception] | None:
    """(``path.attribute``, value, error) of the first attribute of ``module`` or a submodule that
    cannot be pickled; None if every attribute can."""
    for path, sub in module.named_modules():
        for key, value in vars(sub).items():
            if key in ("_modules", "_parameters", "_buffers"):
                continue
            candidates = value.items() if isinstance(value, dict) and key.startswith("_") else [(None, value)]
            for inner, item in candidates:
                exc = _fails_to_pickle(item)
                if exc is not None:
                    where = f"{path}.{key}" if path else key
                    if inner is not None:
                        where += f"[{inner!r}]"
                    return where, item, exc
    return None


def _ship_error(what: str, obj: Any, exc: Exception) -> CerebroError:
    detail = ""
    if isinstance(obj, nn.Module):
        part = unpicklable_part(obj)
        if part is not None:
            where, value, exc = part
            detail = f" its attribute {where!r} (a {type(value).__module__}.{type(value).__qualname__})"
    return CerebroError(
        f"The {what} ({type(obj).__module__}.{type(obj).__qualname__}) cannot be sent to the worker processes:"
        f"{detail or ' it'} cannot be pickled ({type(exc).__name__}: {exc}). cerebro ships every "
        "configuration with cloudpickle: define classes and functions at module level (or in the "
        "script itself) and make the object picklable (create locks, open files, connections and "
        "the like inside forward, or give the class __getstate__/__setstate__)."
    )


def _dumps(obj: Any) -> bytes:
    return cloudpickle.dumps(obj, protocol=5)


# ------------------------------------------------------------------ arch_key


def _hyperparameter(value: Any) -> bool:
    if isinstance(value, (numbers.Number, torch.Tensor)):
        return True
    return isinstance(value, (list, tuple)) and all(_hyperparameter(v) for v in value)


def _holds_scheduler(value: Any) -> bool:
    if isinstance(value, torch.optim.lr_scheduler.LRScheduler):
        return True
    return isinstance(value, (list, tuple)) and any(_holds_scheduler(v) for v in value)


class _KeyPickler(cloudpickle.Pickler):
    """cloudpickle with what ``load_state`` restores replaced by its structure (see module doc)."""

    def __init__(self, file: Any, module: nn.Module) -> None:
        super().__init__(file, protocol=5)
        self.restorable = {id(t) for t in module.state_dict(keep_vars=True).values()}
        self.positions = {id(p): i for i, p in enumerate(module.parameters())}

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            if id(obj) in self.restorable:
                return ("tensor", type(obj).__name__, tuple(obj.shape), str(obj.dtype), bool(obj.requires_grad))
            return None
        if isinstance(obj, torch.optim.Optimizer):
            defaults = {k: v for k, v in obj.defaults.items() if not _hyperparameter(v)}
            groups = [
                (tuple(self.positions.get(id(p), -1) for p in g["params"]), tuple(sorted(k for k in g if k != "params")))
                for g in obj.param_groups
            ]
            return ("optimizer", type(obj), defaults, groups)
        if isinstance(obj, torch.optim.lr_scheduler.LRScheduler):
            # load_state_dict restores what state_dict returns: an attribute it returns as is
            # (not a placeholder, such as LambdaLR's [None] for its functions) is state.
            saved = obj.state_dict()
            rest = {k: v for k, v in vars(obj).items()
                    if k != "optimizer" and (saved.get(k, saved) is not v or _holds_scheduler(v))}
            return ("lr_scheduler", type(obj), rest)
        return None


def arch_key(module: nn.Module, optimizer: Any, scheduler: Any, rest: dict[str, Any]) -> str:
    """The worker-cache key of a configuration (see the module docstring)."""
    buffer = io.BytesIO()
    _KeyPickler(buffer, module).dump(
        {"key": 1, "torch": torch.__version__, "module": module, "optimizer": optimizer, "scheduler": scheduler, **rest}
    )
    return hashlib.sha256(buffer.getvalue()).hexdigest()[:32]


# ------------------------------------------------------------------ make_spec


def _check_input_shapes(input_shapes: Any) -> tuple[tuple[int | None, ...], ...]:
    expected = "a list of input shapes without the batch dimension, e.g. [(64,)]"
    try:
        shapes = tuple(tuple(None if d is None else int(d) for d in shape) for shape in input_shapes)
    except (TypeError, ValueError):
        raise TypeError(f"input_shapes must be {expected}; got {input_shapes!r}.") from None
    if not shapes or any(d is not None and d < 1 for s in shapes for d in s):
        raise ValueError(f"input_shapes must be {expected}; got {input_shapes!r}.")
    return shapes


def _private_copies(estimator: Any) -> tuple[nn.Module, Any, Any, str | None]:
    """The model, optimizer and scheduler as one cloudpickle round trip made them."""
    model, optimizer = estimator.model, estimator.optimizer
    scheduler_arg, interval = split_scheduler(estimator.lr_scheduler)
    opt_instance = isinstance(optimizer, torch.optim.Optimizer)
    sched_instance = isinstance(scheduler_arg, torch.optim.lr_scheduler.LRScheduler)
    bundle = (model, optimizer if opt_instance else None, scheduler_arg if sched_instance else None)
    try:
        copy_model, copy_opt, copy_sched = cloudpickle.loads(_dumps(bundle))
    except Exception as exc:
        for what, obj in (("model", model), ("optimizer", bundle[1]), ("lr_scheduler", bundle[2])):
            if obj is not None and _fails_to_pickle(obj) is not None:
                raise _ship_error(what, obj, exc) from exc
        raise _ship_error("model", model, exc) from exc
    if not opt_instance:
        try:
            copy_opt = optimizer(copy_model.parameters())
        except Exception as exc:
            raise CerebroError(
                f"The 'optimizer' callable of {OWNER} failed when called with model.parameters(): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(copy_opt, torch.optim.Optimizer):
            raise TypeError(
                f"The 'optimizer' callable of {OWNER} must return a torch.optim.Optimizer; it returned "
                f"{type(copy_opt).__name__}."
            )
    check_optimizer_params(copy_model, copy_opt)
    if scheduler_arg is not None:
        if not sched_instance:
            try:
                copy_sched = scheduler_arg(copy_opt)
            except Exception as exc:
                raise CerebroError(
                    f"The 'lr_scheduler' callable of {OWNER} failed when called with the optimizer: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        check_scheduler(copy_sched, copy_opt)
    return copy_model, copy_opt, copy_sched, interval


def _forward_check(model: TorchModel, inputs: list[torch.Tensor], describe: str) -> list[torch.Tensor]:
    try:
        output = model.module(*inputs)
    except Exception as exc:
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        raise CerebroError(
            f"The model's forward pass fails on {describe} of shape {shapes} "
            f"(input_shapes {list(model.input_shapes)}): {type(exc).__name__}: {exc}"
        ) from exc
    return as_outputs(output, model.num_outputs)


def _scalar_check(value: Any, what: str, output: torch.Tensor, tensor_only: bool) -> None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise CerebroError(
                f"The {what} returned a tensor of shape {tuple(value.shape)} for the model's output of shape "
                f"{tuple(output.shape)}; it must return a scalar (reduce it over the batch, e.g. with .mean())."
            )
        return
    if tensor_only or not isinstance(value, numbers.Real):
        raise CerebroError(
            f"The {what} returned {type(value).__name__}; it must return a scalar "
            + ("torch.Tensor (so that it can be back-propagated)." if tensor_only else "tensor or number.")
        )


# Loss callables given as themselves (kind "raw": the target goes to them as it comes) whose
# labels are still class indices or binary values.
_CLASS_FUNCTIONS = (F.cross_entropy, F.nll_loss)
_BINARY_FUNCTIONS = (F.binary_cross_entropy, F.binary_cross_entropy_with_logits)
_BINARY_MODULES = (nn.BCELoss, nn.BCEWithLogitsLoss)
_BINARY_NAMES = ("bce", "bce_with_logits")
_DEFAULT_IGNORE_INDEX = -100  # F.cross_entropy's and F.nll_loss's


def label_use(loss: Any, output: torch.Tensor, target: torch.Tensor, column: str, what: str) -> LabelUse | None:
    """How ``loss`` (an :class:`OutputLoss`) uses label column ``column`` for ``output``: class
    indices along dim 1 for ``cross_entropy``/``nll`` (and their modules and functions), values
    in [0, 1] for the binary cross entropies; None for any other loss, or for cross entropy
    against class probabilities (a float target of the output's shape)."""
    spec = loss.spec
    values = int(output[0].numel()) if output.ndim else 1
    if loss.kind == "class" or any(spec is f for f in _CLASS_FUNCTIONS):
        nll = spec == "nll" if isinstance(spec, str) else (isinstance(spec, nn.NLLLoss) or spec is F.nll_loss)
        if not nll and target.is_floating_point() and tuple(target.shape) == tuple(output.shape):
            return None  # class probabilities, not indices
        classes = int(output.shape[1]) if output.ndim >= 2 else None
        ignore = getattr(spec, "ignore_index", _DEFAULT_IGNORE_INDEX)
        return LabelUse(column, loss.label, "class", what, classes=classes, values=values, rank=int(output.ndim),
                        ignore=ignore)
    if isinstance(spec, str):
        binary = spec in _BINARY_NAMES
    else:
        binary = isinstance(spec, _BINARY_MODULES) or any(spec is f for f in _BINARY_FUNCTIONS)
    if binary:
        return LabelUse(column, loss.label, "binary", what, values=values, rank=int(output.ndim))
    return None


def _sample_check(model: TorchModel, sample: Any) -> list[torch.Tensor]:
    """One forward pass, the label checks, the loss and every metric on the sample rows; the outputs."""
    x = feature_arrays(model.input_shapes, model.input_dtypes, sample.features, sample.feature_columns)
    y = target_arrays(model.num_outputs, sample.labels, sample.label_columns)
    inputs = [to_tensor(a, model.device, model.float_dtype) for a in (x if isinstance(x, list) else [x])]
    targets = [to_tensor(a, model.device, None) for a in (y if isinstance(y, list) else [y])]
    outputs = _forward_check(model, inputs, f"{inputs[0].shape[0]} sample rows of the feature columns "
                                            f"{list(sample.feature_columns)}")
    columns = list(sample.label_columns)
    uses = []
    for i, (loss, output, target) in enumerate(zip(model.losses, outputs, targets)):
        what = f"The model's output{'' if len(outputs) == 1 else f' {i}'} of shape {tuple(output.shape)}"
        use = label_use(loss, output, target, columns[i], what)
        if use is not None:
            uses.append(use)
    check_label_fit(uses, sample.labels, getattr(sample, "label_stats", None))
    for i, (loss, output, target) in enumerate(zip(model.losses, outputs, targets)):
        fits = (f"the model's output{'' if len(outputs) == 1 else f' {i}'} of shape {tuple(output.shape)} "
                f"does not fit label column {columns[i]!r} (values shape {tuple(target.shape)}, {target.dtype})")
        try:
            adapted = loss.target(output, target)
            value = loss(output, adapted)
        except Exception as exc:
            raise CerebroError(f"{fits[0].upper()}{fits[1:]} with loss {loss.label}: {type(exc).__name__}: {exc}") from exc
        _scalar_check(value, f"loss {loss.label}", output, tensor_only=True)
        for metric in model.metrics:
            if metric.output != i:
                continue
            try:
                result = metric(output, adapted)
            except Exception as exc:
                raise CerebroError(
                    f"The metric {metric.label} fails on the model's output of shape {tuple(output.shape)} and "
                    f"label column {columns[i]!r} (values shape {tuple(target.shape)}): {type(exc).__name__}: {exc}"
                ) from exc
            _scalar_check(result, f"metric {metric.label}", output, tensor_only=False)
    return outputs


def _zeros_check(model: TorchModel) -> list[torch.Tensor]:
    if any(d is None for s in model.input_shapes for d in s):
        raise CerebroError(
            f"Cannot find the output widths of a model with input shapes {list(model.input_shapes)} without a "
            "data sample: give make_spec a DataSample."
        )
    inputs = [torch.zeros((2, *s), dtype=model.float_dtype) for s in model.input_shapes]
    return _forward_check(model, inputs, "zeros")


def make_spec(estimator: Any, input_shapes: Sequence[Sequence[int]], sample: Any = None) -> TorchSpec:
    """The spec of ``estimator`` for inputs of ``input_shapes`` (without the batch dimension).

    ``sample`` (a :class:`cerebro.frameworks.base.DataSample`) is used for one forward pass, the
    loss and the metrics on a few rows in eval mode without gradients, under a forked CPU RNG,
    so the global random state is the same afterwards.  Without it, the forward pass runs on
    zeros (for the output widths) and the loss is not checked.
    """
    shapes = _check_input_shapes(input_shapes)
    dtypes = (INPUT_DTYPE,) * len(shapes)
    losses = loss_list(estimator.loss)
    metrics = list(estimator.metrics)
    ship = [estimator.model, estimator.optimizer, split_scheduler(estimator.lr_scheduler)[0], losses, metrics]
    with shipped_by_value([*estimator.model.modules(), *ship[1:]]):
        module, optimizer, scheduler, interval = _private_copies(estimator)
        parts = {
            "format": CONFIG_FORMAT,
            "version": CONFIG_VERSION,
            "module": module,
            "optimizer": optimizer,
            "scheduler": scheduler,
            "interval": interval,
            "loss": estimator.loss,
            "metrics": metrics,
            "input_shapes": shapes,
            "input_dtypes": dtypes,
        }
        try:
            config = _dumps(parts)
        except Exception as exc:
            for what, obj in [("loss", x) for x in losses] + [("metric", m) for m in metrics]:
                if _fails_to_pickle(obj) is not None:
                    raise _ship_error(what, obj, exc) from exc
            raise _ship_error("configuration", parts, exc) from exc
        key = arch_key(module, optimizer, scheduler, {
            "interval": interval, "loss": estimator.loss, "metrics": metrics,
            "input_shapes": shapes, "input_dtypes": dtypes,
        })
    initial_state = pack_state(module, optimizer, scheduler)
    with torch.random.fork_rng(devices=[]):
        check = model_from_config(config, "cpu", {"input_shapes": shapes, "input_dtypes": dtypes})
        try:
            check.load(initial_state)
        except CerebroError as exc:
            raise CerebroError(
                f"The state of this configuration does not survive a round trip through torch.save / "
                f"torch.load(weights_only=True): {exc}. Optimizer and scheduler state_dicts may hold only tensors, "
                "numbers, strings and containers of them."
            ) from exc
        check.module.eval()
        with torch.no_grad():
            outputs = _sample_check(check, sample) if sample is not None else _zeros_check(check)
    widths = tuple(int(np.prod(o.shape[1:])) if o.ndim > 1 else 1 for o in outputs)
    k = len(losses)
    return TorchSpec(
        config=config,
        arch_key=key,
        initial_state=initial_state,
        batch_size=int(estimator.batch_size),
        num_inputs=len(shapes),
        input_shapes=shapes,
        input_dtypes=dtypes,
        num_outputs=k,
        output_names=("output",) if k == 1 else tuple(f"output_{i}" for i in range(k)),
        output_widths=widths,
        metric_names=tuple(metric_names_for(estimator.loss, metrics)),
        num_parameters=int(sum(p.numel() for p in module.parameters())),
        interval=interval,
    )
