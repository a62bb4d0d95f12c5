"""One sub-epoch of training, an evaluation pass, and the process-wide settings of a worker.

:func:`train_sub_epoch` derives every random choice (row order, dropout masks) from its
``seed`` argument only, so a model trained by hopping between workers equals, bit for bit,
the model trained in one process on the same data order with the same seeds.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import keras
import numpy as np

from ..._checks import check_int
from ...core.seeds import layer_seed_values, row_order
from ..arrays import num_rows, take

__all__ = ["train_sub_epoch", "evaluate", "limit_threads", "enable_memory_growth", "seed_model_creation"]

logger = logging.getLogger(__name__)


def _reset_seed_generators(model: Any, seed: int) -> None:
    """Set every layer SeedGenerator (Dropout, noise, augmentation) from the sub-epoch seed.

    A SeedGenerator's state lives in the compiled model instance, not in its weights, so
    without this a cached model would draw dropout masks that depend on which models trained
    on it before. Deriving it from the seed makes the masks a function of (seed, layer index).
    """
    weight_ids = {id(v) for v in model.weights}
    states = [v for v in model.variables if id(v) not in weight_ids]
    if not states:
        return
    seeds = layer_seed_values(seed, len(states))
    for variable, value in zip(states, seeds):
        if tuple(variable.shape) != (2,):  # not a SeedGenerator state: leave it alone
            continue
        dtype = keras.backend.standardize_dtype(variable.dtype)
        variable.assign(np.asarray([value, 0], dtype=dtype))


def _history_means(history: Mapping[str, list]) -> dict[str, float]:
    return {name: float(values[-1]) for name, values in history.items()}


def train_sub_epoch(model: Any, x: Any, y: Any, *, batch_size: int, seed: int) -> dict[str, float]:
    """One pass of ``model`` over ``(x, y)`` in the row order given by ``seed``.

    The rows are permuted by ``numpy.random.default_rng(seed).permutation(n)``, the global
    seeds are set by ``keras.utils.set_random_seed(seed)`` and every layer seed generator is
    reset from ``seed``, so the pass is a pure function of (state, data, seed, batch_size).
    Returns ``{"loss": ..., <metric>: ..., "rows": n}``: means over the rows of this pass
    (Keras weights the loss and every compiled metric by rows, the partial last batch
    included; cerebro wraps plain metric functions so this holds for them too).
    Blocks for the pass; mutates the model's state.
    """
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be an int >= 0. Got {seed}.")
    n = num_rows(x)
    if n == 0:
        return {"rows": 0}
    keras.utils.set_random_seed(seed % 2**32)  # numpy's global seed must fit in 32 bits
    _reset_seed_generators(model, seed)
    order = row_order(seed, n)
    history = model.fit(
        take(x, order),
        take(y, order),
        batch_size=int(batch_size),
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    metrics = _history_means(history.history)
    metrics["rows"] = n
    return metrics


def evaluate(model: Any, x: Any, y: Any, *, batch_size: int) -> dict[str, float]:
    """Row-weighted means of the loss and every compiled metric over ``(x, y)``, plus "rows"."""
    n = num_rows(x)
    if n == 0:
        return {"rows": 0}
    results = model.evaluate(x, y, batch_size=int(batch_size), verbose=0, return_dict=True)
    metrics = {name: float(value) for name, value in results.items()}
    metrics["rows"] = n
    return metrics


def limit_threads(num_threads: int | None) -> None:
    """Limit TensorFlow's intra- and inter-op thread pools in this process.

    Call before TF runs any op (at worker start). No-op with None; calling it again with the
    same value is harmless; once TF is initialised the pools cannot change, and a different
    value only logs a warning.
    """
    if num_threads is None:
        return
    num_threads = check_int("limit_threads", "num_threads", num_threads, minimum=1, expected="None or an int >= 1")
    import tensorflow as tf

    threading = tf.config.threading
    for name, get, set_ in (
        ("intra-op", threading.get_intra_op_parallelism_threads,
         threading.set_intra_op_parallelism_threads),
        ("inter-op", threading.get_inter_op_parallelism_threads,
         threading.set_inter_op_parallelism_threads),
    ):
        if get() == num_threads:
            continue
        try:
            set_(int(num_threads))
        except RuntimeError as exc:
            logger.warning(
                "cannot set TensorFlow %s threads to %d (TF is already initialised, "
                "keeping %d): %s",
                name, num_threads, get(), exc,
            )


def enable_memory_growth() -> int:
    """Turn memory growth on for every GPU TensorFlow sees in this process; return how many.

    Call before TF initialises its devices (at worker start), so that workers sharing a GPU
    (``LocalBackend(workers_per_gpu=2)``) do not each reserve all of its memory.  No GPU: 0,
    nothing done.  Too late (TF initialised): a warning, and the memory stays as it is.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError) as exc:
            logger.warning("cannot turn memory growth on for %s (TensorFlow is already initialised): %s",
                           gpu.name, exc)
    return len(gpus)


def seed_model_creation(seed: int) -> None:
    """Seed Python, NumPy and Keras before ``estimator_gen_fn`` runs in the driver.

    Weight initialisers draw from these global generators, so the same experiment seed and
    configuration index give the same initial weights in every run.
    """
    keras.utils.set_random_seed(int(seed) % (2**32))
