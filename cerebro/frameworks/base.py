"""The framework interface: what cerebro needs from a deep-learning framework.

Everything outside ``cerebro/frameworks/`` talks to Keras or PyTorch through a
:class:`Framework` only; ``tests/unit/test_structure.py`` checks that no other module imports
a framework.  An adapter is a subclass with a handful of required operations; the derived
helpers (:meth:`Framework.export`, :class:`ModelCache`) are written once, here.

Who calls what:

* **The driver process** (``experiment/workspace.py``, ``selection.py``): :meth:`seed` before
  the user's ``estimator_gen_fn`` runs, :meth:`num_inputs` and :meth:`make_spec` once per
  configuration (the spec is a picklable description of the model plus its initial state as
  bytes), :meth:`transfer_learning_rate` for PBT's exploit, :meth:`ablate` for ablation studies.
* **A worker** (``worker.py``): :meth:`limit_threads` once, a :class:`ModelCache` (which calls
  :meth:`build`, :meth:`load_state` and :meth:`state_token`), :meth:`make_inputs` /
  :meth:`make_targets` once per partition, :meth:`train_sub_epoch` or :meth:`evaluate` per
  task, and :meth:`state_to_bytes` after training.
* **Results** (``result.py``, ``replay.py``, ``transform_spark.py``): :meth:`export`,
  :meth:`predict`, :meth:`output_widths`, :meth:`save` / :meth:`load`.

Contract every adapter keeps (``tests/integration/test_framework_contract.py`` checks it for
every adapter): state bytes round-trip exactly (weights and optimizer state, step counts
included); a sub-epoch is a pure function of (state, data, seed, batch size); loading state
never unpickles arbitrary objects.

Adapters are found by name (``spec.framework``, ``estimator.framework``) through
:func:`get_framework`, which imports them lazily: ``import cerebro`` never imports a framework.
"""

from __future__ import annotations

import abc
import importlib
import logging
import random
import re
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np

from .._checks import check_int

__all__ = ["Framework", "ModelCache", "DataSample", "Spec", "snake_case", "get_framework", "framework_of", "seed_everything",
           "FRAMEWORKS", "deterministic_error", "error_cause"]

log = logging.getLogger(__name__)

#: name -> (adapter module, the library it imports, the pip extra that installs the library)
FRAMEWORKS: dict[str, tuple[str, str, str | None]] = {
    "keras": ("cerebro.frameworks.keras", "keras", None),
    "torch": ("cerebro.frameworks.torch", "torch", "torch"),
}

DEFAULT_CACHE_SIZE = 16


@dataclass(frozen=True, repr=False)
class Spec:
    """What every adapter's spec holds: made once per configuration in the driver, pickled to
    the store, read by the workers.  Plain data (the model's code and configuration are the
    adapter's ``config`` bytes), so reading a spec imports no framework.

    ``arch_key`` identifies the built model a worker may reuse for another configuration (by
    swapping state in); ``initial_state`` is the state bytes before any training.  Each
    adapter's subclass adds its own fields after these, each with a default, ``framework`` last.
    """

    config: bytes
    arch_key: str
    initial_state: bytes
    batch_size: int
    num_inputs: int
    input_shapes: tuple[tuple[int | None, ...], ...]
    input_dtypes: tuple[str, ...]
    num_outputs: int
    output_names: tuple[str, ...]
    metric_names: tuple[str, ...]
    num_parameters: int

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(arch_key={self.arch_key[:12]!r}, batch_size={self.batch_size}, "
            f"input_shapes={self.input_shapes}, output_names={self.output_names}, "
            f"metric_names={self.metric_names}, num_parameters={self.num_parameters}, "
            f"config={len(self.config)} bytes, initial_state={len(self.initial_state)} bytes)"
        )


@dataclass(frozen=True)
class DataSample:
    """A few training rows, given to :meth:`Framework.make_spec` in the driver so that an
    adapter can check one forward pass and the loss before any worker starts.

    ``features`` and ``labels`` map column names to numpy arrays of the same rows;
    ``feature_columns`` are the columns this model takes (an ablation variant may take fewer).
    ``label_stats`` summarises each label column over the whole data set
    (``PreparedData.label_stats``: ``{"min", "max", "integral", "width"}``), so that label
    ranges are checked against every row, not only these; a column it lacks is checked on the
    sample rows (:func:`cerebro.frameworks.arrays.check_label_fit`).
    """

    features: Mapping[str, np.ndarray]
    labels: Mapping[str, np.ndarray]
    feature_columns: tuple[str, ...]
    label_columns: tuple[str, ...]
    label_stats: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


