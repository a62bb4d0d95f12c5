"""Kill the driver at every store mutation of a small experiment, then try both ways forward.

Used by ``test_kill_every_step.py``.  Usage: ``python kill_every_step.py WORKDIR [--first K] [--last K]``;
prints one JSON report on its last line.

The experiment is a deterministic grid of two PyTorch configurations for two epochs on digits, on
the in-process backend, so that the driver *is* the whole experiment: every write to the store
(start-up, data preparation, model creation, each checkpoint, each journal append, deletions,
the result tables) goes through one :class:`LocalStore` in one process.  A reference run counts
those mutations (N).  Then, for every k in 1..N, a child process runs the same fit and SIGKILLs
itself at mutation k: before a write, a rename, a delete or a lock; in the middle of a journal
append (half the line written, a torn tail).  The store it leaves is copied twice, and
``fit(df, resume=True)`` runs on one copy and a fresh ``fit(df)`` on the other, each in its own
child process.  The report says, for every k, which of them worked and whether its models are
bit for bit the reference's.

Children are forked from this process after the imports (torch, pandas, pyarrow, cerebro): no
thread pool exists yet, and each child starts from the same clean state in a few milliseconds
instead of the seconds an interpreter and torch take to start.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import traceback

import numpy as np
import torch
import torch._dynamo  # noqa: F401  (an optimizer's first use imports it: 2 s, paid once here)
from torch import nn

import cerebro
import cerebro.experiment.workspace  # noqa: F401  (what fit imports on first use)
import cerebro.frameworks.torch.framework  # noqa: F401
from cerebro import GridSearch, LocalStore, hp_choice
from cerebro.backends.inline import InlineBackend
from cerebro.datasets import digits_frame
from cerebro.storage.local import LocalStore as _Local

NAME = "k"
SPACE = {"lr": hp_choice([3e-3, 1e-2])}
MUTATIONS = ("write_bytes", "append_bytes", "create_exclusive", "rename", "delete", "makedirs")
DATA = digits_frame()


def gen(params):
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    return cerebro.TorchEstimator(model, torch.optim.Adam(model.parameters(), lr=params["lr"]), "cross_entropy",
                                  metrics=["accuracy"], batch_size=64)


def fit(store_dir: str, resume: bool):
    return GridSearch(InlineBackend(2), LocalStore(store_dir), gen, SPACE, num_epochs=2, evaluation_metric="accuracy",
                      scheduler="deterministic", experiment_name=NAME, verbose=0, tensorboard=False).fit(DATA, resume=resume)


def install(kill_at: int | None, steps: list | None) -> None:
    """Count every mutation of any LocalStore in this process; SIGKILL the process at ``kill_at``."""
    count = [0]
    for name in MUTATIONS:
        original = getattr(_Local, name)

        def wrapper(self, *args, _original=original, _name=name, **kwargs):
            count[0] += 1
            if steps is not None:
                steps.append([_name, os.path.relpath(self._abs(args[0]), self.root) if args else ""])
            if count[0] == kill_at:
                if _name == "append_bytes":   # die halfway through the line: a torn tail
                    _original(self, args[0], args[1][: len(args[1]) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            return _original(self, *args, **kwargs)

        setattr(_Local, name, wrapper)


def save(result, out: str) -> None:
    arrays = {}
    for mid, model in sorted(result.models.items()):
        for key, value in model.torch().state_dict().items():
            arrays[f"{mid}/{key}"] = value.detach().numpy()
    np.savez(out, **arrays)
    result.history.to_csv(out + ".history.csv", index=False)


def child(body) -> tuple[str, str]:
    """Run ``body()`` in a forked child: ("ok", ""), ("error", message) or ("killed", "")."""
    err = os.path.join(WORK, f"err-{os.getpid()}-{len(os.listdir(WORK))}")
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            torch.set_num_threads(1)
            body()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            with open(err, "w") as fh:
                fh.write(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            code = 3
        sys.stdout.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return ("killed", f"signal {os.WTERMSIG(status)}")
    if os.WEXITSTATUS(status) == 0:
        return ("ok", "")
    with open(err) as fh:
        return ("error", fh.read())


def same(a: str, b: str) -> bool:
    with np.load(a) as x, np.load(b) as y:
        if sorted(x.files) != sorted(y.files):
            return False
        weights = all(np.array_equal(x[k], y[k]) for k in x.files)
    with open(a + ".history.csv") as f, open(b + ".history.csv") as g:
        return weights and f.read() == g.read()


def main() -> None:
    global WORK
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--first", type=int, default=1)
    ap.add_argument("--last", type=int, default=None)
    args = ap.parse_args()
    WORK = os.path.abspath(args.work)
    os.makedirs(WORK, exist_ok=True)

    ref_store, ref_out, steps_file = f"{WORK}/ref", f"{WORK}/ref.npz", f"{WORK}/steps.json"

    def reference():
        steps: list = []
        install(None, steps)
        save(fit(ref_store, False), ref_out)
        with open(steps_file, "w") as fh:
            json.dump(steps, fh)

    outcome = child(reference)
    if outcome[0] != "ok":
        raise SystemExit(f"the reference run failed: {outcome}")
    with open(steps_file) as fh:
        steps = json.load(fh)
    report = {"steps": len(steps), "points": []}
    for k in range(args.first, min(args.last or len(steps), len(steps)) + 1):
        store = f"{WORK}/{k}/killed"

        def killed():
            install(k, None)
            fit(store, False)

        status, detail = child(killed)
        point = {"k": k, "op": steps[k - 1][0], "path": steps[k - 1][1], "killed": status == "killed"}
        if status == "killed":
            ways = {}
            for way in ("resume", "fresh"):
                copy = f"{WORK}/{k}/{way}"
                shutil.copytree(store, copy)
                out = f"{WORK}/{k}/{way}.npz"
                status, detail = child(lambda copy=copy, way=way, out=out: save(fit(copy, way == "resume"), out))
                ways[way] = {"status": status, "error": detail.splitlines()[0] if detail else "",
                             "same": status == "ok" and same(out, ref_out)}
            point["ways"] = ways
            if all(w["status"] != "ok" for w in ways.values()):
                point["finished"] = _finished(store)
        else:
            point["detail"] = detail[-2000:]
        report["points"].append(point)
        shutil.rmtree(f"{WORK}/{k}")
    print(json.dumps(report))


def _finished(store: str) -> dict:
    """What a store killed after its run was marked finished holds: the journal's last run
    mark and the result tables."""
    exp = os.path.join(store, "experiments", NAME)
    marks = []
    with open(os.path.join(exp, "journal.jsonl"), "rb") as fh:
        for line in fh.read().decode().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("type") in ("started", "resumed", "finished", "aborted"):
                marks.append(record["type"])
    return {"marks": marks, "tables": sorted(f for f in os.listdir(exp) if f.endswith(".csv"))}


WORK = ""

if __name__ == "__main__":
    main()
