"""Checkpoint bytes: every weight and every optimizer variable of a model, and back.

The format is an uncompressed ``np.savez`` container (``allow_pickle=False``: loading state
never unpickles objects) holding a JSON header (``format``, ``version``, the Keras version, and
for every variable its path, shape, dtype and offset) and one flat buffer per dtype.  The hop
is exact: trainable and non-trainable weights (e.g. BatchNorm statistics) and every optimizer
variable (iteration count, learning rate, slots such as Adam's moments) round-trip bit for bit.

Checkpoints never use Keras' ``model.save`` / ``.weights.h5`` files: they are 2-10x slower per
hop than moving arrays and ``.weights.h5`` silently drops the state of an unbuilt optimizer.
"""

from __future__ import annotations

import io
import json
from typing import Any, Sequence

import keras
import numpy as np

from ...errors import CerebroError
from .encoding import describe

__all__ = [
    "STATE_FORMAT",
    "STATE_VERSION",
    "to_numpy",
    "pack",
    "unpack",
    "state_to_bytes",
    "state_from_bytes",
    "optimizer_iterations",
    "transfer_learning_rate",
]

STATE_FORMAT = "cerebro-keras-state"
STATE_VERSION = 1


def _tf_variable(variable: Any) -> Any:
    """The tf.Variable behind a Keras variable on the TensorFlow backend, else None.

    Reading and assigning through it skips Keras' per-call conversions (about 40% of the
    per-hop cost for a small MLP); any other backend goes through the public Keras API.
    """
    raw = getattr(variable, "_value", None)
    return raw if raw is not None and hasattr(raw, "assign") and hasattr(raw, "numpy") else None


def to_numpy(variable: Any) -> np.ndarray:
    """A Keras variable's value as a numpy array (a host copy)."""
    raw = _tf_variable(variable)
    return np.asarray(raw.numpy() if raw is not None else variable.numpy())


def _assign(variable: Any, array: np.ndarray) -> None:
    raw = _tf_variable(variable)
    if raw is not None:
        raw.assign(array)
    else:
        variable.assign(array)


def pack(
    weights: Sequence[np.ndarray],
    weight_paths: Sequence[str],
    opt_values: Sequence[np.ndarray],
    opt_paths: Sequence[str],
) -> bytes:
    """np.savez container: a JSON header and one flat buffer per dtype (few zip members)."""
    buffers: dict[str, list[np.ndarray]] = {}
    offsets: dict[str, int] = {}

    def entries(paths: Sequence[str], arrays: Sequence[np.ndarray]) -> list:
        out = []
        for path, array in zip(paths, arrays):
            array = np.asarray(array)
            dtype = str(array.dtype)
            chunk = buffers.setdefault(dtype, [])
            offset = offsets.get(dtype, 0)
            chunk.append(array.reshape(-1))
            offsets[dtype] = offset + array.size
            out.append([path, list(array.shape), dtype, offset])
        return out

    header = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "keras": keras.__version__,
        "weights": entries(weight_paths, weights),
        "optimizer": entries(opt_paths, opt_values),
        "buffers": sorted(buffers),
    }
    arrays = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
    for i, dtype in enumerate(header["buffers"]):
        arrays[f"b{i}"] = np.concatenate(buffers[dtype])
    stream = io.BytesIO()
    np.savez(stream, allow_pickle=False, **arrays)
    return stream.getvalue()


def _restore_dtype(array: np.ndarray, dtype_name: str) -> np.ndarray:
    if array.dtype.kind == "V":  # e.g. bfloat16, which .npy stores as raw bytes
        try:
            import ml_dtypes

            return array.view(getattr(ml_dtypes, dtype_name))
        except Exception:
            pass
    return array


