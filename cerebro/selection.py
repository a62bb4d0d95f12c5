"""Model selection front ends (MLlib style): GridSearch, RandomSearch.

``__init__`` stores the arguments; ``fit`` validates all of them and the data before any
work starts, prepares the data once, then hands the search to the engine.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import time
import traceback
import uuid
from typing import Any, Callable, Mapping

import pandas as pd

from .backends.base import Backend, WorkerSetup
from .core.engine import Engine, ModelCreationFailed, ModelInit, make_rng
from .core.metrics import infer_mode, strip_prefix
from .core.mop import MOPScheduler
from .core.seeds import derive_seed
from .drivers.base import SearchDriver
from .drivers.grid import GridDriver, RandomDriver
from .errors import CerebroError
from .result import ModelSelectionResult, TrainedModel
from .space import validate_space
from .storage import Store
from .storage import layout

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def _int_param(owner: str, name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"The '{name}' parameter of {owner} must be an int >= {minimum}. Got {value!r} instead.")
    return value


def _columns(owner: str, name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    try:
        cols = tuple(value)
    except TypeError:
        raise TypeError(f"The '{name}' parameter of {owner} must be a column name or a sequence of them. Got {value!r} instead.") from None
    if not cols or not all(isinstance(c, str) and c for c in cols):
        raise ValueError(f"The '{name}' parameter of {owner} must be a non-empty sequence of column names. Got {value!r} instead.")
    return cols


class _Journal:
    """Append-only JSON lines, flushed per record, in the experiment directory."""

    def __init__(self, store: Store, path: str) -> None:
        self.store = store
        self.path = path
        local = store.local_path(path)
        self._fh = None
        self._buffer: list[str] = []
        if local is not None:
            os.makedirs(os.path.dirname(local), exist_ok=True)
            self._fh = open(local, "a", encoding="utf-8")

    def __call__(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=repr, sort_keys=True)
        if self._fh is not None:
            self._fh.write(line + "\n")
            self._fh.flush()
        else:
            self._buffer.append(line)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        elif self._buffer:
            self.store.write_bytes(self.path, ("\n".join(self._buffer) + "\n").encode())


class ModelSelection:
    """Arguments common to every search.  Subclasses provide the search driver."""

    _grid_only = False

    def __init__(
        self,
        backend: Backend,
        store: Store | str,
        estimator_gen_fn: Callable[[dict], Any],
        search_space: Mapping[str, Any],
        num_epochs: int,
        *,
        evaluation_metric: str = "loss",
        mode: str | None = None,
        validation: float | str = 0.25,
        feature_columns=("features",),
        label_columns=("label",),
        seed: int = 2020,
        scheduler: str = "dynamic",
        early_stopping: Any = None,
        experiment_name: str | None = None,
        mlflow_tracking_uri: str | None = None,
        verbose: int = 1,
    ) -> None:
        self.backend = backend
        self.store = store
        self.estimator_gen_fn = estimator_gen_fn
        self.search_space = search_space
        self.num_epochs = num_epochs
        self.evaluation_metric = evaluation_metric
        self.mode = mode
        self.validation = validation
        self.feature_columns = feature_columns
        self.label_columns = label_columns
        self.seed = seed
        self.scheduler = scheduler
        self.early_stopping = early_stopping
        self.experiment_name = experiment_name
        self.mlflow_tracking_uri = mlflow_tracking_uri
        self.verbose = verbose

    # ------------------------------------------------------------------ validation

    @property
    def _owner(self) -> str:
        return type(self).__name__

    def _make_driver(self) -> SearchDriver:
        raise NotImplementedError

    def _validate(self) -> dict[str, Any]:
        owner = self._owner
        if not isinstance(self.backend, Backend):
            raise TypeError(f"The 'backend' parameter of {owner} must be a LocalBackend or SparkBackend. Got {self.backend!r} instead.")
        store = self.store
        if isinstance(store, (str, os.PathLike)):
            store = Store.create(os.fspath(store))
        if not isinstance(store, Store):
            raise TypeError(f"The 'store' parameter of {owner} must be a Store or a path/URL. Got {self.store!r} instead.")
        if not callable(self.estimator_gen_fn):
            raise TypeError(f"The 'estimator_gen_fn' parameter of {owner} must be callable (params dict -> KerasEstimator). Got {self.estimator_gen_fn!r} instead.")
        space = validate_space(self.search_space, owner=owner, grid_only=self._grid_only)
        _int_param(owner, "num_epochs", self.num_epochs)
        if not isinstance(self.evaluation_metric, str) or not self.evaluation_metric:
            raise ValueError(f"The 'evaluation_metric' parameter of {owner} must be a metric name such as 'loss' or 'accuracy'. Got {self.evaluation_metric!r} instead.")
        mode = self.mode
        if mode is None:
            mode = infer_mode(self.evaluation_metric)
            if mode is None:
                raise ValueError(
                    f"cannot tell whether evaluation_metric={self.evaluation_metric!r} should be minimised or maximised; "
                    "pass mode='min' or mode='max'"
                )
        elif mode not in ("min", "max"):
            raise ValueError(f"The 'mode' parameter of {owner} must be 'min', 'max' or None. Got {mode!r} instead.")
        v = self.validation
        if isinstance(v, bool) or not isinstance(v, (float, int, str)):
            raise TypeError(f"The 'validation' parameter of {owner} must be a fraction in (0, 1) or a boolean column name. Got {v!r} instead.")
        if not isinstance(v, str) and not 0 < v < 1:
            raise ValueError(f"The 'validation' parameter of {owner} must be a fraction in (0, 1) or a boolean column name. Got {v!r} instead.")
        features = _columns(owner, "feature_columns", self.feature_columns)
        labels = _columns(owner, "label_columns", self.label_columns)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"The 'seed' parameter of {owner} must be an int. Got {self.seed!r} instead.")
        if self.scheduler not in ("dynamic", "deterministic"):
            raise ValueError(f"The 'scheduler' parameter of {owner} must be 'dynamic' or 'deterministic'. Got {self.scheduler!r} instead.")
        if self.early_stopping is not None:
            raise ValueError(f"The 'early_stopping' parameter of {owner} is not supported in this version; leave it None.")
        if self.mlflow_tracking_uri is not None:
            raise ValueError(f"The 'mlflow_tracking_uri' parameter of {owner} is not supported in this version; leave it None.")
        if self.experiment_name is not None and (not isinstance(self.experiment_name, str) or not _NAME.match(self.experiment_name) or ".." in self.experiment_name):
            raise ValueError(f"The 'experiment_name' parameter of {owner} must match [A-Za-z0-9._-]+. Got {self.experiment_name!r} instead.")
        if self.verbose not in (0, 1, 2, True, False):
            raise ValueError(f"The 'verbose' parameter of {owner} must be 0, 1 or 2. Got {self.verbose!r} instead.")
        return {"store": store, "space": space, "mode": mode, "features": features, "labels": labels}

    # ------------------------------------------------------------------ fit

    def fit(self, df, resume: bool = False) -> ModelSelectionResult:
        """Run the model selection on ``df`` (pandas DataFrame or Parquet path).  Blocks until done."""
        from .data import prepare_data

        args = self._validate()
        store: Store = args["store"]
        name = self.experiment_name or f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        exp_dir = layout.experiment_dir(name)
        if resume:
            raise CerebroError("resume=True is not supported in this version: the experiment journal cannot be replayed yet")
        if store.exists(layout.journal(name)) or store.exists(exp_dir):
            raise ValueError(
                f"experiment {name!r} already exists in the store ({store.url}/{exp_dir}); choose another "
                "experiment_name, or pass resume=True to continue an interrupted run"
            )
        p = self.backend.num_workers
        prepared = prepare_data(
            df, store, feature_columns=args["features"], label_columns=args["labels"],
            validation=self.validation, num_partitions=p, seed=self.seed,
        )
        driver = self._make_driver()
        driver.bind(args["space"], make_rng(self.seed), p)
        metric = "val_" + strip_prefix(self.evaluation_metric)
        mode = args["mode"]
        input_width = sum(math.prod(s) for s in prepared.feature_shapes.values())
        checked: list[bool] = []

        def create_model(model_id: str, index: int, params: dict[str, Any]) -> ModelInit:
            from .frameworks.keras import KerasEstimator, seed_model_creation

            # Same seed and configuration index -> same initial weights, in any run.
            seed_model_creation(derive_seed(self.seed, 3, index))
            try:
                estimator = self.estimator_gen_fn(dict(params))
                if not isinstance(estimator, KerasEstimator):
                    raise TypeError(f"estimator_gen_fn must return a KerasEstimator; it returned {type(estimator).__name__}")
                names = estimator.metric_names()
            except Exception:
                raise ModelCreationFailed(traceback.format_exc()) from None
            if not checked:
                # Checked once, on the first configuration that builds, before any training starts.
                if strip_prefix(self.evaluation_metric) not in names:
                    raise ValueError(
                        f"evaluation_metric={self.evaluation_metric!r} is not computed by the models; "
                        f"they report {names} (add it to the KerasEstimator's metrics or pick one of these)"
                    )
                checked.append(True)
            try:
                spec = estimator.make_spec([(input_width,)])
            except Exception:
                raise ModelCreationFailed(traceback.format_exc()) from None
            spec_path = layout.model_spec(name, model_id)
            ckpt = layout.checkpoint(name, model_id, 0, 0)
            store.write_bytes(spec_path, pickle.dumps(spec))
            store.write_bytes(ckpt, spec.initial_state)
            return ModelInit(spec_path, ckpt)

        store.makedirs(exp_dir)
        store.write_json(f"{exp_dir}/experiment.json", {
            "name": name, "search": self._owner, "data_key": prepared.key, "data_hash": prepared.data_hash,
            "num_workers": p, "num_epochs": self.num_epochs, "evaluation_metric": self.evaluation_metric, "mode": mode,
            "seed": self.seed, "scheduler": self.scheduler, "search_space": repr(args["space"]),
            "feature_columns": list(args["features"]), "label_columns": list(args["labels"]),
            "validation": self.validation, "started": time.time(),
        })
        journal = _Journal(store, layout.journal(name))
        log_dir = store.local_path("logs")
        engine = Engine(
            backend=self.backend, setup=WorkerSetup(store, prepared.to_dict(), None, log_dir),
            scheduler=MOPScheduler(p, mode=self.scheduler, seed=self.seed), driver=driver,
            create_model=create_model,
            checkpoint_path=lambda m, e, h, a: layout.checkpoint(name, m, e, h, a),
            delete=store.delete, seed=self.seed, journal=journal,
            listener=None,
        )
        progress = None
        if self.verbose:
            from .progress import RichProgress

            progress = RichProgress(driver.total_sub_epochs(p), metric, mode)
            engine.listener = progress
        try:
            if progress is not None:
                with progress:
                    outcome = engine.run()
            else:
                outcome = engine.run()
        except ValueError:
            journal.close()
            store.delete(exp_dir)  # refused before training: leave nothing half-written behind
            raise
        except BaseException:
            journal({"type": "aborted", "time": time.time()})
            journal.close()
            raise
        journal({"type": "finished", "time": time.time()})
        journal.close()
        return self._result(outcome, store, name, prepared, metric, mode)

    def _result(self, outcome, store: Store, name: str, prepared, metric: str, mode: str) -> ModelSelectionResult:
        exp_dir = layout.experiment_dir(name)
        params_cols = sorted({k for m in outcome.models.values() for k in m.params})
        history = pd.DataFrame(outcome.history)
        if history.empty:
            history = pd.DataFrame(columns=["model_id", "epoch"])
        # Rows in (model, epoch) order, whatever order the epochs finished in.
        history = history.sort_values(["model_id", "epoch"], kind="stable").reset_index(drop=True)
        for col in params_cols:
            history[f"param_{col}"] = [outcome.models[m].params.get(col) for m in history["model_id"]]
        visits = pd.DataFrame(outcome.visits, columns=["model_id", "epoch", "partition", "worker", "start", "end", "rows",
                                                        "status", "attempt", "load_s", "compute_s", "save_s"])
        evaluations = pd.DataFrame(outcome.evaluations, columns=visits.columns)
        models: dict[str, TrainedModel] = {}
        for mid, rec in outcome.models.items():
            models[mid] = TrainedModel(
                model_id=mid, params=rec.params,
                history=history[history["model_id"] == mid].reset_index(drop=True),
                feature_columns=prepared.feature_columns, label_columns=prepared.label_columns,
                status=rec.status,
                provenance={"experiment": name, "data_hash": prepared.data_hash, "data_key": prepared.key,
                            "store": store.url, "seed": self.seed, "scheduler": self.scheduler, "index": rec.index,
                            "visit_order": [(v["epoch"], v["partition"]) for v in outcome.visits
                                            if v["model_id"] == mid and v["status"] == "ok"]},
                _store=store, _spec_path=rec.spec_path or None, _checkpoint=rec.checkpoint or None,
            )
        scored = []
        for mid, rec in outcome.models.items():
            h = models[mid].history
            if rec.status != "failed" and len(h) and metric in h.columns:
                scored.append((float(h[metric].iloc[-1]), rec.index, mid))
        if not scored:
            detail = "\n\n".join(f"{m}:\n{tb}" for m, tb in list(outcome.failures.items())[:3])
            raise CerebroError(f"no configuration could train ({len(outcome.failures)} failed). First failures:\n{detail}")
        # Best score first; ties go to the configuration created first.
        best = min(scored, key=(lambda t: (t[0], t[1])) if mode == "min" else (lambda t: (-t[0], t[1])))
        # Save tables next to the journal for people and tools that read the store directly.
        store.write_bytes(f"{exp_dir}/history.csv", history.to_csv(index=False).encode())
        store.write_bytes(f"{exp_dir}/visits.csv", visits.to_csv(index=False).encode())
        return ModelSelectionResult(
            best_model_id=best[2], best_params=dict(outcome.models[best[2]].params), best_score=best[0],
            models=models, history=history, visits=visits, failures=dict(outcome.failures),
            experiment_dir=store.local_path(exp_dir) or f"{store.url}/{exp_dir}",
            evaluation_metric=metric, mode=mode, evaluations=evaluations,
        )


class GridSearch(ModelSelection):
    """Every combination of the ``hp_choice`` dimensions, each trained for ``num_epochs``."""

    _grid_only = True

    def _make_driver(self) -> SearchDriver:
        return GridDriver(self.num_epochs)


class RandomSearch(ModelSelection):
    """``num_models`` configurations drawn from the search space, each trained for ``num_epochs``."""

    def __init__(self, backend, store, estimator_gen_fn, search_space, num_models: int, num_epochs: int, **kwargs: Any) -> None:
        super().__init__(backend, store, estimator_gen_fn, search_space, num_epochs, **kwargs)
        self.num_models = num_models

    def _validate(self) -> dict[str, Any]:
        _int_param(self._owner, "num_models", self.num_models)
        return super()._validate()

    def _make_driver(self) -> SearchDriver:
        return RandomDriver(self.num_models, self.num_epochs)
