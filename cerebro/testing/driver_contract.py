"""The contract suite for search drivers (:class:`cerebro.SearchDriver`), shipped for users.

Usage, from any test module (pytest or not)::

    from cerebro.testing import check_driver_contract

    def test_my_driver_contract():
        report = check_driver_contract(lambda: MyDriver(...), {"lr": hp_loguniform(1e-4, 1e-1)})
        assert report.num_models > 0

``check_driver_contract(make_driver, space, *, num_workers=2, metric="val_loss", mode="min",
seed=0, max_steps=5000, failures=True, diverging=True) -> ContractReport`` simulates the engine
(:mod:`cerebro.experiment.engine`) with synthetic learning curves and raises ``AssertionError``
with a description of the first violation.  The simulation keeps its experiment state with the
engine's own reducer (:class:`cerebro.core.state.ExperimentState`, fed the same journal records)
and checks decisions with the engine's own rules (:func:`cerebro.core.actions.check_actions`),
so a driver that passes here is held to exactly what the engine enforces, plus the quality
checks below that only a contract test makes (parameters inside the space, determinism,
resumability).  It checks that

- ``suggest`` returns ``None`` or a list of configurations whose keys are exactly the space's,
  each value inside its dimension (hp_choice: one of the values; ranges: within [low, high],
  q-variants on their step; hp_randint: an int in [low, high));
- every action is a Continue/Stop/Pause/Exploit naming a known model that may be acted on:
  the model whose epoch just ended or a paused model (never an ended or failed one, never one
  that is training); a paused model is named at most once per decision, except that an
  ``Exploit(target, source, params)`` must be followed, in the same list, by a Continue or
  Pause of ``target``; an Exploit's source must be known, not failed, with >= 1 epoch done,
  and its params must be a valid configuration;
- the run terminates within ``max_steps`` epoch ends: every model ends (stopped or failed),
  nothing is left paused, and ``suggest`` eventually returns ``None``;
- ``total_sub_epochs(num_workers)``, when not None, is at least the sub-epochs actually run;
- ``get_state()`` is JSON-serialisable (``json.dumps`` without a ``default``) after every
  driver call;
- the same seed gives the same decisions (the run is done twice with fresh drivers);
- resuming works: at several call boundaries (right after the first ``suggest``, i.e. before
  its ``on_model_added`` calls, and at 1/4, 1/2 and 3/4 of the run) the driver is replaced by
  a fresh ``make_driver()``, bound with the same arguments and a new
  ``numpy.random.default_rng(seed)``, then given ``json.loads(json.dumps(old.get_state()))``
  (what the journal gives back); the rest of the run must be identical.

The simulated engine, like the real one: binds the driver with
``bind(space, numpy.random.default_rng(seed), num_workers, metric, mode)``; calls
``suggest(num_active)`` at the start, after every epoch end and failure, and whenever nothing
is training, where ``num_active`` counts the models that are training (paused ones are not
counted); calls ``on_model_added`` for each suggested configuration in order, except that
with ``failures=True`` the third configuration ever suggested fails to build
(``on_model_failed(None, params, error)``) and the fifth model fails while training its second
epoch (``on_model_failed(model_id, params, error)``); ``on_model_failed`` returns None in the
base interface, but when it returns actions (those a failure unblocks, e.g. a rung of paused
models), they are checked like an epoch's actions, each naming its model, and applied; runs every training model concurrently
(MOP), picking which one ends an epoch next with its own seeded generator; calls
``on_epoch_end(model_id, epoch, metrics)`` with ``epoch`` counted per model from 1; a model
that no action names is paused.  ``Exploit`` makes the target take the source's curve position
and its ``params``; the target's epoch count goes on.

Learning curves: ``loss = base(params) * 0.9 ** position + noise`` where ``base`` is a
deterministic hash of the configuration in [0.3, 2.3) and the noise is N(0, 0.01) from a
generator seeded by (seed, model index, epoch); with ``diverging=True`` one configuration in
13 (by hash) gives NaN from its second epoch on.  The metrics passed are ``train_loss``,
``val_loss``, ``val_accuracy`` (= 1 / (1 + loss)) and ``metric`` itself (the loss when
``mode="min"``, 1 / (1 + loss) when ``mode="max"``).
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ..core.actions import ActionError, Continue, Exploit, Pause, Stop, check_actions, normalise, target_of
from ..core.records import CreationFailure, DriverUpdate, EpochResult, ModelCreation, ModelFailure, Suggestion
from ..core.state import ExperimentState
from ..drivers.base import SearchDriver
from ..space import Choice, Dimension, LogUniform, QLogUniform, QUniform, RandInt, Uniform

__all__ = ["check_driver_contract", "check_config", "ContractReport", "ContractViolation"]

CREATION_FAILURE_INDEX = 2   # the third configuration ever suggested cannot be built
TRAINING_FAILURE_MODEL = 4   # the fifth model built fails ...
TRAINING_FAILURE_EPOCH = 2   # ... while training this epoch


class ContractViolation(AssertionError):
    pass


@dataclass
class ContractReport:
    """What the reference run did (returned by :func:`check_driver_contract`)."""

    log: list                     # every driver call and its answer, in order (JSON-able tuples)
    models: dict[str, dict]       # model id -> {"params", "status", "epochs", "index"}
    num_suggested: int            # configurations suggested (built or not)
    num_models: int               # models built
    num_epochs_run: int           # epoch ends in all
    max_training: int             # most models training at once
    num_calls: int                # driver calls in all
    statuses: dict[str, int] = field(default_factory=dict)   # final status -> count
    early_stops: int = 0          # Stop actions whose reason is not "finished"


def _num(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_config(config: Any, space: Mapping[str, Dimension], where: str = "configuration") -> None:
    """Assert that ``config`` is a valid configuration of ``space``."""
    if not isinstance(config, Mapping):
        raise ContractViolation(f"{where} is not a dict: {config!r}")
    if set(config) != set(space):
        raise ContractViolation(f"{where} has keys {sorted(config)}, the space has {sorted(space)}: {config!r}")
    for name, dim in space.items():
        v = config[name]
        bad = f"{where}: {name}={v!r} is outside {dim!r}"
        if isinstance(dim, Choice):
            if not any(v is c or (type(v) is type(c) and v == c) for c in dim.values):
                raise ContractViolation(bad)
            continue
        if isinstance(dim, RandInt):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not dim.low <= v < dim.high:
                raise ContractViolation(bad)
            continue
        if not _num(v) or not math.isfinite(float(v)):
            raise ContractViolation(bad)
        v = float(v)
        tol = 1e-9 * max(1.0, abs(dim.low), abs(dim.high))
        if not dim.low - tol <= v <= dim.high + tol:
            raise ContractViolation(bad)
        if isinstance(dim, (QUniform, QLogUniform)):
            steps = v / dim.q
            if abs(steps - round(steps)) > 1e-6 * max(1.0, abs(steps)):
                raise ContractViolation(f"{where}: {name}={v!r} is not a multiple of q={dim.q}")
        elif not isinstance(dim, (Uniform, LogUniform)):  # pragma: no cover - a new dimension type
            raise ContractViolation(f"{where}: unknown dimension type {type(dim).__name__}")


def _jsonable(x: Any) -> Any:
    """A comparable, JSON-able rendering of configurations and actions for the decision log."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (Continue, Stop, Pause)):
        return [type(x).__name__, x.model_id] + ([x.reason] if isinstance(x, Stop) else [])
    if isinstance(x, Exploit):
        return ["Exploit", x.target, x.source, _jsonable(x.params)]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return repr(float(x))   # exact, and NaN == NaN
    return x if isinstance(x, (str, int, bool, type(None))) else repr(x)


