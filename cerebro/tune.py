"""``from cerebro.tune import GridSearch, RandomSearch, TPESearch, hp_choice, ...``: the original
Cerebro's model selection API over :mod:`cerebro.selection` and :mod:`cerebro.space`
(docs/migrating.md).

- The searches take the original's positional order, ``(backend, store, estimator_gen_fn,
  search_space, [num_models,] num_epochs, evaluation_metric='loss', validation=0.25,
  label_columns=['label'], feature_columns=['features'], [parallelism=None,] verbose=1)``, plus
  every keyword argument of the new searches (``mode``, ``seed``, ``scheduler``,
  ``early_stopping``, ``experiment_name``, ...).  ``fit(df)`` returns a
  :class:`ModelSelectionResult` (a :class:`cerebro.ModelSelectionResult` with the original's
  accessors); ``fit_on_prepared_data()`` trains on what ``backend.prepare_data`` was given; an
  integer validation column means what it meant (rows with a value > 0 are validation rows).
- ``hp_loguniform(min, max)`` and ``hp_qloguniform(min, max, q)`` keep the original's documented
  meaning: ``min`` and ``max`` are base-10 exponents (``hp_loguniform(-4, -1)`` draws from 1e-4 to
  1e-1), unlike :func:`cerebro.hp_loguniform`, whose bounds are the values.  Every dimension here
  also has the original's ``sample_value()``.
- ``evaluation_metric='acc'`` (or ``'accuracy'``) picks the model with the *highest* validation
  accuracy (the original picked the lowest); a warning says so.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import result as _result
from . import selection, space
from ._checks import check_columns, is_int, is_number, param_error
from ._compat import GUIDE, CompatibilityWarning
from .core.metrics import infer_mode, strip_prefix
from .errors import CerebroError

__all__ = [
    "GridSearch", "RandomSearch", "TPESearch", "ModelSelectionResult", "CerebroModel", "CompatibilityWarning",
    "hp_choice", "hp_uniform", "hp_quniform", "hp_loguniform", "hp_qloguniform",
]

#: What ``sample_value()`` draws from (the original drew from a RandomState seeded with 2020).
_SAMPLE_RNG = np.random.default_rng(2020)


# ---------------------------------------------------------------------- search space


class _SampleValue:
    """The original's ``dimension.sample_value()``: one draw (the searches draw with their own
    seeded generator, not with this)."""

    def sample_value(self) -> Any:
        return self.sample(_SAMPLE_RNG)


class Choice(_SampleValue, space.Choice):
    __doc__ = space.Choice.__doc__


class Uniform(_SampleValue, space.Uniform):
    __doc__ = space.Uniform.__doc__


class QUniform(_SampleValue, space.QUniform):
    __doc__ = space.QUniform.__doc__


class LogUniform(_SampleValue, space.LogUniform):
    """A log-uniform dimension made from base-10 exponents (its ``low`` and ``high`` are the values)."""


class QLogUniform(_SampleValue, space.QLogUniform):
    """A quantised log-uniform dimension made from base-10 exponents (``low``/``high`` are values)."""


def hp_choice(options: Sequence[Any]) -> Choice:
    """One of ``options`` (as :func:`cerebro.hp_choice`)."""
    return Choice(space.hp_choice(options).values)


def hp_uniform(min: float, max: float) -> Uniform:  # noqa: A002 - the original's argument names
    """A float drawn uniformly from [min, max] (as :func:`cerebro.hp_uniform`)."""
    return Uniform(min, max)


def hp_quniform(min: float, max: float, q: float) -> QUniform:  # noqa: A002
    """A multiple of ``q`` drawn uniformly from [min, max]; an int when all three are ints (as
    :func:`cerebro.hp_quniform`)."""
    return QUniform(min, max, q)


def _exponents(kind: str, low: Any, high: Any) -> tuple[float, float]:
    """10**low and 10**high for the original's base-10 exponent bounds (ints stay ints when >= 0)."""
    expected = "a base-10 exponent (e.g. -4 for 1e-4; cerebro.tune keeps the original's meaning)"
    values = []
    for name, e in (("min", low), ("max", high)):
        if not is_number(e):
            raise param_error(kind, name, expected, e, TypeError)
        if not (math.isfinite(float(e)) and -300 <= float(e) <= 300):
            raise param_error(kind, name, expected + " between -300 and 300", e)
        values.append(10 ** int(e) if is_int(e) and e >= 0 else 10.0 ** float(e))
    if not float(low) < float(high):
        raise ValueError(f"{kind} needs min < max (base-10 exponents). Got min={low!r}, max={high!r}.")
    return values[0], values[1]


