"""Search-space dimensions (``hp_*``): frozen dataclasses that validate at construction.

Every random draw takes a ``numpy.random.Generator`` from the caller; nothing here touches a
global random state (the original Cerebro seeded every dimension with the same constant, so
dimensions were perfectly correlated).  ``low`` and ``high`` of the log-uniform dimensions
are the values themselves (1e-4, 1e-1), never exponents.  The q-dimensions give ints when
their ``low``, ``high`` and ``q`` are ints (a batch size, a layer width), floats otherwise.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from cerebro._checks import is_int, is_number, param_error

__all__ = [
    "Dimension", "Choice", "Uniform", "LogUniform", "QUniform", "QLogUniform", "RandInt",
    "hp_choice", "hp_uniform", "hp_loguniform", "hp_quniform", "hp_qloguniform", "hp_randint",
    "validate_space", "grid", "sample", "quantize",
]


def _finite(kind: str, name: str, value: Any) -> float:
    """A bound of dimension ``kind``: TypeError for a non-number, ValueError if not finite."""
    if not is_number(value):
        raise param_error(kind, name, "a number", value, TypeError)
    if not math.isfinite(float(value)):
        raise param_error(kind, name, "a finite number", value)
    return float(value)


def _check_range(kind: str, low: float, high: float) -> None:
    if not low < high:
        raise ValueError(f"{kind} needs low < high. Got low={low!r}, high={high!r}.")


class Dimension:
    """One dimension of a search space."""

    def sample(self, rng: np.random.Generator) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def is_continuous(self) -> bool:
        return not isinstance(self, Choice)


@dataclass(frozen=True)
class Choice(Dimension):
    values: tuple

    def __post_init__(self) -> None:
        if len(self.values) == 0:
            raise ValueError("hp_choice needs at least one value. Got an empty sequence.")

    def sample(self, rng: np.random.Generator) -> Any:
        return self.values[int(rng.integers(len(self.values)))]


@dataclass(frozen=True)
class Uniform(Dimension):
    low: float
    high: float

    def __post_init__(self) -> None:
        _check_range("hp_uniform", _finite("hp_uniform", "low", self.low), _finite("hp_uniform", "high", self.high))

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))


@dataclass(frozen=True)
class LogUniform(Dimension):
    low: float
    high: float

    def __post_init__(self) -> None:
        low, high = _finite("hp_loguniform", "low", self.low), _finite("hp_loguniform", "high", self.high)
        if low <= 0 or high <= 0:
            raise ValueError(
                "hp_loguniform needs positive bounds (they are the values, e.g. 1e-4 and 1e-1, "
                f"not exponents). Got low={self.low!r}, high={self.high!r}."
            )
        _check_range("hp_loguniform", low, high)

    def sample(self, rng: np.random.Generator) -> float:
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))


def _check_q(kind: str, q: Any) -> float:
    q = _finite(kind, "q", q)
    if q <= 0:
        raise ValueError(f"{kind} needs q > 0. Got q={q!r}.")
    return q


def _check_has_step(kind: str, low: float, high: float, q: float) -> None:
    if math.ceil(low / q - 1e-9) * q > high + 1e-12:
        raise ValueError(f"{kind} has no multiple of q={q!r} between low={low!r} and high={high!r}.")


def quantize(value: float, q: float, low: float, high: float) -> float:
    """``value`` rounded to a multiple of ``q`` inside [low, high] (the q-dimensions' values).

    hyperopt's definition, round(x / q) * q, moved by whole steps of ``q`` back inside the
    bounds so that they are honoured.
    """
    out = round(value / q) * q
    while out < low - 1e-12:
        out += q
    while out > high + 1e-12:
        out -= q
    return float(out)


class _Quantized(Dimension):
    """What the q-dimensions share: values on the grid of multiples of ``q`` inside the bounds,
    ints when ``low``, ``high`` and ``q`` are all ints (``hp_quniform(16, 256, 16)`` gives 64,
    ``hp_quniform(0, 1, 0.25)`` gives 0.75)."""

    low: float
    high: float
    q: float

    @property
    def integral(self) -> bool:
        """Whether this dimension's values are ints (``low``, ``high`` and ``q`` are all ints)."""
        return is_int(self.low) and is_int(self.high) and is_int(self.q)

    def snap(self, value: float) -> int | float:
        """``value`` moved onto this dimension's grid (:func:`quantize`), as an int when the
        dimension is integral: how every driver turns a number (a draw, hyperopt's float, a PBT
        perturbation) into a value of this dimension."""
        out = quantize(float(value), self.q, self.low, self.high)
        return int(round(out)) if self.integral else out


@dataclass(frozen=True)
class QUniform(_Quantized):
    low: float
    high: float
    q: float

    def __post_init__(self) -> None:
        _check_range("hp_quniform", _finite("hp_quniform", "low", self.low), _finite("hp_quniform", "high", self.high))
        _check_has_step("hp_quniform", self.low, self.high, _check_q("hp_quniform", self.q))

    def sample(self, rng: np.random.Generator) -> int | float:
        return self.snap(rng.uniform(self.low, self.high))


@dataclass(frozen=True)
class QLogUniform(_Quantized):
    low: float
    high: float
    q: float

    def __post_init__(self) -> None:
        low, high = _finite("hp_qloguniform", "low", self.low), _finite("hp_qloguniform", "high", self.high)
        if low <= 0 or high <= 0:
            raise ValueError(
                f"hp_qloguniform needs positive bounds (values, not exponents). Got low={self.low!r}, high={self.high!r}."
            )
        _check_range("hp_qloguniform", low, high)
        _check_has_step("hp_qloguniform", low, high, _check_q("hp_qloguniform", self.q))

    def sample(self, rng: np.random.Generator) -> int | float:
        return self.snap(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))


