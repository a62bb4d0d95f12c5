"""The model as a worker holds it (:class:`TorchModel`) and what it does: train, evaluate, predict.

A sub-epoch is a pure function of (state, data, seed, batch size, epoch_end): the rows are
permuted by :func:`cerebro.core.seeds.row_order`, ``torch.manual_seed(seed)`` fixes every
random draw of the pass (dropout masks), and nothing else carries over between calls
(optimizer and scheduler state are part of the state bytes).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import cloudpickle
import numpy as np
import torch

from cerebro.core.seeds import row_order
from cerebro.errors import CerebroError

from .functions import Metric, OutputLoss, resolve_losses, resolve_metrics
from .state import load_payload, pack_state, unpack_state

__all__ = ["CONFIG_FORMAT", "CONFIG_VERSION", "TorchModel", "default_device", "model_from_config",
           "train_sub_epoch", "evaluate", "predict", "as_outputs", "to_tensor"]

CONFIG_FORMAT = "cerebro-torch-config"
CONFIG_VERSION = 1
#: set to e.g. "cpu" or "cuda:1" to choose the device workers train on (default: cuda if visible)
DEVICE_ENV = "CEREBRO_TORCH_DEVICE"


def default_device() -> torch.device:
    name = os.environ.get(DEVICE_ENV)
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TorchModel:
    """A built model: the module with its optimizer, scheduler, losses and metrics.

    ``version`` counts state changes (loads and trained batches): the framework's state token.
    """

    def __init__(self, module: torch.nn.Module, optimizer: Any, scheduler: Any, interval: str | None,
                 losses: list[OutputLoss], metrics: list[Metric], device: torch.device,
                 info: dict[str, Any]) -> None:
        self.module = module
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.interval = interval
        self.losses = losses
        self.metrics = metrics
        self.device = device
        self.input_shapes: tuple = tuple(info.get("input_shapes", ()))
        self.input_dtypes: tuple = tuple(info.get("input_dtypes", ()))
        self.num_outputs: int = len(losses)
        self.output_widths: tuple = tuple(info.get("output_widths", ()))
        self.metric_names: tuple = ("loss", *(f"output_{i}_loss" for i in range(len(losses)) if len(losses) > 1),
                                    *(m.name for m in metrics))
        self.version = 0
        self.float_dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)

    def __repr__(self) -> str:
        return (f"TorchModel({type(self.module).__name__}, optimizer={type(self.optimizer).__name__}, "
                f"device={self.device}, version={self.version})")

    def state_bytes(self) -> bytes:
        return pack_state(self.module, self.optimizer, self.scheduler)

    def load(self, data: bytes) -> None:
        self.version += 1  # before: a failed load must not look like the old state
        load_payload(self.module, self.optimizer, self.scheduler, unpack_state(data))
        self.version += 1


def model_from_config(config: bytes, device: torch.device | str = "cpu", info: dict | None = None) -> TorchModel:
    """A fresh :class:`TorchModel` from a spec's config bytes, on ``device``."""
    try:
        parts = cloudpickle.loads(config)
    except Exception as exc:
        raise CerebroError(
            f"Cannot rebuild the torch model from its config: {type(exc).__name__}: {exc}. Classes and "
            "functions it uses must be importable in this process, or defined in the user's script."
        ) from exc
    if not isinstance(parts, dict) or parts.get("format") != CONFIG_FORMAT:
        raise CerebroError("The spec's config is not a cerebro torch config.")
    if parts.get("version") != CONFIG_VERSION:
        raise CerebroError(f"The torch config has version {parts.get('version')!r}; this cerebro reads {CONFIG_VERSION}.")
    device = torch.device(device)
    module = parts["module"]
    if device.type != "cpu":
        module.to(device)  # in place: the optimizer keeps pointing at the same parameters
    losses = resolve_losses(parts["loss"], device)
    metrics = resolve_metrics(parts["loss"], parts["metrics"], losses)
    merged = {"input_shapes": parts.get("input_shapes", ()), "input_dtypes": parts.get("input_dtypes", ())}
    merged.update(info or {})
    return TorchModel(module, parts["optimizer"], parts["scheduler"], parts["interval"], losses, metrics, device, merged)


# ------------------------------------------------------------------ tensors


def to_tensor(array: Any, device: torch.device, float_dtype: torch.dtype | None) -> torch.Tensor:
    tensor = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))
    if float_dtype is not None and tensor.is_floating_point() and tensor.dtype != float_dtype:
        tensor = tensor.to(float_dtype)
    return tensor.to(device)


def _as_list(data: Any) -> list:
    return list(data) if isinstance(data, (list, tuple)) else [data]


def _rows(data: list) -> int:
    return int(data[0].shape[0])


def _take(data: list, order: np.ndarray | None) -> list:
    if order is None:
        return data
    out = []
    for a in data:
        out.append(a[torch.from_numpy(order)] if isinstance(a, torch.Tensor) else np.asarray(a)[order])
    return out


def as_outputs(output: Any, num_outputs: int) -> list[torch.Tensor]:
    """The model's output(s) as a list of tensors; CerebroError when it is not what was promised."""
    outputs = list(output) if isinstance(output, (list, tuple)) else [output]
    if not all(isinstance(o, torch.Tensor) for o in outputs):
        raise CerebroError(
            "The model's forward must return a tensor or a tuple/list of tensors (one per output); "
            f"it returned {type(output).__name__}"
            + (f" of {[type(o).__name__ for o in outputs]}" if isinstance(output, (list, tuple)) else "") + "."
        )
    if len(outputs) != num_outputs:
        raise CerebroError(
            f"The model returns {len(outputs)} output(s) but the estimator's loss is for {num_outputs}: pass a "
            "list with one loss per output."
        )
    return outputs