def hp_loguniform(min: float, max: float) -> LogUniform:  # noqa: A002
    """A float whose base-10 logarithm is uniform in [min, max]: ``min`` and ``max`` are exponents,
    as in the original (``hp_loguniform(-4, -1)`` is :func:`cerebro.hp_loguniform(1e-4, 1e-1)`)."""
    return LogUniform(*_exponents("hp_loguniform", min, max))


def hp_qloguniform(min: float, max: float, q: float) -> QLogUniform:  # noqa: A002
    """A multiple of ``q`` drawn log-uniformly from [10**min, 10**max] (exponents, as in the
    original); an int when 10**min, 10**max and ``q`` are ints."""
    return QLogUniform(*_exponents("hp_qloguniform", min, max), q)


# ---------------------------------------------------------------------- results


def _rename_columns(df: Any, renames: list[tuple[str, str]]) -> Any:
    """``df`` (pandas or Spark) with column ``old`` renamed to ``new`` for each pair; an existing
    ``new`` column is replaced in place (the original wrote predictions over it)."""
    if not renames:
        return df
    if isinstance(df, pd.DataFrame):
        for old, new in renames:
            df[new] = df.pop(old)
        return df
    from pyspark.sql import functions as F

    for old, new in renames:
        df = df.withColumn(new, F.col(f"`{old}`")).drop(old)
    return df


@dataclass
class CerebroModel(_result.TrainedModel):
    """A :class:`cerebro.TrainedModel` with the original Cerebro's accessors: ``keras()``,
    ``getHistory()``, ``set_output_columns([...])`` / ``setOutputCols``, ``getOutputCols()``,
    ``getRunId()``, ``getFeatureColumns()``, ``getLabelColumns()``; ``transform(df)`` writes the
    predictions to the output columns (default ``<label>__output``)."""

    output_columns: tuple[str, ...] | None = None

    @classmethod
    def of(cls, model: _result.TrainedModel) -> "CerebroModel":
        return cls(**{f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.init})

    def set_output_columns(self, output_columns: Sequence[str]) -> "CerebroModel":
        """Name the prediction columns ``transform`` writes, one per label column; returns self."""
        expected = f"a list of {len(self.label_columns)} distinct column names (one per label column " \
                   f"{list(self.label_columns)})"
        cols = check_columns("set_output_columns", "output_columns", output_columns)
        if len(cols) != len(self.label_columns) or len(set(cols)) != len(cols):
            raise param_error("set_output_columns", "output_columns", expected, output_columns)
        self.output_columns = cols
        return self

    setOutputCols = set_output_columns

    def getOutputCols(self) -> list[str]:
        return list(self.output_columns or (f"{label}__output" for label in self.label_columns))

    def getHistory(self) -> dict[str, list[float]]:
        """``{"train_loss": [one value per epoch], "val_loss": [...], "train_<metric>": ...}``."""
        h = self.history
        return {c: [float(v) for v in h[c]] for c in h.columns if c.startswith(("train_", "val_"))}

    def getRunId(self) -> str:
        return self.model_id

    def getModel(self):
        return self.keras()

    def getFeatureColumns(self) -> list[str]:
        return list(self.feature_columns)

    def getLabelColumns(self) -> list[str]:
        return list(self.label_columns)

    def transform(self, df):
        out = super().transform(df)
        renames = [(f"{label}__output", new) for label, new in zip(self.label_columns, self.getOutputCols())
                   if new != f"{label}__output"]
        return _rename_columns(out, renames)


