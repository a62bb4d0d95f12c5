"""TPEDriver: hyperopt's TPE behind the SearchDriver interface (pure, no TensorFlow)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from cerebro.drivers.base import Continue, Stop
from cerebro.drivers.early_stopping import EarlyStoppingDriver, MedianStopping
from cerebro.drivers.grid import RandomDriver
from cerebro.drivers.tpe import TPEDriver
from cerebro.space import (hp_choice, hp_loguniform, hp_qloguniform, hp_quniform, hp_randint,
                           hp_uniform)
from cerebro.testing import check_config, check_driver_contract

FULL = {
    "act": hp_choice(["relu", "tanh", None, (1, 2)]),
    "lr": hp_loguniform(1e-5, 1e-1),
    "units": hp_qloguniform(1, 1000, 10),
    "layers": hp_randint(3, 7),
    "dropout": hp_uniform(0.0, 0.5),
    "width": hp_quniform(10, 200, 10),
}


def bound(driver, space=FULL, seed=0, num_workers=2, metric="val_loss", mode="min"):
    driver.bind(space, np.random.default_rng(seed), num_workers, metric, mode)
    return driver


def many(space, n=300, seed=0):
    """n configurations from the random start-up phase (all in one suggest call)."""
    d = bound(TPEDriver(n, 1, parallelism=n, n_startup_jobs=10 * n), space, seed)
    return d.suggest(0)


# ---------------------------------------------------------------- mapping of the dimensions

def test_loguniform_bounds_are_values_not_exponents():
    configs = many({"lr": hp_loguniform(1e-5, 1e-1)})
    lrs = np.array([c["lr"] for c in configs])
    assert ((lrs >= 1e-5) & (lrs <= 1e-1)).all()
    # log-uniform: log10 is uniform on [-5, -1]
    logs = np.log10(lrs)
    assert abs(np.median(logs) + 3) < 0.3
    assert (logs < -4).mean() > 0.15 and (logs > -2).mean() > 0.15


def test_choice_returns_the_values_themselves():
    values = ["relu", "tanh", None, (1, 2)]
    configs = many({"act": hp_choice(values)}, n=100)
    seen = [c["act"] for c in configs]
    assert all(any(s is v for v in values) for s in seen)   # the very objects, not indices
    assert {repr(s) for s in seen} == {repr(v) for v in values}


def test_quniform_keeps_its_step_and_bounds():
    configs = many({"w": hp_quniform(10, 200, 10), "p": hp_quniform(0.15, 0.95, 0.1)})
    ws = np.array([c["w"] for c in configs])
    assert ((ws >= 10) & (ws <= 200)).all() and np.allclose(ws / 10, np.round(ws / 10))
    assert len(set(ws)) > 10
    ps = np.array([c["p"] for c in configs])
    assert ((ps >= 0.15 - 1e-12) & (ps <= 0.95 + 1e-12)).all()
    assert np.allclose(ps / 0.1, np.round(ps / 0.1))


def test_qloguniform_keeps_its_step_and_bounds():
    # hyperopt alone would give 0 for values below 5 (round(x / 10) * 10): cerebro keeps the bounds
    configs = many({"u": hp_qloguniform(1, 1000, 10)})
    us = np.array([c["u"] for c in configs])
    assert ((us >= 1) & (us <= 1000)).all() and np.allclose(us / 10, np.round(us / 10))
    assert (us == 10).sum() > 50            # a third of log-space lies below 10
    assert (us > 100).sum() > 50


def test_randint_low_high():
    configs = many({"k": hp_randint(3, 7)}, n=100)
    ks = [c["k"] for c in configs]
    assert all(isinstance(k, int) for k in ks)
    assert set(ks) == {3, 4, 5, 6}


def test_uniform():
    configs = many({"d": hp_uniform(-1.0, 0.5)})
    ds = np.array([c["d"] for c in configs])
    assert ((ds >= -1.0) & (ds <= 0.5)).all() and ds.min() < -0.8 and ds.max() > 0.3


def test_tpe_phase_stays_in_bounds():
    d = bound(TPEDriver(40, 1, parallelism=1, n_startup_jobs=5))
    for i in range(40):
        (config,) = d.suggest(0)
        check_config(config, FULL, f"suggestion {i}")
        d.on_model_added(f"m{i}", config)
        assert d.on_epoch_end(f"m{i}", 1, {"val_loss": float(np.log(config["lr"]) ** 2)}) == Stop("finished")
    assert d.suggest(0) is None


def test_hyperopt_space_uses_logs_of_the_bounds():
    from hyperopt.pyll.stochastic import sample

    from cerebro.drivers.tpe import hyperopt_space

    expr = hyperopt_space({"lr": hp_loguniform(1e-4, 1e-2), "c": hp_choice(["a", "b"])})
    rng = np.random.default_rng(0)
    for _ in range(50):
        s = sample(expr, rng=rng)
        assert 1e-4 <= s["lr"] <= 1e-2 and s["c"] in (0, 1)   # choices are indices inside hyperopt


# ---------------------------------------------------------------- ask / tell

def test_ask_tell_trial_ids_and_losses():
    d = bound(TPEDriver(3, 2, parallelism=3), mode="max", metric="val_accuracy")
    configs = d.suggest(0)
    assert len(configs) == 3
    assert [t["tid"] for t in d.trials.trials] == [0, 1, 2]
    for i, c in enumerate(configs):
        d.on_model_added(f"model_{i:03d}", c)
    from hyperopt import JOB_STATE_DONE, JOB_STATE_RUNNING

    assert all(t["state"] == JOB_STATE_RUNNING for t in d.trials.trials)
    # models report out of order; only the last epoch is told to hyperopt
    assert d.on_epoch_end("model_002", 1, {"val_accuracy": 0.5}) == Continue()
    assert d.on_epoch_end("model_002", 2, {"val_accuracy": 0.75}) == Stop("finished")
    assert d.on_epoch_end("model_000", 1, {"val_accuracy": 0.1}) == Continue()
    assert d.on_epoch_end("model_000", 2, {"val_accuracy": 0.25}) == Stop("finished")
    docs = {t["tid"]: t for t in d.trials.trials}
    assert docs[2]["result"] == {"loss": -0.75, "status": "ok"} and docs[2]["state"] == JOB_STATE_DONE
    assert docs[0]["result"] == {"loss": -0.25, "status": "ok"}
    assert docs[1]["state"] == JOB_STATE_RUNNING
    # the sampled values of each trial are the suggested configuration
    assert docs[2]["misc"]["vals"]["lr"][0] == configs[2]["lr"]
    assert d.suggest(1) == []          # all 3 proposed, one still running
    d.on_epoch_end("model_001", 1, {"val_accuracy": 0.3})
    d.on_epoch_end("model_001", 2, {"val_accuracy": 0.3})
    assert d.suggest(0) is None


def test_mode_min_loss_is_the_metric():
    d = bound(TPEDriver(1, 1))
    (c,) = d.suggest(0)
    d.on_model_added("m", c)
    d.on_epoch_end("m", 1, {"val_loss": 0.42, "val_accuracy": 0.9})
    assert d.trials.trials[0]["result"] == {"loss": 0.42, "status": "ok"}


def test_nan_metric_is_the_worst_loss_and_state_stays_strict_json():
    d = bound(TPEDriver(2, 1, parallelism=2))
    a, b = d.suggest(0)
    d.on_model_added("a", a)
    d.on_model_added("b", b)
    d.on_epoch_end("a", 1, {"val_loss": float("nan")})
    d.on_epoch_end("b", 1, {"val_loss": 1.0})
    assert d.trials.trials[0]["result"]["loss"] == math.inf
    state = d.get_state()
    text = json.dumps(state, allow_nan=False)
    fresh = bound(TPEDriver(2, 1, parallelism=2))
    fresh.set_state(json.loads(text))
    assert fresh.trials.trials[0]["result"]["loss"] == math.inf
    assert fresh.suggest(0) is None


def test_missing_metric_is_a_clear_error():
    d = bound(TPEDriver(1, 1), metric="val_auc", mode="max")
    (c,) = d.suggest(0)
    d.on_model_added("m", c)
    with pytest.raises(KeyError, match="val_auc"):
        d.on_epoch_end("m", 1, {"val_loss": 1.0})


def test_parallelism_is_respected():
    d = bound(TPEDriver(10, 1, parallelism=3), num_workers=8)
    assert len(d.suggest(0)) == 3
    assert d.suggest(3) == []
    assert len(d.suggest(2)) == 1
    assert d.suggest(5) == []           # the engine may count more active than parallelism: no room
    # default: the number of workers
    d = bound(TPEDriver(10, 1), num_workers=4)
    assert len(d.suggest(0)) == 4 and len(d.suggest(1)) == 3
    # never more than num_models
    d = bound(TPEDriver(2, 1, parallelism=5))
    assert len(d.suggest(0)) == 2 and d.suggest(0) == []


@pytest.mark.parametrize("parallelism", [1, 3])
def test_parallelism_in_a_run(parallelism):
    report = check_driver_contract(lambda: TPEDriver(8, 2, parallelism=parallelism), FULL, num_workers=4)
    assert report.max_training <= parallelism
    assert report.num_suggested == 8


def test_failed_trials_are_ignored_by_tpe():
    from hyperopt import JOB_STATE_ERROR

    d = bound(TPEDriver(4, 1, parallelism=4))
    configs = d.suggest(0)
    d.on_model_added("model_000", configs[0])
    d.on_model_failed(None, configs[1], "Traceback...\nValueError: cannot build")      # never built
    d.on_model_added("model_002", configs[2])
    d.on_model_added("model_003", configs[3])                                          # mapped past the failure
    d.on_model_failed("model_002", configs[2], "Traceback...\nRuntimeError: OOM")      # failed while training
    assert [t["tid"] for t in d.trials.trials] == [0, 3]     # errored trials leave TPE's view
    assert [t["state"] for t in d.trials._dynamic_trials if t["tid"] in (1, 2)] == [JOB_STATE_ERROR] * 2
    assert d.suggest(2) == []
    d.on_epoch_end("model_000", 1, {"val_loss": 1.0})
    d.on_epoch_end("model_003", 1, {"val_loss": 2.0})
    assert d.trials.trials[1]["result"]["loss"] == 2.0      # model_003 is trial 3, not trial 2
    assert d.suggest(0) is None
    # a failed model can be told again without harm
    d.on_model_failed("model_002", configs[2], "again")
    state = d.get_state()
    assert state["failed"] == 2 and state["reported"] == 2 and state["proposed"] == 4


def test_next_trial_id_skips_failed_ones_after_a_restore():
    d = bound(TPEDriver(4, 1, parallelism=2))
    a, b = d.suggest(0)
    d.on_model_added("m0", a)
    d.on_model_failed(None, b, "boom")
    fresh = bound(TPEDriver(4, 1, parallelism=2))
    fresh.set_state(json.loads(json.dumps(d.get_state())))
    fresh.suggest(1)
    d.suggest(1)
    assert fresh.trials.tids == d.trials.tids == [0, 2]


def test_none_only_when_everything_reported():
    d = bound(TPEDriver(2, 3, parallelism=1))
    (a,) = d.suggest(0)
    d.on_model_added("a", a)
    assert d.suggest(1) == []
    for e in (1, 2):
        assert d.on_epoch_end("a", e, {"val_loss": 1.0}) == Continue()
    assert d.on_epoch_end("a", 3, {"val_loss": 1.0}) == Stop("finished")
    (b,) = d.suggest(0)
    d.on_model_added("b", b)
    assert d.suggest(1) == []
    d.on_model_failed("b", b, "boom")
    assert d.suggest(0) is None


def test_total_sub_epochs():
    assert TPEDriver(5, 3).total_sub_epochs(4) == 60


@pytest.mark.parametrize("kwargs, match", [
    ({"num_models": 0, "num_epochs": 1}, "num_models"),
    ({"num_models": 2, "num_epochs": 0}, "num_epochs"),
    ({"num_models": 2, "num_epochs": 1, "parallelism": 0}, "parallelism"),
    ({"num_models": 2, "num_epochs": 1, "n_startup_jobs": -1}, "n_startup_jobs"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TPEDriver(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_models": 2.5, "num_epochs": 1}, "num_models"),
    ({"num_models": 2, "num_epochs": True}, "num_epochs"),
    ({"num_models": 2, "num_epochs": 1, "parallelism": "2"}, "parallelism"),
])
def test_bad_argument_types(kwargs, match):
    with pytest.raises(TypeError, match=match):
        TPEDriver(**kwargs)


# ---------------------------------------------------------------- state and determinism

def _drive(driver, n_steps, start=0):
    """Sequentially: suggest one, add, report a deterministic loss; return the configurations."""
    out = []
    for i in range(start, start + n_steps):
        s = driver.suggest(0)
        if s is None:
            break
        (c,) = s
        driver.on_model_added(f"m{i}", c)
        driver.on_epoch_end(f"m{i}", 1, {"val_loss": (math.log10(c["lr"]) + 3) ** 2 + c["dropout"]})
        out.append(c)
    return out


def test_same_seed_same_suggestions():
    a = _drive(bound(TPEDriver(25, 1, 1, n_startup_jobs=5), seed=3), 25)
    b = _drive(bound(TPEDriver(25, 1, 1, n_startup_jobs=5), seed=3), 25)
    c = _drive(bound(TPEDriver(25, 1, 1, n_startup_jobs=5), seed=4), 25)
    assert a == b and a != c


def test_state_roundtrip_continues_identically():
    ref = bound(TPEDriver(25, 1, 1, n_startup_jobs=5), seed=7)
    first = _drive(ref, 12)
    state = json.loads(json.dumps(ref.get_state(), allow_nan=False))
    rest = _drive(ref, 13, start=12)
    fresh = bound(TPEDriver(25, 1, 1, n_startup_jobs=5), seed=999)   # the rng state comes from the state
    fresh.set_state(state)
    assert _drive(fresh, 13, start=12) == rest
    assert len(first) == 12 and len(rest) == 13
    assert fresh.suggest(0) is None


def test_state_roundtrip_between_suggest_and_model_added():
    ref = bound(TPEDriver(6, 1, parallelism=3))
    configs = ref.suggest(0)
    state = json.loads(json.dumps(ref.get_state()))
    fresh = bound(TPEDriver(6, 1, parallelism=3))
    fresh.set_state(state)
    for d in (ref, fresh):
        for i, c in enumerate(configs):
            d.on_model_added(f"m{i}", c)
        d.on_epoch_end("m1", 1, {"val_loss": 0.5})
    assert ref.suggest(2) == fresh.suggest(2)
    assert ref.get_state() == fresh.get_state()


_SCRIPT = """
import json, math, sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_driver_tpe import _drive, bound
from cerebro.drivers.tpe import TPEDriver
d = bound(TPEDriver(12, 1, 1, n_startup_jobs=3), seed=5)
print(json.dumps(_drive(d, 12)))
"""


def test_suggestions_do_not_depend_on_the_process_hash_seed():
    """Resume happens in a new process: string hashing must not change TPE's decisions."""
    here = os.path.dirname(os.path.abspath(__file__))
    expected = json.loads(json.dumps(_drive(bound(TPEDriver(12, 1, 1, n_startup_jobs=3), seed=5), 12)))
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", _SCRIPT.format(tests=here)], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected


