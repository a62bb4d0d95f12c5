"""One sub-epoch of training, an evaluation pass, and the process-wide settings of a worker.

:func:`train_sub_epoch` derives every random choice (row order, dropout masks) from its
``seed`` argument only, so a model trained by hopping between workers equals, bit for bit,
the model trained in one process on the same data order with the same seeds.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import keras
import numpy as np

from ..._checks import check_int
from ...core.seeds import layer_seed_values, row_order
from ..arrays import num_rows, take
from ..base import error_cause

__all__ = ["train_sub_epoch", "seed_sub_epoch", "evaluate", "limit_threads", "enable_memory_growth", "seed_model_creation"]

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


def seed_sub_epoch(model: Any, seed: int) -> None:
    """Seed every generator a training pass of ``model`` can draw from.

    Python's, NumPy's and Keras' global generators always, and every layer seed generator
    from ``seed``.  TensorFlow's global seed only when the model runs code of the user's
    (:func:`cerebro.frameworks.keras.build.runs_users_code`; a model built elsewhere counts
    as such): ``tf.random.set_seed`` clears TensorFlow's kernel caches, about 0.1 s per call,
    and Keras' own layers never read it.
    """
    value = int(seed) % 2**32  # numpy's global seed must fit in 32 bits
    if getattr(model, "_cerebro_runs_users_code", True):
        keras.utils.set_random_seed(value)
    else:
        _set_seed_except_tensorflow(value)
    _reset_seed_generators(model, seed)


def _set_seed_except_tensorflow(value: int) -> None:
    """What ``keras.utils.set_random_seed`` does for the TensorFlow backend, less its
    ``tf.random.set_seed``."""
    try:
        from keras.src.backend.common import global_state
        from keras.src.random import seed_generator
        from keras.src.utils.rng_utils import GLOBAL_RANDOM_SEED
    except ImportError:  # a Keras whose internals moved: pay for the full reset
        keras.utils.set_random_seed(value)
        return
    global_state.set_global_attribute(GLOBAL_RANDOM_SEED, value)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(value)
    np.random.seed(value)


def tensorflow_ready(arrays: Any) -> Any:
    """The structure Keras' array adapter feeds ``fit``: lists as tuples, floats as floatx."""
    if isinstance(arrays, (list, tuple)):
        return tuple(tensorflow_ready(a) for a in arrays)
    array = np.asarray(arrays)
    floatx = keras.backend.floatx()
    if array.dtype.kind == "f" and array.dtype != np.dtype(floatx):
        array = array.astype(floatx)
    return array


def _batch(arrays: Any, start: int, stop: int) -> Any:
    if isinstance(arrays, tuple):
        return tuple(a[start:stop] for a in arrays)
    return arrays[start:stop]


def _run_batches(model: Any, kind: str, x: Any, y: Any, batch_size: int) -> dict[str, float]:
    """The loop of one ``fit`` epoch (``kind="train"``) or one ``evaluate`` (``"test"``),
    without their per-call set-up.

    ``model.fit`` and ``model.evaluate`` build a tf.data pipeline, an epoch iterator and a
    callback list on every call: about 50 ms each here, against a few ms for a small batch.
    This drives the same compiled step (``model.make_train_function()`` /
    ``make_test_function()``, cached on the model, which the worker's model cache keeps)
    over the same batches in the same order, the partial last batch included, with the same
    metric resets and the same row-weighted results, so the model's state and metrics are
    bit-identical to ``fit(..., shuffle=False)`` / ``evaluate`` (pinned by
    tests/integration/test_keras_lean_path.py).
    """
    try:
        return _run_batches_unchecked(model, kind, x, y, batch_size)
    except Exception as exc:
        clean = _with_real_cause(exc)
        if clean is None:
            raise
        raise clean from exc


def _with_real_cause(exc: BaseException) -> BaseException | None:
    """A TensorFlow error like ``exc`` whose message is only what the op said (the last line of a
    traceback then reads ``InvalidArgumentError: Received a label value of 19 which is outside
    the valid range of [0, 10) ...``, not a graph node's name); None when ``exc`` is no such error
    or its message is clean already."""
    if not (hasattr(exc, "node_def") and hasattr(exc, "op") and hasattr(exc, "message")):
        return None
    cause = error_cause(exc)
    if cause == exc.message:
        return None
    try:
        return type(exc)(exc.node_def, exc.op, cause)
    except Exception:  # noqa: BLE001 - an error class with another constructor: keep the original
        return None


