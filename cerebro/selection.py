"""Model selection front ends (MLlib style): GridSearch, RandomSearch.

``__init__`` stores the arguments; ``fit`` validates all of them and the data before any
work starts, prepares the data once, then hands the search to the engine.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
import tempfile
import time
import uuid
from typing import Any, Callable, Mapping

import pandas as pd

from ._checks import check_columns, check_int, check_number, is_int, param_error
from .backends.base import Backend, WorkerSetup
from .core.metrics import infer_mode, strip_prefix
from .core.mop import MOPScheduler
from .core.records import RunMark
from .core.seeds import driver_rng
from .drivers.base import SearchDriver
from .drivers.grid import GridDriver, RandomDriver
from .errors import CerebroError
from .experiment.engine import Engine
from .experiment.workspace import ExperimentWorkspace
from .frameworks.base import framework_of
from .result import ModelSelectionResult
from .space import hp_choice, validate_space
from .storage import Store
from .storage import layout

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
            raise param_error(owner, "backend", "a LocalBackend or SparkBackend", self.backend, TypeError)
        store = self.store
        if isinstance(store, (str, os.PathLike)):
            store = Store.create(os.fspath(store))
        if not isinstance(store, Store):
            raise param_error(owner, "store", "a Store or a path/URL", self.store, TypeError)
        if not callable(self.estimator_gen_fn):
            raise param_error(owner, "estimator_gen_fn", "callable (params dict -> KerasEstimator or TorchEstimator)", self.estimator_gen_fn, TypeError)
        space = validate_space(self.search_space, owner=owner, grid_only=self._grid_only)
        check_int(owner, "num_epochs", self.num_epochs)
        if not isinstance(self.evaluation_metric, str) or not self.evaluation_metric:
            raise param_error(owner, "evaluation_metric", "a metric name such as 'loss' or 'accuracy'", self.evaluation_metric)
        mode = self.mode
        if mode is None:
            mode = infer_mode(self.evaluation_metric)
            if mode is None:
                raise ValueError(
                    f"cannot tell whether evaluation_metric={self.evaluation_metric!r} should be minimised or maximised; "
                    "pass mode='min' or mode='max'"
                )
        elif mode not in ("min", "max"):
            raise param_error(owner, "mode", "'min', 'max' or None", mode)
        v = self.validation
        expected = "a fraction in (0, 1) or a boolean column name"
        if isinstance(v, bool) or not isinstance(v, (float, int, str)):
            raise param_error(owner, "validation", expected, v, TypeError)
        if not isinstance(v, str):
            check_number(owner, "validation", v, low=0, high=1, low_open=True, high_open=True, expected=expected)
        features = check_columns(owner, "feature_columns", self.feature_columns)
        labels = check_columns(owner, "label_columns", self.label_columns)
        if not is_int(self.seed):
            raise param_error(owner, "seed", "an int", self.seed, TypeError)
        if self.scheduler not in ("dynamic", "deterministic"):
            raise param_error(owner, "scheduler", "'dynamic' or 'deterministic'", self.scheduler)
        if self.early_stopping is not None:
            from .drivers.early_stopping import MedianStopping

            if not isinstance(self.early_stopping, MedianStopping):
                raise param_error(owner, "early_stopping", "None or a MedianStopping(...)", self.early_stopping, TypeError)
        if self.mlflow_tracking_uri is not None:
            if not isinstance(self.mlflow_tracking_uri, str) or not self.mlflow_tracking_uri:
                raise param_error(owner, "mlflow_tracking_uri", "a tracking URI string or None", self.mlflow_tracking_uri, TypeError)
            from .tracking import require_mlflow

            require_mlflow()
        check_int(owner, "max_retries", self.max_retries, minimum=0)
        if self.max_consecutive_failures is not None:
            check_int(owner, "max_consecutive_failures", self.max_consecutive_failures)
        if self.experiment_name is not None and (not isinstance(self.experiment_name, str) or not _NAME.match(self.experiment_name) or ".." in self.experiment_name):
            raise ValueError(f"The 'experiment_name' parameter of {owner} must match [A-Za-z0-9._-]+. Got {self.experiment_name!r} instead.")
        if self.verbose not in (0, 1, 2, True, False):
            raise param_error(owner, "verbose", "0, 1 or 2", self.verbose)
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
        store.check_writable()
        if resume and self.experiment_name is None:
            raise ValueError(f"resume=True needs the 'experiment_name' of the interrupted experiment ({self._owner}).")
        name = self.experiment_name or f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        workspace = ExperimentWorkspace.open(store, name, resume, self.backend.num_workers)
        if workspace.meta is not None:
            self._check_same_call(workspace.meta, name)
        prepared = self._prepare(df, store, args, workspace.meta)
        workspace.bind(prepared, self.seed, self.evaluation_metric, lambda params: self._build_estimator(params, prepared))
        metric = "val_" + strip_prefix(self.evaluation_metric)
        mode = args["mode"]
        driver = self._make_driver()
        if self.early_stopping is not None:
            from .drivers.early_stopping import EarlyStoppingDriver

            driver = EarlyStoppingDriver(driver, copy.deepcopy(self.early_stopping))
        driver.bind(args["space"], driver_rng(self.seed), self.backend.num_workers, metric, mode)

        workspace.begin(self._metadata(name, prepared, args), self)
        try:
            workspace.journal(RunMark("resumed" if resume else "started", time.time(), os.getpid(),
                                      workspace.search_path).to_dict())
            listeners = self._listeners(workspace, args, metric, mode)
            engine = Engine(
                backend=self.backend,
                setup=WorkerSetup(store, prepared.to_dict(), None, store.local_path(layout.logs_dir())),
                scheduler=MOPScheduler(self.backend.num_workers, mode=self.scheduler, seed=self.seed, max_retries=self.max_retries),
                driver=driver, workspace=workspace, seed=self.seed, metric=metric, mode=mode,
                max_consecutive_failures=self.max_consecutive_failures, listener=_fan_out(listeners),
            )
            if resume:
                engine.restore(workspace.records)
                workspace.remove_orphans(engine.state)
            progress = None
            if self.verbose:
                from .progress import RichProgress

                progress = RichProgress(driver.total_sub_epochs(self.backend.num_workers), metric, mode,
                                        epochs_per_model=getattr(driver, "num_epochs", None))
                progress.seed(engine.state)
                listeners.append(progress)
            try:
                if progress is not None:
                    with progress:
                        outcome = engine.run()
                else:
                    outcome = engine.run()
            except ValueError:
                if not resume and not engine.state.history and not engine.state.visits:
                    # Refused before any training: leave nothing half-written behind.
                    _close_all(listeners, "FAILED")
                    workspace.discard()
                raise
            except BaseException:
                try:
                    workspace.journal(RunMark("aborted", time.time()).to_dict())
                except OSError as exc:  # a full or lost store: the original error is the one to see
                    log.warning("could not journal that the run aborted: %s", exc)
                _close_all(listeners, "FAILED")
                raise
            try:
                # The result tables are written before the run is marked finished: a driver killed
                # in between resumes and writes them again, so a finished experiment always has them.
                result = self._result(outcome, workspace, metric, mode)
            except CerebroError:   # no configuration could train: the run is over all the same
                workspace.journal(RunMark("finished", time.time()).to_dict())
                _close_all(listeners, "FINISHED")
                raise
            workspace.journal(RunMark("finished", time.time()).to_dict())
            _close_all(listeners, "FINISHED")
            return result
        finally:
            workspace.end()

    # ------------------------------------------------------------------ fit helpers

    def _prepare(self, df, store: Store, args: dict[str, Any], records_meta: dict | None):
        from .data import PreparedData, prepare_data

        if df is None:
            if records_meta is None:
                raise TypeError(f"{self._owner}.fit() needs a DataFrame or a Parquet path (df=None only with resume=True)")
            manifest = layout.data_manifest(records_meta["data_key"])
            if not store.exists(manifest):
                raise CerebroError(
                    f"the interrupted run's prepared data {records_meta['data_key']} is no longer complete in {store.url} "
                    "(deleted, or found corrupted and set aside); resume with the data: fit(df, resume=True) prepares "
                    "it again"
                )
            return PreparedData.from_dict(store.read_json(manifest))
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

    def _metadata(self, name: str, prepared, args: dict[str, Any]) -> dict[str, Any]:
        """What ``experiment.json`` records about this search."""
        return {
            "name": name, "search": self._owner, "data_key": prepared.key, "data_hash": prepared.data_hash,
            "num_workers": self.backend.num_workers, "num_epochs": self.num_epochs,
            "evaluation_metric": self.evaluation_metric, "mode": args["mode"], "seed": self.seed,
            "scheduler": self.scheduler, "search_space": repr(args["space"]),
            "feature_columns": list(args["features"]), "label_columns": list(args["labels"]),
            "validation": self.validation, "arguments": self._decision_arguments(),
        }

    #: Arguments that change neither what is trained nor what is decided: a resume may change them.
    _OPERATIONAL = frozenset({"backend", "store", "experiment_name", "mlflow_tracking_uri", "verbose", "tensorboard",
                              "max_retries", "max_consecutive_failures"})

    def _decision_arguments(self) -> dict[str, str]:
        """Every argument that decides what is trained, as its repr (the estimator_gen_fn by
        its qualified name: a script run as ``__main__`` and ``cerebro resume`` import it from
        different modules)."""
        out = {}
        for key, value in sorted(vars(self).items()):
            if key in self._OPERATIONAL or key.startswith("_"):
                continue
            if key == "estimator_gen_fn":
                out[key] = getattr(value, "__qualname__", None) or type(value).__qualname__
            elif isinstance(value, Mapping):  # the same dict in another order is the same argument
                out[key] = repr(dict(sorted(value.items(), key=lambda item: str(item[0]))))
            else:
                out[key] = repr(value)
        return out

    def _check_same_call(self, meta: Mapping[str, Any], name: str) -> None:
        """Refuse to resume experiment ``name`` with arguments other than it ran with."""
        if meta.get("search", self._owner) != self._owner:
            raise ValueError(f"experiment {name!r} ran as {meta['search']}; resume it with {meta['search']}, "
                             f"not {self._owner}")
        before = meta.get("arguments") or {}
        for key, value in self._decision_arguments().items():
            if key not in before or " at 0x" in value or " at 0x" in before[key]:
                continue  # an experiment of an older cerebro, or a value whose repr is its address
            if before[key] != value:
                raise ValueError(
                    f"resume=True with a different {key!r} than experiment {name!r} ran with: it ran with "
                    f"{_short(before[key])}, this call has {_short(value)}. Resume with the same arguments "
                    f"(only {', '.join(sorted(self._OPERATIONAL - {'backend', 'store'}))} may change), "
                    "or start a new experiment_name."
                )

    def _build_estimator(self, params: dict[str, Any], prepared) -> tuple[Any, list[str] | None]:
        """The estimator for one configuration and, when it uses fewer than all feature columns,
        the ones it uses (an ablation variant).  Raises whatever estimator_gen_fn raises."""
        return self.estimator_gen_fn(dict(params)), None

    def _listeners(self, workspace: ExperimentWorkspace, args: dict[str, Any], metric: str, mode: str) -> list:
        listeners: list = []
        tensorboard_dir = workspace.local_path(layout.TENSORBOARD_DIR)
        if self.tensorboard and tensorboard_dir is not None:
            from .tracking import TensorBoardLogger

            listeners.append(TensorBoardLogger(tensorboard_dir, hparam_names=sorted(args["space"])))
        if self.mlflow_tracking_uri is not None:
            from .tracking import MLflowLogger

            state_path = workspace.local_path(layout.MLFLOW_STATE_FILE) or os.path.join(
                tempfile.mkdtemp(prefix="cerebro-mlflow-"), layout.MLFLOW_STATE_FILE)
            listeners.append(MLflowLogger(
                self.mlflow_tracking_uri, workspace.name, state_path=state_path,
                parent_params={"search": self._owner, "num_epochs": self.num_epochs, "seed": self.seed,
                               "evaluation_metric": metric, "mode": mode, "scheduler": self.scheduler,
                               "num_workers": self.backend.num_workers},
            ))
        return listeners

    def _result(self, outcome, workspace: ExperimentWorkspace, metric: str, mode: str) -> ModelSelectionResult:
        return workspace.result(outcome, metric, mode, {"seed": self.seed, "scheduler": self.scheduler})


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
        check_int(self._owner, "num_models", self.num_models)
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
        check_int(self._owner, "num_models", self.num_models)
        if self.parallelism is not None:
            check_int(self._owner, "parallelism", self.parallelism)
        if self.n_startup_jobs is not None:
            check_int(self._owner, "n_startup_jobs", self.n_startup_jobs)
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
        check_int(self._owner, "max_epochs", self.max_epochs)
        check_int(self._owner, "eta", self.eta, minimum=2)
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
        check_int(self._owner, "num_models", self.num_models)
        check_int(self._owner, "max_epochs", self.max_epochs)
        check_int(self._owner, "grace_period", self.grace_period)
        check_int(self._owner, "reduction_factor", self.reduction_factor, minimum=2)
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
        check_int(self._owner, "population_size", self.population_size, minimum=2)
        check_int(self._owner, "perturbation_interval", self.perturbation_interval)
        check_number(self._owner, "quantile_fraction", self.quantile_fraction, low=0, high=0.5, low_open=True,
                     expected="a number in (0, 0.5]")
        if self.mutations is not None and not isinstance(self.mutations, Mapping):
            raise param_error(self._owner, "mutations", "None or a dict of name -> hp_* dimension or callable", self.mutations, TypeError)
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
            raise param_error(owner, "base_params", "a dict of parameters for estimator_gen_fn", self.base_params, TypeError)
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
        variant = params["ablation"]
        base = self.estimator_gen_fn(dict(self.base_params))
        if variant == "base":
            return base, None
        fw = framework_of(base)
        kind, _, name = variant[1:].partition(":")
        if kind == "layer":
            return fw.ablate(base, drop_layer=name), None
        features = [c for c in prepared.feature_columns if c != name]
        width = sum(math.prod(prepared.feature_shapes[c]) for c in features)
        return fw.ablate(base, input_width=width), features

    def _result(self, outcome, workspace, metric, mode) -> ModelSelectionResult:
        result = super()._result(outcome, workspace, metric, mode)
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
