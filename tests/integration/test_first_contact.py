"""A new user's first code, run the ways people run it: a plain script without a main guard,
the same code piped to ``python -``, and a notebook executed by a real Jupyter kernel.

Each defines a custom Keras layer in its own ``__main__`` (not importable by the workers, not
registered, not passed as a custom object), trains on digits with real worker processes, and
must reach 0.85 validation accuracy with nothing of TensorFlow's C++ start-up in its output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from cerebro._quiet import STARTUP_LINE

pytestmark = pytest.mark.slow

CODE = textwrap.dedent('''
    from cerebro import GridSearch, KerasEstimator, LocalBackend, LocalStore, hp_choice
    import keras
    import pandas as pd
    from sklearn.datasets import load_digits

    STORE = "store"


    class Scale(keras.layers.Layer):
        def __init__(self, factor=2.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, x):
            return x * self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}


    def gen(params):
        model = keras.Sequential([keras.Input((64,)), Scale(), keras.layers.Dense(32, activation="relu"),
                                  keras.layers.Dense(10, activation="softmax")])
        return KerasEstimator(model, keras.optimizers.Adam(params["lr"]), "sparse_categorical_crossentropy",
                              metrics=["accuracy"])


    digits = load_digits()
    df = pd.DataFrame({"features": list((digits.data / 16.0).astype("float32")), "label": digits.target})
    with LocalBackend(2) as backend:
        result = GridSearch(backend, LocalStore(STORE), gen, {"lr": hp_choice([1e-2])}, num_epochs=3,
                            evaluation_metric="accuracy").fit(df)
    print("FAILURES", len(result.failures))
    print("BEST", result.best_score)
''')


def _env() -> dict:
    # The user's own environment: nothing set to quiet TensorFlow.
    return {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "CEREBRO_"))}


def _check(output: str, store_dir) -> None:
    startup = [line for line in output.splitlines() if STARTUP_LINE.search(line)]
    assert not startup, startup
    assert "FAILURES 0" in output, output[-4000:]
    best = float(output.split("BEST")[1].split()[0])
    assert best >= 0.85, output[-4000:]
    # The workers never ran the user's code again: exactly one experiment in the store.
    assert len(os.listdir(store_dir / "experiments")) == 1


def test_unguarded_script(tmp_path):
    (tmp_path / "train.py").write_text(CODE)
    proc = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    _check(proc.stdout + proc.stderr, tmp_path / "store")


def test_code_piped_to_python_stdin(tmp_path):
    proc = subprocess.run([sys.executable, "-"], input=CODE, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    _check(proc.stdout + proc.stderr, tmp_path / "store")


def test_notebook_on_a_real_jupyter_kernel(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # One cell per paragraph of the script, as a notebook user would split it.
    cells = [nbformat.v4.new_code_cell(block.strip()) for block in CODE.split("\n\n\n")]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    old = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith(("TF_CPP", "CEREBRO_"))}
    try:
        client.execute()
    finally:
        os.environ.update(old)
    output = "".join(out.get("text", "") for cell in nb.cells for out in cell.get("outputs", [])
                     if out.get("output_type") == "stream")
    _check(output, tmp_path / "store")
