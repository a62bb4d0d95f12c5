"""Cost of one hop vs one sub-epoch for a ~100k-parameter MLP (one TF thread).

Usage: python -m benchmarks.hop_cost
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from cerebro.frameworks import keras as ck  # noqa: E402


def main() -> None:
    ck.limit_threads(1)
    model = keras.Sequential([
        keras.layers.Dense(300, activation="relu"),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    spec = ck.KerasEstimator(model, "adam", "sparse_categorical_crossentropy", ["accuracy"]).make_spec([(64,)])
    trained = ck.ModelCache().load(spec, "big", "0", spec.initial_state)
    rng = np.random.default_rng(0)
    x = rng.random((25_000, 64), dtype=np.float32)
    y = rng.integers(0, 10, 25_000)
    start = time.perf_counter()
    ck.train_sub_epoch(trained, x, y, batch_size=32, seed=0)
    first_pass = time.perf_counter() - start
    start = time.perf_counter()
    ck.train_sub_epoch(trained, x, y, batch_size=32, seed=1)
    second_pass = time.perf_counter() - start
    other = ck.export_model(spec, spec.initial_state)
    reps = 20
    start = time.perf_counter()
    for _ in range(reps):
        data = ck.state_to_bytes(trained)
    save = (time.perf_counter() - start) / reps
    start = time.perf_counter()
    for _ in range(reps):
        ck.state_from_bytes(other, data)
    restore = (time.perf_counter() - start) / reps
    print(f"{spec.num_parameters} parameters, state {len(data) / 1e6:.2f} MB: state_to_bytes {save * 1e3:.2f} ms, "
          f"state_from_bytes {restore * 1e3:.2f} ms; train_sub_epoch 25000x64 batch 32: first {first_pass:.2f} s "
          f"(includes tracing), second {second_pass:.2f} s; hop/sub-epoch = {(save + restore) / second_pass:.4f}")


if __name__ == "__main__":
    main()