def test_hyperopt_is_imported_lazily():
    code = "import sys, cerebro.drivers.tpe, cerebro.drivers.early_stopping; print('hyperopt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- the contract

def test_contract_full_space():
    report = check_driver_contract(lambda: TPEDriver(10, 3, n_startup_jobs=4), FULL)
    assert report.num_suggested == 10 and report.statuses.get("completed", 0) == 8   # 2 simulated failures


def test_contract_mode_max():
    check_driver_contract(lambda: TPEDriver(8, 2, parallelism=2, n_startup_jobs=3), FULL,
                          metric="val_accuracy", mode="max", seed=3, num_workers=3)


def test_contract_with_early_stopping():
    report = check_driver_contract(
        lambda: EarlyStoppingDriver(TPEDriver(10, 5, parallelism=4, n_startup_jobs=3), MedianStopping(1, 2)),
        FULL, num_workers=4, seed=1)
    assert report.early_stops > 0


# ---------------------------------------------------------------- does it search?

SPACE_2D = {"lr": hp_loguniform(1e-5, 1e-1), "width": hp_quniform(10, 200, 10)}


def _objective(p):
    return (math.log10(p["lr"]) + 2.5) ** 2 + (p["width"] / 100 - 0.7) ** 2


def _best_tpe(seed, n=40):
    d = bound(TPEDriver(n, 1, parallelism=1), SPACE_2D, seed, num_workers=1)
    best, i = math.inf, 0
    while (s := d.suggest(0)) is not None:
        for p in s:
            d.on_model_added(f"m{i}", p)
            d.on_epoch_end(f"m{i}", 1, {"val_loss": _objective(p)})
            best, i = min(best, _objective(p)), i + 1
    assert i == n
    return best


def _best_random(seed, n=40):
    d = bound(RandomDriver(n, 1), SPACE_2D, seed, num_workers=1)
    return min(_objective(p) for p in d.suggest(0))


def test_tpe_beats_random_in_expectation():
    seeds = range(20)
    tpe = np.array([_best_tpe(s) for s in seeds])
    rnd = np.array([_best_random(s) for s in seeds])
    assert tpe.mean() < 0.7 * rnd.mean(), (tpe.mean(), rnd.mean())
    assert (tpe < rnd).sum() >= 12, (tpe, rnd)