def unpack(data: bytes) -> tuple[dict, list[np.ndarray], list[np.ndarray]]:
    """``(header, weights, optimizer values)`` of :func:`pack`'s bytes, without a model.

    The arrays are views of the container's flat buffers.  CerebroError when ``data`` is
    not bytes or not a readable cerebro Keras state of this version.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CerebroError(f"Checkpoint state must be bytes, got {describe(data)}.")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            header = json.loads(archive["header"].tobytes().decode())
            if header.get("format") != STATE_FORMAT:
                raise ValueError(f"format {header.get('format')!r}")
            if header.get("version") != STATE_VERSION:
                raise ValueError(
                    f"version {header.get('version')!r}, this cerebro reads {STATE_VERSION}"
                )
            buffers = {
                dtype: _restore_dtype(archive[f"b{i}"], dtype)
                for i, dtype in enumerate(header["buffers"])
            }

        def views(entries: list) -> list[np.ndarray]:
            out = []
            for _path, shape, dtype, offset in entries:
                size = int(np.prod(shape)) if shape else 1
                flat = buffers[dtype][offset : offset + size]
                if flat.size != size:
                    raise ValueError(f"buffer {dtype} is too short")
                out.append(flat.reshape(shape))
            return out

        weights, opt_values = views(header["weights"]), views(header["optimizer"])
    except CerebroError:
        raise
    except Exception as exc:
        raise CerebroError(
            f"The checkpoint bytes ({len(data)} bytes) are not a readable cerebro Keras state: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return header, weights, opt_values


def _check_variables(what: str, entries: list, arrays: list, variables: list) -> None:
    if len(entries) != len(variables):
        raise CerebroError(
            f"Cannot restore the checkpoint: it holds {len(entries)} {what}, the model has "
            f"{len(variables)}. Checkpoint: {[e[0] for e in entries][:8]}; "
            f"model: {[v.path for v in variables][:8]}."
        )
    for i, ((path, _, dtype, _), array, variable) in enumerate(zip(entries, arrays, variables)):
        model_shape = tuple(int(d) for d in variable.shape)
        if tuple(array.shape) != model_shape:
            raise CerebroError(
                f"Cannot restore the checkpoint: {what} #{i} {path!r} has shape "
                f"{tuple(array.shape)} in the checkpoint but {variable.path!r} has shape "
                f"{model_shape} in the model."
            )
        if np.dtype(array.dtype) != np.dtype(keras.backend.standardize_dtype(variable.dtype)):
            raise CerebroError(
                f"Cannot restore the checkpoint: {what} #{i} {path!r} has dtype {dtype} in the "
                f"checkpoint but {variable.path!r} has dtype {variable.dtype} in the model."
            )


def _ensure_optimizer_built(model: Any) -> Any:
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    return optimizer


def state_to_bytes(model: Any) -> bytes:
    """Checkpoint bytes of a model: every weight and every optimizer variable.

    Runs at every hop; it is a device-to-host copy plus an uncompressed ``np.savez``.
    Builds the optimizer first if it is not built yet, so that the bytes always hold the
    full optimizer state (a fresh optimizer's slots) and restore into any built model.
    """
    if not model.built:
        raise CerebroError(f"The model {model.name!r} is not built; it has no state to save.")
    optimizer = _ensure_optimizer_built(model)
    opt_vars = list(optimizer.variables) if optimizer is not None else []
    return pack(
        [to_numpy(v) for v in model.weights],
        [v.path for v in model.weights],
        [to_numpy(v) for v in opt_vars],
        [v.path for v in opt_vars],
    )


def state_from_bytes(model: Any, data: bytes) -> None:
    """Restore weights and optimizer variables from :func:`state_to_bytes` bytes.

    Builds the optimizer first if needed. Checks counts, shapes and dtypes of everything
    before assigning anything (a mismatch raises CerebroError naming the first difference and
    leaves the model as it was). After it, training continues exactly as if the model had
    never left memory: same weights, Adam moments, iteration count and learning rate.
    """
    header, weights, opt_values = unpack(data)
    if not model.built:
        raise CerebroError(f"The model {model.name!r} is not built; build it before restoring.")
    model_weights = list(model.weights)
    _check_variables("model weights", header["weights"], weights, model_weights)
    optimizer = _ensure_optimizer_built(model)
    if optimizer is None:
        if opt_values:
            raise CerebroError(
                f"Cannot restore the checkpoint: it holds {len(opt_values)} optimizer "
                f"variables but the model {model.name!r} is not compiled (no optimizer)."
            )
        opt_vars: list = []
    else:
        opt_vars = list(optimizer.variables)
        _check_variables("optimizer variables", header["optimizer"], opt_values, opt_vars)
    for variable, array in zip(model_weights, weights):
        _assign(variable, array)
    for variable, array in zip(opt_vars, opt_values):
        _assign(variable, array)




def optimizer_iterations(model: Any) -> int | None:
    """The optimizer's iteration count (None for an uncompiled model): it moves at every step."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    return int(to_numpy(optimizer.iterations))


def transfer_learning_rate(state: bytes, donor: bytes) -> bytes:
    """``state`` with its optimizer's learning rate replaced by ``donor``'s (PBT's exploit).

    Everything else (weights, moments, iteration count) stays as it is: the copied model
    continues exactly where its source was, only with the new learning rate, set on the
    optimizer in place.  Works on the bytes alone, without building a model.
    """
    header, weights, opt_values = unpack(state)
    donor_header, _, donor_values = unpack(donor)

    def lr_index(entries: list) -> int | None:
        hits = [i for i, entry in enumerate(entries) if entry[0].rsplit("/", 1)[-1] == "learning_rate"]
        return hits[0] if hits else None

    i, j = lr_index(header["optimizer"]), lr_index(donor_header["optimizer"])
    if i is None or j is None:
        # A learning-rate schedule is part of the optimizer's configuration, not of its state.
        return state
    opt_values = [np.array(v) for v in opt_values]
    opt_values[i] = np.asarray(donor_values[j], dtype=opt_values[i].dtype).reshape(opt_values[i].shape)
    return pack(weights, [e[0] for e in header["weights"]], opt_values, [e[0] for e in header["optimizer"]])
