"""MedianStopping and EarlyStoppingDriver (pure, no TensorFlow)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cerebro.drivers.base import Continue, Exploit, Pause, SearchDriver, Stop
from cerebro.drivers.early_stopping import EARLY_STOP_REASON, EarlyStoppingDriver, MedianStopping
from cerebro.drivers.grid import GridDriver, RandomDriver
from cerebro.space import hp_choice, hp_loguniform, hp_uniform
from cerebro.testing import check_driver_contract

GRID = {"a": hp_choice([1, 2, 3]), "b": hp_choice(["x", "y", "z"])}


# ---------------------------------------------------------------- MedianStopping

@pytest.mark.parametrize("kwargs, exc, match", [
    ({"grace_epochs": -1}, ValueError, "grace_epochs"),
    ({"min_models": 0}, ValueError, "min_models"),
    ({"grace_epochs": 1.5}, TypeError, "grace_epochs"),
    ({"min_models": "3"}, TypeError, "min_models"),
    ({"min_models": True}, TypeError, "min_models"),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        MedianStopping(**kwargs)


def test_defaults():
    s = MedianStopping()
    assert (s.grace_epochs, s.min_models) == (1, 3)


def lockstep(stopper, curves, mode="min"):
    """Feed curves epoch by epoch, models in order; return {model: epoch it was stopped at}."""
    stopped = {}
    for epoch in range(1, max(len(c) for c in curves.values()) + 1):
        for m, curve in curves.items():
            if m in stopped or epoch > len(curve):
                continue
            if stopper.should_stop(m, epoch, curve[epoch - 1], mode):
                stopped[m] = epoch
    return stopped


def curves(n=6, epochs=6, worst_factor=3.0):
    # model k: loss = (1 + k) * 0.9**epoch; the last is far worse
    out = {f"m{k}": [(1 + k) * 0.9 ** e for e in range(1, epochs + 1)] for k in range(n)}
    out[f"m{n - 1}"] = [worst_factor * v for v in out[f"m{n - 1}"]]
    return out


def test_stops_clearly_worse_curves_and_keeps_the_best():
    stopped = lockstep(MedianStopping(grace_epochs=1, min_models=3), curves())
    assert "m0" not in stopped and "m1" not in stopped
    assert stopped["m5"] == 2       # the first epoch after the grace period
    assert stopped.get("m4") == 2


def test_never_stops_during_grace_epochs():
    stopped = lockstep(MedianStopping(grace_epochs=3, min_models=3), curves())
    assert stopped and min(stopped.values()) == 4


def test_needs_min_models_others_and_never_crashes_with_few():
    s = MedianStopping(grace_epochs=0, min_models=3)
    assert s.should_stop("only", 1, 100.0, "min") is False        # no other model at all
    assert s.should_stop("a", 1, 1.0, "min") is False
    assert s.should_stop("b", 1, 1.0, "min") is False
    assert s.should_stop("bad", 1, 100.0, "min") is True           # 3 others at epoch 1
    # only 2 others reported epoch 2
    s2 = MedianStopping(grace_epochs=0, min_models=3)
    for m, v in (("a", 1.0), ("b", 1.0), ("bad", 100.0)):
        assert s2.should_stop(m, 1, v, "min") is False
    assert s2.should_stop("a", 2, 1.0, "min") is False
    assert s2.should_stop("b", 2, 1.0, "min") is False
    assert s2.should_stop("bad", 2, 100.0, "min") is False


def test_models_behind_count_with_their_best_so_far_and_models_ahead_do_not_count():
    s = MedianStopping(grace_epochs=0, min_models=2)
    for e in (1, 2, 3):
        s.should_stop("fast1", e, 0.1, "min")
        s.should_stop("fast2", e, 0.1, "min")
    assert s.should_stop("slow", 1, 5.0, "min") is True
    # a and b are behind (epoch 1 and 2) but count with what they reached: c at epoch 2 is judged
    s = MedianStopping(grace_epochs=0, min_models=2)
    s.should_stop("a", 1, 0.1, "min")
    s.should_stop("b", 2, 0.1, "min")
    assert s.should_stop("c", 2, 5.0, "min") is True
    # a model only known at a LATER epoch than the one judged does not count
    s = MedianStopping(grace_epochs=0, min_models=2)
    s.should_stop("a", 1, 0.1, "min")
    s.should_stop("b", 3, 0.1, "min")
    assert s.should_stop("c", 2, 5.0, "min") is False


def test_mode_max_vs_min():
    others = {"a": 0.9, "b": 0.8, "c": 0.7}
    for mode, expected in (("max", {0.1: True, 0.95: False}), ("min", {0.1: False, 0.95: True})):
        for value, stop in expected.items():
            s = MedianStopping(grace_epochs=0, min_models=3)
            for m, v in others.items():
                s.should_stop(m, 1, v, mode)
            assert s.should_stop("x", 1, value, mode) is stop, (mode, value)


def test_uses_the_best_value_so_far():
    s = MedianStopping(grace_epochs=0, min_models=3)
    for m in ("a", "b", "c"):
        s.should_stop(m, 1, 1.0, "min")
    assert s.should_stop("x", 1, 0.1, "min") is False
    for m in ("a", "b", "c"):
        s.should_stop(m, 2, 0.9, "min")
    assert s.should_stop("x", 2, 5.0, "min") is False      # its best so far (0.1) beats the median 0.9


def test_equal_to_the_median_is_not_worse():
    s = MedianStopping(grace_epochs=0, min_models=3)
    for m, v in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        s.should_stop(m, 1, v, "min")
    assert s.should_stop("x", 1, 2.0, "min") is False
    assert s.should_stop("y", 1, 2.5, "min") is True       # median of a, b, c, x = 2.0


@pytest.mark.parametrize("mode", ["min", "max"])
def test_nan_counts_as_worst(mode):
    s = MedianStopping(grace_epochs=0, min_models=3)
    for m, v in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        s.should_stop(m, 1, v, mode)
    assert s.should_stop("diverged", 1, math.nan, mode) is True
    # NaNs among the others do not crash and count as worst
    s = MedianStopping(grace_epochs=0, min_models=3)
    for m, v in (("a", math.nan), ("b", math.nan), ("c", 1.0)):
        s.should_stop(m, 1, v, mode)
    assert s.should_stop("ok", 1, 2.0, mode) is False


def test_infinite_values_do_not_crash():
    s = MedianStopping(grace_epochs=0, min_models=2)
    s.should_stop("a", 1, math.inf, "min")
    s.should_stop("b", 1, -math.inf, "min")
    assert s.should_stop("c", 1, 1.0, "min") is False     # median is NaN: keep going


def test_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        MedianStopping().should_stop("a", 1, 1.0, "maximise")


def test_state_roundtrip():
    rng = np.random.default_rng(0)
    data = [(f"m{k}", e, float(v)) for e in range(1, 6) for k in range(8)
            for v in [rng.normal(1 + k / 4, 0.3)]]
    data[5] = (data[5][0], data[5][1], math.nan)
    data[9] = (data[9][0], data[9][1], math.inf)
    ref = MedianStopping(grace_epochs=1, min_models=3)
    for m, e, v in data[:20]:
        ref.should_stop(m, e, v, "min")
    text = json.dumps(ref.get_state(), allow_nan=False)
    fresh = MedianStopping(grace_epochs=1, min_models=3)
    fresh.set_state(json.loads(text))
    assert fresh.get_state() == ref.get_state()
    assert [fresh.should_stop(m, e, v, "min") for m, e, v in data[20:]] == \
           [ref.should_stop(m, e, v, "min") for m, e, v in data[20:]]


# ---------------------------------------------------------------- EarlyStoppingDriver

def test_contract_grid_min():
    report = check_driver_contract(lambda: EarlyStoppingDriver(GridDriver(6), MedianStopping(1, 2)), GRID)
    assert report.early_stops > 0 and report.statuses["completed"] >= 1


def test_contract_grid_max():
    report = check_driver_contract(lambda: EarlyStoppingDriver(GridDriver(5), MedianStopping(2, 3)), GRID,
                                   metric="val_accuracy", mode="max", num_workers=3, seed=4)
    assert report.early_stops > 0


def test_contract_random():
    space = {"lr": hp_loguniform(1e-4, 1e-1), "d": hp_uniform(0, 1)}
    check_driver_contract(lambda: EarlyStoppingDriver(RandomDriver(12, 4), MedianStopping(0, 3)), space, seed=2)


def test_contract_plain_grid_and_random():
    """The existing drivers meet the contract too."""
    check_driver_contract(lambda: GridDriver(3), GRID)
    space = {"lr": hp_loguniform(1e-4, 1e-1), "a": hp_choice([1, 2])}
    check_driver_contract(lambda: RandomDriver(6, 2), space, mode="max", metric="val_accuracy")


class Scripted(SearchDriver):
    """An inner driver that answers what a test tells it to, and records what it hears."""

    def __init__(self, answers=None):
        super().__init__()
        self.answers = answers or {}
        self.heard: list = []

    def suggest(self, num_active):
        self.heard.append(("suggest", num_active))
        return [{"a": 1}]

    def on_epoch_end(self, model_id, epoch, metrics):
        self.heard.append(("epoch", model_id, epoch))
        return self.answers.get((model_id, epoch), Continue())

    def on_model_added(self, model_id, params):
        self.heard.append(("added", model_id))

    def on_model_failed(self, model_id, params, error):
        self.heard.append(("failed", model_id))

    def on_model_stopped(self, model_id, epoch, metrics, reason):
        self.heard.append(("stopped", model_id, epoch, reason))

    def total_sub_epochs(self, num_partitions):
        return 7 * num_partitions

    def get_state(self):
        return {**super().get_state(), "heard": len(self.heard)}


def wrapped(answers=None, grace=0, min_models=2, metric="val_loss", mode="min"):
    inner = Scripted(answers)
    d = EarlyStoppingDriver(inner, MedianStopping(grace, min_models))
    d.bind({"a": hp_choice([1])}, np.random.default_rng(0), 3, metric, mode)
    return d, inner


def feed_good(d, epoch=1, models=("g1", "g2")):
    for m in models:
        d.on_epoch_end(m, epoch, {"val_loss": 0.1, "val_accuracy": 0.9})


def test_delegation():
    d, inner = wrapped(metric="val_accuracy", mode="max")
    assert (inner.metric, inner.mode, inner.num_workers) == ("val_accuracy", "max", 3)
    assert (d.metric, d.mode) == ("val_accuracy", "max")
    assert d.suggest(2) == [{"a": 1}]
    d.on_model_added("m", {"a": 1})
    d.on_model_failed(None, {"a": 1}, "boom")
    assert inner.heard == [("suggest", 2), ("added", "m"), ("failed", None)]
    assert d.total_sub_epochs(2) == 14
    state = d.get_state()
    assert set(state) >= {"inner", "stopper"} and state["inner"]["heard"] == 3
    json.dumps(state)


def test_replaces_continue_with_stop_and_tells_the_inner_driver():
    d, inner = wrapped()
    feed_good(d)
    decision = d.on_epoch_end("bad", 1, {"val_loss": 9.0})
    assert decision == Stop(EARLY_STOP_REASON)
    assert inner.heard[-1] == ("stopped", "bad", 1, EARLY_STOP_REASON)


def test_keeps_good_models_and_inner_stops():
    d, _ = wrapped({("bad", 1): Stop("finished")})
    feed_good(d)
    assert d.on_epoch_end("good", 1, {"val_loss": 0.05}) == Continue()
    assert d.on_epoch_end("bad", 1, {"val_loss": 9.0}) == Stop("finished")   # inner's own stop stays


def test_replaces_pause_and_leaves_other_models_alone():
    d, _ = wrapped({("bad", 1): [Pause(), Continue("other")]})
    feed_good(d)
    assert d.on_epoch_end("bad", 1, {"val_loss": 9.0}) == [Stop(EARLY_STOP_REASON), Continue("other")]


def test_named_continue_of_this_model():
    d, _ = wrapped({("bad", 1): [Continue("other"), Continue("bad")]})
    feed_good(d)
    assert d.on_epoch_end("bad", 1, {"val_loss": 9.0}) == [Continue("other"), Stop(EARLY_STOP_REASON, "bad")]


def test_implicit_pause_becomes_a_stop():
    d, _ = wrapped({("bad", 1): [Continue("other")]})
    feed_good(d)
    assert d.on_epoch_end("bad", 1, {"val_loss": 9.0}) == [Continue("other"), Stop(EARLY_STOP_REASON, "bad")]


def test_exploited_model_is_not_stopped():
    answer = [Exploit("bad", "g1", {"a": 1}), Continue("bad")]
    d, _ = wrapped({("bad", 1): answer})
    feed_good(d)
    assert d.on_epoch_end("bad", 1, {"val_loss": 9.0}) == answer


def test_later_actions_about_an_early_stopped_model_are_dropped():
    # the inner driver pauses "bad" and later promotes it from another model's epoch end
    d, _ = wrapped({("bad", 1): Pause(), ("g1", 2): [Continue(), Continue("bad")],
                    ("g2", 2): [Exploit("bad", "g1", {"a": 1}), Continue("bad"), Continue()],
                    ("g2", 3): [Exploit("g2", "bad", {"a": 1}), Continue()]})
    feed_good(d)
    assert d.on_epoch_end("bad", 1, {"val_loss": 9.0}) == Stop(EARLY_STOP_REASON)
    assert d.on_epoch_end("g1", 2, {"val_loss": 0.1}) == [Continue()]
    assert d.on_epoch_end("g2", 2, {"val_loss": 0.1}) == [Continue()]
    # copying FROM an ended model is allowed
    assert d.on_epoch_end("g2", 3, {"val_loss": 0.1}) == [Exploit("g2", "bad", {"a": 1}), Continue()]


def test_reads_the_bound_metric_in_its_direction():
    d, _ = wrapped(metric="val_accuracy", mode="max")
    for m in ("g1", "g2"):
        d.on_epoch_end(m, 1, {"val_loss": 9.0, "val_accuracy": 0.9})
    assert d.on_epoch_end("x", 1, {"val_loss": 0.01, "val_accuracy": 0.1}) == Stop(EARLY_STOP_REASON)
    assert d.on_epoch_end("y", 1, {"val_loss": 9.0, "val_accuracy": 0.95}) == Continue()
    with pytest.raises(KeyError, match="val_accuracy"):
        d.on_epoch_end("z", 1, {"val_loss": 1.0})


def test_state_roundtrip_of_the_wrapper():
    d, _ = wrapped({("bad", 1): Pause(), ("g1", 2): [Continue(), Continue("bad")]})
    feed_good(d)
    d.on_epoch_end("bad", 1, {"val_loss": 9.0})
    state = json.loads(json.dumps(d.get_state(), allow_nan=False))
    fresh, _ = wrapped({("bad", 1): Pause(), ("g1", 2): [Continue(), Continue("bad")]})
    fresh.set_state(state)
    assert fresh.stopper.get_state() == d.stopper.get_state()
    assert fresh.on_epoch_end("g1", 2, {"val_loss": 0.1}) == [Continue()]   # still knows "bad" ended


def test_bad_wrapper_arguments():
    with pytest.raises(TypeError, match="inner"):
        EarlyStoppingDriver(object(), MedianStopping())
    with pytest.raises(TypeError, match="stopper"):
        EarlyStoppingDriver(GridDriver(2), object())


def test_actions_returned_by_the_stop_hook_join_the_decision():
    class Rung(Scripted):
        def on_model_stopped(self, model_id, epoch, metrics, reason):
            super().on_model_stopped(model_id, epoch, metrics, reason)
            return [Continue("waiting"), Stop("x", model_id)]   # the second names the stopped model: dropped

    inner = Rung()
    d = EarlyStoppingDriver(inner, MedianStopping(0, 2))
    d.bind({"a": hp_choice([1])}, np.random.default_rng(0), 2)
    feed_good(d)
    assert d.on_epoch_end("bad", 1, {"val_loss": 9.0}) == [Stop(EARLY_STOP_REASON), Continue("waiting")]


def test_failure_answers_pass_through():
    class Answering(Scripted):
        def on_model_failed(self, model_id, params, error):
            return [Continue("waiting")]

    d = EarlyStoppingDriver(Answering(), MedianStopping())
    d.bind({"a": hp_choice([1])}, np.random.default_rng(0), 2)
    assert d.on_model_failed("m", {"a": 1}, "boom") == [Continue("waiting")]


# ---------------------------------------------------------------- the contract catches broken drivers

class Broken(GridDriver):
    def __init__(self, how):
        super().__init__(2)
        self.how = how
        self.seen: list[str] = []
        self.ended: list[str] = []

    def on_model_added(self, model_id, params):
        self.seen.append(model_id)

    def suggest(self, num_active):
        out = super().suggest(num_active)
        if out is None and self.how == "stall":
            return []
        if out and self.how == "bad_config":
            out[0] = {**out[0], "a": 99}
        if out and self.how == "nondeterministic":
            out = list(out)
            np.random.default_rng().shuffle(out)    # a fresh, unseeded generator
        return out

    def on_epoch_end(self, model_id, epoch, metrics):
        if self.how == "continue_ended":
            if self.ended and self.ended[0] != model_id:
                return [Stop("finished"), Continue(self.ended[0])]
            if epoch == 2:
                self.ended.append(model_id)
        if self.how == "never_stops":
            return Continue()
        if self.how == "pause_forever":
            return Pause()
        return super().on_epoch_end(model_id, epoch, metrics)

    def get_state(self):
        state = super().get_state()
        if self.how == "not_json":
            state["x"] = {1, 2}
        if self.how == "forgets":
            state["proposed"] = False
        return state


@pytest.mark.parametrize("how, match", [
    ("bad_config", "outside"),
    ("nondeterministic", "same seed"),
    ("continue_ended", "which is completed"),
    ("never_stops", "max_steps"),
    ("pause_forever", "never ended"),
    ("stall", "stalled"),
    ("not_json", "JSON"),
    ("forgets", "set_state"),
])
def test_contract_catches(how, match):
    from cerebro.testing import ContractViolation

    with pytest.raises(ContractViolation, match=match):
        check_driver_contract(lambda: Broken(how), GRID, max_steps=200)
