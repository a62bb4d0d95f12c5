"""Deltas between JSON values, and the journal's driver-state payloads built from them.  Pure.

A search driver's state (``driver.get_state()``) goes into every record that may change it.
Some states hold the whole search history (TPE's holds every trial), so journaling them in
full makes the journal grow quadratically with the number of models.  A record can instead
carry a *delta* from the previous record's state, with a full *snapshot* now and then.

Values
    Everything here works on JSON values as ``json.loads`` returns them: ``dict`` (str keys),
    ``list``, ``str``, ``int``, ``float``, ``bool`` and ``None``.  Callers first pass a state
    through :func:`normalise` (a JSON round trip: tuples become lists, keys become strings).
    Two values are the same (:func:`same`) only if their types are: ``1``, ``1.0`` and
    ``True`` all differ, and so do ``0.0`` and ``-0.0``; ``nan`` is the same as ``nan``.  Dict
    key order is not part of a value (the journal writes sorted keys anyway).

Deltas (:func:`diff`, :func:`patch`)
    A delta is itself JSON.  A delta that is not a list is a scalar: the new value is that
    scalar.  Otherwise its first item is a tag:

    ``["="]``                      unchanged (only ever the whole delta of equal values);
    ``["v", value]``               the new value is ``value``;
    ``["d", changes]``             a dict: ``changes`` maps each changed or added key to its
    ``["d", changes, removed]``    delta (an added key's delta is a value delta); the keys in
                                   the list ``removed`` are dropped; other keys are unchanged;
    ``["l", keep, changes, tail]`` a list: the first ``keep`` items of the old list, where
                                   ``changes`` is a list of ``[index, delta]`` pairs for those
                                   that changed, followed by the new items ``tail``.

    :func:`diff` writes a dict or list delta only where it is smaller than the new value's
    JSON; else the value itself.  :func:`patch` checks that a delta fits the value it is
    applied to and raises ``ValueError`` when it does not.

Payloads (:func:`payload`, :func:`restore`)
    A record's ``state`` field holds a payload, which is either

    * a full snapshot: the state itself, exactly as ``get_state()`` returned it (so journals
      written before deltas existed read unchanged), or
    * a delta: ``{"__delta__": 1, "d": <delta from the previous record's state>}``.

    The top-level key ``"__delta__"`` is therefore reserved: no driver state may have it
    (:func:`payload` refuses such a state).  The ``1`` is the format's version.

    Policy: :func:`payload` writes a snapshot when there is no previous state, when the delta's
    JSON is not at most half the state's, or when ``count`` (the number of payloads written
    before this one, e.g. since the run started) is a multiple of the snapshot interval;
    otherwise the delta.  The interval is :data:`SNAPSHOT_EVERY`, doubled for as long as that
    many deltas of the current size would weigh less than one snapshot: a state that keeps
    growing (TPE's) is snapshotted more and more rarely, so the journal grows about linearly
    with the number of records instead of quadratically, and the deltas a state depends on
    weigh about as much as one or two snapshots.  Correctness never depends on ``count`` (after
    a resume the caller may restart it from 0).  :func:`restore` turns a payload back
    into the full state, given the state the previous record restored to.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["DELTA_KEY", "DELTA_VERSION", "SNAPSHOT_EVERY", "normalise", "same", "diff", "patch",
           "payload", "restore", "is_delta"]

DELTA_KEY = "__delta__"   # the reserved top-level key marking a delta payload
DELTA_VERSION = 1
SNAPSHOT_EVERY = 64       # the shortest snapshot interval, in payloads (see the policy above)

_UNCHANGED = ["="]
_MISSING = object()       # the old value of a key that a dict delta adds


def normalise(value: Any) -> Any:
    """``value`` as JSON reads it back (a fresh copy): tuples become lists, keys strings."""
    return json.loads(json.dumps(value, allow_nan=True))


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def _size(value: Any) -> int:
    """The length of ``value``'s compact JSON text (what the sizes of deltas are compared by)."""
    return len(_ENCODER.encode(value))


