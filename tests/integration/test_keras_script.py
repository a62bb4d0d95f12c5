"""A Keras user's script, run as a real script without a main guard, with a custom layer
registered in its own ``__main__``: the workers never re-run the script, the layer reaches
them by value, and its registered name resolves there."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent('''
    import sys

    import keras
    import pandas as pd
    from sklearn.datasets import load_digits

    from cerebro import GridSearch, KerasEstimator, LocalBackend, LocalStore, hp_choice


    @keras.saving.register_keras_serializable(package="user")
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
                              metrics=["accuracy"], custom_objects={"Scale": Scale})


    digits = load_digits()
    df = pd.DataFrame({"features": list((digits.data / 16.0).astype("float32")), "label": digits.target})
    with LocalBackend(2) as backend:
        result = GridSearch(backend, LocalStore(sys.argv[1]), gen, {"lr": hp_choice([1e-2])}, num_epochs=3,
                            evaluation_metric="accuracy", verbose=0).fit(df)
    assert not result.failures, result.failures
    print("BEST", result.best_score)
''')


def test_unguarded_keras_script_with_a_registered_custom_layer(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "store")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    best = float(proc.stdout.split("BEST")[1])
    assert best >= 0.85
    assert len(os.listdir(tmp_path / "store" / "experiments")) == 1   # the workers did not run the script again
