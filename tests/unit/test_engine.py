"""The engine loop with the inline backend and a fake (TensorFlow-free) worker runtime.

The fake "trains" by folding (partition, seed) into a string state, so a model's final state
records exactly which sub-epochs it saw, in which order, with which shuffles.
"""

from __future__ import annotations

import hashlib

import pytest
from visit_counts import ok_once

from cerebro.backends.base import WorkerSetup
from cerebro.backends.inline import InlineBackend
from cerebro.core.mop import MOPScheduler
from cerebro.core.seeds import driver_rng as make_rng
from cerebro.experiment.engine import Engine, ModelCreationFailed, ModelInit
from cerebro.experiment.tasks import TaskResult
from cerebro.drivers.grid import GridDriver, RandomDriver
from cerebro.errors import CerebroError
from cerebro.space import hp_choice, hp_uniform


class FakeStore:
    url = "memory://"

    def __init__(self):
        self.files: dict[str, str] = {}


ROWS = {0: 10, 1: 30, 2: 20}


class FakeRuntime:
    def __init__(self, store: FakeStore, worker: int):
        self.store = store
        self.worker = worker

    def run(self, task):
        state = self.store.files[task.checkpoint]
        rows = ROWS[self.worker]
        if task.kind == "train":
            new = hashlib.sha256(f"{state}|{task.partition}|{task.seed}".encode()).hexdigest()[:16]
            self.store.files[task.out] = new
            return TaskResult(rows, {"loss": float(self.worker + 1)}, task.out)
        return TaskResult(rows, {"loss": float(self.worker), "accuracy": 0.5})


class FakeWorkspace:
    """The engine's Workspace over FakeStore: init states and exploit copies as strings."""

    def __init__(self, store, create=None, deleted=None, journal=None, path="{m}/e{e}-h{h}-a{a}"):
        self.store, self.create, self.deleted, self.sink, self.path = store, create, deleted, journal, path

    def create_model(self, model_id, index, params):
        if self.create is not None:
            self.create(model_id, params)
        self.store.files[f"{model_id}/init"] = f"init-{model_id}"
        return ModelInit(f"{model_id}/spec", f"{model_id}/init")

    def exploit(self, plan, params):
        path = f"{plan.target}/exploit-{plan.spec_version}"
        self.store.files[path] = self.store.files[plan.source_checkpoint] + f"+lr{params['a']}"
        return ModelInit(f"{plan.target}/spec-v{plan.spec_version}", path)

    def checkpoint_path(self, m, e, h, a):
        return self.path.format(m=m, e=e, h=h, a=a)

    def delete_checkpoint(self, path):
        if self.deleted is not None:
            self.deleted.append(path)

    def journal(self, record):
        if self.sink is not None:
            self.sink.append(record)


def run_engine(num_workers=3, driver=None, faults=None, mode="deterministic", create=None, max_retries=2, seed=7):
    store = FakeStore()
    backend = InlineBackend(num_workers, runtime_factory=lambda setup, w: FakeRuntime(store, w), faults=faults)
    driver = driver or GridDriver(2)
    driver.bind({"a": hp_choice([1, 2, 3])}, make_rng(seed), num_workers)
    deleted = []
    engine = Engine(
        backend=backend, setup=WorkerSetup(store, {"key": "k"}), scheduler=MOPScheduler(num_workers, mode=mode, seed=seed, max_retries=max_retries),
        driver=driver, workspace=FakeWorkspace(store, create, deleted), seed=seed,
    )
    outcome = engine.run()
    finals = {m: store.files[r.checkpoint] for m, r in outcome.models.items() if r.checkpoint}
    return outcome, finals, deleted, backend


def test_grid_runs_every_model_every_partition_every_epoch_once():
    outcome, finals, deleted, _ = run_engine()
    assert set(outcome.models) == {"model_000", "model_001", "model_002"}
    seen = ok_once(outcome.visits)
    assert set(seen.values()) == {1}
    assert len(seen) == 3 * 2 * 3
    assert all(r.status == "completed" and r.epochs_done == 2 for r in outcome.models.values())
    assert len(outcome.history) == 6
    # every superseded checkpoint was deleted, the initial one included; the latest never
    assert len(deleted) == 3 * 2 * 3
    assert not set(deleted) & {r.checkpoint for r in outcome.models.values()}


