"""ASHADriver: rungs, promotion of the top 1/eta (never twice), no barrier, termination."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cerebro.drivers.asha import ASHADriver, asha_rungs
from cerebro.drivers.base import Continue, Pause, Stop
from cerebro.space import hp_choice, hp_loguniform, hp_uniform
from cerebro.testing import check_driver_contract
from test_driver_hyperband import SPACE, simulate


@pytest.mark.parametrize("max_epochs,grace,rf,expected", [
    (27, 1, 3, [1, 3, 9, 27]), (30, 1, 3, [1, 3, 9, 27, 30]), (10, 2, 2, [2, 4, 8, 10]),
    (5, 5, 3, [5]), (4, 9, 3, [4]), (1, 1, 3, [1]), (100, 3, 4, [3, 12, 48, 100]),
])
def test_rungs(max_epochs, grace, rf, expected):
    assert asha_rungs(max_epochs, grace, rf) == expected
    assert ASHADriver(5, max_epochs, grace, rf).rungs() == expected


@pytest.mark.parametrize("kwargs", [{"num_models": 0, "max_epochs": 3}, {"num_models": 3, "max_epochs": 0},
                                    {"num_models": 3, "max_epochs": 3, "grace_period": 0},
                                    {"num_models": 3, "max_epochs": 3, "reduction_factor": 1},
                                    {"num_models": 3.0, "max_epochs": 3}])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises((ValueError, TypeError)):
        ASHADriver(**kwargs)


class Reference:
    """An independent bookkeeping of ASHA's rule, checked after every decision."""

    def __init__(self, driver: ASHADriver, mode: str):
        self.driver, self.sign = driver, (1 if mode == "min" else -1)
        self.rungs = driver.rungs()
        self.recorded: dict[int, list[tuple[str, float]]] = {k: [] for k in range(len(self.rungs) - 1)}
        self.promoted: dict[int, set[str]] = {k: set() for k in range(len(self.rungs) - 1)}
        self.paused_at: dict[str, int] = {}
        self.promotions = 0

    def __call__(self, sim, mid, epoch, score, actions):
        continued = {a.model_id for a in actions if isinstance(a, Continue)}
        stopped = {a.model_id: a.reason for a in actions if isinstance(a, Stop)}
        # no model trains past its rung epochs without a record, and grace_period is respected
        assert epoch <= self.driver.max_epochs
        if epoch == self.driver.max_epochs:
            assert stopped.get(mid) == "finished"
        elif epoch in self.rungs:
            k = self.rungs.index(epoch)
            self.recorded[k].append((mid, score))
            rec = self.recorded[k]
            order = sorted(range(len(rec)), key=lambda i: (self.sign * rec[i][1], i))
            top = {rec[i][0] for i in order[: max(len(rec) // self.driver.reduction_factor, 1)]}
            eligible = {m for m in top if m not in self.promoted[k] and (m == mid or self.paused_at.get(m) == k)}
            new = {m for m in continued}
            assert new == eligible, (k, new, eligible)
            assert not (new & self.promoted[k]), "promoted twice from one rung"
            self.promoted[k] |= new
            self.promotions += len(new)
            for m in new:
                self.paused_at.pop(m, None)
            if mid not in new:
                self.paused_at[mid] = k
        else:
            assert actions == [Continue(mid)]
        if epoch < self.driver.grace_period:    # grace_period respected: nothing decided before it
            assert actions == [Continue(mid)]
        for m, reason in stopped.items():
            if m != mid or epoch != self.driver.max_epochs:
                assert reason == "not promoted"
            self.paused_at.pop(m, None)


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("num_models,max_epochs,grace,rf,workers", [
    (30, 27, 1, 3, 2), (40, 20, 2, 2, 4), (12, 9, 1, 3, 1), (25, 16, 1, 4, 3), (5, 3, 3, 3, 2),
])
def test_promotes_the_top_fraction_once_and_terminates(mode, num_models, max_epochs, grace, rf, workers):
    driver = ASHADriver(num_models, max_epochs, grace, rf)
    ref = Reference(driver, mode)
    rng = np.random.default_rng(1)
    quality: dict[str, float] = {}

    def curve(params, epoch, mid):
        q = quality.setdefault(mid, float(rng.random()))
        return params["x"] + q / epoch

    sim = simulate(driver, SPACE, num_workers=workers, mode=mode, curve=curve, on_decision=ref)
    assert len(sim.models) == num_models
    assert all(m["status"] == "ended" for m in sim.models.values())   # nothing left paused
    assert all(m["epoch"] >= min(grace, max_epochs) for m in sim.models.values())  # grace_period respected
    finished = [m for m in sim.models.values() if m["reason"] == "finished"]
    assert finished and all(m["epoch"] == max_epochs for m in finished)
    if len(driver.rungs()) > 1:
        assert ref.promotions > 0
        assert sim.epochs < num_models * max_epochs
    for k in range(len(driver.rungs()) - 1):
        assert sorted(driver.promoted(k)) == sorted(ref.promoted[k])
        assert len(set(driver.promoted(k))) == len(driver.promoted(k))


def test_starts_configurations_only_when_a_worker_is_free():
    driver = ASHADriver(20, 9, 1, 3)
    calls = []
    inner = driver.suggest

    def suggest(num_active):
        out = inner(num_active)
        calls.append((num_active, None if out is None else len(out)))
        return out

    driver.suggest = suggest
    sim = simulate(driver, SPACE, num_workers=3)
    assert len(sim.models) == 20
    started = [(a, n) for a, n in calls if n]
    assert all(a + n <= 3 for a, n in started)
    assert len(started) > 3            # no waves: configurations start one by one as models pause
    assert calls[-1][1] is None        # exhausted once all have started


def test_late_arrivals_promote_a_paused_model():
    driver = ASHADriver(num_models=6, max_epochs=3, grace_period=1, reduction_factor=3)
    driver.bind({"x": hp_uniform(0, 1)}, np.random.default_rng(0), 6)
    configs = driver.suggest(0)
    assert len(configs) == 6 and driver.suggest(6) is None
    for k in range(6):
        driver.on_model_added(f"m{k}", configs[k])
    assert driver.on_epoch_end("m0", 1, {"val_loss": 0.5}) == [Continue("m0")]  # the best of 1
    assert driver.on_epoch_end("m1", 1, {"val_loss": 0.9}) == [Pause("m1")]
    assert driver.on_epoch_end("m2", 1, {"val_loss": 0.7}) == [Pause("m2")]     # top 1 of 3 is m0
    assert driver.on_epoch_end("m3", 1, {"val_loss": 0.95}) == [Pause("m3")]
    assert driver.on_epoch_end("m4", 1, {"val_loss": 0.99}) == [Pause("m4")]
    # the 6th arrival makes the top 2: m0 (promoted already, never twice) and m2 (paused: promoted now)
    assert driver.on_epoch_end("m5", 1, {"val_loss": 0.98}) == [Continue("m2"), Pause("m5")]
    assert driver.promoted(0) == ["m0", "m2"]
    assert driver.on_epoch_end("m0", 2, {"val_loss": 0.4}) == Continue()
    assert driver.on_epoch_end("m0", 3, {"val_loss": 0.3}) == [Stop("finished", "m0")]
    assert driver.on_epoch_end("m2", 2, {"val_loss": 0.4}) == Continue()
    # the last running model ends: nothing can change the rungs any more
    assert driver.on_epoch_end("m2", 3, {"val_loss": 0.3}) == [
        Stop("finished", "m2"), Stop("not promoted", "m1"), Stop("not promoted", "m3"),
        Stop("not promoted", "m4"), Stop("not promoted", "m5")]


def test_fewer_than_reduction_factor_at_a_rung_the_best_so_far_goes_on():
    driver = ASHADriver(num_models=3, max_epochs=9, grace_period=1, reduction_factor=3)
    driver.bind({"x": hp_uniform(0, 1)}, np.random.default_rng(0), 3)
    configs = driver.suggest(0)
    for k in range(3):
        driver.on_model_added(f"m{k}", configs[k])
    assert driver.on_epoch_end("m0", 1, {"val_loss": 0.5}) == [Continue("m0")]
    assert driver.on_epoch_end("m1", 1, {"val_loss": 0.6}) == [Pause("m1")]
    assert driver.on_epoch_end("m2", 1, {"val_loss": 0.4}) == [Continue("m2")]   # the new top 1 of 3
    assert driver.promoted(0) == ["m0", "m2"]


def test_the_last_running_model_failing_stops_the_paused_ones():
    driver = ASHADriver(num_models=3, max_epochs=9, grace_period=1, reduction_factor=3)
    driver.bind({"x": hp_uniform(0, 1)}, np.random.default_rng(0), 3)
    configs = driver.suggest(0)
    for k in range(3):
        driver.on_model_added(f"m{k}", configs[k])
    driver.on_epoch_end("m0", 1, {"val_loss": 0.5})
    driver.on_epoch_end("m1", 1, {"val_loss": 0.6})
    driver.on_epoch_end("m2", 1, {"val_loss": 0.7})
    assert driver.on_model_failed("m0", configs[0], "boom") == [Stop("not promoted", "m1"), Stop("not promoted", "m2")]


def test_the_last_model_failing_to_build_stops_the_paused_ones():
    driver = ASHADriver(num_models=3, max_epochs=3, grace_period=1, reduction_factor=3)
    driver.bind({"x": hp_uniform(0, 1)}, np.random.default_rng(0), 1)
    (c0,) = driver.suggest(0)
    driver.on_model_added("m0", c0)
    assert driver.on_epoch_end("m0", 1, {"val_loss": 0.5}) == [Continue("m0")]
    assert driver.suggest(1) == []
    assert driver.on_epoch_end("m0", 3, {"val_loss": 0.5}) == [Stop("finished", "m0")]
    (c1,) = driver.suggest(0)
    driver.on_model_added("m1", c1)
    assert driver.on_epoch_end("m1", 1, {"val_loss": 0.6}) == [Pause("m1")]
    (c2,) = driver.suggest(0)
    assert driver.on_model_failed(None, c2, "could not build") == [Stop("not promoted", "m1")]
    assert driver.suggest(0) is None


def test_failures_in_a_simulated_run_never_leave_models_paused():
    driver = ASHADriver(15, 9, 1, 3)
    fail = {("model_002", 0), ("model_004", 1), ("model_014", 1), ("model_013", 0)}
    sim = simulate(driver, SPACE, num_workers=2, fail=fail)
    assert {m for m, r in sim.models.items() if r["status"] == "failed"} == {"model_002", "model_004", "model_014", "model_013"}
    assert all(r["status"] in ("ended", "failed") for r in sim.models.values())


def test_same_seed_same_decisions_and_restore_mid_run_continues_identically():
    make = lambda: ASHADriver(20, 9, 1, 3)
    a = simulate(make(), SPACE, seed=3)
    assert a.log == simulate(make(), SPACE, seed=3).log
    for at in (1, 10, len(a.log) // 2, len(a.log) - 1):
        assert simulate(make(), SPACE, seed=3, restore_at=at, make_driver=make).log == a.log
    b = simulate(make(), SPACE, seed=4)
    assert [m["params"] for m in b.models.values()] != [m["params"] for m in a.models.values()]


def test_state_is_json():
    driver = ASHADriver(10, 9)
    simulate(driver, SPACE)
    state = driver.get_state()
    assert json.loads(json.dumps(state, allow_nan=False)) == state


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("args", [(12, 9, 1, 3), (20, 16, 2, 2), (4, 1, 1, 3), (30, 27, 1, 3)])
def test_driver_contract(args, mode):
    space = {"lr": hp_loguniform(1e-4, 1e-1), "width": hp_choice([16, 32, 64])}
    metric = "val_loss" if mode == "min" else "val_accuracy"
    report = check_driver_contract(lambda: ASHADriver(*args), space, metric=metric, mode=mode)
    assert report.num_suggested == args[0]
