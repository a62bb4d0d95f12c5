"""AblationStudy: leave-one-feature-out and leave-one-layer-out variants run as one MOP selection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import cerebro
from cerebro import AblationStudy, LocalBackend, LocalStore
from cerebro.frameworks.keras import limit_threads

pytestmark = pytest.mark.slow

limit_threads(1)


def frame() -> pd.DataFrame:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32).reshape(-1, 8, 8)
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "top": list(x[:, :4, :].reshape(-1, 32)), "bottom": list(x[:, 4:, :].reshape(-1, 32)),
        "noise": list(rng.normal(size=(len(x), 4)).astype(np.float32)), "label": d.target.astype(np.int64),
    })


def gen(params):
    import keras

    model = keras.Sequential([
        keras.Input((68,)),
        keras.layers.Dense(params["width"], activation="relu", name="hidden1"),
        keras.layers.Dense(params["width"], activation="relu", name="hidden2"),
        keras.layers.Dense(10, activation="softmax", name="out"),
    ])
    return cerebro.KerasEstimator(model, keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy",
                                  metrics=["accuracy"], batch_size=32)


def test_ablation_study_runs_every_variant_beside_the_base(tmp_path):
    df = frame()
    with LocalBackend(2) as backend:
        r = AblationStudy(backend, LocalStore(str(tmp_path)), gen, {"width": 32}, num_epochs=3,
                          ablate_features=["bottom", "noise"], ablate_layers=["hidden2"],
                          feature_columns=["top", "bottom", "noise"], label_columns=["label"],
                          evaluation_metric="accuracy", verbose=0, tensorboard=False).fit(df)
    table = r.ablation.set_index("variant")
    assert list(table.index) == ["base", "-feature:bottom", "-feature:noise", "-layer:hidden2"]
    assert table.loc["base", "val_accuracy_minus_base"] == 0
    assert table.loc["base", "val_accuracy"] > 0.85
    # half of every image is a real loss; four columns of noise are not
    assert table.loc["-feature:bottom", "val_accuracy"] < table.loc["base", "val_accuracy"] - 0.03
    assert abs(table.loc["-feature:noise", "val_accuracy_minus_base"]) < 0.05
    by_variant = {m.params["ablation"]: m for m in r.models.values()}
    assert by_variant["-feature:bottom"].feature_columns == ("top", "noise")
    assert by_variant["-feature:bottom"].keras().input_shape == (None, 36)
    assert [l.name for l in by_variant["-layer:hidden2"].keras().layers] == ["hidden1", "out"]
    # the variants' models work on the full data frame: each reads only its own columns
    out = by_variant["-feature:noise"].transform(df.head(10))
    assert np.stack(out["label__output"].to_numpy()).shape == (10, 10)
    assert r.failures == {}


def test_bad_ablation_arguments(tmp_path):
    store = LocalStore(str(tmp_path))
    with pytest.raises(ValueError, match=r"'ablate_features'.*\['nope'\].*\['top', 'bottom', 'noise'\]"):
        AblationStudy(LocalBackend(2), store, gen, {"width": 8}, 1, ablate_features=["nope"],
                      feature_columns=["top", "bottom", "noise"]).fit(frame())
    with pytest.raises(ValueError, match="at least one"):
        AblationStudy(LocalBackend(2), store, gen, {"width": 8}, 1, feature_columns=["top"]).fit(frame())
