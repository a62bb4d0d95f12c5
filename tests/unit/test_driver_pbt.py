"""PBTDriver: exploit (bottom quantile copies a top one), explore (bounds, x0.8/x1.2, p=0.25
resampling, custom mutations), lineage, determinism."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cerebro.drivers.base import Continue, Exploit, Stop
from cerebro.drivers.pbt import PBTDriver
from cerebro.space import (
    Choice, LogUniform, QLogUniform, QUniform, RandInt, Uniform, hp_choice, hp_loguniform, hp_quniform, hp_randint,
    hp_uniform,
)
from cerebro.testing import check_driver_contract
from test_driver_hyperband import simulate

SPACE = {"lr": hp_loguniform(1e-4, 1e-1), "momentum": hp_uniform(0.5, 0.99), "batch": hp_quniform(16, 256, 16),
         "layers": hp_randint(1, 6), "act": hp_choice(["relu", "tanh", "gelu"])}


def bound(space, seed=0, workers=2, mode="min", **kwargs):
    d = PBTDriver(**{"population_size": 8, "num_epochs": 10, **kwargs})
    d.bind(space, np.random.default_rng(seed), workers, "val_loss", mode)
    return d


def curve_for(seed):
    rng = np.random.default_rng(seed)
    noise: dict = {}

    def curve(params, epoch, mid):
        n = noise.setdefault((mid, epoch), float(rng.normal(0, 0.05)))
        return abs(math.log10(params["lr"]) + 2.5) + (1 - params["momentum"]) + 1.0 / epoch + n

    return curve


# --------------------------------------------------------------------------- arguments

@pytest.mark.parametrize("kwargs", [{"population_size": 0}, {"num_epochs": 0}, {"perturbation_interval": 0},
                                    {"quantile_fraction": 0.0}, {"quantile_fraction": 0.6},
                                    {"quantile_fraction": "a"}, {"mutations": {"lr": 3}}, {"mutations": [1]}])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises((ValueError, TypeError)):
        PBTDriver(**{"population_size": 4, "num_epochs": 3, **kwargs})


def test_mutations_must_name_space_parameters():
    with pytest.raises(ValueError, match="nope"):
        bound(SPACE, mutations={"nope": hp_uniform(0, 1)})


def test_suggests_the_population_once():
    d = bound(SPACE, population_size=7)
    configs = d.suggest(0)
    assert len(configs) == 7 and all(set(c) == set(SPACE) for c in configs)
    assert d.suggest(7) is None
    assert d.total_sub_epochs(3) == 7 * 10 * 3


# --------------------------------------------------------------------------- exploit

class Reference:
    """Independent ranking (Ray Tune's quantile rule) checked against every decision."""

    def __init__(self, driver: PBTDriver, mode: str):
        self.driver, self.sign = driver, (1 if mode == "min" else -1)
        self.latest: dict[str, float] = {}
        self.exploits = 0
        self.checked = 0

    def quantiles(self):
        ids = sorted(self.latest, key=lambda m: (self.sign * self.latest[m], m))
        k = min(math.ceil(len(ids) * self.driver.quantile_fraction), len(ids) // 2)
        return (ids[len(ids) - k:], ids[:k]) if len(ids) >= 2 else ([], [])

    def __call__(self, sim, mid, epoch, score, actions):
        for m, rec in sim.models.items():   # failed models are no sources
            if rec["status"] == "failed":
                self.latest.pop(m, None)
        self.latest[mid] = score
        d = self.driver
        if epoch >= d.num_epochs:
            assert actions == [Stop("finished", mid)]
            return
        if epoch % d.perturbation_interval:
            assert actions == [Continue(mid)]
            return
        bottom, top = self.quantiles()
        self.checked += 1
        if mid in bottom:
            assert len(actions) == 2 and isinstance(actions[0], Exploit) and actions[1] == Continue(mid)
            ex = actions[0]
            assert ex.target == mid and ex.source in top and ex.source != mid
            self.latest[mid] = self.latest[ex.source]
            self.exploits += 1
        else:
            assert actions == [Continue(mid)]


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("pop,epochs,interval,q", [(8, 10, 1, 0.25), (10, 12, 3, 0.5), (5, 6, 2, 0.2), (2, 4, 1, 0.25)])
def test_bottom_quantile_exploits_a_top_quantile_model(mode, pop, epochs, interval, q):
    driver = PBTDriver(pop, epochs, interval, q)
    ref = Reference(driver, mode)
    sim = simulate(driver, SPACE, num_workers=3, mode=mode, curve=curve_for(1), on_decision=ref)
    assert ref.checked > 0 and ref.exploits > 0
    assert all(m["status"] == "ended" and m["reason"] == "finished" and m["epoch"] == epochs for m in sim.models.values())
    assert sim.epochs == pop * epochs
    # the lineage is the list of Exploit actions, in order, with old and new parameters
    lineage = driver.exploits()
    assert [(e["target"], e["source"], e["new_params"]) for e in lineage] == sim.exploits
    for e in lineage:
        assert e["epoch"] % interval == 0 and e["epoch"] < epochs
        assert set(e["old_params"]) == set(e["new_params"]) == set(SPACE)
        assert driver.params(e["target"]) is not None


def test_no_exploit_with_a_single_scored_model():
    d = bound({"x": hp_uniform(0, 1)}, population_size=3)
    configs = d.suggest(0)
    for k, c in enumerate(configs):
        d.on_model_added(f"m{k}", c)
    assert d.on_epoch_end("m0", 1, {"val_loss": 9.0}) == Continue()
    actions = d.on_epoch_end("m1", 1, {"val_loss": 1.0})
    assert actions == Continue()                  # m1 is the top one of two
    actions = d.on_epoch_end("m2", 1, {"val_loss": 5.0})
    assert actions == Continue()                  # the middle of three is neither
    actions = d.on_epoch_end("m0", 2, {"val_loss": 8.0})
    assert isinstance(actions, list) and actions[0].source == "m1" and actions[1] == Continue("m0")


def test_failed_models_are_never_sources():
    d = bound({"x": hp_uniform(0, 1)}, population_size=3, quantile_fraction=0.5)
    configs = d.suggest(0)
    for k, c in enumerate(configs):
        d.on_model_added(f"m{k}", c)
    d.on_epoch_end("m0", 1, {"val_loss": 0.1})
    d.on_model_failed("m0", configs[0], "boom")
    d.on_epoch_end("m1", 1, {"val_loss": 0.5})
    actions = d.on_epoch_end("m2", 1, {"val_loss": 0.9})
    assert actions[0] == Exploit("m2", "m1", actions[0].params)


# --------------------------------------------------------------------------- explore

def test_default_explore_multiplies_by_08_or_12_and_resamples_choices_with_p_025():
    space = {"u": hp_uniform(0.0, 1000.0), "l": hp_loguniform(1e-6, 1e3), "c": hp_choice(list(range(10)))}
    d = bound(space)
    params = {"u": 10.0, "l": 0.01, "c": 3}
    n = 4000
    ups, changed = 0, 0
    for _ in range(n):
        new = d.explore(params)
        assert new["u"] in (pytest.approx(8.0, rel=1e-12), pytest.approx(12.0, rel=1e-12))
        assert new["l"] in (pytest.approx(0.008, rel=1e-12), pytest.approx(0.012, rel=1e-12))
        ups += new["u"] > 10.0
        changed += new["c"] != 3
    assert abs(ups / n - 0.5) < 0.03
    # resampled with p=0.25, uniformly over 10 values (one of them the old one): changed w.p. 0.225
    assert abs(changed / n - 0.25 * 0.9) < 0.03


def test_default_explore_clips_quantises_and_keeps_integers():
    space = {"u": hp_uniform(0.0, 1.0), "q": hp_quniform(0, 100, 5), "i": hp_randint(1, 10), "ql": QLogUniform(1, 1000, 10)}
    d = bound(space)
    seen_u, seen_i = set(), set()
    for _ in range(300):
        new = d.explore({"u": 0.95, "q": 100.0, "i": 2, "ql": 1000.0})
        seen_u.add(new["u"])
        assert new["q"] in (80.0, 100.0)            # 120 clipped to the bound
        assert new["ql"] in (800.0, 1000.0)
        assert isinstance(new["i"], int) and new["i"] in (1, 3)   # 2*0.8 and 2*1.2 round back to 2: one step
        seen_i.add(new["i"])
    assert sorted(seen_u) == [pytest.approx(0.76), 1.0]
    assert seen_i == {1, 3}


@st.composite
def space_and_params(draw):
    space, params = {}, {}
    n = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    for k in range(n):
        kind = draw(st.sampled_from(["u", "l", "q", "ql", "i", "c"]))
        if kind == "c":
            dim = Choice(tuple(draw(st.lists(st.integers(-5, 5), min_size=1, max_size=5))))
        elif kind == "i":
            low = draw(st.integers(-50, 50))
            dim = RandInt(low, low + draw(st.integers(1, 100)))
        elif kind in ("l", "ql"):
            low = draw(st.floats(1e-6, 1e3))
            high = low * draw(st.floats(1.01, 1e4))
            try:
                dim = LogUniform(low, high) if kind == "l" else QLogUniform(low, high, draw(st.floats(1e-3, 10.0)))
            except ValueError:  # no multiple of q inside the bounds: refused at construction
                assume(False)
        else:
            low = draw(st.floats(-1e3, 1e3))
            high = low + draw(st.floats(1e-3, 1e3))
            try:
                dim = Uniform(low, high) if kind == "u" else QUniform(low, high, draw(st.floats(1e-3, 10.0)))
            except ValueError:  # no multiple of q inside the bounds: refused at construction
                assume(False)
        if isinstance(dim, (QUniform, QLogUniform)):   # a q-dimension needs a multiple of q inside its bounds
            assume(math.ceil(dim.low / dim.q) * dim.q <= dim.high)
        space[f"p{k}"] = dim
    params = {name: dim.sample(np.random.default_rng(seed)) for name, dim in space.items()}
    return space, params, seed


def _inside(dim, v):
    if isinstance(dim, Choice):
        return v in dim.values
    if isinstance(dim, RandInt):
        return isinstance(v, int) and dim.low <= v < dim.high
    tol = 1e-9 * max(1.0, abs(dim.low), abs(dim.high))
    return isinstance(v, float) and math.isfinite(v) and dim.low - tol <= v <= dim.high + tol


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(space_and_params())
def test_explore_stays_within_bounds(case):
    space, params, seed = case
    d = bound(space, seed=seed)
    for _ in range(10):
        params = d.explore(params)
        for name, dim in space.items():
            assert _inside(dim, params[name]), (name, dim, params[name])
        json.dumps(params)


def test_custom_mutations_change_only_the_named_params():
    calls = []

    def double(value, rng):
        calls.append(value)
        return float(min(value * 2, 0.99))

    d = bound(SPACE, mutations={"momentum": double, "act": hp_choice(["relu", "gelu"]), "batch": [32, 64]})
    params = {"lr": 0.01, "momentum": 0.6, "batch": 16.0, "layers": 3, "act": "tanh"}
    acts, batches = set(), set()
    for _ in range(200):
        new = d.explore(params)
        assert new["lr"] == 0.01 and new["layers"] == 3
        assert new["momentum"] == pytest.approx(0.99)
        acts.add(new["act"])
        batches.add(new["batch"])
    assert calls == [0.6] * 200
    assert acts == {"relu", "gelu"} and batches == {32, 64}


def test_custom_mutations_in_a_run():
    driver = PBTDriver(6, 6, mutations={"lr": hp_loguniform(1e-3, 1e-2)})
    checked = []

    def on_decision(sim, mid, epoch, score, actions):
        for a in actions:
            if isinstance(a, Exploit):   # the source's parameters, only lr redrawn
                source = driver.params(a.source)
                assert {k: v for k, v in a.params.items() if k != "lr"} == {k: v for k, v in source.items() if k != "lr"}
                assert 1e-3 <= a.params["lr"] <= 1e-2
                checked.append(a)

    sim = simulate(driver, SPACE, num_workers=2, curve=curve_for(2), on_decision=on_decision)
    assert checked and len(checked) == len(driver.exploits())
    assert all(m["status"] == "ended" for m in sim.models.values())


# --------------------------------------------------------------------------- determinism and state

def test_same_seed_same_decisions_and_restore_mid_run_continues_identically():
    make = lambda: PBTDriver(6, 8, 2, 0.34)
    a = simulate(make(), SPACE, seed=3, curve=curve_for(3))
    assert a.log == simulate(make(), SPACE, seed=3, curve=curve_for(3)).log
    for at in (1, 9, len(a.log) // 2, len(a.log) - 1):
        assert simulate(make(), SPACE, seed=3, restore_at=at, make_driver=make, curve=curve_for(3)).log == a.log
    b = simulate(make(), SPACE, seed=4, curve=curve_for(3))
    assert b.log != a.log


def test_state_is_json_with_the_lineage():
    driver = PBTDriver(6, 6)
    simulate(driver, SPACE, curve=curve_for(5))
    state = driver.get_state()
    assert json.loads(json.dumps(state, allow_nan=False)) == state
    assert state["exploits"] == driver.exploits() and driver.exploits()


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("args", [(8, 6, 1, 0.25), (5, 9, 3, 0.5), (2, 3, 1, 0.25)])
def test_driver_contract(args, mode):
    metric = "val_loss" if mode == "min" else "val_accuracy"
    report = check_driver_contract(lambda: PBTDriver(*args), SPACE, metric=metric, mode=mode)
    assert report.num_suggested == args[0]