def test_metrics_are_row_weighted_across_partitions():
    outcome, *_ = run_engine()
    row = outcome.history[0]
    # train loss is worker+1 on partitions with 10, 30, 20 rows; eval loss is worker
    assert row["train_loss"] == pytest.approx((1 * 10 + 2 * 30 + 3 * 20) / 60)
    assert row["val_loss"] == pytest.approx((0 * 10 + 1 * 30 + 2 * 20) / 60)
    assert row["val_accuracy"] == pytest.approx(0.5)


def test_deterministic_models_survive_worker_deaths_and_task_failures():
    _, clean, _, _ = run_engine()
    calls = {"n": 0}

    def faults(worker, task):
        calls["n"] += 1
        if calls["n"] in (4, 11):
            return "die"
        if calls["n"] == 7:
            return "fail"
        return None

    outcome, faulty, _, backend = run_engine(faults=faults)
    assert faulty == clean
    assert backend.restarts == 2
    statuses = [v["status"] for v in outcome.visits] + [v["status"] for v in outcome.evaluations]
    assert statuses.count("failed") == 3
    assert set(ok_once(outcome.visits).values()) == {1}
    assert len(ok_once(outcome.visits)) == 18


def test_a_model_that_keeps_failing_is_abandoned_and_the_others_finish():
    def faults(worker, task):
        return "fail" if task.model_id == "model_001" else None

    outcome, finals, _, _ = run_engine(faults=faults, max_retries=2)
    assert outcome.models["model_001"].status == "failed"
    assert "injected failure" in outcome.failures["model_001"]
    failed = [v for v in outcome.visits if v["model_id"] == "model_001"]
    assert len(failed) == 3 and all(v["status"] == "failed" for v in failed)  # 1 try + 2 retries
    assert outcome.models["model_000"].status == "completed"
    assert outcome.models["model_002"].status == "completed"


def test_a_configuration_that_cannot_be_built_is_recorded_and_the_rest_train():
    def create(model_id, params):
        if params["a"] == 2:
            raise ModelCreationFailed("Traceback: boom")

    outcome, *_ = run_engine(create=create)
    assert outcome.failures == {"model_001": "Traceback: boom"}
    assert outcome.models["model_001"].status == "failed"
    assert {m for m, r in outcome.models.items() if r.status == "completed"} == {"model_000", "model_002"}


def test_a_worker_that_keeps_dying_is_retired_not_a_hang():
    # It used to abort the run ("died 4 times"); now its partition moves to a healthy worker
    # (tests/unit/test_worker_pool.py has the rest of that story).
    outcome, finals, _, _ = run_engine(faults=lambda w, t: "die" if w == 1 else None)
    assert finals and set(ok_once(outcome.visits).values()) == {1}
    assert 1 not in {v["worker"] for v in outcome.visits if v["status"] == "ok"}


def test_dynamic_mode_trains_every_model_and_seeds_do_not_depend_on_workers():
    outcome, finals, _, _ = run_engine(mode="dynamic", driver=RandomDriver(5, 3))
    assert len(finals) == 5
    assert set(ok_once(outcome.visits).values()) == {1}
    assert len(ok_once(outcome.visits)) == 5 * 3 * 3


def test_random_driver_draws_from_one_generator():
    d1, d2 = RandomDriver(4, 1), RandomDriver(4, 1)
    space = {"lr": hp_uniform(0.0, 1.0), "w": hp_uniform(0.0, 1.0)}
    d1.bind(space, make_rng(3), 2)
    d2.bind(space, make_rng(3), 2)
    a, b = d1.suggest(0), d2.suggest(0)
    assert a == b
    # dimensions are not correlated (the original Cerebro seeded each with the same constant)
    assert all(c["lr"] != c["w"] for c in a)
    assert d1.suggest(0) is None