def _forward(model: TorchModel, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return as_outputs(model.module(*inputs), model.num_outputs)


class _Totals:
    """Row-weighted sums of the loss and metrics, kept as float64 tensors (no sync per batch)."""

    def __init__(self, model: TorchModel) -> None:
        self.names = model.metric_names
        self.sums: list[Any] = [0.0] * len(self.names)
        self.rows = 0

    def add(self, rows: int, values: Sequence[Any]) -> None:
        self.rows += rows
        for i, value in enumerate(values):
            if isinstance(value, torch.Tensor):
                value = value.detach().to(torch.float64)
            self.sums[i] = self.sums[i] + value * rows

    def means(self) -> dict[str, float]:
        out = {name: float(total) / self.rows for name, total in zip(self.names, self.sums)}
        out["rows"] = self.rows
        return out


def _batch_values(model: TorchModel, outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> tuple[Any, list]:
    """(total loss with grad, [total loss, per-output losses..., metrics...] detached)."""
    adapted = [loss.target(o, t) for loss, o, t in zip(model.losses, outputs, targets)]
    losses = [loss(o, t) for loss, o, t in zip(model.losses, outputs, adapted)]
    total = losses[0] if len(losses) == 1 else sum(losses[1:], losses[0])
    values: list[Any] = [total.detach()]
    if len(losses) > 1:
        values += [x.detach() for x in losses]
    with torch.no_grad():
        for metric in model.metrics:
            values.append(metric(outputs[metric.output].detach(), adapted[metric.output]))
    return total, values


def _step_scheduler(scheduler: Any) -> None:
    with warnings.catch_warnings():
        # The scheduler was rebuilt by unpickling, so it cannot see that optimizer.step() ran
        # ("optimizer.step() has been overridden" / "lr_scheduler.step() before optimizer.step()").
        warnings.filterwarnings("ignore", message=r".*optimizer\.step\(\).*", category=UserWarning)
        scheduler.step()


def train_sub_epoch(model: TorchModel, x: Any, y: Any, *, batch_size: int, seed: int, epoch_end: bool = False) -> dict:
    """One pass over ``(x, y)`` in the order of ``row_order(seed, n)``; see the module docstring."""
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be an int >= 0. Got {seed}.")
    batch_size = int(batch_size)
    inputs, targets = _as_list(x), _as_list(y)
    n = _rows(inputs)
    if n:
        order = row_order(seed, n)
        device, dtype = model.device, model.float_dtype
        xs = [to_tensor(a, device, dtype) for a in _take(inputs, order)]
        ys = [to_tensor(a, device, None) for a in _take(targets, order)]
        torch.manual_seed(seed % 2**63)
        module, optimizer, scheduler = model.module, model.optimizer, model.scheduler
        per_step = scheduler is not None and model.interval == "step"
        closure_step = isinstance(optimizer, torch.optim.LBFGS)
        module.train()
        totals = _Totals(model)
        for start in range(0, n, batch_size):
            xb = [t[start:start + batch_size] for t in xs]
            yb = [t[start:start + batch_size] for t in ys]
            if closure_step:
                first: list = []

                def closure() -> torch.Tensor:
                    optimizer.zero_grad(set_to_none=True)
                    total, values = _batch_values(model, _forward(model, xb), yb)
                    total.backward()
                    if not first:
                        first.append(values)
                    return total

                optimizer.step(closure)
                values = first[0]
            else:
                total, values = _batch_values(model, _forward(model, xb), yb)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
            model.version += 1
            if per_step:
                _step_scheduler(scheduler)
            totals.add(int(xb[0].shape[0]), values)
        metrics = totals.means()
    else:
        metrics = {"rows": 0}
    if epoch_end and model.scheduler is not None and model.interval == "epoch":
        _step_scheduler(model.scheduler)
        model.version += 1
    return metrics


def evaluate(model: TorchModel, x: Any, y: Any, *, batch_size: int) -> dict:
    """Row-weighted means of the loss and every metric over ``(x, y)`` (eval mode), plus ``rows``."""
    inputs, targets = _as_list(x), _as_list(y)
    n = _rows(inputs)
    if not n:
        return {"rows": 0}
    batch_size = int(batch_size)
    device, dtype = model.device, model.float_dtype
    xs = [to_tensor(a, device, dtype) for a in inputs]
    ys = [to_tensor(a, device, None) for a in targets]
    model.module.eval()
    totals = _Totals(model)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            xb = [t[start:start + batch_size] for t in xs]
            yb = [t[start:start + batch_size] for t in ys]
            _, values = _batch_values(model, _forward(model, xb), yb)
            totals.add(int(xb[0].shape[0]), values)
    return totals.means()


def predict(model: TorchModel, x: Any, *, batch_size: int = 1024) -> list[np.ndarray]:
    """The model's outputs for ``x`` (eval mode, no grad), one numpy array per output."""
    inputs = _as_list(x)
    n = _rows(inputs)
    device, dtype = model.device, model.float_dtype
    xs = [to_tensor(a, device, dtype) for a in inputs]
    model.module.eval()
    chunks: list[list[np.ndarray]] = [[] for _ in range(model.num_outputs)]
    with torch.no_grad():
        for start in range(0, max(n, 1), int(batch_size)):
            outputs = _forward(model, [t[start:start + int(batch_size)] for t in xs])
            for i, o in enumerate(outputs):
                chunks[i].append(o.detach().cpu().numpy())
    return [np.concatenate(c, axis=0) if len(c) > 1 else c[0] for c in chunks]