@dataclass
class ModelSelectionResult(_result.ModelSelectionResult):
    """A :class:`cerebro.ModelSelectionResult` (``best_model``, ``models``, ``history``, ...) whose
    models are :class:`CerebroModel` s, with the original Cerebro's accessors."""

    @classmethod
    def of(cls, result: _result.ModelSelectionResult) -> "ModelSelectionResult":
        kwargs = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.init}
        kwargs["models"] = {mid: CerebroModel.of(m) for mid, m in result.models.items()}
        return cls(**kwargs)

    def set_output_columns(self, output_columns: Sequence[str]) -> "ModelSelectionResult":
        """Name the prediction columns of every model's ``transform``; returns self."""
        for model in self.models.values():
            model.set_output_columns(output_columns)
        return self

    @property
    def output_columns(self) -> list[str]:
        return self.best_model.getOutputCols()

    def keras(self):
        """The best model as a ``keras.Model``."""
        return self.best_model.keras()

    def get_best_model(self) -> CerebroModel:
        return self.best_model

    def get_history(self) -> dict[str, list[float]]:
        """The best model's history (``get_best_model_history()``)."""
        return self.get_best_model_history()

    def get_best_model_history(self) -> dict[str, list[float]]:
        return self.best_model.getHistory()

    def get_all_models(self) -> list[CerebroModel]:
        """Every configuration's model, in the order they were created (failed ones included)."""
        return list(self.models.values())

    @property
    def all_models(self) -> list[CerebroModel]:
        return self.get_all_models()

    def get_all_model_history(self) -> dict[str, dict[str, list[float]]]:
        """Model id -> that model's ``getHistory()``."""
        return {mid: m.getHistory() for mid, m in self.models.items()}

    @property
    def metrics(self) -> dict[str, dict[str, list[float]]]:
        return self.get_all_model_history()


# ---------------------------------------------------------------------- searches


def _validation_flags(df: Any, validation: Any) -> Any:
    """The original's integer validation column (a value > 0 marks a validation row) as the boolean
    column cerebro takes; anything else unchanged."""
    if not isinstance(validation, str) or df is None:
        return df
    if isinstance(df, pd.DataFrame):
        if validation in df.columns and pd.api.types.is_integer_dtype(df[validation]):
            return df.assign(**{validation: df[validation] > 0})
        return df
    from .data import is_spark_dataframe

    if is_spark_dataframe(df):
        from pyspark.sql import functions as F
        from pyspark.sql import types as T

        field = next((f for f in df.schema.fields if f.name == validation), None)
        if field is not None and isinstance(field.dataType, (T.ByteType, T.ShortType, T.IntegerType, T.LongType)):
            return df.withColumn(validation, F.col(f"`{validation}`") > 0)
    return df