class Framework(abc.ABC):
    """One deep-learning framework behind cerebro.  Stateless: one instance per process.

    ``model`` below is the framework's own trainable object as a worker holds it (a compiled
    ``keras.Model``; for torch, the module with its optimizer and loss); ``spec`` is what the
    adapter's estimator made with :meth:`make_spec`, with at least the attributes ``framework``,
    ``arch_key``, ``initial_state``, ``batch_size``, ``input_shapes``, ``num_outputs``,
    ``output_names`` and ``metric_names``.
    """

    #: the name in :data:`FRAMEWORKS` and in every spec and estimator of this adapter
    name: str = ""

    # ------------------------------------------------------------------ driver process

    @abc.abstractmethod
    def seed(self, seed: int) -> None:
        """Seed the framework's global generators (weight initialisers) before a model is built."""

    @abc.abstractmethod
    def check_estimator(self, estimator: Any) -> None:
        """Raise TypeError unless ``estimator`` is this adapter's estimator."""

    @abc.abstractmethod
    def metric_names(self, estimator: Any) -> list[str]:
        """``["loss", ...]``: the metrics every train and evaluation pass of this model reports."""

    def num_inputs(self, estimator: Any) -> int:
        """How many input tensors the model of ``estimator`` takes.  One (the default) gets the
        listed feature columns concatenated in order; a model with several inputs gets one
        feature column per input, in order (:func:`cerebro.frameworks.arrays.input_shapes`)."""
        return 1

    @abc.abstractmethod
    def make_spec(self, estimator: Any, input_shapes: Sequence[Sequence[int]], sample: DataSample | None = None) -> Any:
        """The picklable spec of ``estimator`` for data whose inputs have ``input_shapes`` (one
        shape per model input, from :func:`cerebro.frameworks.arrays.input_shapes`).

        ``sample`` (feature and label arrays of a few training rows, keyed by column) lets the
        adapter check one forward pass and the loss before any worker trains.  Raises
        CerebroError/ValueError/TypeError naming what does not fit.
        """

    @abc.abstractmethod
    def transfer_learning_rate(self, state: bytes, donor: bytes) -> bytes:
        """``state`` with the learning rate(s) of ``donor``'s optimizer set in place (PBT)."""

    @abc.abstractmethod
    def ablate(self, estimator: Any, *, drop_layer: str | None = None, input_width: int | None = None) -> Any:
        """A copy of ``estimator`` without layer ``drop_layer`` and/or taking ``input_width`` features."""

    # ------------------------------------------------------------------ worker

    @abc.abstractmethod
    def limit_threads(self, num_threads: int | None) -> None:
        """Bound the framework's CPU thread pools in this process (None: leave them)."""

    def warm_up(self) -> None:
        """Import what the first task would otherwise import lazily (a worker calls it at
        start-up, outside the training span).  Default: nothing."""

    @abc.abstractmethod
    def build(self, spec: Any) -> Any:
        """A fresh trainable model for ``spec`` (state unspecified until :meth:`load_state`)."""

    @abc.abstractmethod
    def load_state(self, model: Any, data: bytes) -> None:
        """Put the weights and optimizer state of ``data`` into ``model``, exactly."""

    @abc.abstractmethod
    def state_to_bytes(self, model: Any) -> bytes:
        """The weights and optimizer state of ``model`` (what a hop carries)."""

    def state_token(self, model: Any) -> Hashable:
        """A cheap fingerprint that changes whenever training changes ``model`` (e.g. a step
        count); :class:`ModelCache` reloads state when it moved.  None: no such check."""
        return None

    @abc.abstractmethod
    def make_inputs(self, spec_or_model: Any, features: Mapping[str, Any], feature_columns: Sequence[str]) -> Any:
        """The model's inputs from feature columns (numpy arrays keyed by column name)."""

    @abc.abstractmethod
    def make_targets(self, spec_or_model: Any, labels: Mapping[str, Any], label_columns: Sequence[str]) -> Any:
        """The model's targets from label columns, one per output."""

    @abc.abstractmethod
    def train_sub_epoch(self, model: Any, x: Any, y: Any, *, batch_size: int, seed: int, epoch_end: bool = False) -> dict[str, float]:
        """One pass over ``(x, y)`` in the row order and randomness given by ``seed``.

        ``epoch_end`` is True for the model's last sub-epoch of an epoch (its last partition):
        where a per-epoch learning-rate schedule steps.
        Returns row-weighted means ``{"loss": ..., <metric>: ..., "rows": n}``.  A pure function
        of (state, data, seed, batch size).  Blocks; mutates the model's state.
        """

    @abc.abstractmethod
    def evaluate(self, model: Any, x: Any, y: Any, *, batch_size: int) -> dict[str, float]:
        """Row-weighted means of the loss and every metric over ``(x, y)``, plus ``"rows"``."""

    # ------------------------------------------------------------------ results

    @abc.abstractmethod
    def predict(self, model: Any, x: Any, *, batch_size: int = 1024) -> list[np.ndarray]:
        """The model's outputs for inputs ``x``, one numpy array per output."""

    @abc.abstractmethod
    def output_widths(self, model: Any) -> tuple[int, ...]:
        """Values per row of each output (1: a scalar output)."""

    @abc.abstractmethod
    def user_model(self, model: Any) -> Any:
        """What the user gets back: the ``keras.Model`` or the ``torch.nn.Module``."""

    @abc.abstractmethod
    def save(self, model: Any, spec: Any, directory: str) -> dict[str, Any]:
        """Write ``model`` into ``directory``; return facts for the saved metadata (versions)."""

    @abc.abstractmethod
    def load(self, spec: Any, directory: str, custom_objects: Mapping[str, Any] | None = None) -> Any:
        """Read back what :meth:`save` wrote; the model as :meth:`build` gives it."""

    # ------------------------------------------------------------------ derived helpers

    def export(self, spec: Any, state: bytes) -> Any:
        """A fresh model holding ``state`` (the driver side of a hop)."""
        model = self.build(spec)
        self.load_state(model, state)
        return model

    def model_cache(self, max_models: int = DEFAULT_CACHE_SIZE) -> "ModelCache":
        return ModelCache(self, max_models)