def _size_at_most(value: Any, limit: int) -> bool:
    """Whether ``_size(value) <= limit``, encoding no more of ``value`` than that takes."""
    size = 0
    for chunk in _ENCODER.iterencode(value):
        size += len(chunk)
        if size > limit:
            return False
    return True


def same(a: Any, b: Any) -> bool:
    """Type-exact equality of JSON values: ``1``, ``1.0`` and ``True`` differ, ``0.0`` and
    ``-0.0`` differ, ``nan`` equals ``nan``; dict key order does not matter."""
    return _diff(a, b) is _SAME


def _value_delta(new: Any) -> Any:
    """The delta "the new value is ``new``": the scalar itself, or ``["v", new]``."""
    return ["v", new] if type(new) in (dict, list) else new


def diff(old: Any, new: Any) -> Any:
    """A delta that :func:`patch` turns ``old`` into ``new`` with (``["="]`` if they are the same)."""
    delta = _diff(old, new)
    return list(_UNCHANGED) if delta is _SAME else delta


_SAME = object()                        # what _diff returns for values that are the same
_PLAIN = (str, int, bool, type(None))   # types whose == is exact among values of one type


def _diff(old: Any, new: Any) -> Any:
    """The delta from ``old`` to ``new``, or ``_SAME`` if they are the same."""
    kind = type(new)
    if type(old) is not kind:
        return _value_delta(new)
    if kind is dict:
        # Each changed key's delta is at most its value's size (give or take a tag), so a dict
        # delta is never much larger than the dict: no size check.
        changes = {}
        for k, b in new.items():
            if k not in old:
                changes[k] = _value_delta(b)
                continue
            a = old[k]
            if a is b or (a == b and type(a) is type(b) and (type(a) in _PLAIN or (type(a) is float and a))):
                continue              # the common case without a call (a nonzero float has one sign)
            d = _diff(a, b)
            if d is not _SAME:
                changes[k] = d
        removed = [k for k in old if k not in new]
        if removed:
            return ["d", changes, removed]
        return ["d", changes] if changes else _SAME
    if kind is list:
        keep = min(len(old), len(new))
        changes = []
        for i in range(keep):
            a, b = old[i], new[i]
            if a is b or (a == b and type(a) is type(b) and (type(a) in _PLAIN or (type(a) is float and a))):
                continue              # the common case without a call (a nonzero float has one sign)
            d = _diff(a, b)
            if d is not _SAME:
                changes.append([i, d])
        if not changes and len(old) == len(new):
            return _SAME
        delta = ["l", keep, changes, new[keep:]]
        size = _size(delta)
        # the list's JSON is at least 2 * len(new) + 1 characters: compare only when it may be
        # smaller than the delta (+ 6: the ["v",] around a whole value)
        if size < 2 * len(new) + 7 or size < _size(new) + 6:
            return delta
        return ["v", new]
    if kind is float:
        if old != old or new != new:   # nan
            return _SAME if old != old and new != new else new
        return _SAME if old == new and math.copysign(1.0, old) == math.copysign(1.0, new) else new
    return _SAME if old == new else new


def _copy(value: Any) -> Any:
    """A copy of a JSON value sharing no dict or list with it."""
    if type(value) is dict:
        return {k: _copy(v) for k, v in value.items()}
    if type(value) is list:
        return [_copy(v) for v in value]
    return value


def patch(old: Any, delta: Any) -> Any:
    """``old`` with ``delta`` applied, as a fresh value (``old`` and ``delta`` are not changed,
    and the result shares no dict or list with them).  ``ValueError`` if the delta does not
    fit ``old`` (e.g. it was made from another value) or is malformed."""
    return _patch(old, delta)