class _Original:
    """What the original's searches share: the result with its accessors, the original's data
    flow (``fit_on_prepared_data``), integer validation columns, and the warnings for meanings that
    changed on purpose."""

    def _warn_changed_meanings(self, tpe: bool = False) -> None:
        metric = self.evaluation_metric
        if self.mode is None and isinstance(metric, str) and infer_mode(metric) == "max":
            warnings.warn(
                f"{type(self).__name__}: evaluation_metric={metric!r} is maximised: the best model is the one with "
                f"the highest val_{strip_prefix(metric)} (the original Cerebro picked the lowest; it maximised only "
                f"'r2'). See {GUIDE}.", CompatibilityWarning, stacklevel=3,
            )
        logs = sorted(k for k, d in dict(self.search_space).items() if isinstance(d, (LogUniform, QLogUniform))) \
            if tpe and isinstance(self.search_space, dict) else []
        if logs:
            warnings.warn(
                f"TPESearch: {logs} are drawn between 10**min and 10**max, as cerebro.tune.hp_loguniform documents "
                "and the original RandomSearch drew them; the original TPESearch passed the exponents to hyperopt, "
                f"which drew between e**min and e**max. See {GUIDE}.", CompatibilityWarning, stacklevel=3,
            )

    def fit(self, df: Any = None, resume: bool = False) -> ModelSelectionResult:
        """Run the model selection on ``df`` (see :meth:`cerebro.GridSearch.fit`); the result has
        the original's accessors (``get_best_model()``, ``get_history()``, ...)."""
        return ModelSelectionResult.of(super().fit(_validation_flags(df, self.validation), resume))

    def fit_on_prepared_data(self) -> ModelSelectionResult:
        """Train on the DataFrame and split given to ``backend.prepare_data(store, df, validation)``
        (a :class:`cerebro.backend.SparkBackend`, this search's store); this search's own
        ``validation`` is not used, as in the original."""
        prepared_data = getattr(self.backend, "prepared_data", None)
        if prepared_data is None:
            raise CerebroError(
                f"{type(self).__name__}.fit_on_prepared_data() needs a cerebro.backend.SparkBackend on which "
                f"backend.prepare_data(store, df, validation) was called; got backend={self.backend!r}. "
                "Or call fit(df)."
            )
        df, validation = prepared_data(self.store)
        search = copy.copy(self)
        search.validation = validation
        return search.fit(df)


class GridSearch(_Original, selection.GridSearch):
    """The original's ``GridSearch(backend, store, estimator_gen_fn, search_space, num_epochs,
    evaluation_metric='loss', validation=0.25, label_columns=['label'], feature_columns=['features'],
    verbose=1)`` over :class:`cerebro.GridSearch`; keyword arguments of the latter pass through."""

    def __init__(self, backend, store, estimator_gen_fn, search_space, num_epochs, evaluation_metric="loss",
                 validation=0.25, label_columns=("label",), feature_columns=("features",), verbose=1,
                 **kwargs: Any) -> None:
        super().__init__(backend, store, estimator_gen_fn, search_space, num_epochs,
                         evaluation_metric=evaluation_metric, validation=validation, label_columns=label_columns,
                         feature_columns=feature_columns, verbose=verbose, **kwargs)
        self._warn_changed_meanings()


class RandomSearch(_Original, selection.RandomSearch):
    """The original's ``RandomSearch(backend, store, estimator_gen_fn, search_space, num_models,
    num_epochs, evaluation_metric='loss', validation=0.25, label_columns=['label'],
    feature_columns=['features'], verbose=1)`` over :class:`cerebro.RandomSearch`."""

    def __init__(self, backend, store, estimator_gen_fn, search_space, num_models, num_epochs,
                 evaluation_metric="loss", validation=0.25, label_columns=("label",), feature_columns=("features",),
                 verbose=1, **kwargs: Any) -> None:
        super().__init__(backend, store, estimator_gen_fn, search_space, num_models, num_epochs,
                         evaluation_metric=evaluation_metric, validation=validation, label_columns=label_columns,
                         feature_columns=feature_columns, verbose=verbose, **kwargs)
        self._warn_changed_meanings()


class TPESearch(_Original, selection.TPESearch):
    """The original's ``TPESearch(backend, store, estimator_gen_fn, search_space, num_models,
    num_epochs, evaluation_metric='loss', validation=0.25, label_columns=['label'],
    feature_columns=['features'], parallelism=None, verbose=1)`` over :class:`cerebro.TPESearch`
    (``parallelism=None``: one model per worker, as in the original)."""

    def __init__(self, backend, store, estimator_gen_fn, search_space, num_models, num_epochs,
                 evaluation_metric="loss", validation=0.25, label_columns=("label",), feature_columns=("features",),
                 parallelism=None, verbose=1, **kwargs: Any) -> None:
        super().__init__(backend, store, estimator_gen_fn, search_space, num_models, num_epochs, parallelism,
                         evaluation_metric=evaluation_metric, validation=validation, label_columns=label_columns,
                         feature_columns=feature_columns, verbose=verbose, **kwargs)
        self._warn_changed_meanings(tpe=True)