def _run_batches_unchecked(model: Any, kind: str, x: Any, y: Any, batch_size: int) -> dict[str, float]:
    x, y = tensorflow_ready(x), tensorflow_ready(y)
    n = num_rows(x)
    if kind == "train":
        model.make_train_function()
        function = model.train_function
        model.stop_training = False
    else:
        model.make_test_function()
        function = model.test_function
    compiled = _metric_functions(model)
    if compiled is None:
        model.reset_metrics()
    else:
        compiled[0]()
    logs: Any = {}
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        logs = function(iter([(_batch(x, start, stop), _batch(y, start, stop))]))
    if compiled is None:
        return _plain_logs(model._get_metrics_result_or_logs(logs))
    results = compiled[1]()
    # What Model._get_metrics_result_or_logs does: a custom step returning other names keeps its logs.
    chosen = results if isinstance(logs, dict) and set(logs) == set(results) else logs
    return _plain_logs(chosen)


def _metric_functions(model: Any) -> tuple[Any, Any] | None:
    """``(reset, results)``: ``model.reset_metrics`` and ``model.get_metrics_result`` compiled
    into two graph functions, cached on the model; None where that would not be exact.

    Eagerly, resetting the metrics is one small op per metric variable and reading them one per
    metric, about 0.7 ms each for a compiled model with one metric here: as much as the step of
    a small batch.  In a graph each is one call.  Only metrics whose ``reset_state`` and
    ``result`` are Keras' own are compiled (they only read and assign variables); a metric with
    methods of its own, which might keep Python state, is reset and read eagerly, as Keras does.
    """
    cached = getattr(model, "_cerebro_metric_functions", False)
    if cached is not False:
        return cached
    metrics = _all_metrics(model.metrics)
    if metrics is not None and not all(getattr(m, "built", True) for m in metrics):
        # Compiled metrics build their variables in the first step; a reset traced before
        # that would be traced as a no-op for them.  Eager until then.
        return None
    functions = None
    if metrics is not None and _is_tensorflow():
        import tensorflow as tf

        functions = (tf.function(model.reset_metrics, autograph=False),
                     tf.function(model.get_metrics_result, autograph=False))
    model._cerebro_metric_functions = functions
    return functions


def _keras_method(metric: Any, name: str) -> bool:
    method = getattr(type(metric), name, None)
    return getattr(method, "__module__", "").startswith("keras.")


def _all_metrics(top: list) -> list | None:
    """Every metric under ``top`` (the sub-metrics of compiled and wrapped metrics too), or None
    when one of them resets or reads itself with code that is not Keras' own."""
    from keras.metrics import Metric

    seen: dict[int, Any] = {}
    stack = list(top)
    while stack:
        m = stack.pop()
        if m is None or id(m) in seen:
            continue
        if not isinstance(m, Metric) or not (_keras_method(m, "reset_state") and _keras_method(m, "result")):
            return None
        seen[id(m)] = m
        for attr in ("_metrics", "metrics", "_flat_metrics", "_flat_weighted_metrics"):
            children = m.__dict__.get(attr)
            if isinstance(children, (list, tuple)):
                stack.extend(children)
    return list(seen.values())


def _is_tensorflow() -> bool:
    return keras.backend.backend() == "tensorflow"


def _plain_logs(logs: Any) -> dict[str, float]:
    """Keras' ``pythonify_logs``: names sorted, nested dicts flattened, values as floats."""
    out: dict[str, float] = {}
    for name, value in sorted(logs.items()):
        if isinstance(value, dict):
            out.update(_plain_logs(value))
        else:
            out[name] = float(value)
    return out


def train_sub_epoch(model: Any, x: Any, y: Any, *, batch_size: int, seed: int) -> dict[str, float]:
    """One pass of ``model`` over ``(x, y)`` in the row order given by ``seed``.

    The rows are permuted by ``numpy.random.default_rng(seed).permutation(n)``, the global
    seeds and every layer seed generator are set from ``seed`` (:func:`seed_sub_epoch`), so
    the pass is a pure function of (state, data, seed, batch_size).  The batches run through
    the model's compiled train step (:func:`_run_batches`), exactly as one ``fit`` epoch.
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
    seed_sub_epoch(model, seed)
    order = row_order(seed, n)
    metrics = _run_batches(model, "train", take(x, order), take(y, order), int(batch_size))
    # What fit does after its last epoch (a no-op unless the optimizer averages weights, EMA).
    model.optimizer.finalize_variable_values(model.trainable_weights)
    metrics["rows"] = n
    return metrics


def evaluate(model: Any, x: Any, y: Any, *, batch_size: int) -> dict[str, float]:
    """Row-weighted means of the loss and every compiled metric over ``(x, y)``, plus "rows"."""
    n = num_rows(x)
    if n == 0:
        return {"rows": 0}
    metrics = _run_batches(model, "test", x, y, int(batch_size))
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
