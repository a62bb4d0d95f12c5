"""Model selection front ends (MLlib style): GridSearch, RandomSearch.

``__init__`` stores the arguments; ``fit`` validates all of them and the data before any
work starts, prepares the data once, then hands the search to the engine.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import pickle
import re
import tempfile
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
from .journal import Journal, acquire_lock, journal_state, read_journal, release_lock
from .result import ModelSelectionResult, TrainedModel
from .space import hp_choice, validate_space
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


def _fan_out(listeners: list):
    """One engine listener calling every listener in order (the list may grow later)."""

    def listener(event: str, info) -> None:
        for target in listeners:
            target(event, info)

    return listener


def _close_all(listeners: list, status: str) -> None:
    """Close every listener that has ``close(status)`` ("FINISHED" or "FAILED")."""
    for target in listeners:
        close = getattr(target, "close", None)
        if close is None:
            continue
        try:
            close(status)
        except Exception:  # closing a tracker must never hide the run's own outcome
            log.exception("closing %r failed", target)


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
        max_retries: int = 2,
        max_consecutive_failures: int | None = None,
        tensorboard: bool = True,
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
        self.max_retries = max_retries
        self.max_consecutive_failures = max_consecutive_failures
        self.tensorboard = tensorboard

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
            from .drivers.early_stopping import MedianStopping

            if not isinstance(self.early_stopping, MedianStopping):
                raise TypeError(f"The 'early_stopping' parameter of {owner} must be None or a MedianStopping(...). Got {self.early_stopping!r} instead.")
        if self.mlflow_tracking_uri is not None:
            if not isinstance(self.mlflow_tracking_uri, str) or not self.mlflow_tracking_uri:
                raise TypeError(f"The 'mlflow_tracking_uri' parameter of {owner} must be a tracking URI string or None. Got {self.mlflow_tracking_uri!r} instead.")
            from .tracking import require_mlflow

            require_mlflow()
        _int_param(owner, "max_retries", self.max_retries, minimum=0)
        if self.max_consecutive_failures is not None:
            _int_param(owner, "max_consecutive_failures", self.max_consecutive_failures)
        if self.experiment_name is not None and (not isinstance(self.experiment_name, str) or not _NAME.match(self.experiment_name) or ".." in self.experiment_name):
            raise ValueError(f"The 'experiment_name' parameter of {owner} must match [A-Za-z0-9._-]+. Got {self.experiment_name!r} instead.")
        if self.verbose not in (0, 1, 2, True, False):
            raise ValueError(f"The 'verbose' parameter of {owner} must be 0, 1 or 2. Got {self.verbose!r} instead.")
        return {"store": store, "space": space, "mode": mode, "features": features, "labels": labels}

    # ------------------------------------------------------------------ fit

    def fit(self, df=None, resume: bool = False) -> ModelSelectionResult:
        """Run the model selection on ``df`` (pandas DataFrame or Parquet path).  Blocks until done.

        With ``resume=True`` and the ``experiment_name`` of an interrupted run, the run goes on
        from what the journal committed (``df`` may then be None: the prepared data in the
        store is used).
        """
        args = self._validate()
        store: Store = args["store"]
        if resume and self.experiment_name is None:
            raise ValueError(f"resume=True needs the 'experiment_name' of the interrupted experiment ({self._owner}).")
        name = self.experiment_name or f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        exp_dir = layout.experiment_dir(name)
        records = read_journal(store, name) if store.exists(exp_dir) else []
        if resume:
            state = journal_state(records)
            if state == "new":
                raise ValueError(f"resume=True but experiment {name!r} has no journal in {store.url}; there is nothing to resume")
            if state == "finished":
                raise ValueError(f"experiment {name!r} already finished; nothing to resume (choose a new experiment_name)")
            meta = store.read_json(f"{exp_dir}/experiment.json")
            if meta["num_workers"] != self.backend.num_workers:
                raise ValueError(
                    f"experiment {name!r} ran with num_workers={meta['num_workers']} (one data partition each); "
                    f"resume it with a backend of {meta['num_workers']} workers, not {self.backend.num_workers}"
                )
        elif store.exists(exp_dir):
            raise ValueError(
                f"experiment {name!r} already exists in the store ({store.url}/{exp_dir}); choose another "
                "experiment_name, or pass resume=True to continue an interrupted run"
            )
        prepared = self._prepare(df, store, args, records_meta=(store.read_json(f"{exp_dir}/experiment.json") if resume else None))
        metric = "val_" + strip_prefix(self.evaluation_metric)
        mode = args["mode"]
        driver = self._make_driver()
        if self.early_stopping is not None:
            from .drivers.early_stopping import EarlyStoppingDriver

            driver = EarlyStoppingDriver(driver, copy.deepcopy(self.early_stopping))
        driver.bind(args["space"], make_rng(self.seed), self.backend.num_workers, metric, mode)

        if not resume:
            store.makedirs(exp_dir)
        acquire_lock(store, name)
        try:
            if not resume:
                self._write_experiment(store, name, prepared, args)
            journal = Journal(store, name)
            journal({"type": "resumed" if resume else "started", "time": time.time(), "pid": os.getpid()})
            listeners = self._listeners(store, name, args, metric, mode)
            engine = Engine(
                backend=self.backend, setup=WorkerSetup(store, prepared.to_dict(), None, store.local_path("logs")),
                scheduler=MOPScheduler(self.backend.num_workers, mode=self.scheduler, seed=self.seed, max_retries=self.max_retries),
                driver=driver, create_model=self._model_factory(store, name, prepared),
                exploit=self._exploit_factory(store, name, prepared),
                checkpoint_path=lambda m, e, h, a: layout.checkpoint(name, m, e, h, a),
                delete=store.delete, seed=self.seed, journal=journal, metric=metric, mode=mode,
                max_consecutive_failures=self.max_consecutive_failures,
                listener=_fan_out(listeners),
            )
            if resume:
                engine.restore(records)
                self._remove_orphan_checkpoints(store, name, engine)
            progress = None
            if self.verbose:
                from .progress import RichProgress

                progress = RichProgress(driver.total_sub_epochs(self.backend.num_workers), metric, mode,
                                        epochs_per_model=getattr(driver, "num_epochs", None))
                progress.seed(engine)
                listeners.append(progress)
            try:
                if progress is not None:
                    with progress:
                        outcome = engine.run()
                else:
                    outcome = engine.run()
            except ValueError:
                if not resume and not engine.history and not engine.visits:
                    # Refused before any training: leave nothing half-written behind.
                    _close_all(listeners, "FAILED")
                    release_lock(store, name)
                    store.delete(exp_dir)
                raise
            except BaseException:
                journal({"type": "aborted", "time": time.time()})
                _close_all(listeners, "FAILED")
                raise
            journal({"type": "finished", "time": time.time()})
            _close_all(listeners, "FINISHED")
            return self._result(outcome, store, name, prepared, metric, mode)
        finally:
            release_lock(store, name)

    # ------------------------------------------------------------------ fit helpers

    def _prepare(self, df, store: Store, args: dict[str, Any], records_meta: dict | None):
        from .data import PreparedData, prepare_data

        if df is None:
            if records_meta is None:
                raise TypeError(f"{self._owner}.fit() needs a DataFrame or a Parquet path (df=None only with resume=True)")
            return PreparedData.from_dict(store.read_json(layout.data_manifest(records_meta["data_key"])))
        prepared = prepare_data(
            df, store, feature_columns=args["features"], label_columns=args["labels"],
            validation=self.validation, num_partitions=self.backend.num_workers, seed=self.seed,
        )
        if records_meta is not None and prepared.key != records_meta["data_key"]:
            raise ValueError(
                f"the data given to resume differs from the interrupted run's (prepared key {prepared.key} vs "
                f"{records_meta['data_key']}); resume with the same data, or with df=None to use the stored copy"
            )
        return prepared

    def _write_experiment(self, store: Store, name: str, prepared, args: dict[str, Any]) -> None:
        exp_dir = layout.experiment_dir(name)
        store.write_json(f"{exp_dir}/experiment.json", {
            "name": name, "search": self._owner, "data_key": prepared.key, "data_hash": prepared.data_hash,
            "num_workers": self.backend.num_workers, "num_epochs": self.num_epochs,
            "evaluation_metric": self.evaluation_metric, "mode": args["mode"], "seed": self.seed,
            "scheduler": self.scheduler, "search_space": repr(args["space"]),
            "feature_columns": list(args["features"]), "label_columns": list(args["labels"]),
            "validation": self.validation, "started": time.time(),
        })
        # What `cerebro resume` needs to rebuild this search: every argument but the backend
        # and the store (the estimator_gen_fn by reference, so it must be importable).
        clone = copy.copy(self)
        clone.backend, clone.store = None, None
        try:
            store.write_bytes(f"{exp_dir}/search.pkl", pickle.dumps(clone))
        except Exception as exc:  # a lambda or local function cannot be pickled by reference
            log.info("search arguments not saved for `cerebro resume` (%s); resume with fit(..., resume=True)", exc)

    def _build_estimator(self, params: dict[str, Any], prepared) -> tuple[Any, list[str] | None]:
        """The estimator for one configuration and, when it uses fewer than all feature columns,
        the ones it uses (an ablation variant).  Raises whatever estimator_gen_fn raises."""
        return self.estimator_gen_fn(dict(params)), None

    def _model_factory(self, store: Store, name: str, prepared) -> Callable[[str, int, dict], ModelInit]:
        checked: list[bool] = []

        def create_model(model_id: str, index: int, params: dict[str, Any]) -> ModelInit:
            from .frameworks.keras import KerasEstimator, seed_model_creation

            # Same seed and configuration index -> same initial weights, in any run.
            seed_model_creation(derive_seed(self.seed, 3, index))
            try:
                estimator, features = self._build_estimator(dict(params), prepared)
                if not isinstance(estimator, KerasEstimator):
                    raise TypeError(f"estimator_gen_fn must return a KerasEstimator; it returned {type(estimator).__name__}")
                names = estimator.metric_names()
            except Exception:
                raise ModelCreationFailed(traceback.format_exc()) from None
            columns = features or list(prepared.feature_columns)
            input_width = sum(math.prod(prepared.feature_shapes[c]) for c in columns)
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
            return ModelInit(spec_path, ckpt, hashlib.sha256(spec.initial_state).hexdigest(),
                             {"features": features} if features else {})

        return create_model

    def _exploit_factory(self, store: Store, name: str, prepared) -> Callable[[Any, Any, dict], ModelInit]:
        def exploit(target, source, params: dict[str, Any]) -> ModelInit:
            """PBT: target continues from source's committed state with ``params``."""
            columns = target.task_extra.get("features") or prepared.feature_columns
            input_width = sum(math.prod(prepared.feature_shapes[c]) for c in columns)
            from .frameworks.keras import seed_model_creation, transfer_learning_rate
            from .worker import read_checkpoint

            seed_model_creation(derive_seed(self.seed, 4, target.index, target.spec_version))
            estimator, _ = self._build_estimator(dict(params), prepared)
            spec = estimator.make_spec([(input_width,)])
            source_spec = pickle.loads(store.read_bytes(source.spec_path))
            if spec.arch_key != source_spec.arch_key:
                raise CerebroError(
                    f"exploit of {source.model_id} into {target.model_id} with params {params}: these parameters change "
                    "the model's architecture or optimizer configuration, so the source's state cannot be copied; "
                    "mutate only parameters that keep it (learning rate, batch size, ...)"
                )
            state = transfer_learning_rate(read_checkpoint(store, source.epoch_checkpoint, source.epoch_checksum),
                                           spec.initial_state)
            spec_path = layout.model_spec(name, target.model_id, target.spec_version)
            ckpt = layout.checkpoint(name, target.model_id, target.epochs_done + 1, 0, target.spec_version)
            store.write_bytes(spec_path, pickle.dumps(spec))
            store.write_bytes(ckpt, state)
            return ModelInit(spec_path, ckpt, hashlib.sha256(state).hexdigest())

        return exploit

    def _listeners(self, store: Store, name: str, args: dict[str, Any], metric: str, mode: str) -> list:
        listeners: list = []
        exp_local = store.local_path(layout.experiment_dir(name))
        if self.tensorboard and exp_local is not None:
            from .tracking import TensorBoardLogger

            listeners.append(TensorBoardLogger(os.path.join(exp_local, "tensorboard"), hparam_names=sorted(args["space"])))
        if self.mlflow_tracking_uri is not None:
            from .tracking import MLflowLogger

            state_dir = exp_local or tempfile.mkdtemp(prefix="cerebro-mlflow-")
            listeners.append(MLflowLogger(
                self.mlflow_tracking_uri, name, state_path=os.path.join(state_dir, "mlflow.json"),
                parent_params={"search": self._owner, "num_epochs": self.num_epochs, "seed": self.seed,
                               "evaluation_metric": metric, "mode": mode, "scheduler": self.scheduler,
                               "num_workers": self.backend.num_workers},
            ))
        return listeners

    @staticmethod
    def _remove_orphan_checkpoints(store: Store, name: str, engine: Engine) -> None:
        """Checkpoints written by visits that never committed (in flight at the crash) go."""
        keep = {m.checkpoint for m in engine.models.values()} | {m.epoch_checkpoint for m in engine.models.values()}
        if engine.best is not None:
            keep.add(engine.best["checkpoint"])
        for model_id in engine.models:
            ckpt_dir = layout.checkpoint_dir(name, model_id)
            for fname in store.listdir(ckpt_dir):
                path = f"{ckpt_dir}/{fname}"
                if path not in keep:
                    store.delete(path)

    def _result(self, outcome, store: Store, name: str, prepared, metric: str, mode: str) -> ModelSelectionResult:
        exp_dir = layout.experiment_dir(name)
        params_cols = sorted({k for m in outcome.models.values() for k in m.params})
        rows = [{k: v for k, v in row.items() if k != "__params"} for row in outcome.history]
        history = pd.DataFrame(rows)
        if history.empty:
            history = pd.DataFrame(columns=["model_id", "epoch"])
        # Each epoch's own parameters (PBT changes them mid-run).
        for col in params_cols:
            history[f"param_{col}"] = [row.get("__params", outcome.models[row["model_id"]].params).get(col)
                                       for row in outcome.history]
        # Rows in (model, epoch) order, whatever order the epochs finished in.
        history = history.sort_values(["model_id", "epoch"], kind="stable").reset_index(drop=True)
        visits = pd.DataFrame(outcome.visits, columns=["model_id", "epoch", "partition", "worker", "start", "end", "rows",
                                                        "status", "attempt", "load_s", "compute_s", "save_s"])
        evaluations = pd.DataFrame(outcome.evaluations, columns=visits.columns)
        models: dict[str, TrainedModel] = {}
        for mid, rec in outcome.models.items():
            models[mid] = TrainedModel(
                model_id=mid, params=rec.params,
                history=history[history["model_id"] == mid].reset_index(drop=True),
                feature_columns=tuple(rec.task_extra.get("features") or prepared.feature_columns),
                label_columns=prepared.label_columns, status=rec.status,
                provenance={"experiment": name, "data_hash": prepared.data_hash, "data_key": prepared.key,
                            "store": store.url, "seed": self.seed, "scheduler": self.scheduler, "index": rec.index,
                            "visit_order": [(v["epoch"], v["partition"]) for v in outcome.visits
                                            if v["model_id"] == mid and v["status"] == "ok"]},
                _store=store, _spec_path=rec.spec_path or None, _checkpoint=rec.checkpoint or None,
                _checksum=rec.checksum,
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
        store.write_bytes(f"{exp_dir}/evaluations.csv", evaluations.to_csv(index=False).encode())
        checkpoint_bytes = sum(store.size(layout.checkpoint_dir(name, m)) for m in outcome.models)
        log.info("experiment %s: %d checkpoints bytes kept in the store", name, checkpoint_bytes)
        return ModelSelectionResult(
            best_model_id=best[2], best_params=dict(outcome.models[best[2]].params), best_score=best[0],
            models=models, history=history, visits=visits, failures=dict(outcome.failures),
            experiment_dir=store.local_path(exp_dir) or f"{store.url}/{exp_dir}",
            evaluation_metric=metric, mode=mode, evaluations=evaluations,
            best_checkpoint=outcome.best_checkpoint, checkpoint_bytes=checkpoint_bytes,
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


class TPESearch(ModelSelection):
    """Tree-structured Parzen estimators (hyperopt), asking for a configuration whenever a slot frees."""

    def __init__(self, backend, store, estimator_gen_fn, search_space, num_models: int, num_epochs: int,
                 parallelism: int | None = None, n_startup_jobs: int | None = None, **kwargs: Any) -> None:
        super().__init__(backend, store, estimator_gen_fn, search_space, num_epochs, **kwargs)
        self.num_models = num_models
        self.parallelism = parallelism
        self.n_startup_jobs = n_startup_jobs  # hyperopt's random start-up trials (default 20)

    def _validate(self) -> dict[str, Any]:
        _int_param(self._owner, "num_models", self.num_models)
        if self.parallelism is not None:
            _int_param(self._owner, "parallelism", self.parallelism)
        if self.n_startup_jobs is not None:
            _int_param(self._owner, "n_startup_jobs", self.n_startup_jobs)
        return super()._validate()

    def _make_driver(self) -> SearchDriver:
        from .drivers.tpe import TPEDriver

        return TPEDriver(self.num_models, self.num_epochs, self.parallelism, n_startup_jobs=self.n_startup_jobs)


class HyperbandSearch(ModelSelection):
    """Hyperband (Li et al.) with epochs as the resource: brackets of successive halving."""

    def __init__(self, backend, store, estimator_gen_fn, search_space, max_epochs: int, eta: int = 3,
                 **kwargs: Any) -> None:
        super().__init__(backend, store, estimator_gen_fn, search_space, max_epochs, **kwargs)
        self.max_epochs = max_epochs
        self.eta = eta

    def _validate(self) -> dict[str, Any]:
        _int_param(self._owner, "max_epochs", self.max_epochs)
        _int_param(self._owner, "eta", self.eta, minimum=2)
        return super()._validate()

    def _make_driver(self) -> SearchDriver:
        from .drivers.hyperband import HyperbandDriver

        return HyperbandDriver(self.max_epochs, self.eta)


class ASHASearch(ModelSelection):
    """Asynchronous successive halving: promotions by rung, no barrier."""

    def __init__(self, backend, store, estimator_gen_fn, search_space, num_models: int, max_epochs: int,
                 grace_period: int = 1, reduction_factor: int = 3, **kwargs: Any) -> None:
        super().__init__(backend, store, estimator_gen_fn, search_space, max_epochs, **kwargs)
        self.num_models = num_models
        self.max_epochs = max_epochs
        self.grace_period = grace_period
        self.reduction_factor = reduction_factor

    def _validate(self) -> dict[str, Any]:
        _int_param(self._owner, "num_models", self.num_models)
        _int_param(self._owner, "max_epochs", self.max_epochs)
        _int_param(self._owner, "grace_period", self.grace_period)
        _int_param(self._owner, "reduction_factor", self.reduction_factor, minimum=2)
        if self.grace_period > self.max_epochs:
            raise ValueError(f"The 'grace_period' parameter of {self._owner} must be <= max_epochs={self.max_epochs}. Got {self.grace_period} instead.")
        return super()._validate()

    def _make_driver(self) -> SearchDriver:
        from .drivers.asha import ASHADriver

        return ASHADriver(self.num_models, self.max_epochs, self.grace_period, self.reduction_factor)


class PBTSearch(ModelSelection):
    """Population-based training: the bottom quantile copies the top's state and perturbs its parameters."""

    def __init__(self, backend, store, estimator_gen_fn, search_space, population_size: int, num_epochs: int,
                 perturbation_interval: int = 1, quantile_fraction: float = 0.25, mutations: dict | None = None,
                 **kwargs: Any) -> None:
        super().__init__(backend, store, estimator_gen_fn, search_space, num_epochs, **kwargs)
        self.population_size = population_size
        self.perturbation_interval = perturbation_interval
        self.quantile_fraction = quantile_fraction
        self.mutations = mutations

    def _validate(self) -> dict[str, Any]:
        _int_param(self._owner, "population_size", self.population_size, minimum=2)
        _int_param(self._owner, "perturbation_interval", self.perturbation_interval)
        q = self.quantile_fraction
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 0.5:
            raise ValueError(f"The 'quantile_fraction' parameter of {self._owner} must be a number in (0, 0.5]. Got {q!r} instead.")
        if self.mutations is not None and not isinstance(self.mutations, Mapping):
            raise TypeError(f"The 'mutations' parameter of {self._owner} must be None or a dict of name -> hp_* dimension or callable. Got {self.mutations!r} instead.")
        args = super()._validate()
        unknown = sorted(set(self.mutations or ()) - set(args["space"]))
        if unknown:
            raise ValueError(f"The 'mutations' parameter of {self._owner} names {unknown}, which are not in the search space {sorted(args['space'])}.")
        return args

    def _make_driver(self) -> SearchDriver:
        from .drivers.pbt import PBTDriver

        return PBTDriver(self.population_size, self.num_epochs, self.perturbation_interval, self.quantile_fraction,
                         self.mutations)


class AblationStudy(ModelSelection):
    """Leave-one-component-out variants of a base configuration, run as one model selection
    over MOP (like Maggy's LOCO ablator).

    ``AblationStudy(backend, store, estimator_gen_fn, base_params, num_epochs,
    ablate_features=("age", ...), ablate_layers=("hidden2", ...), **common)`` trains the base
    configuration (``estimator_gen_fn(base_params)``), one variant per listed feature column
    with that column left out of the inputs, and one variant per listed layer name with that
    layer left out of the (Sequential) model, each from fresh weights on the same partitions.
    The result's ``ablation`` table gives each variant's final validation metric beside the
    base's.  For feature ablation the model's input must be a flat vector (its width is
    adjusted); for layer ablation, name the layers.
    """

    def __init__(self, backend, store, estimator_gen_fn, base_params: Mapping[str, Any], num_epochs: int,
                 ablate_features=(), ablate_layers=(), **kwargs: Any) -> None:
        self.base_params = base_params
        self.ablate_features = ablate_features
        self.ablate_layers = ablate_layers
        super().__init__(backend, store, estimator_gen_fn, {"ablation": hp_choice(self._variants())}, num_epochs, **kwargs)

    def _variants(self) -> list[str]:
        feats = [self.ablate_features] if isinstance(self.ablate_features, str) else list(self.ablate_features or ())
        layers = [self.ablate_layers] if isinstance(self.ablate_layers, str) else list(self.ablate_layers or ())
        return ["base"] + [f"-feature:{f}" for f in feats] + [f"-layer:{l}" for l in layers]

    def _validate(self) -> dict[str, Any]:
        owner = self._owner
        if not isinstance(self.base_params, Mapping):
            raise TypeError(f"The 'base_params' parameter of {owner} must be a dict of parameters for estimator_gen_fn. Got {self.base_params!r} instead.")
        if "ablation" in self.base_params:
            raise ValueError(f"The 'base_params' parameter of {owner} must not use the reserved name 'ablation'.")
        for name, values in (("ablate_features", self.ablate_features), ("ablate_layers", self.ablate_layers)):
            values = [values] if isinstance(values, str) else list(values or ())
            if not all(isinstance(v, str) and v for v in values) or len(set(values)) != len(values):
                raise ValueError(f"The '{name}' parameter of {owner} must be distinct non-empty names. Got {values!r} instead.")
        if len(self._variants()) == 1:
            raise ValueError(f"{owner} needs at least one of 'ablate_features' or 'ablate_layers'.")
        args = super()._validate()
        features = list(args["features"])
        unknown = [f for f in self._variants() if f.startswith("-feature:") and f[len("-feature:"):] not in features]
        if unknown:
            raise ValueError(
                f"The 'ablate_features' parameter of {owner} names {[u[len('-feature:'):] for u in unknown]}, which are not "
                f"feature columns; the feature columns are {features}."
            )
        if len(features) < 2 and any(v.startswith("-feature:") for v in self._variants()):
            raise ValueError(f"{owner} cannot leave out the only feature column {features}.")
        return args

    def _make_driver(self) -> SearchDriver:
        return GridDriver(self.num_epochs)

    def _build_estimator(self, params: dict[str, Any], prepared) -> tuple[Any, list[str] | None]:
        from .frameworks.keras import ablate

        variant = params["ablation"]
        base = self.estimator_gen_fn(dict(self.base_params))
        if variant == "base":
            return base, None
        kind, _, name = variant[1:].partition(":")
        if kind == "layer":
            return ablate(base, drop_layer=name), None
        features = [c for c in prepared.feature_columns if c != name]
        width = sum(math.prod(prepared.feature_shapes[c]) for c in features)
        return ablate(base, input_width=width), features

    def _result(self, outcome, store, name, prepared, metric, mode) -> ModelSelectionResult:
        result = super()._result(outcome, store, name, prepared, metric, mode)
        last = result.history.sort_values("epoch").groupby("model_id").tail(1).set_index("model_id")
        rows = []
        for mid, model in result.models.items():
            variant = model.params["ablation"]
            value = float(last.loc[mid, metric]) if mid in last.index and metric in last.columns else float("nan")
            rows.append({"variant": variant, "left_out": variant.partition(":")[2] or None,
                         "kind": variant[1:].partition(":")[0] if variant != "base" else "base",
                         "model_id": mid, metric: value, "status": model.status})
        table = pd.DataFrame(rows)
        base = table.loc[table.variant == "base", metric]
        table[f"{metric}_minus_base"] = table[metric] - (float(base.iloc[0]) if len(base) else float("nan"))
        result.ablation = table
        return result