def test_max_retries_zero_abandons_at_the_first_failure_and_logs_it_at_once(caplog):
    def faults(worker, task):
        return "fail" if task.model_id == "model_000" else None

    with caplog.at_level("WARNING", logger="cerebro.experiment.engine"):
        outcome, *_ = run_engine(faults=faults, max_retries=0)
    attempts = [v for v in outcome.visits if v["model_id"] == "model_000"]
    assert len(attempts) == 1 and attempts[0]["status"] == "failed"
    assert outcome.models["model_000"].status == "failed"
    first = [r for r in caplog.records if "model_000" in r.getMessage() and "injected failure" in r.getMessage()]
    assert first, "the first failure's traceback must be logged when it happens"


@pytest.mark.parametrize("error,attempts", [
    (ValueError("Received a label value of 19 which is outside the valid range of [0, 10)"), 1),
    (RuntimeError("connection reset by peer"), 3),
    (OSError("Input/output error"), 3),
])
def test_only_failures_a_retry_can_fix_are_retried(monkeypatch, error, attempts):
    # Issue 16, item 7: an error of the model or its data (a ValueError here) fails the same way
    # on every retry, so the model fails at once; anything else gets its max_retries=2 retries.
    original = FakeRuntime.run

    def run(self, task):
        if task.model_id == "model_000" and task.kind == "train":
            raise error
        return original(self, task)

    monkeypatch.setattr(FakeRuntime, "run", run)
    outcome, *_ = run_engine()
    tried = [v for v in outcome.visits if v["model_id"] == "model_000"]
    assert len(tried) == attempts and all(v["status"] == "failed" for v in tried)
    assert outcome.models["model_000"].status == "failed"
    assert all(m.status == "completed" for mid, m in outcome.models.items() if mid != "model_000")


def test_max_consecutive_failures_stops_the_experiment():
    store = FakeStore()

    def create(model_id, params):
        raise ModelCreationFailed(f"Traceback: {model_id} cannot be built")

    backend = InlineBackend(2, runtime_factory=lambda setup, w: FakeRuntime(store, w))
    driver = GridDriver(1)
    driver.bind({"a": hp_choice([1, 2, 3, 4])}, make_rng(0), 2)

    engine = Engine(backend=backend, setup=WorkerSetup(store, {"key": "k"}), scheduler=MOPScheduler(2), driver=driver,
                    workspace=FakeWorkspace(store, create, path="{m}/{e}/{h}/{a}"), max_consecutive_failures=2)
    with pytest.raises(CerebroError, match=r"(?s)2 configurations failed in a row.*model_001 cannot be built"):
        engine.run()


def test_restore_from_the_journal_continues_exactly(tmp_path):
    """Cut the journal at every point: restoring from the prefix gives the same final models."""
    journal: list[dict] = []
    store = FakeStore()

    def build(records=None, stop_after=None):
        backend = InlineBackend(3, runtime_factory=lambda setup, w: FakeRuntime(store, w))
        driver = GridDriver(2)
        driver.bind({"a": hp_choice([1, 2, 3])}, make_rng(7), 3)
        sink = [] if records is not None else journal
        engine = Engine(backend=backend, setup=WorkerSetup(store, {"key": "k"}),
                        scheduler=MOPScheduler(3, mode="deterministic", seed=7), driver=driver,
                        workspace=FakeWorkspace(store, journal=sink), seed=7)
        if records is not None:
            engine.restore(records)
        return engine, sink

    engine, _ = build()
    full = engine.run()
    finals = {m: store.files[r.checkpoint] for m, r in full.models.items()}
    assert len(journal) > 40
    for cut in range(1, len(journal)):
        engine, tail = build(records=journal[:cut])
        outcome = engine.run()
        assert {m: store.files[r.checkpoint] for m, r in outcome.models.items()} == finals, cut
        assert set(ok_once(outcome.visits).values()) == {1} and len(ok_once(outcome.visits)) == 18, cut
        assert [(h["model_id"], h["epoch"]) for h in sorted(outcome.history, key=lambda h: (h["model_id"], h["epoch"]))] == \
            [(h["model_id"], h["epoch"]) for h in sorted(full.history, key=lambda h: (h["model_id"], h["epoch"]))]


