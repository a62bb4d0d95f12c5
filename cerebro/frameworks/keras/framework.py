"""The Keras adapter behind :class:`cerebro.frameworks.base.Framework`: thin delegation to the
modules of this package, plus the few result-side operations (predict, save, load).

``model`` below is always a compiled ``keras.Model`` as :meth:`KerasFramework.build` gives it;
``spec`` a :class:`~.estimator.ModelSpec`.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Hashable, Mapping, Sequence

import keras
import numpy as np

from ...errors import CerebroError
from .. import base
from . import ablation, inputs, train
from . import state as checkpoint
from .build import build_compiled
from .check import check_sample
from .estimator import KerasEstimator, ModelSpec

__all__ = ["KerasFramework", "FRAMEWORK", "ModelCache", "MODEL_FILE", "STATE_FILE"]

log = logging.getLogger(__name__)

#: the Keras file :meth:`KerasFramework.save` writes into its directory (plain Keras reads it)
MODEL_FILE = "model.keras"
#: the checkpoint bytes (weights and optimizer state) :meth:`KerasFramework.load` reads back
STATE_FILE = "state.npz"


class KerasFramework(base.Framework):
    """Keras 3 (TensorFlow backend by default) as a cerebro framework.  Stateless."""

    name = "keras"

    # ------------------------------------------------------------------ driver process

    def seed(self, seed: int) -> None:
        """``keras.utils.set_random_seed`` (Python, NumPy and the backend) with ``seed mod 2**32``."""
        train.seed_model_creation(seed)

    def check_estimator(self, estimator: Any) -> None:
        """TypeError unless ``estimator`` is a :class:`KerasEstimator`."""
        if not isinstance(estimator, KerasEstimator):
            raise TypeError(
                "estimator_gen_fn must return a KerasEstimator or a TorchEstimator; "
                f"it returned {type(estimator).__name__}"
            )

    def metric_names(self, estimator: KerasEstimator) -> list[str]:
        return estimator.metric_names()

    def num_inputs(self, estimator: KerasEstimator) -> int:
        return estimator.num_inputs()

    def make_spec(self, estimator: KerasEstimator, input_shapes: Sequence[Sequence[int]],
                  sample: base.DataSample | None = None) -> ModelSpec:
        """:meth:`KerasEstimator.make_spec`, then, with a ``sample``, one forward pass, the label
        checks and the loss on its rows (:func:`.check.check_sample`): LabelMismatch for
        labels that do not fit a loss, CerebroError naming the real cause when the forward
        pass or the loss fails."""
        spec = estimator.make_spec(input_shapes)
        if sample is not None:
            check_sample(estimator, spec, sample)
        return spec

    def transfer_learning_rate(self, state: bytes, donor: bytes) -> bytes:
        return checkpoint.transfer_learning_rate(state, donor)

    def ablate(self, estimator: KerasEstimator, *, drop_layer: str | None = None,
               input_width: int | None = None) -> KerasEstimator:
        return ablation.ablate(estimator, drop_layer=drop_layer, input_width=input_width)

    # ------------------------------------------------------------------ worker

    def limit_threads(self, num_threads: int | None) -> None:
        train.limit_threads(num_threads)

    def warm_up(self) -> None:
        """Turn TensorFlow's memory growth on for the GPUs this worker sees (none: nothing), so
        that workers can share a GPU; called at worker start, before TF initialises devices."""
        train.enable_memory_growth()

    def build(self, spec: ModelSpec) -> keras.Model:
        return build_compiled(spec)

    def load_state(self, model: keras.Model, data: bytes) -> None:
        checkpoint.state_from_bytes(model, data)

    def state_to_bytes(self, model: keras.Model) -> bytes:
        return checkpoint.state_to_bytes(model)

    def state_token(self, model: keras.Model) -> Hashable:
        """The optimizer's iteration count: every training step moves it."""
        return checkpoint.optimizer_iterations(model)

    def make_inputs(self, spec_or_model: Any, features: Mapping[str, Any], feature_columns: Sequence[str]) -> Any:
        return inputs.make_inputs(spec_or_model, features, feature_columns)

    def make_targets(self, spec_or_model: Any, labels: Mapping[str, Any], label_columns: Sequence[str]) -> Any:
        return inputs.make_targets(spec_or_model, labels, label_columns)

    def train_sub_epoch(self, model: keras.Model, x: Any, y: Any, *, batch_size: int, seed: int,
                        epoch_end: bool = False) -> dict[str, float]:
        """:func:`.train.train_sub_epoch`.  ``epoch_end`` is not used: a Keras learning-rate
        schedule is a function of the optimizer's iteration count, which the state carries."""
        return train.train_sub_epoch(model, x, y, batch_size=batch_size, seed=seed)

    def evaluate(self, model: keras.Model, x: Any, y: Any, *, batch_size: int) -> dict[str, float]:
        return train.evaluate(model, x, y, batch_size=batch_size)

    # ------------------------------------------------------------------ results

    def predict(self, model: keras.Model, x: Any, *, batch_size: int = 1024) -> list[np.ndarray]:
        """``model.predict`` (silent) as a list with one numpy array per output."""
        outputs = model.predict(x, batch_size=int(batch_size), verbose=0)
        if isinstance(outputs, Mapping):
            outputs = list(outputs.values())
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        return [np.asarray(out) for out in outputs]

    def output_widths(self, model: keras.Model) -> tuple[int, ...]:
        """Values per row of each of ``model.outputs``; CerebroError for a shape that is not fixed."""
        widths = []
        for out in list(getattr(model, "outputs", None) or []):
            dims = tuple(out.shape[1:])
            if any(d is None for d in dims):
                raise CerebroError(f"transform() on Spark needs fixed output shapes; the model has an output of shape {tuple(out.shape)}")
            widths.append(int(np.prod(dims, dtype=np.int64)) if dims else 1)
        return tuple(widths)

    def user_model(self, model: keras.Model) -> keras.Model:
        return model

    def save(self, model: keras.Model, spec: ModelSpec, directory: str) -> dict[str, Any]:
        """Write ``<directory>/model.keras`` and ``<directory>/state.npz``; returns
        ``{"keras": <version>}``.

        ``model.keras`` is for plain Keras: the model compiled with the user's own loss and
        metrics (not cerebro's row-weighted wrappers of metric functions), so
        ``keras.models.load_model(path, custom_objects={...})`` needs only the user's objects.
        ``state.npz`` holds the exact weights and optimizer state, which :meth:`load` puts
        into the model rebuilt from the spec (whose code travels by value).
        """
        os.makedirs(directory, exist_ok=True)
        state = checkpoint.state_to_bytes(model)
        portable = build_compiled(spec, row_weighted=False)
        checkpoint.state_from_bytes(portable, state)
        try:
            portable.save(os.path.join(directory, MODEL_FILE))
        except Exception as exc:  # noqa: BLE001 - e.g. a functools.partial metric: Keras cannot name it
            log.warning("%s holds the model and its optimizer but not its loss and metrics, which Keras cannot "
                        "serialise (%s: %s); cerebro.load_model reads the directory as it trained",
                        MODEL_FILE, type(exc).__name__, exc)
            portable.compile(optimizer=portable.optimizer)
            portable.save(os.path.join(directory, MODEL_FILE))
        with open(os.path.join(directory, STATE_FILE), "wb") as fh:
            fh.write(state)
        return {"keras": keras.__version__}

    def load(self, spec: ModelSpec, directory: str, custom_objects: Mapping[str, Any] | None = None) -> keras.Model:
        """The model as :meth:`build` gives it (compiled as it trained) holding the state that
        :meth:`save` wrote, whatever losses and metrics it was compiled with.  ``custom_objects``
        add to those the spec carries; a directory without ``state.npz`` (written by an older
        cerebro) is read with ``keras.models.load_model`` and them."""
        state_path = os.path.join(directory, STATE_FILE)
        if os.path.exists(state_path):
            model = build_compiled(spec, custom_objects=custom_objects)
            with open(state_path, "rb") as fh:
                checkpoint.state_from_bytes(model, fh.read())
            return model
        known = dict(spec.load_config().get("custom_objects") or {})
        known.update(custom_objects or {})
        return keras.models.load_model(os.path.join(directory, MODEL_FILE), custom_objects=known or None)


#: the adapter instance :func:`cerebro.frameworks.base.get_framework` returns for ``"keras"``
FRAMEWORK = KerasFramework()


class ModelCache(base.ModelCache):
    """:class:`cerebro.frameworks.base.ModelCache` bound to the Keras adapter (compiled models
    of one worker process, one per ``arch_key``; reloads when the optimizer's iteration count
    moved since the state was recorded)."""

    def __init__(self, max_models: int = base.DEFAULT_CACHE_SIZE) -> None:
        super().__init__(FRAMEWORK, max_models)