def _base(params: Mapping[str, Any]) -> tuple[float, int]:
    h = zlib.crc32(json.dumps(_jsonable(params), sort_keys=True).encode())
    return 0.3 + (h % 1000) / 500.0, h


@dataclass
class _Curve:
    """A simulated model's learning curve (what the real engine gets from training)."""

    base: float = 1.0
    position: int = 0
    diverges: bool = False


class _Sim:
    """A deterministic stand-in for the engine: one instance per run.  Its experiment state is
    an :class:`ExperimentState` fed the records the engine would journal."""

    def __init__(self, make_driver, space, num_workers, metric, mode, seed, max_steps, failures, diverging):
        self.make_driver, self.space, self.num_workers = make_driver, dict(space), num_workers
        self.metric, self.mode, self.seed, self.max_steps = metric, mode, seed, max_steps
        self.failures, self.diverging = failures, diverging
        self.order = np.random.default_rng([seed, 20200])   # which model ends an epoch next
        self.state = ExperimentState(metric=metric, mode=mode)
        self.curves: dict[str, _Curve] = {}
        self.log: list = []
        self.calls = 0
        self.swaps: dict[int, None] = {}
        self.epochs_run = 0
        self.built = 0
        self.max_training = 0
        self.early_stops = 0
        self.driver = self._new_driver()

    # -- the driver and its calls -------------------------------------------------------

    def _new_driver(self) -> SearchDriver:
        driver = self.make_driver()
        if not isinstance(driver, SearchDriver):
            raise ContractViolation(f"make_driver() returned {driver!r}, not a SearchDriver")
        driver.bind(self.space, np.random.default_rng(self.seed), self.num_workers, self.metric, self.mode)
        return driver

    def _driver_state(self) -> dict:
        try:
            # sort_keys and no NaN, as the engine's journal writes it: a driver must not depend on
            # the key order of its own state after a resume.
            return json.loads(json.dumps(self.driver.get_state(), sort_keys=True))
        except (TypeError, ValueError) as exc:
            raise ContractViolation(f"get_state() after driver call {self.calls + 1} is not JSON-serialisable: {exc}") from exc

    def _payload(self) -> dict:
        """The driver's state as the engine journals it: a snapshot or a delta (the reducer
        must rebuild exactly :meth:`_driver_state` from it)."""
        return self.state.driver_payload(self._driver_state())

    def _after_call(self) -> None:
        text = self._driver_state()
        self.calls += 1
        if self.calls in self.swaps:
            fresh = self._new_driver()
            fresh.set_state(text)
            self.driver = fresh
            self.log.append(("resumed", self.calls))

    # -- engine behaviour ---------------------------------------------------------------

    @property
    def exhausted(self) -> bool:
        return self.state.exhausted

    def training(self) -> list:
        return [m for m in self.state.models.values() if m.status == "running"]

    def fill(self) -> None:
        if self.state.exhausted:
            return
        num_active = self.state.active()
        proposals = self.driver.suggest(num_active)
        self.log.append(("suggest", num_active, _jsonable(proposals)))
        if proposals is None:
            self.state.apply(DriverUpdate(self._payload(), exhausted=True))
            self._after_call()
            return
        if not isinstance(proposals, list):
            raise ContractViolation(f"suggest({num_active}) returned {proposals!r}: expected a list or None")
        for i, config in enumerate(proposals):
            check_config(config, self.space, f"suggest({num_active})[{i}]")
        first = self.state.next_index
        if proposals:
            self.state.apply(Suggestion(first, [dict(c) for c in proposals], self._payload()))
        self._after_call()
        for offset, config in enumerate(proposals):
            index = first + offset
            model_id = f"model_{index:03d}"
            if self.failures and index == CREATION_FAILURE_INDEX:
                error = "Traceback (most recent call last):\nRuntimeError: simulated build failure"
                self.state.apply(CreationFailure(model_id, index, dict(config), error))
                answer = self.driver.on_model_failed(None, dict(config), error)
                self.log.append(("creation_failed", model_id, _jsonable(answer)))
                self._apply_notice(answer, f"on_model_failed(None, ...) -> {answer!r}")
            else:
                base, h = _base(config)
                self.curves[model_id] = _Curve(base=base, diverges=self.diverging and h % 13 == 0)
                self.built += 1
                self.driver.on_model_added(model_id, dict(config))
                self.state.apply(ModelCreation(model_id, index, dict(config), f"{model_id}/spec", f"{model_id}/init"))
                self.log.append(("added", model_id))
            self._after_call()

    def metrics(self, model_id: str, epoch: int) -> dict[str, float]:
        m, curve = self.state.models[model_id], self.curves[model_id]
        noise = float(np.random.default_rng([self.seed, m.index, epoch]).normal(0.0, 0.01))
        loss = curve.base * 0.9 ** curve.position + noise
        if curve.diverges and epoch >= 2:
            loss = math.nan
        out = {"train_loss": loss * 0.95, "val_loss": loss, "val_accuracy": 1.0 / (1.0 + loss)}
        out[self.metric] = loss if self.mode == "min" else 1.0 / (1.0 + loss)
        return out

    def step(self) -> None:
        running = self.training()
        self.max_training = max(self.max_training, len(running))
        m = running[int(self.order.integers(len(running)))]
        epoch = m.epochs_done + 1
        self.curves[m.model_id].position += 1
        self.epochs_run += 1
        if self.failures and m.index == TRAINING_FAILURE_MODEL and epoch == TRAINING_FAILURE_EPOCH:
            error = "Traceback (most recent call last):\nRuntimeError: simulated training failure"
            self.state.apply(ModelFailure(m.model_id, epoch, error))
            answer = self.driver.on_model_failed(m.model_id, dict(m.params), error)
            self.log.append(("failed", m.model_id, epoch, _jsonable(answer)))
            self._apply_notice(answer, f"on_model_failed({m.model_id!r}, ...) -> {answer!r}")
            self._after_call()
            return
        metrics = self.metrics(m.model_id, epoch)
        decision = self.driver.on_epoch_end(m.model_id, epoch, metrics)
        self.log.append(("epoch", m.model_id, epoch, _jsonable(decision)))
        applied = self._decide(m.model_id, epoch, decision, f"on_epoch_end({m.model_id!r}, {epoch}) -> {decision!r}")
        self.state.apply(EpochResult(m.model_id, epoch, metrics, dict(m.params), False, applied,
                                     f"{m.model_id}/e{epoch}", None, self._payload()))
        self._after_call()

    def _apply_notice(self, answer: Any, where: str) -> None:
        # on_model_failed returns None in the base interface; a driver may instead return the
        # actions the failure unblocks (paused models, each named explicitly): they are applied
        if answer is None or (isinstance(answer, (list, tuple)) and not answer):
            return
        applied = self._decide(None, None, answer, where)
        self.state.apply(DriverUpdate(self._payload(), applied))

    def _decide(self, reporting: str | None, epoch: int | None, decision: Any, where: str) -> list[dict]:
        """Check a decision with the engine's rules (and the space, which only the contract
        checks); return the applied-action entries the engine would journal."""
        try:
            actions = normalise(decision, reporting)
            check_actions(actions, reporting, self.state.statuses(), self.state.epochs(reporting, epoch), self.space)
        except ActionError as exc:
            raise ContractViolation(f"{where}: {exc}") from None
        applied: list[dict] = []
        for a in actions:
            target = target_of(a)
            if isinstance(a, Exploit):
                check_config(a.params, self.space, f"{where}: Exploit params")
                plan = self.state.exploit_plan(a, reporting, epoch)
                source, dest = self.curves[a.source], self.curves[target]
                dest.base, dest.position, dest.diverges = source.base, source.position, source.diverges
                applied.append({"model_id": target, "action": "exploit", "source": a.source, "params": dict(a.params),
                                "spec": f"{target}/spec-v{plan.spec_version}", "checkpoint": f"{target}/exploit-{plan.spec_version}",
                                "checksum": None, "spec_version": plan.spec_version})
                continue
            if isinstance(a, Continue):
                status = "running"
            elif isinstance(a, Pause):
                status = "paused"
            else:
                status = "completed" if a.reason == "finished" else "stopped"
                if a.reason != "finished":
                    self.early_stops += 1
            applied.append({"model_id": target, "action": type(a).__name__.lower(), "status": status})
        return applied

    def run(self) -> None:
        self.fill()
        steps = 0
        while True:
            if not self.training():
                self.fill()
                if not self.training():
                    if self.exhausted:
                        break
                    # the engine would end the experiment here with work undone
                    paused = [m.model_id for m in self.state.models.values() if m.status == "paused"]
                    raise ContractViolation(
                        f"driver stalled: nothing is training, suggest returned [] and it is not exhausted "
                        f"(paused: {paused})")
                continue
            if steps >= self.max_steps:
                raise ContractViolation(f"no termination within max_steps={self.max_steps} epoch ends")
            self.step()
            steps += 1
            self.fill()
        left = [m.model_id for m in self.state.models.values() if m.status in ("running", "paused")]
        if left:
            raise ContractViolation(f"the driver is exhausted but models never ended: {left}")

    def report(self) -> ContractReport:
        statuses: dict[str, int] = {}
        for m in self.state.models.values():
            statuses[m.status] = statuses.get(m.status, 0) + 1
        return ContractReport(
            log=self.log,
            models={m.model_id: {"params": m.params, "status": m.status, "epochs": m.epochs_done, "index": m.index}
                    for m in self.state.models.values()},
            num_suggested=self.state.next_index,
            num_models=self.built,
            num_epochs_run=self.epochs_run, max_training=self.max_training, num_calls=self.calls,
            statuses=statuses, early_stops=self.early_stops,
        )


