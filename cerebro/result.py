"""Read-only results of a model selection: ModelSelectionResult and TrainedModel."""

from __future__ import annotations

import json
import os
import pickle
import platform
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import CerebroError

_META = "cerebro.json"
_SPEC = "spec.pkl"


def frame_features(df: pd.DataFrame, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Feature columns of a pandas DataFrame as float32 arrays ((n,) scalars, (n, d) arrays)."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"feature column(s) {missing} not found; the DataFrame has columns {list(df.columns)}")
    out: dict[str, np.ndarray] = {}
    for col in columns:
        series = df[col]
        if series.dtype == object:
            try:
                out[col] = np.stack([np.asarray(v, dtype=np.float32).reshape(-1) for v in series.to_numpy()])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"feature column {col!r} must hold numbers or fixed-length numeric arrays: {exc}") from None
        else:
            out[col] = series.to_numpy(dtype=np.float32)
    return out


@dataclass
class TrainedModel:
    """One trained configuration: its parameters, history and final state.

    The model is rebuilt lazily (``model()``, ``keras()``, ``torch()``) by its framework adapter
    from the spec and the last committed checkpoint in the store, or comes from a saved
    directory (``load_model``).
    """

    model_id: str
    params: dict[str, Any]
    history: pd.DataFrame
    feature_columns: tuple[str, ...]
    label_columns: tuple[str, ...]
    status: str = "completed"
    provenance: dict[str, Any] = field(default_factory=dict)
    _store: Any = field(default=None, repr=False)
    _spec_path: str | None = field(default=None, repr=False)
    _checkpoint: str | None = field(default=None, repr=False)
    _checksum: str | None = field(default=None, repr=False)
    _spec: Any = field(default=None, repr=False)
    _model: Any = field(default=None, repr=False)

    def spec(self):
        """The model's spec (what its framework adapter needs to rebuild it)."""
        if self._spec is None:
            if self._store is None or not self._spec_path:
                raise CerebroError(f"model {self.model_id} has no stored spec (it failed before it was built)")
            from .worker import read_pickled

            self._spec = read_pickled(self._store, self._spec_path)
        return self._spec

    @property
    def framework(self) -> str:
        """``"keras"`` or ``"torch"``."""
        return self.spec().framework

    def _framework(self):
        from .frameworks.base import framework_of

        return framework_of(self.spec())

    def adapter_model(self):
        """The framework adapter's object holding this model (built once, from the last committed
        checkpoint): what :class:`cerebro.frameworks.base.Framework` methods take."""
        if self._model is None:
            if not self._checkpoint:
                raise CerebroError(f"model {self.model_id} has no checkpoint (status: {self.status})")
            from .worker import read_checkpoint

            self._model = self._framework().export(self.spec(), read_checkpoint(self._store, self._checkpoint, self._checksum))
        return self._model

    def model(self):
        """The trained model in its framework's own type: a ``keras.Model`` or a ``torch.nn.Module``
        (with the final weights; a Keras model is compiled with its optimizer state)."""
        return self._framework().user_model(self.adapter_model())

    def _as(self, framework: str):
        if self.framework != framework:
            raise CerebroError(
                f"model {self.model_id} is a {self.framework} model; use .{self.framework}() or .model() to get it"
            )
        return self.model()

    def keras(self):
        """The trained ``keras.Model`` (compiled, with the final weights and optimizer state)."""
        return self._as("keras")

    def torch(self):
        """The trained ``torch.nn.Module`` (with the final weights)."""
        return self._as("torch")

    def _inputs(self, features: Any):
        fw = self._framework()
        if isinstance(features, pd.DataFrame):
            return fw.make_inputs(self.spec(), frame_features(features, self.feature_columns), list(self.feature_columns))
        if isinstance(features, Mapping):
            columns = {k: np.asarray(v, dtype=np.float32) for k, v in features.items()}
            return fw.make_inputs(self.spec(), columns, list(self.feature_columns))
        return features

    def predict(self, features: Any, batch_size: int = 1024):
        """Model outputs for a pandas DataFrame (feature columns), a dict of columns, or the
        model's own input arrays: one numpy array, or a list of arrays for several outputs."""
        outputs = self._framework().predict(self.adapter_model(), self._inputs(features), batch_size=batch_size)
        return outputs[0] if len(outputs) == 1 else outputs

    def transform(self, df):
        """``df`` with one ``<label>__output`` column per model output (the model's predictions).

        A pandas DataFrame gives a pandas copy (predicted here). A Spark DataFrame
        gives a new, lazy Spark DataFrame predicted in the executors (the model
        travels by broadcast; no data is collected): scalar outputs are
        ``double``, vector outputs ``array<float>``; feature columns may be
        numbers, numeric arrays or Spark ML vectors (see :mod:`cerebro.transform_spark`).
        Missing feature columns raise ValueError listing the DataFrame's columns.
        """
        from .data import is_spark_dataframe

        if is_spark_dataframe(df):
            from .transform_spark import transform_spark_dataframe

            return transform_spark_dataframe(self, df)
        if not isinstance(df, pd.DataFrame):
            raise TypeError(
                f"transform() takes a pandas or a Spark DataFrame. Got {type(df).__name__} instead."
            )
        outputs = self.predict(df)
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        if len(outputs) != len(self.label_columns):
            raise CerebroError(f"the model has {len(outputs)} outputs but {len(self.label_columns)} label columns {list(self.label_columns)}")
        out = df.copy()
        for label, values in zip(self.label_columns, outputs):
            values = np.asarray(values)
            if values.ndim == 2 and values.shape[1] == 1:
                values = values[:, 0]
            out[f"{label}__output"] = list(values) if values.ndim > 1 else values
        return out

    def save(self, path: str | os.PathLike) -> str:
        """Write the model, its spec and the provenance to directory ``path``; :func:`load_model`
        reads it back, whatever losses and metrics it was compiled with.

        Keras: ``model.keras``, compiled with your own loss and metrics, so plain Keras reads it
        too (``keras.models.load_model(f"{path}/model.keras", custom_objects={...})`` with the
        functions and classes of your script that the model, loss and metrics use), and
        ``state.npz``, the exact weights and optimizer state.  torch: ``state.pt``."""
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        versions = self._framework().save(self.adapter_model(), self.spec(), path)
        with open(os.path.join(path, _SPEC), "wb") as fh:
            pickle.dump(self.spec(), fh)
        meta = {
            "model_id": self.model_id, "params": self.params, "status": self.status, "framework": self.framework,
            "feature_columns": list(self.feature_columns), "label_columns": list(self.label_columns),
            "history": self.history.to_dict(orient="records"),
            "provenance": {**self.provenance, **versions, "numpy": np.__version__, "python": platform.python_version()},
        }
        with open(os.path.join(path, _META), "w") as fh:
            json.dump(meta, fh, indent=1, default=repr)
        return path


