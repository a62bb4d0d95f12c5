"""Property tests of the MOP scheduler against a tiny simulated engine.

The simulated engine keeps its *own* record of what was committed, failed and answered (an
oracle independent of the scheduler's internals) and drives the scheduler with random
completion orders, failures, worker losses and rejoins, late model arrivals, early stops and
delayed answers to EndEpoch.  After every step it checks the scheduler's invariants, that no
worker or model is double-booked, that every command is legal, and work conservation; at the
end it checks termination and that every visit of every surviving model committed exactly once.
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cerebro.core.events import (
    AbandonModel,
    EndEpoch,
    EvaluateSubEpoch,
    ModelAdded,
    ModelContinued,
    ModelStopped,
    SubEpochFailed,
    SubEpochFinished,
    TrainSubEpoch,
    WorkerJoined,
    WorkerLost,
)
from cerebro.core.mop import MOPScheduler


def _kind(cmd) -> str:
    return "train" if isinstance(cmd, TrainSubEpoch) else "eval"


class SimEngine:
    """Drives a scheduler and checks every output against its own bookkeeping."""

    def __init__(self, *, n_models, n_workers, mode, max_retries, p_fail, p_lose, p_stop, batch, rng, seed):
        self.p = n_workers
        self.mode = mode
        self.seed = seed
        self.max_retries = max_retries
        self.p_fail, self.p_lose, self.p_stop, self.batch = p_fail, p_lose, p_stop, batch
        self.rng = rng
        self.sched = MOPScheduler(n_workers, mode=mode, seed=seed, max_retries=max_retries)
        indices = rng.sample(range(10 * n_models + 10), n_models)  # unique, unrelated to ids
        self.to_add = [(f"m{i}", indices[i]) for i in range(n_models)]
        rng.shuffle(self.to_add)
        self.index = dict(self.to_add)
        self.target = {m: rng.randint(1, 3) for m, _ in self.to_add}
        self.alive: set[int] = set()
        self.inflight: dict[int, TrainSubEpoch | EvaluateSubEpoch] = {}
        self.state: dict[str, str] = {}  # running / awaiting / ended / failed
        self.epoch: dict[str, int] = {}
        self.stop_sent: set[str] = set()
        self.pending: list = []  # answers to EndEpoch not yet delivered
        self.commits: Counter = Counter()  # (model, epoch, partition, kind) -> commits
        self.failures: Counter = Counter()  # (model, epoch, partition, kind) -> failures
        self.train_seq: dict[tuple[str, int], list[int]] = {}
        self.abandoned: Counter = Counter()
        self.expected: list = []  # commands the events of the current batch must produce
        self.losses_left = 2 * n_workers
        self.record: list[tuple[tuple, list]] = []  # (events, commands) for the replay check
        self._orders: dict[tuple[str, int], tuple[int, ...]] = {}

    # ----------------------------------------------------------------- oracle helpers

    def order(self, m: str, e: int) -> tuple[int, ...]:
        """The documented epoch order, computed here independently of the scheduler."""
        key = (m, e)
        if key not in self._orders:
            base = np.random.default_rng([self.seed, e]).permutation(self.p)
            self._orders[key] = tuple(int(base[(self.index[m] + k) % self.p]) for k in range(self.p))
        return self._orders[key]

    def n_committed(self, m: str, e: int, kind: str) -> int:
        return sum(self.commits[(m, e, q, kind)] for q in range(self.p))

    def needs(self, m: str) -> set[int]:
        """Partitions a free running model may take now, from the oracle's records."""
        e = self.epoch[m]
        if self.n_committed(m, e, "train") < self.p:
            if self.mode == "deterministic":
                return {self.order(m, e)[len(self.train_seq.get((m, e), []))]}
            return {q for q in range(self.p) if not self.commits[(m, e, q, "train")]}
        return {q for q in range(self.p) if not self.commits[(m, e, q, "eval")]}

    # ----------------------------------------------------------------- events (mirror first)

    def ev_add(self):
        m, index = self.to_add.pop()
        self.state[m] = "running"
        self.epoch[m] = 1
        return ModelAdded(m, index)

    def ev_join(self):
        w = self.rng.choice(sorted(set(range(self.p)) - self.alive))
        self.alive.add(w)
        return WorkerJoined(w)

    def _visit_failed(self, cmd, error):
        m = cmd.model_id
        key = (m, cmd.epoch, cmd.partition, _kind(cmd))
        self.failures[key] += 1
        if self.failures[key] > self.max_retries:
            self.state[m] = "failed"
            self.expected.append(AbandonModel(m, cmd.epoch, cmd.partition, _kind(cmd), error))

    def ev_lose(self):
        w = self.rng.choice(sorted(self.alive))
        self.alive.discard(w)
        self.losses_left -= 1
        cmd = self.inflight.pop(w, None)
        if cmd is not None:
            self._visit_failed(cmd, "lost")
        return WorkerLost(w, "lost")

    def ev_visit_over(self):
        w = self.rng.choice(sorted(self.inflight))
        cmd = self.inflight.pop(w)
        m, e, kind = cmd.model_id, cmd.epoch, _kind(cmd)
        if self.rng.random() < self.p_fail:
            self._visit_failed(cmd, "boom")
            return SubEpochFailed(m, w, e, w, kind, "boom")
        self.commits[(m, e, w, kind)] += 1
        if kind == "train":
            self.train_seq.setdefault((m, e), []).append(w)
        elif self.n_committed(m, e, "eval") == self.p:
            final = m in self.stop_sent
            self.expected.append(EndEpoch(m, e, final=final))
            if final:
                self.state[m] = "ended"
            else:
                self.state[m] = "awaiting"
                answer = ModelContinued(m) if e < self.target[m] else ModelStopped(m)
                self.pending.append(answer)
        return SubEpochFinished(m, w, e, w, kind)

    def ev_answer(self):
        ev = self.pending.pop(self.rng.randrange(len(self.pending)))
        m = ev.model_id
        if isinstance(ev, ModelContinued):
            self.epoch[m] += 1
            self.state[m] = "running"
        else:
            self.state[m] = "ended"
        return ev

    def ev_stop(self):
        """Stop a model early (mid-epoch), or send a harmless stop to an ended/failed one."""
        over = sorted(m for m, s in self.state.items() if s in ("ended", "failed"))
        running = sorted(m for m, s in self.state.items() if s == "running" and m not in self.stop_sent)
        if running and (not over or self.rng.random() < 0.7):
            m = self.rng.choice(running)
            self.stop_sent.add(m)
        else:
            m = self.rng.choice(over)
        return ModelStopped(m)

    def choose(self):
        """One random event that makes sense now, or None if the run is over."""
        rng = self.rng
        options = []
        if self.inflight:
            options.append((20.0, self.ev_visit_over))
        if self.to_add:
            options.append((1.0 if self.inflight else 50.0, self.ev_add))
        if len(self.alive) < self.p:
            options.append((0.5 if self.inflight else 50.0, self.ev_join))
        if self.pending:
            options.append((3.0 if self.inflight else 50.0, self.ev_answer))
        if self.alive and self.losses_left > 0 and self.p_lose:
            options.append((20.0 * self.p_lose, self.ev_lose))
        if self.p_stop and any(
            s in ("ended", "failed") or (s == "running" and m not in self.stop_sent) for m, s in self.state.items()
        ):
            options.append((20.0 * self.p_stop, self.ev_stop))
        if not (self.inflight or self.to_add or self.pending or len(self.alive) < self.p):
            return None  # quiescent: only optional events (stops, losses) remain
        total = sum(w for w, _ in options)
        x = rng.random() * total
        for w, fn in options:
            x -= w
            if x < 0:
                return fn()
        return options[-1][1]()

    # ----------------------------------------------------------------- checks

    def absorb(self, events, out):
        s = self.sched
        n = len(self.expected)
        assert out[:n] == self.expected, (events, out, self.expected)
        assigned = out[n:]
        self.expected = []
        assert [c.worker for c in assigned] == sorted(c.worker for c in assigned)
        running_models = {c.model_id for c in self.inflight.values()}
        for c in assigned:
            assert isinstance(c, (TrainSubEpoch, EvaluateSubEpoch)), c
            m, w, e, kind = c.model_id, c.worker, c.epoch, _kind(c)
            assert c.partition == w
            assert w in self.alive and w not in self.inflight, f"double-booked worker {c}"
            assert m not in running_models, f"double-booked model {c}"
            assert self.state[m] == "running" and e == self.epoch[m], c
            assert w in self.needs(m), (c, self.needs(m))
            assert c.attempt == self.failures[(m, e, w, kind)]
            if kind == "eval":
                assert self.n_committed(m, e, "train") == self.p
            self.inflight[w] = c
            running_models.add(m)

        s.validate()
        assert s.in_flight == self.inflight
        for m, st_ in self.state.items():
            assert s.status(m) == st_, (m, s.status(m), st_)
            assert s.epoch_of(m) == self.epoch[m]
        # Work conservation (both modes, each with what it allows): no alive free worker
        # while a free running model may take its partition.
        free_workers = self.alive - set(self.inflight)
        if free_workers:
            for m, st_ in self.state.items():
                if st_ == "running" and m not in running_models:
                    assert not (self.needs(m) & free_workers), (m, self.needs(m), free_workers)

    # ----------------------------------------------------------------- run

    def run(self):
        rng = self.rng
        # some workers and models up front, the rest arrive later
        first = [WorkerJoined(w) for w in range(self.p) if rng.random() < 0.7]
        self.alive.update(ev.worker for ev in first)
        k = rng.randint(0, len(self.to_add))
        first += [self.ev_add() for _ in range(k)]
        out = self.sched.handle(*first)
        self.record.append((tuple(first), out))
        self.absorb(first, out)

        visits = sum(self.target.values()) * 2 * self.p
        max_steps = 4 * (visits * (self.max_retries + 2) + len(self.target) + 4 * self.p) + 100
        for _ in range(max_steps):
            events = []
            for _ in range(rng.randint(1, 3) if self.batch else 1):
                ev = self.choose()
                if ev is None:
                    break
                events.append(ev)
            if not events:
                break
            out = self.sched.handle(*events)
            self.record.append((tuple(events), out))
            self.absorb(events, out)
        else:
            raise AssertionError("no termination within the step bound")

        # Termination: everything added, answered, and over.
        s = self.sched
        assert s.idle and not self.inflight and not self.pending
        assert all(st_ in ("ended", "failed") for st_ in self.state.values())
        assert len(self.state) == len(self.target)
        for m in self.state:
            last = self.epoch[m]
            if self.state[m] == "failed":
                assert self.failures and self.abandoned_once(m)
                assert all(v == 1 for (mm, *_), v in self.commits.items() if mm == m)
                if self.mode == "deterministic":
                    for e in range(1, last + 1):
                        seq = self.train_seq.get((m, e), [])
                        assert tuple(seq) == self.order(m, e)[: len(seq)]
                continue
            assert last == self.target[m] or (m in self.stop_sent and last <= self.target[m])
            for e in range(1, last + 1):
                for q in range(self.p):
                    for kind in ("train", "eval"):
                        assert self.commits[(m, e, q, kind)] == 1, (m, e, q, kind)
                if self.mode == "deterministic":
                    assert tuple(self.train_seq[(m, e)]) == self.order(m, e) == s.epoch_order(m, e)
            assert not any(mm == m and e > last for (mm, e, _, _) in self.commits)

        # Determinism: replaying the same event batches gives the same commands.
        replay = MOPScheduler(self.p, mode=self.mode, seed=self.seed, max_retries=self.max_retries)
        for events, out in self.record:
            assert replay.handle(*events) == out

    def abandoned_once(self, m: str) -> bool:
        return sum(1 for _, out in self.record for c in out if isinstance(c, AbandonModel) and c.model_id == m) == 1


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_models=st.integers(1, 50),
    n_workers=st.integers(1, 16),
    mode=st.sampled_from(["dynamic", "deterministic"]),
    max_retries=st.integers(0, 2),
    p_fail=st.sampled_from([0.0, 0.0, 0.02, 0.1, 0.3]),
    p_lose=st.sampled_from([0.0, 0.01, 0.05]),
    p_stop=st.sampled_from([0.0, 0.01, 0.05]),
    batch=st.booleans(),
    rng_seed=st.integers(0, 2**32 - 1),
    seed=st.integers(0, 2**31 - 1),
)
def test_scheduler_against_simulated_engine(
    n_models, n_workers, mode, max_retries, p_fail, p_lose, p_stop, batch, rng_seed, seed
):
    SimEngine(
        n_models=n_models,
        n_workers=n_workers,
        mode=mode,
        max_retries=max_retries,
        p_fail=p_fail,
        p_lose=p_lose,
        p_stop=p_stop,
        batch=batch,
        rng=random.Random(rng_seed),
        seed=seed,
    ).run()


@settings(max_examples=30, deadline=None)
@given(
    n_models=st.integers(1, 8),
    n_workers=st.integers(1, 6),
    mode=st.sampled_from(["dynamic", "deterministic"]),
    rng_seed=st.integers(0, 2**32 - 1),
)
def test_no_failures_all_models_finish(n_models, n_workers, mode, rng_seed):
    """Without failures or losses nothing is abandoned and every model runs its epochs."""
    sim = SimEngine(
        n_models=n_models,
        n_workers=n_workers,
        mode=mode,
        max_retries=0,
        p_fail=0.0,
        p_lose=0.0,
        p_stop=0.0,
        batch=True,
        rng=random.Random(rng_seed),
        seed=0,
    )
    sim.run()
    assert all(s == "ended" for s in sim.state.values())
    assert all(sim.epoch[m] == sim.target[m] for m in sim.state)