def snake_case(name: str) -> str:
    """``MyMetric`` -> ``my_metric``; ``<lambda>`` -> ``lambda``: how a metric or loss function is
    named in the history (keras.src.utils.naming.to_snake_case's rule, for every adapter)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def get_framework(name: str) -> Framework:
    """The adapter called ``name`` (imported on first use); a clear error when it is unknown
    or its library is not installed."""
    entry = FRAMEWORKS.get(name)
    if entry is None:
        raise ValueError(f"unknown framework {name!r}; cerebro supports {sorted(FRAMEWORKS)}")
    module_name, library, extra = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if getattr(exc, "name", None) and exc.name.split(".")[0] == library:
            hint = f"pip install 'cerebro-mop[{extra}]'" if extra else f"pip install {library}"
            raise ImportError(f"the {name} framework needs {library!r}, which is not installed: {hint}") from exc
        raise
    return module.FRAMEWORK


def framework_of(obj: Any) -> Framework:
    """The adapter of an estimator or a spec (its ``framework`` attribute)."""
    name = getattr(obj, "framework", None)
    if not isinstance(name, str) or name not in FRAMEWORKS:
        raise TypeError(
            "estimator_gen_fn must return a KerasEstimator or a TorchEstimator; "
            f"it returned {type(obj).__name__}"
        )
    return get_framework(name)


def seed_everything(seed: int) -> list[str]:
    """Seed Python, NumPy and every framework whose library this process has imported.

    Called before the user's ``estimator_gen_fn`` runs, so that weight initialisers draw the
    same values for the same seed.  Returns the framework names it seeded: a framework imported
    only inside ``estimator_gen_fn`` was not, and the caller seeds it and builds again.
    """
    seed = int(seed) % 2**32
    random.seed(seed)
    np.random.seed(seed)
    seeded = []
    for name, (_, library, _) in FRAMEWORKS.items():
        if library in sys.modules:
            get_framework(name).seed(seed)
            seeded.append(name)
    return seeded


# ------------------------------------------------------------------ failures


# Exception types that a retry cannot change when the user's model raises them: a sub-epoch
# is a pure function of (state, data, seed, batch size), and a retry replays it from the same
# committed state on the same partition with the same seed.
_DETERMINISTIC_TYPES = (ValueError, TypeError, IndexError, KeyError, AttributeError, NotImplementedError,
                        ZeroDivisionError)
# TensorFlow's errors by class name (no import of TensorFlow here): bad arguments (a label
# value out of range, incompatible shapes, a wrong dtype) are the model's or the data's.
_TF_DETERMINISTIC = {"InvalidArgumentError", "OutOfRangeError"}
# What the machine, not the model, did: a retry (or a restarted worker) may fix it.
_ENVIRONMENTAL_TYPES = (OSError, MemoryError, KeyboardInterrupt, SystemExit, EOFError)
_TF_ENVIRONMENTAL = {"ResourceExhaustedError", "UnavailableError", "AbortedError", "CancelledError",
                     "DeadlineExceededError", "InternalError", "DataLossError", "UnknownError", "OutOfMemoryError"}
_ENVIRONMENTAL_TEXT = re.compile(r"out of memory|CUDA error|CUDNN_STATUS|cuDNN error|NCCL|CUBLAS_STATUS"
                                 r"|resource exhausted|connection|timed? ?out|broken pipe", re.IGNORECASE)
# RuntimeError texts of torch (and of user code) that name a shape, dtype or index problem.
_DETERMINISTIC_TEXT = re.compile(
    r"out of bounds|size mismatch|shapes? .*(mismatch|cannot|incompatible|must match|invalid)|cannot be multiplied"
    r"|must match the size|doesn't match the broadcast shape|expected scalar type|expected .*dtype|found dtype"
    r"|expected input batch_size|expected target size|target size|0D or 1D target|multi-target not supported"
    r"|can't be cast|same number of dimensions|expected .* dimensions?|not implemented for|invalid shape"
    r"|size of tensor a .* must match|only batches of spatial targets supported|received a label value"
    r"|device-side assert",
    re.IGNORECASE,
)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, newest first."""
    out: list[BaseException] = []
    while exc is not None and exc not in out and len(out) < 20:
        out.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return out


