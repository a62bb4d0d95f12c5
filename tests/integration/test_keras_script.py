"""A Keras user's script, run as a real script without a main guard, whose model uses what only
the script defines: a custom layer registered in its own ``__main__``, a custom activation
function that reads a module-level global of the script, and a closure used as a metric.  The
workers never re-run the script; all of it reaches them by value, and the registered name
resolves there.  The saved result reads back in another process (this one) with
``cerebro.load_model``, and in the script with plain Keras given the script's objects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent('''
    import json
    import sys

    import keras
    import numpy as np
    import pandas as pd
    from sklearn.datasets import load_digits

    from cerebro import GridSearch, KerasEstimator, LocalBackend, LocalStore, hp_choice

    SLOPE = 0.1   # read by the activation below, in the workers too


    @keras.saving.register_keras_serializable(package="user")
    class Scale(keras.layers.Layer):
        def __init__(self, factor=2.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, x):
            return x * self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}


    def leaky(x):
        return keras.ops.maximum(x, SLOPE * x)


    def top_k_metric(k):
        def top_k_hit(y_true, y_pred):   # a closure over k
            return keras.metrics.sparse_top_k_categorical_accuracy(y_true, y_pred, k=k)
        return top_k_hit


    def gen(params):
        model = keras.Sequential([keras.Input((64,)), Scale(), keras.layers.Dense(32, activation=leaky),
                                  keras.layers.Dense(10, activation="softmax")])
        return KerasEstimator(model, keras.optimizers.Adam(params["lr"]), "sparse_categorical_crossentropy",
                              metrics=["accuracy", top_k_metric(3)], custom_objects={"Scale": Scale})


    store, out = sys.argv[1], sys.argv[2]
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    df = pd.DataFrame({"features": list(x), "label": digits.target})
    with LocalBackend(2) as backend:
        result = GridSearch(backend, LocalStore(store), gen, {"lr": hp_choice([1e-2])}, num_epochs=3,
                            evaluation_metric="accuracy", verbose=0).fit(df)
    assert not result.failures, result.failures
    saved = result.best_model.save(out + "/saved")
    np.save(out + "/predictions.npy", result.best_model.predict(df))
    plain = keras.models.load_model(saved + "/model.keras", custom_objects={"leaky": leaky, "top_k_hit": top_k_metric(3)})
    print("RESULT", json.dumps({
        "best": result.best_score, "history": result.history.to_dict(orient="list"),
        "keras": plain.evaluate(x, digits.target, batch_size=len(x), verbose=0, return_dict=True),
        "same_predictions": bool(np.array_equal(plain.predict(x, batch_size=1024, verbose=0), result.best_model.predict(df))),
    }))
''')


def test_unguarded_keras_script_with_its_own_layer_activation_global_and_closure_metric(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "store"), str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["best"] >= 0.85
    history = out["history"]
    assert sorted(k for k in history if k.startswith("val_")) == ["val_accuracy", "val_loss", "val_top_k_hit"]
    # top-3 hits are at least top-1 hits, epoch by epoch: the closure's k=3 reached the workers
    assert all(t >= a for t, a in zip(history["val_top_k_hit"], history["val_accuracy"]))
    assert history["val_top_k_hit"][-1] > 0.95
    assert len(os.listdir(tmp_path / "store" / "experiments")) == 1   # the workers did not run the script again

    # Plain Keras read the saved file in the script with the script's own objects only.
    assert out["same_predictions"] and sorted(out["keras"]) == ["accuracy", "loss", "top_k_hit"]
    # cerebro.load_model reads it here, where the script's functions and SLOPE do not exist.
    import cerebro

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    loaded = cerebro.load_model(tmp_path / "saved")
    # Another process, so possibly another oneDNN thread split: equal to float32 rounding, same classes.
    here, there = loaded.predict(pd.DataFrame({"features": list(x)})), np.load(tmp_path / "predictions.npy")
    np.testing.assert_allclose(here, there, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(here.argmax(axis=1), there.argmax(axis=1))
    metrics = loaded.keras().evaluate(x, digits.target, batch_size=len(x), verbose=0, return_dict=True)
    for name in ("accuracy", "loss", "top_k_hit"):
        assert metrics[name] == pytest.approx(out["keras"][name], rel=1e-5), name
    assert loaded.history["val_accuracy"].tolist() == history["val_accuracy"]
