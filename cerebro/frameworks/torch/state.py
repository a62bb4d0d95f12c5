"""State bytes: what a hop carries, written by ``torch.save`` and read with ``weights_only=True``.

The bytes are one ``torch.save`` of the dict::

    {"format": "cerebro-torch-state", "version": 1,
     "model": module.state_dict(), "optimizer": optimizer.state_dict(),
     "scheduler": scheduler.state_dict() or None}

Every tensor in it is a contiguous CPU copy (never a view sharing storage with the live
model), so the bytes hold exactly the data and nothing else.  Reading uses
``torch.load(..., weights_only=True, map_location="cpu")``: tensors, numbers, strings and
containers only, never arbitrary objects.  The round trip is exact, Adam's ``step`` counts
and a scheduler's ``last_epoch`` included; ``torch.save`` writes the same bytes for the same
state, so equal states give equal bytes.
"""

from __future__ import annotations

import copy
import io
from collections import OrderedDict
from typing import Any

import torch

from cerebro.errors import CerebroError

__all__ = ["STATE_FORMAT", "STATE_VERSION", "cpu_copy", "pack_state", "unpack_state", "load_payload",
           "save_payload", "transfer_learning_rate"]

STATE_FORMAT = "cerebro-torch-state"
STATE_VERSION = 1


def cpu_copy(obj: Any) -> Any:
    """``obj`` with every tensor replaced by a contiguous CPU copy (containers rebuilt)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
    if isinstance(obj, OrderedDict):
        out = OrderedDict((k, cpu_copy(v)) for k, v in obj.items())
        metadata = getattr(obj, "_metadata", None)
        if metadata is not None:  # state_dict version info (BatchNorm & co read it on load)
            out._metadata = copy.deepcopy(metadata)  # type: ignore[attr-defined]
        return out
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [cpu_copy(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(cpu_copy(v) for v in obj)
    return obj


def save_payload(payload: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def pack_state(module: torch.nn.Module, optimizer: Any, scheduler: Any) -> bytes:
    """The state bytes of a module, its optimizer and its scheduler (or None)."""
    return save_payload({
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "model": cpu_copy(module.state_dict()),
        "optimizer": cpu_copy(optimizer.state_dict()),
        "scheduler": None if scheduler is None else cpu_copy(scheduler.state_dict()),
    })


def unpack_state(data: Any) -> dict:
    """The dict inside state bytes; CerebroError when they are not a cerebro torch state."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CerebroError(f"torch state must be bytes; got {type(data).__name__}.")
    try:
        payload = torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise CerebroError(
            f"The {len(data)} bytes are not a readable cerebro torch state (read with weights_only=True): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CerebroError(f"The bytes are not a cerebro torch state (format {found!r}, expected {STATE_FORMAT!r}).")
    if payload.get("version") != STATE_VERSION:
        raise CerebroError(
            f"The torch state has version {payload.get('version')!r}; this cerebro reads version {STATE_VERSION}."
        )
    return payload


def load_payload(module: torch.nn.Module, optimizer: Any, scheduler: Any, payload: dict) -> None:
    """Put the state of ``payload`` into the live objects, exactly."""
    has, wants = payload.get("scheduler") is not None, scheduler is not None
    if has != wants:
        raise CerebroError(
            "Cannot restore the torch state: it was saved "
            + ("with" if has else "without") + " a learning-rate scheduler, but this model has "
            + ("none." if not wants else f"a {type(scheduler).__name__}.")
        )
    try:
        module.load_state_dict(payload["model"])
    except Exception as exc:
        raise CerebroError(f"Cannot restore the torch state into {type(module).__name__}: {exc}") from exc
    try:
        optimizer.load_state_dict(payload["optimizer"])
    except Exception as exc:
        raise CerebroError(f"Cannot restore the {type(optimizer).__name__} optimizer state: {exc}") from exc
    if scheduler is not None:
        try:
            scheduler.load_state_dict(payload["scheduler"])
        except Exception as exc:
            raise CerebroError(f"Cannot restore the {type(scheduler).__name__} scheduler state: {exc}") from exc


def _like(old: Any, value: Any) -> Any:
    """``value`` (a number or tensor) in the form of ``old`` (a float or a tensor)."""
    number = value.item() if isinstance(value, torch.Tensor) else value
    if isinstance(old, torch.Tensor):
        return torch.full_like(old, float(number))
    return float(number)


def transfer_learning_rate(state: bytes, donor: bytes) -> bytes:
    """``state`` with the learning rates of ``donor`` (PBT's exploit), on bytes alone.

    Every optimizer param group takes the donor group's ``lr`` (and ``initial_lr`` when both
    have one); the scheduler takes the donor's ``base_lrs`` and its last learning rates become
    the new ones.  Weights, moments and step counts stay as they are.  With a different number
    of param groups the transfer is refused.  When only one of the two has a scheduler, the
    result takes the donor's scheduler state (or none), so it loads into the donor's model.
    """
    payload, source = unpack_state(state), unpack_state(donor)
    groups = payload["optimizer"]["param_groups"]
    donor_groups = source["optimizer"]["param_groups"]
    if len(groups) != len(donor_groups):
        raise CerebroError(
            f"Cannot transfer the learning rate: the state's optimizer has {len(groups)} param groups, "
            f"the new configuration's has {len(donor_groups)}."
        )
    for group, donor_group in zip(groups, donor_groups):
        group["lr"] = _like(group["lr"], donor_group["lr"])
        if "initial_lr" in group and "initial_lr" in donor_group:
            group["initial_lr"] = _like(group["initial_lr"], donor_group["initial_lr"])
    scheduler, donor_scheduler = payload.get("scheduler"), source.get("scheduler")
    if scheduler is None or donor_scheduler is None:
        payload["scheduler"] = donor_scheduler
    else:
        if "base_lrs" in scheduler and "base_lrs" in donor_scheduler:
            scheduler["base_lrs"] = [_like(old, new) for old, new in zip(scheduler["base_lrs"], donor_scheduler["base_lrs"])]
        if "_last_lr" in scheduler:
            scheduler["_last_lr"] = [_like(old, group["lr"]) for old, group in zip(scheduler["_last_lr"], groups)]
    return save_payload(payload)