def _patch(old: Any, delta: Any) -> Any:
    if type(delta) is dict:
        raise ValueError(f"malformed delta: a dict {delta!r} (a dict value is written ['v', value])")
    if type(delta) is not list:
        return delta
    tag = delta[0] if delta else None
    if tag == "=" and len(delta) == 1:
        if old is _MISSING:
            raise ValueError("delta ['='] for a key that the old dict does not have")
        return _copy(old)
    if tag == "v" and len(delta) == 2:
        return _copy(delta[1])
    if tag == "d" and len(delta) in (2, 3) and type(delta[1]) is dict:
        if type(old) is not dict:
            raise ValueError(f"dict delta applied to a {type(old).__name__}, not a dict")
        changes = delta[1]
        removed = delta[2] if len(delta) == 3 else []
        if type(removed) is not list or any(type(k) is not str or k not in old or k in changes for k in removed):
            raise ValueError(f"dict delta removes keys {removed!r} that the old dict does not have")
        gone = set(removed)
        out = {k: _patch(v, changes[k]) if k in changes else _copy(v) for k, v in old.items() if k not in gone}
        for k, d in changes.items():
            if k not in old:
                out[k] = _patch(_MISSING, d)
        return out
    if tag == "l" and len(delta) == 4 and type(delta[2]) is list and type(delta[3]) is list:
        keep, changes, tail = delta[1], delta[2], delta[3]
        if type(old) is not list:
            raise ValueError(f"list delta applied to a {type(old).__name__}, not a list")
        if type(keep) is not int or not 0 <= keep <= len(old):
            raise ValueError(f"list delta keeps {keep!r} items of a list of {len(old)}")
        out = [_copy(v) for v in old[:keep]]
        for change in changes:
            if type(change) is not list or len(change) != 2 or type(change[0]) is not int \
                    or not 0 <= change[0] < keep:
                raise ValueError(f"list delta change {change!r} is not an [index < {keep}, delta] pair")
            out[change[0]] = _patch(old[change[0]], change[1])
        out.extend(_copy(v) for v in tail)
        return out
    raise ValueError(f"malformed delta {delta!r}")


def is_delta(payload: Any) -> bool:
    """Whether a record's state payload is a delta (else it is a full state)."""
    return type(payload) is dict and DELTA_KEY in payload


def payload(previous: Any, state: dict, count: int) -> dict:
    """What a record journals for the driver's new ``state`` (normalised JSON), given the full
    state of the previous record (``None`` if none) and the number ``count`` of payloads written
    before this one: ``state`` itself (a snapshot) or ``{"__delta__": 1, "d": delta}`` (see the
    module docstring for the policy).  A snapshot is ``state`` itself, not a copy.
    ``ValueError`` if ``state`` has the reserved top-level key ``"__delta__"``."""
    if type(state) is dict and DELTA_KEY in state:
        raise ValueError(f"a driver state may not have the top-level key {DELTA_KEY!r} (it marks delta payloads)")
    if previous is None or count == 0:
        return state
    out = {DELTA_KEY: DELTA_VERSION, "d": diff(previous, state)}
    delta_size = _size(out)
    limit = 2 * delta_size - 1                # a state this small: the delta is not clearly smaller
    if count % SNAPSHOT_EVERY == 0:
        # count is a multiple of the interval iff it is one of SNAPSHOT_EVERY * 2**m, the largest
        # power-of-two multiple of SNAPSHOT_EVERY dividing it, iff that many deltas weigh at
        # least the state (the interval is the smallest such multiple)
        k = count // SNAPSHOT_EVERY
        limit = max(limit, SNAPSHOT_EVERY * (k & -k) * delta_size)
    return state if _size_at_most(state, limit) else out


def restore(previous: Any, payload: Any) -> Any:
    """The full state a record's payload stands for, as a fresh value, given the full state
    the previous record restored to (``None`` if none; needed only for a delta)."""
    if not is_delta(payload):
        return _copy(payload)
    if not same(payload[DELTA_KEY], DELTA_VERSION):
        raise ValueError(f"unknown driver-state delta version {payload[DELTA_KEY]!r} (this one reads {DELTA_VERSION})")
    if set(payload) != {DELTA_KEY, "d"}:
        raise ValueError(f"malformed driver-state delta payload with keys {sorted(payload)}")
    if previous is None:
        raise ValueError("a driver-state delta has no previous state to apply to")
    return patch(previous, payload["d"])
