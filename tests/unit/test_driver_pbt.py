"""PBTDriver: the synchronous barrier (members wait at each interval epoch and are ranked by
that epoch's scores, whatever the report order; failures and early stops leave it), exploit
(bottom quantile copies a top one), explore (bounds, x0.8/x1.2, p=0.25 resampling, custom
mutations), lineage, determinism and resuming mid-barrier, the driver contract, and the engine
applying a barrier released by a failure."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cerebro.core.actions import check_actions, normalise
from cerebro.drivers.base import Continue, Exploit, Pause, Stop
from cerebro.drivers.early_stopping import EARLY_STOP_REASON, EarlyStoppingDriver, MedianStopping
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


# --------------------------------------------------------------------------- the synchronous rule

def _badness(value, sign):
    """The independent ranking key: lower is better, no score (None/NaN/inf) the worst."""
    if value is None or not math.isfinite(value):
        return math.inf
    return sign * value


def check_release(driver, sign, scores, actions, epoch):
    """Check the actions of a barrier against an independent ranking (Ray Tune's quantile rule)
    of ``scores`` (member -> its score at ``epoch``, in population order).  Returns the exploits."""
    members = list(scores)
    position = {m: i for i, m in enumerate(members)}
    ranked = sorted(members, key=lambda m: (_badness(scores[m], sign), position[m]))
    k = min(math.ceil(len(ranked) * driver.quantile_fraction), len(ranked) // 2) if len(ranked) >= 2 else 0
    bottom, top = ranked[len(ranked) - k:], ranked[:k]
    exploits = [a for a in actions if isinstance(a, Exploit)]
    continued = [a.model_id for a in actions if isinstance(a, Continue)]
    assert sorted(continued) == sorted(members) and len(actions) == len(members) + len(exploits), actions
    assert sorted(e.target for e in exploits) == sorted(bottom), (scores, actions)
    if len(members) >= 2:   # the worst member at the barrier is always exploited
        worst = max(members, key=lambda m: (_badness(scores[m], sign), position[m]))
        assert worst in {e.target for e in exploits}
    for i, a in enumerate(actions):
        if isinstance(a, Exploit):
            assert a.source in top and a.source != a.target and actions[i + 1] == Continue(a.target)
            assert set(a.params) == set(driver.space)
    lineage = driver.exploits()[len(driver.exploits()) - len(exploits):]
    assert [(e["target"], e["source"], e["new_params"], e["epoch"]) for e in lineage] == \
        [(a.target, a.source, a.params, epoch) for a in exploits]
    return exploits


class Reference:
    """Checks every decision of a simulated run against the synchronous rule: pause at an
    interval epoch until every live member has reported it, then rank them by that epoch's
    scores (:func:`check_release`)."""

    def __init__(self, driver: PBTDriver, mode: str):
        self.driver, self.sign = driver, (1 if mode == "min" else -1)
        self.waiting: dict[str, float] = {}   # member -> its score at the barrier epoch
        self.barrier = None
        self.exploits = 0
        self.checked = 0

    def __call__(self, sim, mid, epoch, score, actions):
        d = self.driver
        if epoch >= d.num_epochs:
            assert actions == [Stop("finished", mid)]
            return
        if epoch % d.perturbation_interval:
            assert actions == [Continue(mid)]
            return
        assert self.barrier in (None, epoch)
        self.barrier = epoch
        self.waiting[mid] = score
        live = [m for m, rec in sim.models.items() if rec["status"] in ("running", "paused")]
        if set(live) - set(self.waiting):
            assert actions == [Pause(mid)]
            return
        self.checked += 1
        scores = {m: self.waiting[m] for m in live}   # population order
        self.exploits += len(check_release(d, self.sign, scores, actions, epoch))
        self.waiting, self.barrier = {}, None


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("pop,epochs,interval,q", [(8, 10, 1, 0.25), (10, 12, 3, 0.5), (5, 6, 2, 0.2), (2, 4, 1, 0.25)])
def test_bottom_quantile_exploits_a_top_quantile_model(mode, pop, epochs, interval, q):
    driver = PBTDriver(pop, epochs, interval, q)
    ref = Reference(driver, mode)
    sim = simulate(driver, SPACE, num_workers=3, mode=mode, curve=curve_for(1), on_decision=ref)
    assert ref.checked == (epochs - 1) // interval and ref.exploits > 0
    assert all(m["status"] == "ended" and m["reason"] == "finished" and m["epoch"] == epochs for m in sim.models.values())
    assert sim.epochs == pop * epochs
    # the lineage is the list of Exploit actions, in order, with old and new parameters
    lineage = driver.exploits()
    assert [(e["target"], e["source"], e["new_params"]) for e in lineage] == sim.exploits
    for e in lineage:
        assert e["epoch"] % interval == 0 and e["epoch"] < epochs and e["source_epoch"] == e["epoch"]
        assert set(e["old_params"]) == set(e["new_params"]) == set(SPACE)
        assert driver.params(e["target"]) is not None


def _population(n, **kwargs):
    d = bound({"x": hp_uniform(0, 1)}, population_size=n, **kwargs)
    configs = d.suggest(0)
    for k, c in enumerate(configs):
        d.on_model_added(f"m{k}", c)
    return d, configs


def test_members_wait_at_the_barrier_and_are_ranked_together():
    d, _ = _population(3)
    assert d.on_epoch_end("m0", 1, {"val_loss": 9.0}) == Pause()
    assert d.waiting() == (1, ["m0"])
    assert d.on_epoch_end("m1", 1, {"val_loss": 1.0}) == Pause()
    actions = d.on_epoch_end("m2", 1, {"val_loss": 5.0})
    assert actions == [Exploit("m0", "m1", actions[0].params), Continue("m0"), Continue("m1"), Continue("m2")]
    assert d.waiting() == (None, [])
    assert d.exploits()[0]["old_params"] != d.params("m0") == actions[0].params
    # between barriers (here interval 1: none) and at the last epoch
    d2, _ = _population(2, num_epochs=3, perturbation_interval=2)
    assert d2.on_epoch_end("m0", 1, {"val_loss": 1.0}) == Continue()
    assert d2.on_epoch_end("m0", 2, {"val_loss": 1.0}) == Pause()
    assert d2.on_epoch_end("m1", 1, {"val_loss": 1.0}) == Continue()
    actions = d2.on_epoch_end("m1", 2, {"val_loss": 1.0})   # a tie: the later-added one is worse
    assert actions == [Continue("m0"), Exploit("m1", "m0", actions[1].params), Continue("m1")]
    assert d2.on_epoch_end("m1", 3, {"val_loss": 1.0}) == Stop("finished")


def test_the_worst_member_cannot_escape_by_reporting_first():
    # The issue: m3 is the worst at epoch 2 but reports it first, when the others' latest scores
    # are their (worse) epoch-1 ones.  The asynchronous rule ranked it against those and let it go.
    d, _ = _population(4, quantile_fraction=0.25)
    for k, loss in enumerate([1.0, 1.1, 1.2, 1.3]):
        d.on_epoch_end(f"m{k}", 1, {"val_loss": loss})
    assert [e["target"] for e in d.exploits()] == ["m3"]
    assert d.on_epoch_end("m3", 2, {"val_loss": 0.9}) == Pause()    # better than every epoch-1 score
    for k, loss in enumerate([0.5, 0.6]):
        assert d.on_epoch_end(f"m{k}", 2, {"val_loss": loss}) == Pause()
    actions = d.on_epoch_end("m2", 2, {"val_loss": 0.7})
    assert [a.target for a in actions if isinstance(a, Exploit)] == ["m3"]
    assert d.exploits()[-1]["target_score"] == 0.9 and d.exploits()[-1]["source"] == "m0"


def test_a_lone_member_continues_without_an_exploit():
    d, configs = _population(3)
    d.on_model_failed("m1", configs[1], "boom")
    assert d.on_epoch_end("m0", 1, {"val_loss": 9.0}) == Pause()
    assert d.on_model_failed("m2", configs[2], "boom") == [Continue("m0")]   # one member: nobody to copy
    assert d.waiting() == (None, [])
    d, configs = _population(2)
    d.on_model_failed("m1", configs[1], "boom")
    assert d.on_epoch_end("m0", 1, {"val_loss": 9.0}) == [Continue("m0")]
    assert d.exploits() == []


def test_failed_models_are_never_sources():
    d, configs = _population(3, quantile_fraction=0.5)
    assert d.on_epoch_end("m0", 1, {"val_loss": 0.1}) == Pause()
    assert d.on_epoch_end("m1", 1, {"val_loss": 0.5}) == Pause()
    actions = d.on_epoch_end("m2", 1, {"val_loss": 0.9})
    assert actions[2] == Exploit("m2", "m0", actions[2].params)
    # m0, the best at epoch 1, fails in epoch 2: it is not ranked at epoch 2, never a source
    assert d.on_model_failed("m0", configs[0], "boom") == []
    assert d.on_epoch_end("m2", 2, {"val_loss": 0.2}) == Pause()
    actions = d.on_epoch_end("m1", 2, {"val_loss": 0.3})
    assert actions == [Exploit("m1", "m2", actions[0].params), Continue("m1"), Continue("m2")]


def test_a_failure_that_completes_the_barrier_releases_it():
    d, configs = _population(4)
    assert d.on_epoch_end("m0", 1, {"val_loss": 3.0}) == Pause()
    assert d.on_model_failed("m3", configs[3], "boom") == []          # m1 and m2 are still training
    assert d.on_epoch_end("m1", 1, {"val_loss": 1.0}) == Pause()
    actions = d.on_model_failed("m2", configs[2], "boom")              # the last one missing: release
    assert actions == [Exploit("m0", "m1", actions[0].params), Continue("m0"), Continue("m1")]
    assert d.waiting() == (None, [])
    # a failure mid-barrier releases the members that wait, the failed one never ranked
    d, configs = _population(4)
    for k, loss in enumerate([0.1, 3.0, 2.0]):
        assert d.on_epoch_end(f"m{k}", 1, {"val_loss": loss}) == Pause()
    actions = d.on_model_failed("m3", configs[3], "boom")
    assert actions == [Continue("m0"), Exploit("m1", "m0", actions[1].params), Continue("m1"), Continue("m2")]


def test_a_creation_failure_is_not_waited_for():
    d = bound({"x": hp_uniform(0, 1)}, population_size=3)
    configs = d.suggest(0)
    d.on_model_added("m0", configs[0])
    assert d.on_model_failed(None, configs[1], "cannot build") == []
    d.on_model_added("m2", configs[2])
    assert d.on_epoch_end("m0", 1, {"val_loss": 1.0}) == Pause()
    actions = d.on_epoch_end("m2", 1, {"val_loss": 2.0})
    assert actions == [Continue("m0"), Exploit("m2", "m0", actions[1].params), Continue("m2")]


def test_members_ended_by_a_wrapper_leave_the_barrier_unranked():
    d, configs = _population(3)
    assert d.on_epoch_end("m0", 1, {"val_loss": 9.0}) == Pause()        # the worst ...
    assert d.on_model_stopped("m0", 1, {"val_loss": 9.0}, EARLY_STOP_REASON) == []   # ... is ended: it leaves
    assert d.on_epoch_end("m1", 1, {"val_loss": 1.0}) == Pause()
    actions = d.on_epoch_end("m2", 1, {"val_loss": 5.0})
    assert actions == [Continue("m1"), Exploit("m2", "m1", actions[1].params), Continue("m2")]
    # a stop of the last member missing completes the barrier: the paused ones are released
    d, configs = _population(3)
    assert d.on_epoch_end("m0", 1, {"val_loss": 2.0}) == Pause()
    assert d.on_epoch_end("m1", 1, {"val_loss": 1.0}) == Pause()
    actions = d.on_model_stopped("m2", 1, {"val_loss": 0.1}, EARLY_STOP_REASON)
    assert actions == [Exploit("m0", "m1", actions[0].params), Continue("m0"), Continue("m1")]
    # through the wrapper: m2, stopped at a non-interval epoch, was the last member the barrier
    # of epoch 3 waited for; the release joins the wrapper's Stop of m2
    wrapped = EarlyStoppingDriver(PBTDriver(3, 6, perturbation_interval=3), MedianStopping(grace_epochs=1, min_models=2))
    wrapped.bind({"x": hp_uniform(0, 1)}, np.random.default_rng(0), 2)
    for k, c in enumerate(wrapped.suggest(0)):
        wrapped.on_model_added(f"m{k}", c)
    for m, losses in (("m0", [1.0, 0.9, 0.8]), ("m1", [2.0, 1.5, 1.4])):
        for e, loss in enumerate(losses, 1):
            assert wrapped.on_epoch_end(m, e, {"val_loss": loss}) == (Pause() if e == 3 else Continue())
    assert wrapped.on_epoch_end("m2", 1, {"val_loss": 5.0}) == Continue()
    actions = wrapped.on_epoch_end("m2", 2, {"val_loss": 4.0})          # worse than the median: stopped
    assert actions == [Stop(EARLY_STOP_REASON), Continue("m0"), Exploit("m1", "m0", actions[2].params), Continue("m1")]
    assert wrapped.inner.waiting() == (None, [])


# --------------------------------------------------------------------------- report orders

class Drive:
    """A pure run over an explicit report order: each step a running member (drawn with
    ``order_seed``) ends an epoch, or fails at it when (member, epoch) is in ``fail``.  Every
    answer is checked with the engine's own rules (:func:`cerebro.core.actions.check_actions`)
    and every barrier against :func:`check_release`.  Scores depend on the member, the epoch and
    its current parameters only, never on the order."""

    def __init__(self, n, num_epochs, interval, q, *, mode="min", score_seed=0, order_seed=0, fail=(),
                 restore_at=None, nan=0.1):
        self.space = {"x": hp_uniform(0, 1), "c": hp_choice(["a", "b"])}
        self.make = lambda: PBTDriver(n, num_epochs, interval, q)
        self.mode, self.sign, self.score_seed, self.nan = mode, (1 if mode == "min" else -1), score_seed, nan
        self.driver = self._bound(np.random.default_rng(score_seed))
        self.ids = [f"model_{k:03d}" for k in range(n)]
        for mid, config in zip(self.ids, self.driver.suggest(0)):
            self.driver.on_model_added(mid, config)
        self.status = {m: "running" for m in self.ids}
        self.epoch = {m: 0 for m in self.ids}
        self.scores: dict[tuple[str, int], float] = {}
        self.releases: list = []        # (epoch, [repr(action)]) per barrier, in order
        self.decisions: dict = {}       # (member, epoch) -> [repr(action)]
        self.mid_barrier_restores = 0
        order = np.random.default_rng([order_seed, 77])
        fail, steps = set(fail), 0
        while True:
            running = [m for m in self.ids if self.status[m] == "running"]
            if not running:
                break
            m = running[int(order.integers(len(running)))]
            e = self.epoch[m] + 1
            if (m, e) in fail:
                self.status[m] = "failed"
                self._answer(self.driver.on_model_failed(m, self.driver.params(m), "boom"), None, None)
            else:
                self.epoch[m] = e
                self.scores[(m, e)] = s = self._score(m, e)
                self._answer(self.driver.on_epoch_end(m, e, {"val_loss": s}), m, e)
            steps += 1
            if restore_at is not None and steps == restore_at:
                self.mid_barrier_restores += bool(self.driver.waiting()[1])
                text = json.dumps(self.driver.get_state(), sort_keys=True, allow_nan=False)
                fresh = self._bound(np.random.default_rng(score_seed + 999))
                fresh.set_state(json.loads(text))
                assert fresh.get_state() == self.driver.get_state()
                self.driver = fresh
        assert all(s in ("completed", "failed") for s in self.status.values()), self.status
        self.state = self.driver.get_state()

    def _bound(self, rng):
        d = self.make()
        d.bind(self.space, rng, 2, "val_loss", self.mode)
        return d

    def _score(self, m, e):
        g = np.random.default_rng([self.score_seed, int(m[-3:]), e])
        if g.random() < self.nan:
            return math.nan
        value = float(g.integers(0, 4)) + round(float(self.driver.params(m)["x"]), 1)   # ties are common
        return value if self.mode == "min" else -value

    def _answer(self, decision, reporting, epoch):
        statuses = dict(self.status)
        if reporting is not None:
            statuses[reporting] = "paused"
        actions = normalise(decision, reporting)
        check_actions(actions, reporting, statuses, dict(self.epoch), self.space)
        named = set()
        for a in actions:
            if not isinstance(a, Exploit):
                named.add(a.model_id)
                self.status[a.model_id] = {Continue: "running", Pause: "paused", Stop: "completed"}[type(a)]
        if reporting is not None and reporting not in named:
            self.status[reporting] = "paused"
        d = self.driver
        if reporting is None:
            release = actions                     # a failure may complete the barrier
        else:
            self.decisions[(reporting, epoch)] = [repr(a) for a in actions]
            release = []
            if epoch >= d.num_epochs:
                assert actions == [Stop("finished", reporting)]
            elif epoch % d.perturbation_interval:
                assert actions == [Continue(reporting)]
            elif actions != [Pause(reporting)]:
                release = actions                 # the last member the barrier waited for
        if release:
            members = [m for m in self.ids if m in {a.model_id for a in release if isinstance(a, Continue)}]
            epochs = {self.epoch[m] for m in members}
            assert len(epochs) == 1, (members, self.epoch)   # like with like: all at one epoch
            e = epochs.pop()
            assert e % d.perturbation_interval == 0 and e < d.num_epochs
            alive = [m for m in self.ids if self.status[m] in ("running", "paused")]
            assert members == alive, (members, alive)   # every live member waited, and all are released
            check_release(d, 1, {m: self._rank_value(m, e) for m in members}, release, e)
            self.releases.append((e, [repr(a) for a in release]))

    def _rank_value(self, m, e):
        s = self.scores[(m, e)]
        return s if self.mode == "min" else -s   # check_release ranks with sign 1: lower is better


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 9), num_epochs=st.integers(1, 6), interval=st.integers(1, 3),
       q=st.sampled_from([0.1, 0.25, 0.34, 0.5]), mode=st.sampled_from(["min", "max"]),
       score_seed=st.integers(0, 2**16), orders=st.lists(st.integers(0, 2**16), min_size=2, max_size=3, unique=True),
       fails=st.lists(st.tuples(st.integers(0, 8), st.integers(1, 6)), max_size=2))
def test_barrier_decisions_do_not_depend_on_the_report_order(n, num_epochs, interval, q, mode, score_seed, orders, fails):
    fail = [(f"model_{k:03d}", e) for k, e in fails if k < n]
    runs = [Drive(n, num_epochs, interval, q, mode=mode, score_seed=score_seed, order_seed=o, fail=fail) for o in orders]
    first = runs[0]
    assert len(first.releases) <= (num_epochs - 1) // interval
    for other in runs[1:]:
        assert other.releases == first.releases
        assert other.state == first.state   # the lineage, every member's params, the generator
        for key in set(first.decisions) & set(other.decisions):   # a member's own answers: Pause or the release
            if first.decisions[key][0].startswith("Stop") or key[1] % interval:
                assert first.decisions[key] == other.decisions[key]


@pytest.mark.parametrize("seed", range(40))
def test_the_worst_member_at_each_interval_is_exploited(seed):
    rng = np.random.default_rng(seed)
    n, interval = int(rng.integers(2, 10)), int(rng.integers(1, 3))
    run = Drive(n, 5, interval, float(rng.choice([0.2, 0.25, 0.5])), score_seed=seed, order_seed=seed + 1, nan=0.0)
    assert len(run.releases) == 4 // interval
    lineage = run.driver.exploits()
    for e, _ in run.releases:   # check_release already asserted it; here from the lineage alone
        members = [m for m in run.ids if (m, e) in run.scores]
        worst = max(members, key=lambda m: (run.scores[(m, e)], run.ids.index(m)))
        assert worst in {x["target"] for x in lineage if x["epoch"] == e}


@pytest.mark.parametrize("seed", range(6))
def test_restoring_mid_barrier_continues_exactly(seed):
    args = (6, 7, 2, 0.34)
    fail = [("model_002", 4)] if seed % 2 else []
    reference = Drive(*args, score_seed=seed, order_seed=seed, fail=fail)
    steps = sum(1 for _ in reference.decisions) + len(fail)
    mid = 0
    for at in range(1, steps):
        run = Drive(*args, score_seed=seed, order_seed=seed, fail=fail, restore_at=at)
        assert run.releases == reference.releases and run.decisions == reference.decisions, at
        assert run.state == reference.state, at
        mid += run.mid_barrier_restores
    assert mid > 5   # many of those restores happened with members paused at a barrier


def test_a_state_from_before_the_barrier_bookkeeping_still_loads():
    d, _ = _population(3)
    d.on_epoch_end("m0", 1, {"val_loss": 1.0})
    state = json.loads(json.dumps(d.get_state()))
    for key in ("waiting", "barrier", "order"):
        state.pop(key)
    fresh = bound({"x": hp_uniform(0, 1)}, population_size=3)
    fresh.set_state(state)
    assert fresh.waiting() == (None, []) and list(fresh.get_state()["models"]) == ["m0", "m1", "m2"]


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


def test_a_failure_that_completes_a_barrier_in_the_contract_run_exploits_paused_members():
    # In the contract's run the fifth model fails in its second epoch while the others wait at
    # the barrier of epoch 2: on_model_failed releases them, exploits included, and the contract
    # checks those actions with the engine's own rules and ExperimentState.exploit_plan.
    report = check_driver_contract(lambda: PBTDriver(8, 6, 1, 0.25), SPACE)
    answers = [entry[-1] for entry in report.log if entry[0] == "failed"]
    assert any(a[0] == "Exploit" for answer in answers for a in answer), answers


@pytest.mark.parametrize("args", [(8, 6, 1, 0.25), (6, 7, 2, 0.5)])
def test_driver_contract_under_early_stopping(args):
    report = check_driver_contract(lambda: EarlyStoppingDriver(PBTDriver(*args), MedianStopping(1, 2)), SPACE)
    assert report.early_stops > 0


# --------------------------------------------------------------------------- the engine

class _Runtime:
    """The engine tests' fake worker, with a validation loss per model (model_001 the worst)."""

    LOSS = {"model_000": 1.0, "model_001": 3.0, "model_002": 2.0}

    def __init__(self, store, worker):
        self.store, self.worker = store, worker

    def run(self, task):
        from cerebro.experiment.tasks import TaskResult

        state = self.store.files[task.checkpoint]
        if task.kind == "train":
            self.store.files[task.out] = f"{state}|{task.partition}"
            return TaskResult(10, {"loss": 1.0}, task.out)
        return TaskResult(10, {"loss": self.LOSS[task.model_id], "accuracy": 0.5})


def _pbt_engine(store, journal, records=None):
    from test_engine import FakeWorkspace

    from cerebro.backends.base import WorkerSetup
    from cerebro.backends.inline import InlineBackend
    from cerebro.core.mop import MOPScheduler
    from cerebro.experiment.engine import Engine

    holder = {}

    def pick(n):   # model_002 trains last: the others wait at each barrier before it reports
        queue = list(holder["backend"]._queue)
        return next((i for i, (_, _, task) in enumerate(queue) if task.model_id != "model_002"), 0)

    def faults(worker, task):   # model_002 fails in epoch 2, when the others already wait at it
        return "fail" if task.model_id == "model_002" and task.epoch == 2 else None

    backend = holder["backend"] = InlineBackend(2, runtime_factory=lambda setup, w: _Runtime(store, w), faults=faults,
                                                pick=pick)
    driver = PBTDriver(3, 3, 1, 0.25)
    driver.bind({"a": hp_choice([1, 2, 3])}, np.random.default_rng(5), 2)
    engine = Engine(backend=backend, setup=WorkerSetup(store, {"key": "k"}),
                    scheduler=MOPScheduler(2, mode="deterministic", seed=5, max_retries=0), driver=driver,
                    workspace=FakeWorkspace(store, journal=journal), seed=5)
    if records is not None:
        engine.restore(records)
    return engine, driver


def test_the_engine_applies_a_barrier_released_by_a_failure():
    from test_engine import FakeStore

    store, journal = FakeStore(), []
    engine, driver = _pbt_engine(store, journal)
    outcome = engine.run()
    assert {m: r.status for m, r in outcome.models.items()} == \
        {"model_000": "completed", "model_001": "completed", "model_002": "failed"}
    exploits = [(r["type"], a) for r in journal if r["type"] in ("epoch", "driver") for a in r["actions"]
                if a["action"] == "exploit"]
    # epoch 1: released by the last report; epoch 2: released by model_002's failure (a driver record)
    assert [(kind, a["model_id"], a["source"], a["epoch"]) for kind, a in exploits] == \
        [("epoch", "model_001", "model_000", 1), ("driver", "model_001", "model_000", 2)]
    assert [(e["target"], e["source"], e["epoch"]) for e in driver.exploits()] == \
        [("model_001", "model_000", 1), ("model_001", "model_000", 2)]
    released = exploits[1][1]
    # the paused target took the source's epoch-2 boundary state and its new parameters
    assert store.files[released["checkpoint"]].startswith(store.files[released["source_checkpoint"]])
    assert outcome.models["model_001"].params == driver.params("model_001") == released["params"]
    params = {h["epoch"]: h["__params"] for h in outcome.history if h["model_id"] == "model_001"}
    assert params[3] == released["params"] and params[2] == exploits[0][1]["params"]
    finals = {m: store.files[r.checkpoint] for m, r in outcome.models.items() if r.status == "completed"}
    # resuming from any prefix of the journal ends the same way (a prefix that ends between
    # the model_failed record and the driver record after it included)
    for cut in range(1, len(journal)):
        engine2, driver2 = _pbt_engine(store, [], records=journal[:cut])
        out2 = engine2.run()
        assert {m: store.files[r.checkpoint] for m, r in out2.models.items() if r.status == "completed"} == finals, cut
        assert driver2.exploits() == driver.exploits(), cut


def test_resuming_right_after_a_training_failure_tells_the_driver():
    from test_engine import FakeStore

    store, journal = FakeStore(), []
    _pbt_engine(store, journal)[0].run()
    cut = next(i + 1 for i, r in enumerate(journal) if r["type"] == "model_failed")
    assert journal[cut]["type"] == "driver"
    engine, driver = _pbt_engine(store, [], records=journal[:cut])
    outcome = engine.run()
    assert outcome.models["model_001"].status == "completed"
