"""The one argument-checking helper (scikit-learn ``_param_validation`` style).  Pure.

Every public constructor and ``fit`` validates its arguments at the boundary with these, so
every message has the same teaching shape::

    The 'num_epochs' parameter of GridSearch must be an int >= 1. Got 0 instead.

``bool`` is never accepted where a number is expected (it is an ``int`` subclass, but
``num_workers=True`` is always a mistake).  numpy integers and floats are accepted.
"""

from __future__ import annotations

import numbers
from typing import Any, Iterable

__all__ = [
    "is_int", "is_number", "param_error", "check_int", "check_number", "check_choice", "check_type",
    "check_columns",
]


def is_int(value: Any) -> bool:
    """An integral number that is not a bool (``int`` or a numpy integer)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def is_number(value: Any) -> bool:
    """A real number that is not a bool (``int``, ``float`` or a numpy scalar of either)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def param_error(owner: str, name: str, expected: str, value: Any, exc: type[Exception] = ValueError) -> Exception:
    """The standard error for a bad argument: names the parameter, its owner, what was expected
    and what was given.  Returned, not raised, so that callers write ``raise param_error(...)``."""
    return exc(f"The '{name}' parameter of {owner} must be {expected}. Got {value!r} instead.")


def check_int(owner: str, name: str, value: Any, minimum: int | None = 1, maximum: int | None = None,
              expected: str | None = None, type_error: type[Exception] = ValueError) -> int:
    """``value`` as an int, if it is one within [minimum, maximum]; else the standard ValueError
    (``type_error`` for a value that is not an int at all, e.g. TypeError where a caller's
    contract separates the two)."""
    if expected is None:
        if minimum is not None and maximum is not None:
            expected = f"an int in [{minimum}, {maximum}]"
        elif minimum is not None:
            expected = f"an int >= {minimum}"
        elif maximum is not None:
            expected = f"an int <= {maximum}"
        else:
            expected = "an int"
    if not is_int(value):
        raise param_error(owner, name, expected, value, type_error)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise param_error(owner, name, expected, value)
    return int(value)


def check_number(owner: str, name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, expected: str | None = None) -> float:
    """``value`` as a float, if it is a real number in the given (open or closed) bounds."""
    if expected is None:
        parts = []
        if low is not None:
            parts.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            parts.append(f"{'<' if high_open else '<='} {high:g}")
        expected = "a number" + (" " + " and ".join(parts) if parts else "")
    ok = is_number(value)
    if ok:
        v = float(value)
        if low is not None and (v <= low if low_open else v < low):
            ok = False
        if high is not None and (v >= high if high_open else v > high):
            ok = False
    if not ok:
        raise param_error(owner, name, expected, value)
    return float(value)


def check_choice(owner: str, name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices`` (compared with ``==``, bools kept apart from ints)."""
    choices = tuple(choices)
    if not any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in choices):
        listed = ", ".join(repr(c) for c in choices)
        raise param_error(owner, name, f"one of {listed}", value)
    return value


def check_type(owner: str, name: str, value: Any, types: type | tuple[type, ...], expected: str) -> Any:
    """``value`` if it is an instance of ``types``; else the standard TypeError."""
    if not isinstance(value, types):
        raise param_error(owner, name, expected, value, TypeError)
    return value


def check_columns(owner: str, name: str, value: Any) -> tuple[str, ...]:
    """A column name or a non-empty sequence of them, as a tuple."""
    if isinstance(value, str):
        value = (value,)
    try:
        cols = tuple(value)
    except TypeError:
        raise param_error(owner, name, "a column name or a sequence of them", value, TypeError) from None
    if not cols or not all(isinstance(c, str) and c for c in cols):
        raise param_error(owner, name, "a non-empty sequence of column names", value)
    return cols
