"""The experiment workspace: everything an experiment writes in the store, in one object.

:class:`ExperimentWorkspace` owns ``<store>/experiments/<name>/``: the lock, ``experiment.json``
and ``search.pkl``, the journal, each model's spec and checkpoints (creation, exploit copies,
naming, retention and orphan clean-up), and the result tables.  The engine sees it through the
:class:`~cerebro.experiment.engine.Workspace` protocol; ``selection`` opens it, hands it to the
engine, and asks it for the result.

Frameworks are reached through ``build(params) -> (estimator, feature columns or None)`` and
the :class:`~cerebro.frameworks.base.Framework` interface (imported lazily by name), so
importing this module imports no framework.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import pickle
import time
import traceback
from typing import Any, Callable, Mapping

import pandas as pd

from ..core.metrics import best_of, strip_prefix
from ..core.records import VISIT_COLUMNS
from ..core.seeds import exploit_init_seed, model_init_seed
from ..core.state import ExperimentState, ExploitPlan
from ..errors import CerebroError
from ..frameworks.arrays import LabelMismatch, input_shapes, label_count_problem
from ..frameworks.base import DataSample, framework_of, seed_everything
from ..storage import Store, layout
from ..worker import read_checkpoint, read_pickled
from .engine import EngineOutcome, ModelCreationFailed, ModelInit
from .journal import (
    Journal, acquire_lock, journal_state, lock_holder, read_journal, reclaim_unstarted, release_lock, repair_torn_tail,
)

log = logging.getLogger(__name__)

#: Training rows read in the driver to check each new model against the data (one forward pass).
SAMPLE_ROWS = 8

__all__ = ["ExperimentWorkspace"]


class ExperimentWorkspace:
    """One experiment's directory in a store.  Used by one driver process at a time (the lock).

    Life cycle, driven by ``ModelSelection.fit``: :meth:`open` (checks new vs resume, reads the
    journal), :meth:`bind` (the data and how to build estimators), :meth:`begin` (creates the
    directory, takes the lock, writes ``experiment.json`` for a new run), the engine run, then
    :meth:`result` and :meth:`end` (releases the lock), or :meth:`discard` when the run was
    refused before any training.
    """

    def __init__(self, store: Store, name: str, records: list[dict[str, Any]], resume: bool,
                 meta: dict[str, Any] | None = None) -> None:
        self.store = store
        self.meta = meta                   # experiment.json of a resumed run (None for a new one)
        self.name = name
        self.dir = layout.experiment_dir(name)
        self.records = records
        self.resume = resume
        self.prepared: Any = None
        self.seed = 0
        self._build: Callable[[dict[str, Any]], tuple[Any, list[str] | None]] | None = None
        self._sample_rows: Any = None      # the first training rows of partition 0, read on first use
        self._metric_checked: str | None = None
        self._journal: Journal | None = None
        self._locked = False
        self.search_path: str | None = None   # the pickled search of a new run (None when it cannot be pickled)

    # ------------------------------------------------------------------ life cycle

    @classmethod
    def open(cls, store: Store, name: str, resume: bool, num_workers: int) -> "ExperimentWorkspace":
        """The workspace for experiment ``name``: refuses to resume what cannot be resumed, and to
        start a new run over an existing experiment.  Writes nothing, except that a directory
        left by a driver killed during start-up (no journal record yet) is cleared for a new run."""
        exp_dir = layout.experiment_dir(name)
        exists = store.exists(exp_dir)
        records = read_journal(store, name) if exists else []
        meta = None
        if exists and not records:
            # A driver killed during start-up (before the journal's first record) committed nothing:
            # a fresh fit clears what it left and starts again; resume has nothing to continue.
            holder = lock_holder(store, name)
            if holder is not None:
                raise CerebroError(
                    f"experiment {name!r} is being started by process {holder.get('pid')} on host {holder.get('host')} "
                    f"(lock {store.url}/{layout.lock(name)}); two drivers on one experiment are refused"
                )
            if resume:
                raise ValueError(
                    f"resume=True but experiment {name!r} never started in {store.url}: its driver stopped during "
                    "start-up, before the journal's first record, so no training was committed and there is "
                    "nothing to resume; call fit without resume=True, which clears what it left and starts afresh"
                )
            exists = not reclaim_unstarted(store, name)
        if resume:
            state = journal_state(records)
            if state == "new":
                raise ValueError(f"resume=True but experiment {name!r} has no journal in {store.url}; there is nothing to resume")
            if state == "finished":
                raise ValueError(f"experiment {name!r} already finished; nothing to resume (choose a new experiment_name)")
            meta = store.read_json(layout.experiment_file(name))
            if meta["num_workers"] != num_workers:
                raise ValueError(
                    f"experiment {name!r} ran with num_workers={meta['num_workers']} (one data partition each); "
                    f"resume it with a backend of {meta['num_workers']} workers, not {num_workers}"
                )
        elif exists:
            raise ValueError(
                f"experiment {name!r} already exists in the store ({store.url}/{exp_dir}); choose another "
                "experiment_name, or pass resume=True to continue an interrupted run"
            )
        return cls(store, name, records, resume, meta)

    def bind(self, prepared: Any, seed: int, evaluation_metric: str,
             build: Callable[[dict[str, Any]], tuple[Any, list[str] | None]]) -> None:
        """The prepared data, the experiment seed, the metric every model must compute, and
        ``build(params) -> (estimator, feature columns it uses or None for all)``."""
        self.prepared = prepared
        self.seed = seed
        self._metric_checked = evaluation_metric
        self._build = build

    def begin(self, meta: Mapping[str, Any], search: Any) -> None:
        """Create the directory (new runs), take the lock, write ``experiment.json`` and the
        pickled search (what ``cerebro resume`` rebuilds), and start the journal."""
        if not self.resume:
            self.store.makedirs(self.dir)
        acquire_lock(self.store, self.name)
        self._locked = True
        if self.resume:
            repair_torn_tail(self.store, self.name)
        if not self.resume:
            self.store.write_json(layout.experiment_file(self.name), {**meta, "started": time.time()})
            # Every argument but the backend and the store (the estimator_gen_fn by reference,
            # so it must be importable).
            clone = copy.copy(search)
            clone.backend, clone.store = None, None
            try:
                data = pickle.dumps(clone)
            except Exception as exc:  # a lambda or local function cannot be pickled by reference
                log.info("search arguments not saved for `cerebro resume` (%s); resume with fit(..., resume=True)", exc)
            else:
                # Named by its sha256, which the journal's "started" record then holds.
                self.search_path = layout.search_file(self.name, hashlib.sha256(data).hexdigest())
                self.store.write_bytes(self.search_path, data)
        self._journal = Journal(self.store, self.name)

    def end(self) -> None:
        """Release the lock (idempotent)."""
        if self._locked:
            release_lock(self.store, self.name)
            self._locked = False

    def discard(self) -> None:
        """A new run refused before any training: leave nothing of it behind, the prepared
        data included when this run wrote it (a copy it found and reused stays)."""
        self.end()
        if not self.resume:
            self.store.delete(self.dir)
            if self.prepared is not None and not self.prepared.reused:
                self.store.delete(layout.data_dir(self.prepared.key))

    def local_path(self, *parts: str) -> str | None:
        """A local file-system path inside the experiment directory (None for remote stores)."""
        root = self.store.local_path(self.dir)
        return None if root is None else os.path.join(root, *parts)

    # ------------------------------------------------------------------ the engine's Workspace

    def journal(self, record: dict[str, Any]) -> None:
        assert self._journal is not None, "begin() first"
        self._journal(record)

    def checkpoint_path(self, model_id: str, epoch: int, hop: int, attempt: int) -> str:
        return layout.checkpoint(self.name, model_id, epoch, hop, attempt)

    def delete_checkpoint(self, path: str) -> None:
        self.store.delete(path)

    def _input_shapes(self, fw: Any, estimator: Any, features: Any) -> list[tuple[int, ...]]:
        """The model's input shapes for its feature columns: one concatenated input, or one
        column per input (ValueError naming the columns when their count does not fit)."""
        columns = features or list(self.prepared.feature_columns)
        return input_shapes(fw.num_inputs(estimator), columns, self.prepared.feature_shapes)

    def _sample(self, features: Any) -> DataSample:
        """A few training rows for the framework's checks of a new model (read once)."""
        if self._sample_rows is None:
            from ..data import load_partition

            self._sample_rows = load_partition(self.store, self.prepared, "train", 0, max_rows=SAMPLE_ROWS)
        part = self._sample_rows
        columns = tuple(features or self.prepared.feature_columns)
        # The label checks see the whole data set's label ranges (the manifest's), where known.
        return DataSample({c: part.features[c] for c in columns}, dict(part.labels), columns,
                          tuple(self.prepared.label_columns),
                          label_stats=dict(getattr(self.prepared, "label_stats", None) or {}))

    def _estimator(self, params: dict[str, Any], seed: int) -> tuple[Any, Any, list[str] | None]:
        """``(framework, estimator, feature columns or None)`` built by the user's code with
        every framework's generators seeded, so the same seed gives the same initial weights."""
        assert self._build is not None, "bind() first"
        seeded = seed_everything(seed)
        estimator, features = self._build(dict(params))
        fw = framework_of(estimator)
        if fw.name not in seeded:
            # The framework was first imported by estimator_gen_fn itself: seed it and build again.
            seed_everything(seed)
            estimator, features = self._build(dict(params))
            fw = framework_of(estimator)
        fw.check_estimator(estimator)
        return fw, estimator, features

    def _write_model(self, model_id: str, version: int, ckpt: str, spec: Any, state: bytes,
                     task_extra: dict | None = None) -> ModelInit:
        """Store a spec (named by its sha256, which the journal then records) and its state."""
        data = pickle.dumps(spec)
        spec_path = layout.model_spec(self.name, model_id, version, hashlib.sha256(data).hexdigest())
        self.store.write_bytes(spec_path, data)
        self.store.write_bytes(ckpt, state)
        return ModelInit(spec_path, ckpt, hashlib.sha256(state).hexdigest(), task_extra or {}, spec.framework)

    def create_model(self, model_id: str, index: int, params: dict[str, Any]) -> ModelInit:
        try:
            # Same seed and configuration index -> same initial weights, in any run.
            fw, estimator, features = self._estimator(params, model_init_seed(self.seed, index))
            names = fw.metric_names(estimator)
        except Exception:
            raise ModelCreationFailed(traceback.format_exc()) from None
        first = self._metric_checked is not None
        if first:
            # Checked once, on the first configuration that builds, before any training starts.
            if strip_prefix(self._metric_checked) not in names:
                raise ValueError(
                    f"evaluation_metric={self._metric_checked!r} is not computed by the models; "
                    f"they report {names} (add it to the estimator's metrics or pick one of these)"
                )
            self._metric_checked = None
        try:
            shapes = self._input_shapes(fw, estimator, features)
        except ValueError:
            if first:  # the feature columns do not fit the model: refused before any training
                raise
            raise ModelCreationFailed(traceback.format_exc()) from None
        sample = self._sample(features)   # corrupt prepared data is the data's error, not the model's
        try:
            spec = fw.make_spec(estimator, shapes, sample)
        except LabelMismatch as exc:
            if first:  # the labels do not fit the model's outputs or losses: refused before any training
                raise exc.with_traceback(None) from None
            raise ModelCreationFailed(traceback.format_exc()) from None
        except Exception:
            raise ModelCreationFailed(traceback.format_exc()) from None
        problem = label_count_problem(spec.num_outputs, self.prepared.label_columns)
        if problem:
            if first:  # the label columns do not fit the model: refused before any training
                raise ValueError(f"{problem} Give label_columns one column per model output.")
            raise ModelCreationFailed(problem)
        return self._write_model(model_id, 0, layout.checkpoint(self.name, model_id, 0, 0),
                                 spec, spec.initial_state, {"features": features} if features else {})

    def exploit(self, plan: ExploitPlan, params: dict[str, Any]) -> ModelInit:
        """PBT: the target continues from the source's committed epoch-boundary state with ``params``."""
        fw, estimator, _ = self._estimator(params, exploit_init_seed(self.seed, plan.target_index, plan.spec_version))
        spec = fw.make_spec(estimator, self._input_shapes(fw, estimator, plan.features), self._sample(plan.features))
        source_spec = read_pickled(self.store, plan.source_spec)
        if spec.framework != source_spec.framework or spec.arch_key != source_spec.arch_key:
            raise CerebroError(
                f"exploit of {plan.source} into {plan.target} with params {params}: these parameters change "
                "the model's architecture or optimizer configuration, so the source's state cannot be copied; "
                "mutate only parameters that keep it (learning rate, batch size, ...)"
            )
        state = fw.transfer_learning_rate(read_checkpoint(self.store, plan.source_checkpoint, plan.source_checksum),
                                          spec.initial_state)
        return self._write_model(plan.target, plan.spec_version,
                                 layout.checkpoint(self.name, plan.target, plan.next_epoch, 0, plan.spec_version),
                                 spec, state)

    # ------------------------------------------------------------------ retention

    def remove_orphans(self, state: ExperimentState) -> None:
        """Checkpoints written by visits that never committed (in flight at a crash) go: the
        same keep-set rule as the live engine's (:meth:`ExperimentState.kept_checkpoints`)."""
        keep = state.kept_checkpoints()
        for model_id in state.models:
            ckpt_dir = layout.checkpoint_dir(self.name, model_id)
            for fname in self.store.listdir(ckpt_dir):
                path = f"{ckpt_dir}/{fname}"
                if path not in keep:
                    self.store.delete(path)

    # ------------------------------------------------------------------ the result

    def result(self, outcome: EngineOutcome, metric: str, mode: str, provenance: Mapping[str, Any]):
        """The :class:`~cerebro.result.ModelSelectionResult` of a finished run; writes
        ``history.csv``, ``visits.csv`` and ``evaluations.csv`` beside the journal."""
        from ..result import ModelSelectionResult, TrainedModel

        prepared = self.prepared
        params_cols = sorted({k for m in outcome.models.values() for k in m.params})
        history = pd.DataFrame([{k: v for k, v in row.items() if k != "__params"} for row in outcome.history])
        if history.empty:
            history = pd.DataFrame(columns=["model_id", "epoch"])
        history = history[_history_order(history.columns)]
        # Each epoch's own parameters (PBT changes them mid-run).
        for col in params_cols:
            history[f"param_{col}"] = [row.get("__params", outcome.models[row["model_id"]].params).get(col)
                                       for row in outcome.history]
        # Rows in (model, epoch) order, whatever order the epochs finished in.
        history = history.sort_values(["model_id", "epoch"], kind="stable").reset_index(drop=True)
        visits = pd.DataFrame(outcome.visits, columns=list(VISIT_COLUMNS))
        evaluations = pd.DataFrame(outcome.evaluations, columns=visits.columns)
        models: dict[str, TrainedModel] = {}
        for mid, rec in outcome.models.items():
            models[mid] = TrainedModel(
                model_id=mid, params=rec.params,
                history=history[history["model_id"] == mid].reset_index(drop=True),
                feature_columns=tuple(rec.task_extra.get("features") or prepared.feature_columns),
                label_columns=prepared.label_columns, status=rec.status,
                provenance={"experiment": self.name, "data_hash": prepared.data_hash, "data_key": prepared.key,
                            "store": self.store.url, **provenance, "index": rec.index,
                            "visit_order": [(v["epoch"], v["partition"]) for v in outcome.visits
                                            if v["model_id"] == mid and v["status"] == "ok"]},
                _store=self.store, _spec_path=rec.spec_path or None, _checkpoint=rec.checkpoint or None,
                _checksum=rec.checksum,
            )
        candidates = []
        for mid, rec in outcome.models.items():
            h = models[mid].history
            if rec.status != "failed" and len(h) and metric in h.columns:
                candidates.append((mid, float(h[metric].iloc[-1]), rec.index))
        best = best_of(candidates, mode)
        if best is None:
            detail = "\n\n".join(f"{m}:\n{tb}" for m, tb in list(outcome.failures.items())[:3])
            raise CerebroError(f"no configuration could train ({len(outcome.failures)} failed). First failures:\n{detail}")
        # Tables next to the journal, for people and tools that read the store directly.
        self.store.write_bytes(layout.table(self.name, "history"), history.to_csv(index=False).encode())
        self.store.write_bytes(layout.table(self.name, "visits"), visits.to_csv(index=False).encode())
        self.store.write_bytes(layout.table(self.name, "evaluations"), evaluations.to_csv(index=False).encode())
        checkpoint_bytes = sum(self.store.size(layout.checkpoint_dir(self.name, m)) for m in outcome.models)
        log.info("experiment %s: %d checkpoints bytes kept in the store", self.name, checkpoint_bytes)
        return ModelSelectionResult(
            best_model_id=best[0], best_params=dict(outcome.models[best[0]].params), best_score=best[1],
            models=models, history=history, visits=visits, failures=dict(outcome.failures),
            experiment_dir=self.store.local_path(self.dir) or f"{self.store.url}/{self.dir}",
            evaluation_metric=metric, mode=mode, evaluations=evaluations,
            best_checkpoint=outcome.best_checkpoint, checkpoint_bytes=checkpoint_bytes,
        )


def _history_order(columns) -> list[str]:
    """``history``'s columns in one order, however the run went: a resumed run reads its
    metrics back from the journal (keys sorted) where a live one has them in the framework's
    order.  ``model_id``, ``epoch``, the ``train_`` metrics by name, the ``val_`` metrics by
    name, then anything else as it came."""
    columns = list(columns)
    head = [c for c in ("model_id", "epoch") if c in columns]
    metrics = []
    for split in ("train_", "val_"):
        metrics += sorted(c for c in columns if c.startswith(split))
    return head + metrics + [c for c in columns if c not in head and c not in metrics]

