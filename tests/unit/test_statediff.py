"""cerebro.core.statediff: exact deltas of JSON values and the driver-state payloads of records."""

from __future__ import annotations

import copy
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cerebro.core import statediff
from cerebro.core.statediff import DELTA_KEY, diff, is_delta, normalise, patch, payload, restore, same


def exact(x, y) -> bool:
    """Type-exact equality, written independently of statediff.same: 1, 1.0 and True differ,
    0.0 and -0.0 differ, nan equals nan (repr tells floats apart bit for bit, nan aside)."""
    if type(x) is not type(y):
        return False
    if type(x) is dict:
        return x.keys() == y.keys() and all(exact(x[k], y[k]) for k in x)
    if type(x) is list:
        return len(x) == len(y) and all(exact(a, b) for a, b in zip(x, y))
    if type(x) is float:
        return repr(x) == repr(y)
    return x == y


def journaled(value):
    """``value`` as the journal writes and reads it back (sorted keys, NaN allowed)."""
    return json.loads(json.dumps(value, sort_keys=True, allow_nan=True))


# ---------------------------------------------------------------- random JSON values

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-3, 3), st.integers(-2**70, 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1.0, -1.0]),
    st.text(max_size=8), st.sampled_from(["", "é", "日本", "\u0000", "\U0001f600", "__delta__"]),
)
keys = st.one_of(st.text(max_size=5), st.sampled_from(["a", "b", "c", "é", "__delta__", "v", "d", "l", "="]))
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=6), st.dictionaries(keys, children, max_size=6)),
    max_leaves=30,
)


def twin(v):
    """A value equal to ``v`` under ``==`` but of another type (or sign): what a lax diff would miss."""
    if type(v) is bool:
        return int(v)
    if type(v) is int:
        return float(v) if abs(v) < 2**53 else v + 1
    if type(v) is float:
        if math.isnan(v) or math.isinf(v):
            return 0.0
        return -v if v == 0 else (int(v) if v.is_integer() else v * 2)
    if v is None:
        return False
    return v


def mutate(data, v, depth=0):
    """A random edit of ``v``: most of it kept, so that deltas are small and nested."""
    what = data.draw(st.integers(0, 9))
    if what == 0:
        return data.draw(json_values)
    if what == 1:
        return twin(v)
    if what == 2 or depth > 4:
        return copy.deepcopy(v)
    if type(v) is dict:
        out = {}
        for k, x in v.items():
            action = data.draw(st.integers(0, 3))
            if action == 0:
                continue                          # removed
            out[k] = mutate(data, x, depth + 1) if action == 1 else copy.deepcopy(x)
        out.update(data.draw(st.dictionaries(keys, json_values, max_size=2)))
        return out
    if type(v) is list:
        out = [mutate(data, x, depth + 1) if data.draw(st.booleans()) else copy.deepcopy(x) for x in v]
        cut = data.draw(st.integers(0, len(out)))
        if data.draw(st.booleans()):
            out = out[:cut]
        return out + data.draw(st.lists(json_values, max_size=3))
    return data.draw(json_values) if data.draw(st.booleans()) else twin(v)


# ---------------------------------------------------------------- properties

@settings(max_examples=400, deadline=None)
@given(json_values, json_values)
def test_patch_of_diff_gives_the_new_value_for_unrelated_values(a, b):
    d = diff(a, b)
    assert exact(patch(a, d), b)
    assert exact(patch(a, journaled(d)), b)          # the delta survives the journal's JSON


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_patch_of_diff_gives_the_new_value_for_edited_values(data):
    a = data.draw(json_values)
    b = mutate(data, a)
    d = diff(a, b)
    assert exact(patch(a, d), b)
    assert exact(patch(journaled(a), journaled(d)), b)
    assert same(a, b) == exact(a, b)
    assert (d == ["="]) == exact(a, b)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_patch_never_mutates_nor_aliases_its_inputs(data):
    a = data.draw(json_values)
    b = mutate(data, a)
    d = diff(a, b)
    a_before, d_before = copy.deepcopy(a), copy.deepcopy(d)
    out = patch(a, d)
    assert exact(a, a_before) and exact(d, d_before)
    # the result shares no container with old or delta: scribbling on it changes neither
    scribble(out)
    assert exact(a, a_before) and exact(d, d_before)


def scribble(value):
    if type(value) is dict:
        for v in value.values():
            scribble(v)
        value["\x00scribbled"] = 1
    elif type(value) is list:
        for v in value:
            scribble(v)
        value.append("scribbled")