def _first_difference(a: list, b: list) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"at entry {i}: {x!r} != {y!r}"
    return f"lengths differ: {len(a)} != {len(b)}"


def check_driver_contract(
    make_driver: Callable[[], SearchDriver],
    space: Mapping[str, Dimension],
    *,
    num_workers: int = 2,
    metric: str = "val_loss",
    mode: str = "min",
    seed: int = 0,
    max_steps: int = 5000,
    failures: bool = True,
    diverging: bool = True,
) -> ContractReport:
    """Run the driver contract (see the module docstring); return the reference run's report.

    ``make_driver`` must return a fresh, unbound driver each time it is called.  Raises
    :class:`ContractViolation` (an ``AssertionError``) on the first violation.
    """
    args = (make_driver, space, num_workers, metric, mode, seed, max_steps, failures, diverging)

    reference = _Sim(*args)
    reference.run()
    report = reference.report()

    total = reference.driver.total_sub_epochs(num_workers)
    if total is not None:
        if isinstance(total, bool) or not isinstance(total, (int, np.integer)):
            raise ContractViolation(f"total_sub_epochs({num_workers}) returned {total!r}: expected an int or None")
        if total < reference.epochs_run * num_workers:
            raise ContractViolation(f"total_sub_epochs({num_workers}) = {total}, but {reference.epochs_run} epochs "
                                    f"x {num_workers} partitions were run")

    again = _Sim(*args)
    again.run()
    if again.log != reference.log:
        raise ContractViolation("the same seed gave different decisions, " + _first_difference(reference.log, again.log))

    n = reference.calls
    points = sorted({1, max(1, n // 4), max(1, n // 2), max(1, (3 * n) // 4)} - {n})
    for point in points:
        resumed = _Sim(*args)
        resumed.swaps = {point: None}
        resumed.run()
        log = [entry for entry in resumed.log if entry[0] != "resumed"]
        if log != reference.log:
            raise ContractViolation(f"set_state(get_state()) after driver call {point} of {n} changed the run, "
                                    + _first_difference(reference.log, log))
    return report
