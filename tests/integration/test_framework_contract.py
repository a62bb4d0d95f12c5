"""The framework contract, checked for every adapter (Keras and PyTorch) with real training.

Every adapter behind :class:`cerebro.frameworks.base.Framework` trains the same digits MLP
(64 -> 32 relu -> dropout 0.2 -> 10) and must keep the promises MOP rests on: state bytes
round-trip exactly (optimizer step counts included), a sub-epoch is a pure function of
(state, data, seed, batch size), hopping between workers equals sequential training bit for
bit, PBT's learning-rate transfer changes the learning rate only, metrics are row-weighted
means, a saved model predicts as before, and the worker's model cache reloads exactly when it
must.  Each framework reads its own objects back through small accessors (``Case`` below).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
from sklearn.datasets import load_digits

from cerebro.frameworks.base import DataSample, get_framework

NAMES = ["keras", "torch"]
BATCH = 32

# One intra-op thread per framework, before either runs an op (reproducible numerics).
for _name in NAMES:
    try:
        get_framework(_name).limit_threads(1)
    except Exception:  # noqa: BLE001 - a missing adapter fails its own parametrized tests
        pass


# ------------------------------------------------------------------ per-framework fixtures


def keras_estimator(lr: float):
    import keras

    from cerebro.frameworks.keras import KerasEstimator

    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(10, activation="softmax"),
    ])
    return KerasEstimator(model, keras.optimizers.Adam(learning_rate=lr), "sparse_categorical_crossentropy",
                          ["accuracy"], batch_size=BATCH)


def keras_lr(model) -> float:
    return float(np.asarray(model.optimizer.learning_rate))


def keras_weights(model) -> list[np.ndarray]:
    return [np.asarray(w) for w in model.get_weights()]


def keras_moments(model) -> list[np.ndarray]:
    return [np.asarray(v.numpy()) for v in model.optimizer.variables
            if not any(k in v.path for k in ("iteration", "learning_rate"))]


def keras_steps(model) -> int:
    return int(np.asarray(model.optimizer.iterations))


def torch_estimator(lr: float):
    import torch
    from torch import nn

    from cerebro.frameworks.torch import TorchEstimator

    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
    return TorchEstimator(model, torch.optim.Adam(model.parameters(), lr=lr), "cross_entropy", ["accuracy"],
                          batch_size=BATCH)


def torch_lr(model) -> float:
    return float(model.optimizer.param_groups[0]["lr"])


def torch_weights(model) -> list[np.ndarray]:
    return [t.detach().cpu().numpy().copy() for t in model.module.state_dict().values()]


def torch_moments(model) -> list[np.ndarray]:
    out = []
    for state in model.optimizer.state_dict()["state"].values():
        out += [state[k].detach().cpu().numpy().copy() for k in sorted(state) if k != "step"]
    return out


def torch_steps(model) -> int:
    steps = {int(s["step"]) for s in model.optimizer.state_dict()["state"].values()}
    assert len(steps) <= 1
    return steps.pop() if steps else 0


@dataclass
class Case:
    name: str
    fw: Any
    make: Callable[[float], Any]
    lr: Callable[[Any], float]
    weights: Callable[[Any], list]
    moments: Callable[[Any], list]
    steps: Callable[[Any], int]
    spec: Any = None
    spec_fast: Any = None  # same architecture, learning rate 10x


ACCESSORS = {
    "keras": (keras_estimator, keras_lr, keras_weights, keras_moments, keras_steps),
    "torch": (torch_estimator, torch_lr, torch_weights, torch_moments, torch_steps),
}


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int64")


def sample_of(x, y, rows=8) -> DataSample:
    return DataSample({"features": x[:rows]}, {"label": y[:rows]}, ("features",), ("label",))


@pytest.fixture(scope="module", params=NAMES)
def case(request, digits) -> Case:
    name = request.param
    pytest.importorskip({"keras": "keras", "torch": "torch"}[name])
    fw = get_framework(name)
    make, lr, weights, moments, steps = ACCESSORS[name]
    c = Case(name, fw, make, lr, weights, moments, steps)
    x, y = digits
    fw.seed(7)
    c.spec = fw.make_spec(make(1e-3), [(64,)], sample_of(x, y))
    fw.seed(8)
    c.spec_fast = fw.make_spec(make(1e-2), [(64,)], sample_of(x, y))
    return c


@pytest.fixture(scope="module")
def data(case, digits):
    """(x, y) of the whole set and of two unequal 'partitions', as the framework wants them."""
    x, y = digits
    fw, spec = case.fw, case.spec

    def xy(rows):
        return (fw.make_inputs(spec, {"features": x[rows]}, ["features"]),
                fw.make_targets(spec, {"label": y[rows]}, ["label"]))

    return {"chunk1": xy(slice(0, 250)), "chunk2": xy(slice(250, 580)), "val": xy(slice(1400, 1797)),
            "val_a": xy(slice(1400, 1523)), "val_b": xy(slice(1523, 1797))}


def train(case: Case, model, xy, seed: int, epoch_end: bool = False) -> dict:
    x, y = xy
    return case.fw.train_sub_epoch(model, x, y, batch_size=case.spec.batch_size, seed=seed, epoch_end=epoch_end)


def assert_same_arrays(a: list, b: list) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


# ------------------------------------------------------------------ the contract


def test_the_spec_describes_the_model(case):
    spec = case.spec
    assert spec.framework == case.name
    assert spec.num_outputs == 1 and tuple(spec.metric_names) == ("loss", "accuracy")
    assert case.fw.metric_names(case.make(1e-3)) == ["loss", "accuracy"]
    assert spec.num_parameters == 64 * 32 + 32 + 32 * 10 + 10
    assert isinstance(spec.initial_state, bytes) and isinstance(spec.arch_key, str)
    model = case.fw.export(spec, spec.initial_state)
    assert tuple(case.fw.output_widths(model)) == (10,)


def test_state_bytes_round_trip_exactly_with_the_step_count(case, data):
    fw = case.fw
    model = fw.export(case.spec, case.spec.initial_state)
    metrics = train(case, model, data["chunk1"], seed=11)
    assert metrics["rows"] == 250 and np.isfinite(metrics["loss"])
    state = fw.state_to_bytes(model)
    copy = fw.export(case.spec, state)
    assert fw.state_to_bytes(copy) == state
    assert case.steps(copy) == case.steps(model) == -(-250 // BATCH)
    assert_same_arrays(case.weights(copy), case.weights(model))
    assert_same_arrays(case.moments(copy), case.moments(model))


def test_a_sub_epoch_is_a_pure_function_of_state_data_and_seed(case, data):
    fw, spec = case.fw, case.spec
    a = fw.export(spec, spec.initial_state)
    b = fw.export(spec, spec.initial_state)
    train(case, b, data["chunk2"], seed=99)  # b trains something else first, then gets the state back
    fw.load_state(b, spec.initial_state)
    ma = train(case, a, data["chunk1"], seed=5)
    mb = train(case, b, data["chunk1"], seed=5)
    assert fw.state_to_bytes(a) == fw.state_to_bytes(b)
    assert ma == mb
    c = fw.export(spec, spec.initial_state)
    train(case, c, data["chunk1"], seed=6)
    assert fw.state_to_bytes(c) != fw.state_to_bytes(a)


def test_hopping_between_workers_equals_sequential_training(case, data):
    fw, spec = case.fw, case.spec
    worker1 = fw.export(spec, spec.initial_state)
    train(case, worker1, data["chunk1"], seed=21)
    hop = fw.state_to_bytes(worker1)
    worker2 = fw.export(spec, hop)  # another process: a fresh model, the state from bytes
    train(case, worker2, data["chunk2"], seed=22)

    sequential = fw.export(spec, spec.initial_state)
    train(case, sequential, data["chunk1"], seed=21)
    train(case, sequential, data["chunk2"], seed=22)
    assert fw.state_to_bytes(worker2) == fw.state_to_bytes(sequential)


def test_learning_rate_transfer_changes_the_learning_rate_only(case, data):
    fw = case.fw
    source = fw.export(case.spec, case.spec.initial_state)
    train(case, source, data["chunk1"], seed=31)
    state = fw.state_to_bytes(source)
    moved = fw.export(case.spec_fast, fw.transfer_learning_rate(state, case.spec_fast.initial_state))
    donor = fw.export(case.spec_fast, case.spec_fast.initial_state)
    assert case.lr(source) == pytest.approx(1e-3)
    assert case.lr(moved) == case.lr(donor) == pytest.approx(1e-2)
    assert_same_arrays(case.weights(moved), case.weights(source))
    assert_same_arrays(case.moments(moved), case.moments(source))
    assert case.steps(moved) == case.steps(source)


def test_metrics_are_row_weighted_means(case, data):
    fw = case.fw
    model = fw.export(case.spec, case.spec.initial_state)
    train(case, model, data["chunk1"], seed=41)
    whole = fw.evaluate(model, *data["val"], batch_size=BATCH)
    a = fw.evaluate(model, *data["val_a"], batch_size=BATCH)
    b = fw.evaluate(model, *data["val_b"], batch_size=BATCH)
    assert (whole["rows"], a["rows"], b["rows"]) == (397, 123, 274)
    for name in ("loss", "accuracy"):
        combined = (a[name] * a["rows"] + b[name] * b["rows"]) / (a["rows"] + b["rows"])
        assert whole[name] == pytest.approx(combined, abs=1e-5), name


def test_predict_after_save_and_load_equals_predict_before(case, data, tmp_path):
    fw = case.fw
    model = fw.export(case.spec, case.spec.initial_state)
    train(case, model, data["chunk1"], seed=51)
    before = fw.predict(model, data["val"][0])
    facts = fw.save(model, case.spec, str(tmp_path / "model"))
    assert isinstance(facts, dict) and os.listdir(tmp_path / "model")
    loaded = fw.load(case.spec, str(tmp_path / "model"))
    after = fw.predict(loaded, data["val"][0])
    assert len(before) == len(after) == 1 and before[0].shape == (397, 10)
    assert_same_arrays(after, before)
    assert fw.user_model(loaded) is not None


def test_the_model_cache_skips_a_reload_only_while_the_state_token_stands(case, data):
    fw, spec = case.fw, case.spec
    cache = fw.model_cache()
    calls = []

    def state():
        calls.append(1)
        return spec.initial_state

    model = cache.load(spec, "m1", "t1", state)
    assert (cache.builds, cache.loads, cache.skipped_loads, len(calls)) == (1, 1, 0, 1)
    assert cache.load(spec, "m1", "t1", state) is model
    assert (cache.loads, cache.skipped_loads, len(calls)) == (1, 1, 1)

    train(case, model, data["chunk1"], seed=61)  # the state moved, nobody told the cache
    assert cache.load(spec, "m1", "t1", state) is model
    assert (cache.loads, len(calls)) == (2, 2)
    assert fw.state_to_bytes(model) == fw.state_to_bytes(fw.export(spec, spec.initial_state))

    train(case, model, data["chunk1"], seed=61)
    cache.note_saved("m1", "t2", model)
    assert cache.load(spec, "m1", "t2", state) is model
    assert (cache.loads, cache.skipped_loads, len(calls)) == (2, 2, 2)
    # Another configuration of the same architecture shares the built model and reloads.
    assert case.spec_fast.arch_key == spec.arch_key
    assert cache.load(case.spec_fast, "m2", "t1", case.spec_fast.initial_state) is model
    assert cache.builds == 1 and cache.loads == 3
    assert case.lr(model) == pytest.approx(1e-2)