@settings(max_examples=200, deadline=None)
@given(st.data(), st.integers(0, 200))
def test_a_chain_of_states_restores_exactly_through_payloads(data, start_count):
    states = [data.draw(st.dictionaries(keys.filter(lambda k: k != DELTA_KEY), json_values, max_size=6))]
    for _ in range(data.draw(st.integers(1, 12))):
        nxt = mutate(data, states[-1])
        if type(nxt) is not dict:
            nxt = {"wrapped": nxt}
        nxt.pop(DELTA_KEY, None)
        states.append(nxt)
    previous_written, previous_restored = None, None
    for i, state in enumerate(states):
        p = journaled(payload(previous_written, state, start_count + i))
        got = restore(previous_restored, p)
        assert exact(got, state)
        previous_written, previous_restored = state, got


# ---------------------------------------------------------------- examples

@pytest.mark.parametrize("old, new", [
    (1, 1.0), (1.0, 1), (True, 1), (1, True), (False, 0), (0, None), (0.0, -0.0), (-0.0, 0.0),
    (float("nan"), 0.0), (0.0, float("nan")), (float("inf"), float("-inf")), ("a", "é"),
    ([1, 2, 3], [1, 2.0, 3]), ([True], [1]), ({"a": 1}, {"a": 1.0}), ({"a": [1]}, {"a": [[1]]}),
    (2**80, 2**80 + 1), ([1] * 50, [1] * 50 + [True]), ({"a": 1, "b": 2}, {"b": 2}), ([], {}), ({}, []),
    ("日本", "日本語"), ([[1, [2, {"x": None}]]], [[1, [2, {"x": False}]]]),
])
def test_type_exact_examples(old, new):
    old, new = normalise(old), normalise(new)
    assert not same(old, new)
    d = diff(old, new)
    assert d != ["="]
    assert exact(patch(old, d), new) and exact(patch(old, journaled(d)), new)


def test_nan_is_unchanged_and_kept():
    old = {"loss": [float("nan"), 1.0], "x": float("nan")}
    assert diff(old, normalise(old)) == ["="]
    out = patch(old, ["="])
    assert math.isnan(out["x"]) and math.isnan(out["loss"][0])


def test_deltas_are_compact_for_appends_and_small_edits():
    old = {"tid": list(range(100)), "loss": [0.5] * 100, "n": 100, "gone": "x"}
    new = {"tid": list(range(101)), "loss": [0.5] * 99 + [0.25, 0.75], "n": 101}
    d = diff(old, new)
    assert d == ["d", {"tid": ["l", 100, [], [100]], "loss": ["l", 100, [[99, 0.25]], [0.75]], "n": 101}, ["gone"]]
    # an unrelated list is replaced whole
    assert diff([1, 2, 3], [4, 5, 6]) == ["v", [4, 5, 6]]


def test_patch_refuses_deltas_that_do_not_fit():
    with pytest.raises(ValueError):
        patch([1, 2], ["l", 3, [], []])              # keeps more than there is
    with pytest.raises(ValueError):
        patch([1, 2], ["l", 1, [[1, 5]], []])        # changes an item it does not keep
    with pytest.raises(ValueError):
        patch({"a": 1}, ["d", {}, ["b"]])            # removes a missing key
    with pytest.raises(ValueError):
        patch({"a": 1}, ["d", {"b": ["="]}])         # "unchanged" for a key that is new
    with pytest.raises(ValueError):
        patch([1], ["d", {}])                        # dict delta on a list
    with pytest.raises(ValueError):
        patch(1, ["?"])
    with pytest.raises(ValueError):
        patch(1, {"a": 1})