def _type_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _environmental(exc: BaseException) -> bool:
    if isinstance(exc, _ENVIRONMENTAL_TYPES) or _type_names(exc) & _TF_ENVIRONMENTAL:
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    # A kernel's assertion (e.g. torch's class index out of range on a GPU) fails again on the
    # same data, although it reads "CUDA error".
    return "device-side assert" not in text and bool(_ENVIRONMENTAL_TEXT.search(text))


def _deterministic(exc: BaseException) -> bool:
    from .arrays import LabelMismatch

    if isinstance(exc, LabelMismatch) or _type_names(exc) & _TF_DETERMINISTIC:
        return True
    if isinstance(exc, _DETERMINISTIC_TYPES):
        return True
    return isinstance(exc, RuntimeError) and bool(_DETERMINISTIC_TEXT.search(str(exc)))


def deterministic_error(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a sub-epoch (training or evaluation) of a model, would be raised
    again by a retry: an error of the user's model or data, not of the machine.

    A sub-epoch is a pure function of (state, data, seed, batch size) and a retry replays it
    from the same committed state on the same partition with the same seed, so an error that
    the computation itself raises comes back every time: a label out of range (TensorFlow's
    ``InvalidArgumentError: Received a label value of 19 which is outside the valid range of
    [0, 10)``, torch's ``IndexError: Target 19 is out of bounds``), a shape or dtype mismatch
    (``ValueError``, ``TypeError``, torch's ``RuntimeError: mat1 and mat2 shapes cannot be
    multiplied``), a bug in the user's code (``KeyError``, ``AttributeError``, ...), and
    :class:`~cerebro.frameworks.arrays.LabelMismatch`.

    Not deterministic (a retry, or a restarted worker, may succeed): anything in the chain of
    ``exc`` (``__cause__``/``__context__``) that the machine did -- ``OSError`` (and so
    :class:`~cerebro.errors.StoreFullError`, lost connections, time-outs), ``MemoryError``,
    out-of-memory and other CUDA errors, TensorFlow's ``ResourceExhaustedError``,
    ``UnavailableError``, ``InternalError``, ... --; and every exception not named above (an
    unknown failure is retried, as before).
    """
    chain = _chain(exc)
    if any(_environmental(e) for e in chain):
        return False
    return any(_deterministic(e) for e in chain)


_TF_NOISE = (
    re.compile(r"^\s*Graph execution error:\s*$"),
    re.compile(r"^\s*Detected at node .* defined at \(most recent call last\):\s*$"),
    re.compile(r"^\s*File \".*\", line \d+, in .*$"),
    re.compile(r"^\s*\[\[\{\{.*\}\}\]\].*$"),
)
_TF_PREFIX = re.compile(r"^\s*(\{\{function_node [^}]*\}\}\s*)+")
_TF_SUFFIX = re.compile(r"\s*\[Op:[^\]]*\](\s*name:.*)?\s*$")
_MAX_CAUSE = 500


def error_cause(exc: BaseException) -> str:
    """The real cause in a framework's error message, for the last line of a traceback.

    TensorFlow's errors name graph nodes and carry the Python stack of the node's definition
    (``Graph execution error: Detected at node compile_loss/.../SparseSoftmaxCrossEntropyWithLogits
    defined at ...``, ``[[{{node ...}}]] [Op:__inference_...]``); this keeps what the op said
    (``Received a label value of 19 which is outside the valid range of [0, 10).  Label
    values: ...``), at most 500 characters.  Other errors: their message as it is.
    """
    text = str(getattr(exc, "message", None) or exc)
    if "{{" not in text and "Graph execution error" not in text and "[Op:" not in text:
        return text
    kept = []
    for line in text.splitlines():
        if not line.strip() or any(p.match(line) for p in _TF_NOISE):
            continue
        line = _TF_SUFFIX.sub("", _TF_PREFIX.sub("", line)).strip()
        if line:
            kept.append(line)
    cause = " ".join(kept) or text.strip()
    return cause if len(cause) <= _MAX_CAUSE else cause[:_MAX_CAUSE - 3] + "..."


class _CacheEntry:
    __slots__ = ("model", "loaded", "token")

    def __init__(self, model: Any) -> None:
        self.model = model
        self.loaded: tuple[str, str] | None = None
        self.token: Hashable = None


class ModelCache:
    """Built models of one worker process, one per ``spec.arch_key`` (LRU).

    Building a model (for Keras, compiling it and tracing its train function) costs more than
    a hop, so a worker keeps up to ``max_models`` built models and each hop only swaps state
    in.  It also remembers which ``(model_id, state_token)`` each cached model holds, so when a
    model comes back to the worker that trained it last, :meth:`load` skips loading state.
    Not thread-safe: one worker trains one model at a time.

    Contract for callers: after changing a loaded model's state (training), call
    :meth:`note_saved` with the new token, or :meth:`invalidate` if it failed midway.  As a
    safety net, :meth:`load` also reloads when :meth:`Framework.state_token` moved since the
    state was recorded.
    """

    def __init__(self, framework: Framework, max_models: int = DEFAULT_CACHE_SIZE) -> None:
        self.framework = framework
        self.max_models = check_int("ModelCache", "max_models", max_models, minimum=1)
        self._entries: OrderedDict[str, _CacheEntry] = OrderedDict()
        self.builds = 0
        self.build_seconds = 0.0   # spent in Framework.build, in total
        self.loads = 0
        self.skipped_loads = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, arch_key: object) -> bool:
        return arch_key in self._entries

    def _entry(self, spec: Any) -> _CacheEntry:
        entry = self._entries.get(spec.arch_key)
        if entry is None:
            started = time.perf_counter()
            entry = _CacheEntry(self.framework.build(spec))
            self.build_seconds += time.perf_counter() - started
            self.builds += 1
            self._entries[spec.arch_key] = entry
            while len(self._entries) > self.max_models:
                evicted, _ = self._entries.popitem(last=False)
                log.debug("evicted model %s from the cache", evicted[:12])
        else:
            self._entries.move_to_end(spec.arch_key)
        return entry

    def get(self, spec: Any) -> Any:
        """The built model for ``spec.arch_key`` (built on first use), state unspecified."""
        return self._entry(spec).model

    def load(self, spec: Any, model_id: str, state_token: str, state: bytes | Callable[[], bytes]) -> Any:
        """The model holding ``state``; ``state`` may be a callable, called only if needed.

        Skips loading when this cache's model already holds ``(model_id, state_token)``.
        """
        entry = self._entry(spec)
        if entry.loaded == (model_id, state_token) and entry.token == self.framework.state_token(entry.model):
            self.skipped_loads += 1
            return entry.model
        entry.loaded = None  # a failed restore must not look loaded
        data = state() if callable(state) else state
        self.framework.load_state(entry.model, data)
        entry.loaded = (model_id, state_token)
        entry.token = self.framework.state_token(entry.model)
        self.loads += 1
        return entry.model

    def note_saved(self, model_id: str, state_token: str, model: Any) -> None:
        """Record that ``model`` (one of this cache's) now holds ``(model_id, state_token)``."""
        for entry in self._entries.values():
            if entry.model is model:
                entry.loaded = (model_id, state_token)
                entry.token = self.framework.state_token(model)
            elif entry.loaded is not None and entry.loaded[0] == model_id:
                entry.loaded = None  # an older state of the same model elsewhere is stale

    def loaded(self, spec: Any) -> tuple[str, str] | None:
        """``(model_id, state_token)`` held by the cached model of this spec, if known."""
        entry = self._entries.get(spec.arch_key)
        return None if entry is None else entry.loaded

    def invalidate(self, model: Any = None) -> None:
        """Forget what ``model`` (or, with None, every cached model) holds."""
        for entry in self._entries.values():
            if model is None or entry.model is model:
                entry.loaded = None
                entry.token = None