def load_model(path: str | os.PathLike, custom_objects: Mapping[str, Any] | None = None) -> TrainedModel:
    """Read back a model written by :meth:`TrainedModel.save` (Keras or torch), whatever losses
    and metrics it was compiled with: the model is rebuilt from its saved spec, which carries
    the code of your script's functions and classes by value, so the script need not be
    importable here.

    ``custom_objects`` (Keras) adds to the custom objects the model was built with.
    """
    from .frameworks.base import framework_of

    path = os.fspath(path)
    meta_path = os.path.join(path, _META)
    if not os.path.exists(meta_path):
        raise CerebroError(f"{path!r} is not a saved cerebro model (no {_META} in it)")
    with open(meta_path) as fh:
        meta = json.load(fh)
    with open(os.path.join(path, _SPEC), "rb") as fh:
        spec = pickle.load(fh)
    model = framework_of(spec).load(spec, path, custom_objects)
    return TrainedModel(
        model_id=meta["model_id"], params=meta["params"], history=pd.DataFrame(meta["history"]),
        feature_columns=tuple(meta["feature_columns"]), label_columns=tuple(meta["label_columns"]),
        status=meta.get("status", "completed"), provenance=meta.get("provenance", {}), _spec=spec, _model=model,
    )


@dataclass
class ModelSelectionResult:
    """What ``fit`` returns.  ``best_*`` follow ``evaluation_metric`` and ``mode``."""

    best_model_id: str
    best_params: dict[str, Any]
    best_score: float
    models: dict[str, TrainedModel]
    history: pd.DataFrame
    visits: pd.DataFrame
    failures: dict[str, str]
    experiment_dir: str
    evaluation_metric: str = "loss"
    mode: str = "min"
    evaluations: pd.DataFrame | None = None
    #: {"model_id", "epoch", "score", "checkpoint", "checksum"} of the best (model, epoch) seen,
    #: whose checkpoint retention keeps even when that model trained on.
    best_checkpoint: dict | None = None
    #: Bytes of model checkpoints the experiment keeps in the store at the end.
    checkpoint_bytes: int = 0
    #: AblationStudy only: one row per variant, its final metric and the difference to the base.
    ablation: pd.DataFrame | None = None

    @property
    def best_model(self) -> TrainedModel:
        return self.models[self.best_model_id]

    def transform(self, df):
        """``best_model.transform(df)``."""
        return self.best_model.transform(df)

    def plot_gantt(self, path: str | os.PathLike) -> str:
        """Draw which model ran on which worker when (training sub-epochs solid, evaluations hatched, failures red); returns ``path``."""
        from .report import plot_gantt

        return plot_gantt(self.visits, self.evaluations, os.fspath(path), model_ids=sorted(self.models))
