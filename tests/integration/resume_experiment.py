"""A driver program for the resume tests: run (or resume) a small deterministic grid on digits,
optionally SIGKILLing itself at a chosen moment, and save every model's final weights.

Usage: python resume_experiment.py STORE NAME OUT.npz [--resume] [--kill-on KIND:N] [--kill-after-s S]
  KIND:N = die right after the N-th journal record of that kind ("train", "eval", "epoch").
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time

import numpy as np

import cerebro
from cerebro.datasets import digits_frame
from cerebro import GridSearch, LocalBackend, LocalStore, hp_choice

SPACE = {"lr": hp_choice([3e-3, 1e-2]), "width": hp_choice([16, 48])}


#: "keras" (default) or "torch": the framework of the models (CEREBRO_TEST_FRAMEWORK).
FRAMEWORK = os.environ.get("CEREBRO_TEST_FRAMEWORK", "keras")


def gen(params):
    if FRAMEWORK == "torch":
        return torch_gen(params)
    import keras

    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(params["width"], activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    return cerebro.KerasEstimator(model, keras.optimizers.Adam(params["lr"]), "sparse_categorical_crossentropy",
                                  metrics=["accuracy"], batch_size=16)


def torch_gen(params):
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(64, params["width"]), nn.ReLU(), nn.Dropout(0.1), nn.Linear(params["width"], 10))
    return cerebro.TorchEstimator(model, torch.optim.Adam(model.parameters(), lr=params["lr"]), "cross_entropy",
                                  metrics=["accuracy"], batch_size=16)



def install_kill_switch(kind: str, n: int) -> None:
    from cerebro.experiment import journal

    seen = {"n": 0}
    original = journal.Journal.__call__

    def call(self, record):
        original(self, record)
        if (record.get("type") == "visit" and record.get("kind") == kind and record.get("status") == "ok") or \
                record.get("type") == kind:
            seen["n"] += 1
            if seen["n"] == n:
                os.kill(os.getpid(), signal.SIGKILL)

    journal.Journal.__call__ = call


def search(store: str, name: str) -> GridSearch:
    # Imported by module name (not __main__) so that `cerebro resume` can find it again.
    from resume_experiment import gen as importable_gen

    return GridSearch(LocalBackend(2), LocalStore(store), importable_gen, SPACE, num_epochs=3, evaluation_metric="accuracy",
                      scheduler="deterministic", experiment_name=name, verbose=0)


def save_weights(result, out: str) -> None:
    arrays = {}
    for mid, model in sorted(result.models.items()):
        if model.status == "failed":
            continue
        if model.framework == "torch":
            weights = [v.detach().numpy() for v in model.torch().state_dict().values()]
        else:
            weights = model.keras().get_weights()
        for i, w in enumerate(weights):
            arrays[f"{mid}/{i}"] = w
    np.savez(out, **arrays)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("name")
    ap.add_argument("out")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--kill-on")
    ap.add_argument("--kill-after-s", type=float)
    args = ap.parse_args()
    if args.kill_on:
        kind, n = args.kill_on.split(":")
        install_kill_switch(kind, int(n))
    if args.kill_after_s:
        def later():
            # Wait until training is under way (the journal has a visit), then die mid-sub-epoch.
            path = os.path.join(args.store, "experiments", args.name, "journal.jsonl")
            while not (os.path.exists(path) and b'"visit"' in open(path, "rb").read()):
                time.sleep(0.01)
            time.sleep(args.kill_after_s)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=later, daemon=True).start()
    s = search(args.store, args.name)
    with s.backend:
        result = s.fit(digits_frame(), resume=args.resume)
    save_weights(result, args.out)
    result.visits.to_csv(args.out + ".visits.csv", index=False)


if __name__ == "__main__":
    main()
