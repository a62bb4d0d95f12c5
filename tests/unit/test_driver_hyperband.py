"""HyperbandDriver: the paper's bracket table, successive halving inside brackets, determinism.

``simulate`` is a small pure engine (also used by the ASHA and PBT tests): every running model
"trains" in parallel, epochs take a seeded random time so reports interleave, and the driver's
actions are applied with the engine's rules (only the reporting model or a paused one may be
named; a reporting model no action names is paused; Exploit is followed by Continue/Pause).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest

from cerebro.drivers.base import Continue, Exploit, Pause, Stop
from cerebro.drivers.hyperband import HyperbandDriver, hyperband_brackets
from cerebro.space import hp_choice, hp_uniform

from cerebro.testing import check_driver_contract


# --------------------------------------------------------------------------- simulated engine

@dataclass
class Sim:
    log: list = field(default_factory=list)          # (model_id, epoch, score, actions) per on_epoch_end
    models: dict = field(default_factory=dict)       # id -> {"params", "status", "epoch", "reason", ...}
    driver: Any = None
    epochs: int = 0                                  # model-epochs trained
    exploits: list = field(default_factory=list)     # (target, source, params)


def default_curve(params: dict, epoch: int, model_id: str) -> float:
    x = float(params.get("x", 0.5))
    return (x - 0.3) ** 2 + 1.0 / epoch


def _target(a) -> str | None:
    return a.target if isinstance(a, Exploit) else a.model_id


def simulate(driver, space, *, num_workers=2, metric="val_loss", mode="min", seed=0,
             curve: Callable[[dict, int, str], float] = default_curve, fail=(), restore_at=None,
             make_driver=None, on_decision=None, max_steps=200_000) -> Sim:
    """Run ``driver`` to the end against a simulated engine; return what happened.

    ``fail``: (model_id, epoch) pairs: that epoch of that model fails (epoch 0: building it fails).
    ``restore_at``: after that many epoch ends, swap in ``make_driver()`` restored from a JSON
    round trip of the state (bound with a different generator, as after a restart).
    """
    sim_rng = np.random.default_rng(seed + 12345)
    driver.bind(space, np.random.default_rng(seed), num_workers, metric, mode)
    sim = Sim(driver=driver)
    models = sim.models
    state = {"exhausted": False, "index": 0, "t": 0.0, "steps": 0}
    fail = set(fail)

    def apply(actions, reporter):
        named: dict[str, int] = {}
        pending_exploit = set()
        for a in actions:
            assert isinstance(a, (Continue, Stop, Pause, Exploit)), a
            target = _target(a)
            assert target in models, f"action {a!r} names an unknown model"
            m = models[target]
            assert target == reporter or m["status"] == "paused", f"action {a!r} on a {m['status']} model"
            if isinstance(a, Exploit):
                src = models[a.source]
                assert a.source != target and src["status"] != "failed" and src["epoch"] >= 1, a
                m["params"] = dict(a.params)
                m["state_from"] = a.source
                sim.exploits.append((target, a.source, dict(a.params)))
                pending_exploit.add(target)
                continue
            named[target] = named.get(target, 0) + 1
            assert named[target] == 1, f"{target} named twice in {actions!r}"
            pending_exploit.discard(target)
            if isinstance(a, Continue):
                m["status"] = "running"
                m["next_t"] = state["t"] + 1.0 + float(sim_rng.random())
            elif isinstance(a, Stop):
                m["status"] = "ended"
                m["reason"] = a.reason
            else:
                m["status"] = "paused"
        assert not pending_exploit, f"Exploit without a following Continue/Pause in {actions!r}"
        if reporter is not None and reporter not in named:
            models[reporter]["status"] = "paused"

    def normalise(decision, reporter):
        actions = list(decision) if isinstance(decision, (list, tuple)) else [decision]
        out = []
        for a in actions:
            if isinstance(a, (Continue, Pause)) and a.model_id is None:
                a = type(a)(reporter)
            elif isinstance(a, Stop) and a.model_id is None:
                a = Stop(a.reason, reporter)
            out.append(a)
        return out

    def check_state():
        json.dumps(sim.driver.get_state(), allow_nan=False)

    def fill():
        if state["exhausted"]:
            return
        active = sum(1 for m in models.values() if m["status"] == "running")
        proposals = sim.driver.suggest(active)
        check_state()
        if proposals is None:
            state["exhausted"] = True
            return
        for p in proposals:
            mid = f"model_{state['index']:03d}"
            state["index"] += 1
            if (mid, 0) in fail:
                models[mid] = {"params": dict(p), "status": "failed", "epoch": 0, "reason": "build"}
                apply(normalise(sim.driver.on_model_failed(None, dict(p), "build failed") or [], None), None)
                continue
            models[mid] = {"params": dict(p), "status": "running", "epoch": 0, "reason": None,
                           "next_t": state["t"] + 1.0 + float(sim_rng.random())}
            sim.driver.on_model_added(mid, dict(p))
        check_state()

    fill()
    while True:
        running = [mid for mid, m in models.items() if m["status"] == "running"]
        if not running:
            before = state["index"]
            fill()
            if state["index"] == before and not any(m["status"] == "running" for m in models.values()):
                break
            continue
        state["steps"] += 1
        assert state["steps"] < max_steps, "the search does not terminate"
        mid = min(running, key=lambda k: (models[k]["next_t"], k))
        m = models[mid]
        state["t"] = m["next_t"]
        if (mid, m["epoch"] + 1) in fail:
            m["status"] = "failed"
            apply(normalise(sim.driver.on_model_failed(mid, dict(m["params"]), "boom") or [], None), None)
            check_state()
            fill()
            continue
        m["epoch"] += 1
        sim.epochs += 1
        score = float(curve(m["params"], m["epoch"], mid))
        decision = sim.driver.on_epoch_end(mid, m["epoch"], {metric: score, "train_loss": score})
        actions = normalise(decision, mid)
        sim.log.append((mid, m["epoch"], score, [repr(a) for a in actions]))
        if on_decision is not None:
            on_decision(sim, mid, m["epoch"], score, actions)
        apply(actions, mid)
        check_state()
        if restore_at is not None and len(sim.log) == restore_at:
            fresh = make_driver()
            fresh.bind(space, np.random.default_rng(seed + 999), num_workers, metric, mode)
            fresh.set_state(json.loads(json.dumps(sim.driver.get_state())))
            sim.driver = fresh
        fill()
    left = [mid for mid, m in models.items() if m["status"] == "paused"]
    assert not left, f"models left paused forever: {left}"
    return sim


SPACE = {"x": hp_uniform(0.0, 1.0), "y": hp_choice(["a", "b", "c"])}


# --------------------------------------------------------------------------- the plan

def test_brackets_match_the_paper_table_for_81_and_3():
    assert HyperbandDriver(81, 3).brackets() == [
        [(81, 1), (27, 3), (9, 9), (3, 27), (1, 81)],
        [(34, 3), (11, 9), (3, 27), (1, 81)],
        [(15, 9), (5, 27), (1, 81)],
        [(8, 27), (2, 81)],
        [(5, 81)],
    ]


@pytest.mark.parametrize("max_epochs,eta,s_max", [(81, 3, 4), (27, 3, 3), (26, 3, 2), (1, 3, 0), (2, 2, 1),
                                                  (8, 2, 3), (100, 10, 2), (99, 10, 1), (243, 3, 5), (10, 3, 2)])
def test_bracket_count_is_floor_log_in_integers(max_epochs, eta, s_max):
    plan = hyperband_brackets(max_epochs, eta)
    assert len(plan) == s_max + 1
    for rungs in plan:
        assert rungs[-1][1] == max_epochs                      # every bracket ends at max_epochs
        epochs = [r for _, r in rungs]
        assert epochs == sorted(set(epochs)) and epochs[0] >= 1  # strictly increasing whole epochs
        for (n0, _), (n1, _) in zip(rungs, rungs[1:]):
            assert n1 == n0 // eta and n1 >= 1


def test_total_sub_epochs_is_the_plan_times_partitions():
    d = HyperbandDriver(81, 3)
    # s=4: 81+27*2+9*6+3*18+54, s=3: 34*3+11*6+3*18+54, s=2: 15*9+5*18+54, s=1: 8*27+2*54, s=0: 5*81
    assert d.planned_epochs() == 297 + 276 + 279 + 324 + 405
    assert d.total_sub_epochs(4) == 4 * 1581


@pytest.mark.parametrize("kwargs", [{"max_epochs": 0}, {"max_epochs": 9, "eta": 1}, {"max_epochs": 2.5}, {"max_epochs": True}])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises((ValueError, TypeError)):
        HyperbandDriver(**kwargs)


# --------------------------------------------------------------------------- successive halving

def _check_halving(sim: Sim, driver: HyperbandDriver, mode: str = "min"):
    """Every rung of every bracket (a run without failures): n_i models reach r_i epochs, the
    best floor(n_i / eta) of them go on, the others stop there; the last rung finishes."""
    plan = driver.brackets()
    reports: dict[tuple[str, int], float] = {(mid, e): s for mid, e, s, _ in sim.log}
    by_bracket: dict[int, list[str]] = {}
    for mid in sim.models:
        by_bracket.setdefault(driver.bracket_of(mid), []).append(mid)
    assert sorted(by_bracket) == list(range(len(plan)))
    sign = 1 if mode == "min" else -1
    for b, rungs in enumerate(plan):
        alive = by_bracket[b]
        for i, (n_i, r_i) in enumerate(rungs):
            arrived = [m for m in alive if (m, r_i) in reports]
            assert len(arrived) == len(alive) == n_i, (b, i, len(arrived), n_i)
            if i == len(rungs) - 1:
                for m in arrived:
                    assert sim.models[m]["reason"] == "finished" and sim.models[m]["epoch"] == r_i
                break
            ranked = sorted(arrived, key=lambda m: (sign * reports[(m, r_i)], arrived.index(m)))
            keep = ranked[: n_i // driver.eta]
            went_on = [m for m in arrived if (m, r_i + 1) in reports]
            assert sorted(went_on) == sorted(keep)          # exactly floor(n_i / eta), the best ones
            for m in ranked[len(keep):]:
                assert sim.models[m]["reason"] == "successive halving" and sim.models[m]["epoch"] == r_i
            alive = keep


@pytest.mark.parametrize("mode", ["min", "max"])
def test_81_3_run_keeps_the_best_of_every_rung_and_trains_the_plan(mode):
    driver = HyperbandDriver(81, 3)
    rng = np.random.default_rng(5)
    quality = {}

    def curve(params, epoch, mid):  # noisy, crossing curves: rankings change between rungs
        q = quality.setdefault(mid, float(rng.random()))
        return (params["x"] - 0.3) ** 2 + q / epoch + 0.01 * math.sin(epoch * (1 + q))

    sim = simulate(driver, SPACE, num_workers=3, mode=mode, curve=curve)
    assert len(sim.models) == 81 + 34 + 15 + 8 + 5
    assert all(m["status"] == "ended" for m in sim.models.values())
    _check_halving(sim, driver, mode)
    assert sim.epochs == driver.planned_epochs() == 1581
    grid_epochs = len(sim.models) * 81
    assert sim.epochs * 5 < grid_epochs             # far fewer than training every configuration fully


def test_brackets_run_concurrently_without_global_barrier():
    driver = HyperbandDriver(27, 3)
    seen_open = []

    def on_decision(sim, mid, epoch, score, actions):
        brackets_running = {driver.bracket_of(m) for m, r in sim.models.items() if r["status"] in ("running", "paused")}
        seen_open.append(len(brackets_running))

    simulate(driver, SPACE, num_workers=4, on_decision=on_decision)
    assert max(seen_open) >= 2


def test_failed_models_leave_their_rung_and_never_block_it():
    driver = HyperbandDriver(9, 3)   # brackets (9,1)(3,3)(1,9) / (5,3)(1,9) / (3,9)
    fail = {("model_000", 0), ("model_003", 1), ("model_010", 2)}
    sim = simulate(driver, SPACE, num_workers=2, fail=fail)
    assert all(m["status"] in ("ended", "failed") for m in sim.models.values())
    failed = {m for m, r in sim.models.items() if r["status"] == "failed"}
    assert failed == {"model_000", "model_003", "model_010"}
    # bracket 0's first rung still keeps floor(9/3) = 3 models: the 3 best of the 7 that reported
    reports = {(mid, e): s for mid, e, s, _ in sim.log}
    b0 = [m for m in sim.models if m in driver._models and driver.bracket_of(m) == 0]
    arrived = [m for m in b0 if (m, 1) in reports]
    assert len(arrived) == 7
    promoted = [m for m in arrived if sim.models[m]["epoch"] > 1]
    assert sorted(promoted) == sorted(sorted(arrived, key=lambda m: (reports[(m, 1)], m))[:3])


def test_a_failure_completing_a_rung_returns_the_promotions():
    driver = HyperbandDriver(3, 3)   # (3,1)(1,3) and (2,3)
    driver.bind({"x": hp_uniform(0, 1)}, np.random.default_rng(0), 4)
    configs = driver.suggest(0)
    assert len(configs) == 3 + 2     # 4 workers: both brackets open at once
    for k in range(5):
        driver.on_model_added(f"m{k}", configs[k])
    assert driver.on_epoch_end("m0", 1, {"val_loss": 0.5}) == [Pause("m0")]
    assert driver.on_epoch_end("m1", 1, {"val_loss": 0.2}) == [Pause("m1")]
    actions = driver.on_model_failed("m2", configs[2], "boom")
    assert actions == [Stop("successive halving", "m0"), Continue("m1")]
    assert driver.on_epoch_end("m1", 2, {"val_loss": 0.1}) == Continue()
    assert driver.on_epoch_end("m1", 3, {"val_loss": 0.1}) == Stop("finished")


def test_nan_and_missing_scores_rank_last():
    driver = HyperbandDriver(3, 3)
    driver.bind({"x": hp_uniform(0, 1)}, np.random.default_rng(0), 1)
    configs = driver.suggest(0)
    assert len(configs) == 3
    for k in range(3):
        driver.on_model_added(f"m{k}", configs[k])
    driver.on_epoch_end("m0", 1, {"val_loss": float("nan")})
    driver.on_epoch_end("m1", 1, {})
    actions = driver.on_epoch_end("m2", 1, {"val_loss": 9.0})
    assert Continue("m2") in actions and Stop("successive halving", "m0") in actions


def test_same_seed_same_decisions_and_restore_mid_run_continues_identically():
    make = lambda: HyperbandDriver(27, 3)
    a = simulate(make(), SPACE, seed=3)
    b = simulate(make(), SPACE, seed=3)
    assert a.log == b.log
    for at in (1, 17, 60, len(a.log) - 1):
        c = simulate(make(), SPACE, seed=3, restore_at=at, make_driver=make)
        assert c.log == a.log
    d = simulate(make(), SPACE, seed=4)
    assert [m["params"] for m in d.models.values()] != [m["params"] for m in a.models.values()]


def test_state_is_json():
    driver = HyperbandDriver(9, 3)
    simulate(driver, SPACE)
    state = driver.get_state()
    assert json.loads(json.dumps(state, allow_nan=False)) == state


@pytest.mark.parametrize("max_epochs,eta", [(9, 3), (27, 3), (8, 2)])
def test_driver_contract(max_epochs, eta):
    check_driver_contract(lambda: HyperbandDriver(max_epochs, eta), SPACE)
