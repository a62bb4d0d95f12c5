"""Search-driver actions and the one set of rules they must follow.  Pure.

A driver answers ``on_epoch_end`` (and, for a failure that unblocks paused models,
``on_model_failed``) with actions.  :func:`normalise` turns an answer into a list of actions
that each name their model; :func:`check_actions` enforces every rule on that list before the
engine acts on any of it.  The engine, resume and the driver contract suite
(:mod:`cerebro.testing`) all go through these two functions, so there is one definition of a
legal decision.

The rules:

1. every action is a :class:`Continue`, :class:`Stop`, :class:`Pause` or :class:`Exploit`;
   one with ``model_id=None`` means the model whose epoch ended (there must be one);
2. it names a known model, which is either the model whose epoch just ended or a paused one;
3. a model is named at most once per decision, except that an ``Exploit(target, ...)`` must be
   followed, in the same list, by a ``Continue`` or ``Pause`` of ``target``;
4. an Exploit's source is a known model that has not failed and has completed >= 1 epoch,
   and its params are a dict naming exactly the search space's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Union

from ..errors import CerebroError

__all__ = ["Continue", "Stop", "Pause", "Exploit", "Action", "Decision", "ActionError", "target_of", "normalise",
           "check_actions"]


@dataclass(frozen=True)
class Continue:
    """Train the model for another epoch.

    ``model_id=None`` means the model whose epoch just ended; naming another model that is
    paused (awaiting) resumes it (an ASHA/Hyperband promotion).
    """

    model_id: str | None = None


@dataclass(frozen=True)
class Stop:
    """End the model now (at this epoch boundary).  ``reason="finished"`` marks a model that
    completed its planned epochs (status "completed"); any other reason is an early stop."""

    reason: str = ""
    model_id: str | None = None


@dataclass(frozen=True)
class Pause:
    """Keep the model at its epoch boundary, holding no worker, until a later Continue/Stop
    (from any later driver call) names it."""

    model_id: str | None = None


@dataclass(frozen=True)
class Exploit:
    """PBT's exploit step: ``target`` (paused at an epoch boundary, or the model whose epoch
    just ended) takes a copy of ``source``'s latest committed epoch-boundary state (weights and
    optimizer state) and continues with ``params``.  The engine rebuilds the estimator for
    ``params`` (it must keep the architecture) and sets the new learning rate on the copied
    optimizer state in place.  Follow it with Continue(target) or Pause(target) in the same list."""

    target: str
    source: str
    params: dict


Action = Union[Continue, Stop, Pause, Exploit]
Decision = Action  # what on_epoch_end returns: one action or a list of them


class ActionError(CerebroError):
    """A driver's decision breaks one of the rules of this module."""


def target_of(action: Action) -> str | None:
    """The model an action is about."""
    return action.target if isinstance(action, Exploit) else action.model_id


def normalise(decision: Any, reporting: str | None) -> list[Action]:
    """The driver's answer as a list of actions that each name their model (rule 1).

    ``reporting`` is the model whose epoch ended, or None for the answer to a failure notice.
    ``None`` and ``[]`` are an empty decision.  Raises :class:`ActionError`.
    """
    if decision is None:
        return []
    actions = list(decision) if isinstance(decision, (list, tuple)) else [decision]
    out: list[Action] = []
    for a in actions:
        if not isinstance(a, (Continue, Pause, Stop, Exploit)):
            raise ActionError(f"{a!r} is not a Continue, Stop, Pause or Exploit")
        if not isinstance(a, Exploit) and a.model_id is None:
            if reporting is None:
                raise ActionError(f"{a!r} must name its model (no model's epoch ended)")
            a = Stop(a.reason, reporting) if isinstance(a, Stop) else type(a)(reporting)
        out.append(a)
    return out


def check_actions(
    actions: Iterable[Action],
    reporting: str | None,
    statuses: Mapping[str, str],
    epochs: Mapping[str, int],
    param_names: Iterable[str] | None = None,
) -> None:
    """Enforce rules 2-4 on normalised ``actions``; raise :class:`ActionError` on the first break.

    ``statuses`` maps every known model to its status before the decision (the reporting model
    may have any), ``epochs`` to its completed epochs counting the epoch that just ended, and
    ``param_names`` are the search space's parameters (None: not checked).
    """
    names = None if param_names is None else set(param_names)
    named: dict[str, int] = {}
    awaiting_follow: set[str] = set()
    for a in actions:
        target = target_of(a)
        if target not in statuses:
            raise ActionError(f"{a!r} names an unknown model {target!r}")
        if target != reporting and statuses[target] != "paused":
            raise ActionError(f"{a!r} names {target}, which is {statuses[target]}; only the model whose epoch ended "
                              "or a paused model may be acted on")
        if isinstance(a, Exploit):
            if a.source not in statuses or statuses[a.source] == "failed" or epochs.get(a.source, 0) < 1:
                raise ActionError(f"{a!r}: Exploit source {a.source!r} is unknown, failed or has no epoch")
            if not isinstance(a.params, Mapping):
                raise ActionError(f"{a!r}: Exploit params must be a dict")
            if names is not None and set(a.params) != names:
                raise ActionError(f"{a!r}: Exploit params name {sorted(a.params)}, the search space has {sorted(names)}")
            if target in awaiting_follow or named.get(target):
                raise ActionError(f"{a!r}: {target} is named more than once")
            awaiting_follow.add(target)
            continue
        if target in awaiting_follow:
            if isinstance(a, Stop):
                raise ActionError(f"{a!r}: an Exploit of {target} must be followed by Continue or Pause, not Stop")
            awaiting_follow.discard(target)
            named[target] = 1
            continue
        named[target] = named.get(target, 0) + 1
        if named[target] > 1:
            raise ActionError(f"{a!r}: {target} is named more than once")
        if isinstance(a, Stop) and not isinstance(a.reason, str):
            raise ActionError(f"{a!r}: Stop reason must be a string")
    if awaiting_follow:
        raise ActionError(f"Exploit of {sorted(awaiting_follow)} not followed by Continue/Pause")