def test_payload_format_and_policy():
    big = {"rng": {"state": 1}, "trials": list(range(1000))}
    nxt = {"rng": {"state": 2}, "trials": list(range(1001))}
    assert payload(None, big, 5) is big                     # nothing to diff against: snapshot
    assert payload(big, nxt, 0) is nxt                      # count 0: snapshot
    p = payload(big, nxt, 1)
    assert is_delta(p) and set(p) == {DELTA_KEY, "d"} and p[DELTA_KEY] == 1
    assert exact(restore(big, p), nxt)
    # a delta not clearly smaller than the state: snapshot
    small, other = {"a": [1, 2]}, {"a": [3, 4]}
    assert payload(small, other, 1) is other
    # deltas a tenth of the state: a snapshot every SNAPSHOT_EVERY payloads
    every = statediff.SNAPSHOT_EVERY
    a, b = {"pad": "a" * 1000, "s": "b" * 100}, {"pad": "a" * 1000, "s": "c" * 100}
    assert payload(a, b, every) is b and payload(a, b, 3 * every) is b
    assert is_delta(payload(a, b, every + 1)) and is_delta(payload(a, b, every - 1))
    # tiny deltas of a large state: the interval doubles until its deltas outweigh a snapshot
    huge = {"trials": list(range(10000))}
    more = {"trials": list(range(10001))}
    delta_size = len(json.dumps(payload(huge, more, 1), separators=(",", ":")))
    interval = every
    while interval * delta_size < len(json.dumps(more, separators=(",", ":"))):
        interval *= 2
    assert interval > every
    assert is_delta(payload(huge, more, every)) and is_delta(payload(huge, more, interval // 2))
    assert payload(huge, more, interval) is more
    # a full payload (e.g. from a journal written before deltas existed) restores as itself
    assert exact(restore(None, journaled(big)), big) and exact(restore(nxt, big), big)
    with pytest.raises(ValueError):
        payload(None, {DELTA_KEY: 1}, 0)
    with pytest.raises(ValueError):
        restore(None, p)                                    # a delta needs a previous state
    with pytest.raises(ValueError):
        restore(big, {DELTA_KEY: 2, "d": ["="]})            # unknown version
    with pytest.raises(ValueError):
        restore(big, {DELTA_KEY: True, "d": ["="]})         # True is not the version 1


# ---------------------------------------------------------------- the real TPE driver

def simulate_tpe(num_models, fail_every=0):
    """Drive a TPEDriver the way the engine does (two workers); the normalised state after
    every call."""
    from cerebro.core.seeds import driver_rng
    from cerebro.drivers.tpe import TPEDriver
    from cerebro.space import hp_uniform

    driver = TPEDriver(num_models=num_models, num_epochs=1)
    driver.bind({"x": hp_uniform(0, 1)}, driver_rng(0), 2, "val_loss")
    states = [normalise(driver.get_state())]
    active, n = [], 0
    while True:
        configs = driver.suggest(len(active))
        states.append(normalise(driver.get_state()))
        if configs is None:
            break
        for params in configs:
            if fail_every and n % fail_every == fail_every - 1:
                driver.on_model_failed(None, params, "boom")    # never built
            else:
                model_id = f"m{n}"
                driver.on_model_added(model_id, params)
                active.append((model_id, params))
            n += 1
            states.append(normalise(driver.get_state()))
        if active:
            model_id, params = active.pop(0)
            loss = float("nan") if n % 37 == 0 else (params["x"] - 0.3) ** 2
            driver.on_epoch_end(model_id, 1, {"val_loss": loss})
            states.append(normalise(driver.get_state()))
    assert n == num_models
    return states


def journal_bytes(states):
    """Bytes of journaling every state in full, and of journaling the payloads; checks that
    the payloads, read back as the journal would, restore every state exactly."""
    full = sum(len(json.dumps(s, sort_keys=True)) for s in states)
    total, previous, restored = 0, None, None
    for i, state in enumerate(states):
        text = json.dumps(payload(previous, state, i), sort_keys=True, allow_nan=True)
        total += len(text)
        restored = restore(restored, json.loads(text))
        assert exact(restored, state), f"state {i} restored wrong"
        previous = state
    return full, total


@pytest.fixture(scope="module")
def tpe_bytes():
    return {n: journal_bytes(simulate_tpe(n)) for n in (100, 200)}


def test_tpe_state_chain_restores_exactly_and_is_small(tpe_bytes):
    full, deltas = tpe_bytes[200]
    print(f"TPE 200 models: full states {full} bytes, payloads {deltas} bytes ({deltas / full:.3%})")
    assert deltas * 10 <= full


def test_tpe_payload_bytes_grow_roughly_linearly(tpe_bytes):
    (full100, d100), (full200, d200) = tpe_bytes[100], tpe_bytes[200]
    print(f"TPE payload bytes 100 -> 200 models: x{d200 / d100:.2f} (full states x{full200 / full100:.2f})")
    assert d200 / d100 < 2.6
    assert full200 / full100 > 3.5      # while full states grow quadratically


def test_tpe_with_failures_and_a_resumed_driver():
    """Failed trials leave the state (lists shrink in the middle); a driver given a state
    restored from the payload chain has exactly that state."""
    from cerebro.core.seeds import driver_rng
    from cerebro.drivers.tpe import TPEDriver
    from cerebro.space import hp_uniform

    states = simulate_tpe(60, fail_every=7)
    journal_bytes(states)
    previous = restored = None
    for i, state in enumerate(states[:100]):
        restored = restore(restored, journaled(payload(previous, state, i)))
        previous = state
    driver = TPEDriver(num_models=60, num_epochs=1)
    driver.bind({"x": hp_uniform(0, 1)}, driver_rng(0), 2, "val_loss")
    driver.set_state(restored)
    assert exact(normalise(driver.get_state()), states[99])