class PromoteDriver(GridDriver):
    """Pause every model at epoch 1; when all have reported, promote the first, stop the rest."""

    def __init__(self):
        super().__init__(2)
        self.reported: list[str] = []

    def on_epoch_end(self, model_id, epoch, metrics):
        from cerebro.drivers.base import Continue, Pause, Stop

        if epoch == 2:
            return Stop("finished")
        self.reported.append(model_id)
        if len(self.reported) < 3:
            return Pause()
        best, *rest = sorted(self.reported)
        return [Continue(best)] + [Stop("halved", m) for m in rest if m != best] + ([Pause()] if model_id != best and model_id not in rest else [])

    def get_state(self):
        return {**super().get_state(), "reported": list(self.reported)}

    def set_state(self, state):
        super().set_state(state)
        self.reported = list(state["reported"])


class ExploitDriver(GridDriver):
    """model_001 copies model_000 after epoch 1 (waiting, paused, until model_000 has reported)."""

    def __init__(self):
        super().__init__(2)
        self.reported: list[str] = []

    def on_epoch_end(self, model_id, epoch, metrics):
        from cerebro.drivers.base import Continue, Exploit, Pause, Stop

        if epoch == 2:
            return Stop("finished")
        self.reported.append(model_id)
        if "model_000" not in self.reported:
            return Pause()
        exploit = [Exploit("model_001", "model_000", {"a": 9}), Continue("model_001")] if "model_001" in self.reported else []
        return exploit + ([Continue()] if model_id == "model_000" else [])

    def get_state(self):
        return {**super().get_state(), "reported": list(self.reported)}

    def set_state(self, state):
        super().set_state(state)
        self.reported = list(state["reported"])


def run_with(driver, records=None, journal=None, store=None):
    store = store or FakeStore()
    backend = InlineBackend(2, runtime_factory=lambda setup, w: FakeRuntime(store, w))
    driver.bind({"a": hp_choice([1, 2])}, make_rng(1), 2)

    engine = Engine(backend=backend, setup=WorkerSetup(store, {"key": "k"}),
                    scheduler=MOPScheduler(2, mode="deterministic", seed=1), driver=driver,
                    workspace=FakeWorkspace(store, journal=journal), seed=1)
    if records is not None:
        engine.restore(records)
    return engine, store


def test_pause_then_promote_another_model():
    driver = PromoteDriver()
    driver.configurations = lambda: [{"a": 1}, {"a": 2}, {"a": 1}]
    engine, _ = run_with(driver)
    outcome = engine.run()
    status = {m: r.status for m, r in outcome.models.items()}
    assert status == {"model_000": "completed", "model_001": "stopped", "model_002": "stopped"}
    assert outcome.models["model_000"].epochs_done == 2
    assert [h["epoch"] for h in outcome.history if h["model_id"] == "model_000"] == [1, 2]


def test_exploit_copies_the_source_state_and_changes_params_and_resumes_identically():
    journal: list = []
    engine, store = run_with(ExploitDriver(), journal=journal)
    outcome = engine.run()
    target = outcome.models["model_001"]
    assert target.params == {"a": 9} and target.spec_path == "model_001/spec-v1"
    params = [(h["epoch"], h["__params"]["a"]) for h in outcome.history if h["model_id"] == "model_001"]
    assert params == [(1, 2), (2, 9)]
    finals = {m: store.files[r.checkpoint] for m, r in outcome.models.items()}
    exploits = [a for r in journal if r["type"] == "epoch" for a in r["actions"] if a["action"] == "exploit"]
    assert len(exploits) == 1 and exploits[0]["source"] == "model_000"
    # The copy is the source's state at its last epoch boundary, never a half-trained epoch.
    assert store.files["model_001/exploit-1"].startswith(store.files[exploits[0]["source_checkpoint"]])
    assert exploits[0]["source_checkpoint"].endswith("-h2-a0")
    for cut in range(1, len(journal)):
        e2, s2 = run_with(ExploitDriver(), records=journal[:cut], store=store)
        out2 = e2.run()
        assert out2.models["model_001"].params == {"a": 9}
        assert set(ok_once(out2.visits).values()) == {1} and len(ok_once(out2.visits)) == 8, cut
        # The source keeps training while the target waits, so which of its epoch boundaries is
        # copied depends on timing (as in any asynchronous PBT); the source itself is unaffected.
        assert s2.files[out2.models["model_000"].checkpoint] == finals["model_000"], cut
