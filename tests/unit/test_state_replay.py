"""The reducer is the truth: replaying any prefix of a live run's journal through
``ExperimentState.apply`` gives exactly the state the live engine had after that record.

Random experiments on the inline backend (random worker deaths, task failures, configurations
that cannot be built, early stops, pauses and promotions, exploits), both schedulers.  This is
what makes resume trustworthy: resume is the same replay.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from cerebro.backends.base import WorkerSetup
from cerebro.backends.inline import InlineBackend
from cerebro.core.actions import Continue, Exploit, Pause, Stop
from cerebro.core.mop import MOPScheduler
from cerebro.core.records import record_from_dict
from cerebro.core.seeds import driver_rng
from cerebro.core.state import ExperimentState
from cerebro.drivers.base import SearchDriver
from cerebro.experiment.engine import Engine, ModelCreationFailed
from cerebro.space import hp_choice, hp_uniform
from test_engine import FakeRuntime, FakeStore, FakeWorkspace

SPACE = {"a": hp_choice([1, 2, 3, 4]), "b": hp_uniform(0.0, 1.0)}


class ChaosDriver(SearchDriver):
    """Proposes configurations a few at a time and answers every epoch at random: continue,
    stop early, pause (and later promote), or exploit another model; never leaves a model
    paused with nothing running."""

    def __init__(self, num_models: int = 7, max_epochs: int = 4) -> None:
        super().__init__()
        self.num_models, self.max_epochs = num_models, max_epochs
        self.proposed = 0
        self.running: list[str] = []
        self.paused: list[str] = []
        self.reported: dict[str, int] = {}

    def suggest(self, num_active):
        if self.proposed >= self.num_models:
            return None
        n = min(int(self.rng.integers(1, 3)), self.num_models - self.proposed)
        self.proposed += n
        return [{"a": int(self.rng.choice([1, 2, 3, 4])), "b": float(self.rng.random())} for _ in range(n)]

    def on_model_added(self, model_id, params):
        self.running.append(model_id)

    def _release_paused(self):
        out = [Continue(m) for m in self.paused]
        self.running.extend(self.paused)
        self.paused = []
        return out

    def on_epoch_end(self, model_id, epoch, metrics):
        self.reported[model_id] = epoch
        self.running.remove(model_id)
        actions = []
        if self.paused and self.rng.random() < 0.3:
            actions += self._release_paused()
        r = self.rng.random()
        sources = [m for m, e in sorted(self.reported.items()) if e >= 1 and m != model_id]
        if epoch >= self.max_epochs:
            actions.append(Stop("finished"))
        elif r < 0.15:
            actions.append(Stop("early"))
        elif r < 0.35 and sources:
            source = sources[int(self.rng.integers(len(sources)))]
            actions += [Exploit(model_id, source, {"a": int(self.rng.choice([1, 2, 3])), "b": float(self.rng.random())}),
                        Continue()]
            self.running.append(model_id)
        elif r < 0.55 and self.running:
            actions.append(Pause())
            self.paused.append(model_id)
        else:
            actions.append(Continue())
            self.running.append(model_id)
        if not self.running and self.paused:
            actions += self._release_paused()
        return actions

    def on_model_failed(self, model_id, params, error):
        if model_id in self.running:
            self.running.remove(model_id)
        if not self.running and self.paused:
            return self._release_paused()
        return None

    def get_state(self):
        return {**super().get_state(), "proposed": self.proposed, "running": list(self.running),
                "paused": list(self.paused), "reported": dict(self.reported)}

    def set_state(self, state):
        super().set_state(state)
        self.proposed, self.running, self.paused = state["proposed"], list(state["running"]), list(state["paused"])
        self.reported = dict(state["reported"])


def live_run(seed: int, mode: str):
    """Run a random experiment; return its journal and the live state after each record."""
    store = FakeStore()
    faults_rng = np.random.default_rng([seed, 99])

    def faults(worker, task):
        r = faults_rng.random()
        return "die" if r < 0.03 else "fail" if r < 0.08 else None

    def create(model_id, params):
        if params["a"] == 4:
            raise ModelCreationFailed(f"Traceback: {model_id} cannot be built")

    journal: list[dict] = []
    snapshots: list[ExperimentState] = []
    backend = InlineBackend(3, runtime_factory=lambda setup, w: FakeRuntime(store, w), faults=faults)
    driver = ChaosDriver()
    driver.bind(SPACE, driver_rng(seed), 3, "val_loss", "min")
    engine = Engine(backend=backend, setup=WorkerSetup(store, {"key": "k"}),
                    scheduler=MOPScheduler(3, mode=mode, seed=seed, max_retries=2), driver=driver,
                    workspace=FakeWorkspace(store, create, journal=journal), seed=seed, metric="val_loss", mode="min",
                    max_worker_restarts=50,
                    after_commit=lambda record, state: snapshots.append(copy.deepcopy(state)))
    engine.run()
    return journal, snapshots, engine


@pytest.mark.parametrize("mode", ["deterministic", "dynamic"])
@pytest.mark.parametrize("seed", range(12))
def test_replaying_any_prefix_of_the_journal_gives_the_live_state(seed, mode):
    journal, snapshots, engine = live_run(seed, mode)
    assert len(journal) == len(snapshots) > 20
    kinds = {r["type"] for r in journal}
    assert {"suggested", "model_added", "visit", "epoch", "best"} <= kinds
    replayed = ExperimentState(metric="val_loss", mode="min")
    for i, line in enumerate(journal):
        # What the journal file gives back: JSON text, sorted keys.
        replayed.apply(record_from_dict(json.loads(json.dumps(line, sort_keys=True))))
        assert replayed == snapshots[i], f"state differs after record {i} ({line['type']})"
    assert replayed == engine.state


def test_the_random_experiments_exercise_every_kind_of_fact():
    """The property test is only as good as what the random runs do: across the seeds they
    exploit, pause and promote, stop early, fail to build, fail visits and abandon models."""
    seen: dict[str, int] = {}
    for seed in range(12):
        journal, _, engine = live_run(seed, "dynamic")
        for r in journal:
            seen[r["type"]] = seen.get(r["type"], 0) + 1
            if r["type"] == "visit" and r["status"] == "failed":
                seen["failed visit"] = seen.get("failed visit", 0) + 1
            for a in r.get("actions", ()):
                seen[a["action"] + ":" + a.get("reason", "")] = seen.get(a["action"] + ":" + a.get("reason", ""), 0) + 1
    for kind in ("creation_failed", "failed visit", "exploit:", "pause:", "continue:", "stop:early", "stop:finished",
                 "driver"):
        assert seen.get(kind, 0) > 0, (kind, seen)


def test_restore_from_a_prefix_is_the_same_reducer():
    """Engine.restore reaches exactly the replayed state (it adds nothing of its own).  Where
    the restored scheduler acts at once (an epoch whose visits were all committed ends right
    away), the engine commits more records; those cuts are compared up to that point."""
    journal, snapshots, live = live_run(3, "deterministic")
    compared = 0
    for cut in range(1, len(journal)):
        store = live.workspace.store
        driver = ChaosDriver()
        driver.bind(SPACE, driver_rng(3), 3, "val_loss", "min")
        engine = Engine(backend=InlineBackend(3, runtime_factory=lambda setup, w: FakeRuntime(store, w)),
                        setup=WorkerSetup(store, {"key": "k"}), scheduler=MOPScheduler(3, mode="deterministic", seed=3),
                        driver=driver, workspace=FakeWorkspace(store), seed=3, metric="val_loss", mode="min")
        engine.restore(journal[:cut])
        if engine.state.records == cut:
            assert engine.state == snapshots[cut - 1], cut
            compared += 1
    assert compared > len(journal) // 2
