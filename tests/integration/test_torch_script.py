"""A PyTorch user's script, run as a real script: its own nn.Module class, no main guard.

The class exists only in the script's ``__main__``: it reaches the worker processes by value
(in the model's spec), and the workers never re-run the script.  Two runs of the script, in
two driver processes, give bit-identical models with the deterministic scheduler, and every
model replays sequentially to the same weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch", reason="torch is part of the [test] extra")

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent('''
    import hashlib, json, sys

    import numpy as np
    import torch
    from torch import nn
    from sklearn.datasets import load_digits
    import pandas as pd

    from cerebro import GridSearch, LocalBackend, LocalStore, TorchEstimator, hp_choice
    from cerebro.replay import replay_model

    torch.set_num_threads(1)


    class Net(nn.Module):
        """Defined here, in __main__, and nowhere else."""

        def __init__(self, width, dropout=0.1):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Dropout(dropout))
            self.head = nn.Linear(width, 10)
            self.scale = 2.0   # a plain attribute the forward pass reads

        def forward(self, x):
            return self.head(self.body(x * self.scale))


    def gen(params):
        net = Net(params["width"])
        return TorchEstimator(net, torch.optim.Adam(net.parameters(), lr=params["lr"]), "cross_entropy",
                              metrics=["accuracy"], batch_size=32)


    store_dir, name, out = sys.argv[1:4]
    digits = load_digits()
    df = pd.DataFrame({"features": list((digits.data / 16.0).astype("float32")), "label": digits.target})
    space = {"lr": hp_choice([3e-3, 1e-2]), "width": hp_choice([32])}
    backend = LocalBackend(2)
    result = GridSearch(backend, LocalStore(store_dir), gen, space, num_epochs=3, evaluation_metric="accuracy",
                        scheduler="deterministic", experiment_name=name, verbose=0).fit(df)
    backend.close()
    report = {"best_score": result.best_score, "type": type(result.best_model.torch()).__name__,
              "models": {}, "replay": {}}
    for mid, m in sorted(result.models.items()):
        sd = m.torch().state_dict()
        report["models"][mid] = hashlib.sha256(b"".join(v.numpy().tobytes() for v in sd.values())).hexdigest()
        replayed = replay_model(m).state_dict()
        report["replay"][mid] = max(float((sd[k] - replayed[k]).abs().max()) for k in sd)
    with open(out, "w") as fh:
        json.dump(report, fh)
''')


def run_script(tmp_path, name: str) -> dict:
    script = tmp_path / "train_digits.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "store"), name, str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_unguarded_script_with_its_own_module_class_trains_reproducibly(tmp_path):
    first = run_script(tmp_path, "first")
    second = run_script(tmp_path, "second")
    assert first["type"] == "Net"
    assert first["best_score"] >= 0.85
    assert first["models"] == second["models"]  # bit-identical across two driver processes
    assert len(first["models"]) == 2
    assert max(first["replay"].values()) <= 1e-6
    # the workers did not re-run the script: exactly the two experiments it asked for
    assert sorted(os.listdir(tmp_path / "store" / "experiments")) == ["first", "second"]