@dataclass(frozen=True)
class RandInt(Dimension):
    """An integer in [low, high) (hyperopt's ``randint`` convention)."""

    low: int
    high: int

    def __post_init__(self) -> None:
        for name, v in (("low", self.low), ("high", self.high)):
            if not is_int(v):
                raise param_error("hp_randint", name, "an int", v, TypeError)
        _check_range("hp_randint", self.low, self.high)

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.low, self.high))


def hp_choice(values) -> Choice:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"hp_choice takes a sequence of values. Got {values!r} instead.")
    return Choice(tuple(values))


def hp_uniform(low, high) -> Uniform:
    return Uniform(low, high)


def hp_loguniform(low, high) -> LogUniform:
    return LogUniform(low, high)


def hp_quniform(low, high, q) -> QUniform:
    """A multiple of ``q`` drawn uniformly from [low, high]: an int when ``low``, ``high`` and ``q``
    are ints (``hp_quniform(16, 256, 16)`` gives e.g. 64), else a float."""
    return QUniform(low, high, q)


def hp_qloguniform(low, high, q) -> QLogUniform:
    """A multiple of ``q`` drawn log-uniformly from [low, high] (the values, not exponents): an
    int when ``low``, ``high`` and ``q`` are ints, else a float."""
    return QLogUniform(low, high, q)


def hp_randint(low, high) -> RandInt:
    return RandInt(low, high)


def validate_space(space: Any, *, owner: str, grid_only: bool = False) -> dict[str, Dimension]:
    """Check a search space given by a user; return it as a plain dict in sorted-key order."""
    if not isinstance(space, Mapping):
        raise TypeError(f"The 'search_space' parameter of {owner} must be a dict of name -> hp_* dimension. Got {type(space).__name__} instead.")
    if not space:
        raise ValueError(f"The 'search_space' parameter of {owner} is empty: give at least one dimension.")
    out: dict[str, Dimension] = {}
    for name in sorted(space):
        dim = space[name]
        if not isinstance(name, str) or not name:
            raise TypeError(f"Search space keys must be non-empty strings. Got {name!r}.")
        if not isinstance(dim, Dimension):
            raise TypeError(
                f"Search space dimension {name!r} of {owner} must be an hp_* dimension (e.g. hp_choice([...])). Got {dim!r}."
            )
        if grid_only and not isinstance(dim, Choice):
            raise ValueError(
                f"{owner} accepts only hp_choice dimensions; {name!r} is {type(dim).__name__}. "
                "Use RandomSearch or TPESearch for continuous dimensions."
            )
        if isinstance(dim, Choice):
            for value in dim.values:
                problem = _not_json_data(value)
                if problem is not None:
                    raise TypeError(
                        f"Search space dimension {name!r} of {owner}: every hp_choice value must be JSON data "
                        f"(None, bool, int, float, str, or lists and str-keyed dicts of them), because the "
                        f"experiment journals every configuration to resume it; {problem}. Choose by name "
                        f"(e.g. hp_choice(['relu', 'tanh'])) and map the name to the object in estimator_gen_fn."
                    )
        out[name] = dim
    return out


def _not_json_data(value: Any) -> str | None:
    """Why ``value`` cannot be journaled exactly as JSON, or None if it can."""
    if value is None or isinstance(value, (bool, int, float, str, np.bool_, np.integer, np.floating)):
        return None
    if isinstance(value, (list, tuple)):
        return next((p for p in map(_not_json_data, value) if p is not None), None)
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"the dict {value!r} has a key {key!r} of type {type(key).__name__}, not str"
            problem = _not_json_data(item)
            if problem is not None:
                return problem
        return None
    return f"{value!r} is of type {type(value).__module__}.{type(value).__qualname__}"


def grid(space: Mapping[str, Choice]) -> list[dict[str, Any]]:
    """The product of every hp_choice dimension, keys in sorted order, last key varying fastest."""
    names = sorted(space)
    return [dict(zip(names, combo)) for combo in itertools.product(*(space[n].values for n in names))]


def sample(space: Mapping[str, Dimension], rng: np.random.Generator) -> dict[str, Any]:
    """One configuration, each dimension drawn in sorted-key order from the same generator."""
    return {name: space[name].sample(rng) for name in sorted(space)}
