"""The one workload every benchmark and every baseline trains (stated next to every table).

- Configurations: the reference MLP 64 -> width (ReLU) -> width (ReLU) -> 10 (softmax), Adam,
  sparse categorical cross-entropy (in PyTorch: logits and ``cross_entropy``, Glorot-uniform
  weights and zero biases like Keras, Adam with Keras' epsilon), over the grid learning rate
  {1e-3, 3e-3} x width {128, 256} x batch size {32, 128}: 8 configurations, four with batch 32.
- Data for time: generated, ``make_data(rows)`` (default 60,000 rows x 64 float32 features,
  10 classes from a random teacher network with noise).
- Data for accuracy: scikit-learn's digits (1,797 rows, 64 pixels / 16), ``cerebro.datasets``.
- Validation: 25% of the rows, chosen by a seeded permutation (``validation_mask``) and given
  to every system as the same boolean column, so every system is scored on the same rows.

Only numpy/pandas at import time; frameworks are imported inside the builders.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np

SPACE = {"learning_rate": [1e-3, 3e-3], "width": [128, 256], "batch_size": [32, 128]}
NUM_FEATURES = 64
NUM_CLASSES = 10
VALIDATION = 0.25


#: Learning rates for larger grids (the scaling benchmark): the first two are SPACE's.
LEARNING_RATES = (1e-3, 3e-3, 5e-4, 2e-3, 7e-4, 1.5e-3, 4e-3, 2.5e-3)


def configurations(n: int = 8) -> list[dict]:
    """The grid in sorted-key order (GridSearch's order): a list of parameter dicts.  Another ``n``
    (16 or 32 for the scaling benchmark, 4 for its smoke test) takes the first n / 4 learning
    rates of ``LEARNING_RATES``, 4 configurations each (width x batch size): still a full grid."""
    if n % 4 or not 1 <= n // 4 <= len(LEARNING_RATES):
        raise ValueError(f"configurations(n): n must be 4 x (1..{len(LEARNING_RATES)}) configurations. Got {n}.")
    space = dict(SPACE, learning_rate=list(LEARNING_RATES[: n // 4]))
    keys = sorted(space)
    return [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]


def make_data(rows: int, seed: int = 0):
    """Generated classification data as a pandas DataFrame: ``features`` (64 float32) and ``label``."""
    import pandas as pd

    x, y = make_arrays(rows, seed)
    return pd.DataFrame({"features": list(x), "label": y})


def make_arrays(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, NUM_FEATURES)).astype(np.float32)
    w1 = rng.normal(size=(NUM_FEATURES, 32)) / 8
    w2 = rng.normal(size=(32, NUM_CLASSES))
    y = np.argmax(np.tanh(x @ w1) @ w2 + 0.5 * rng.normal(size=(rows, NUM_CLASSES)), axis=1)
    return x, y.astype(np.int64)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from cerebro.datasets import digits_frame

    df = digits_frame()
    return np.stack(df.features.to_numpy()).astype(np.float32), df.label.to_numpy().astype(np.int64)


def validation_mask(rows: int, seed: int = 2020, fraction: float = VALIDATION) -> np.ndarray:
    """Boolean mask of the validation rows: a seeded choice of ``round(fraction * rows)`` rows."""
    mask = np.zeros(rows, dtype=bool)
    mask[np.random.default_rng(seed).permutation(rows)[: round(fraction * rows)]] = True
    return mask


# ---------------------------------------------------------------------------- model builders

def make_estimator(params):
    """The configuration as a cerebro ``KerasEstimator`` (Keras 3): MOP's (Keras) estimator_gen_fn."""
    import keras

    from cerebro import KerasEstimator

    model = keras_model(params, keras)
    return KerasEstimator(model, keras.optimizers.Adam(params["learning_rate"]), "sparse_categorical_crossentropy",
                          metrics=["accuracy"], batch_size=params["batch_size"])


def make_torch_estimator(params, seed: int = 2020):
    """The configuration as a cerebro ``TorchEstimator``: MOP-on-PyTorch's estimator_gen_fn.

    The same model, initial weights, optimizer and loss as the DDP and Horovod engines
    (``benchmarks.baselines._torch_data_parallel``): ``torch_model(params, seed + i)`` for the
    i-th configuration of the grid, Adam with the configuration's learning rate and Keras'
    epsilon (1e-7), cross-entropy on the logits, the configuration's batch size.
    """
    import torch

    from cerebro import TorchEstimator

    model = torch_model(params, seed + config_index(params))
    optimizer = torch.optim.Adam(model.parameters(), lr=params["learning_rate"], eps=1e-7)
    return TorchEstimator(model, optimizer, "cross_entropy", metrics=["accuracy"], batch_size=params["batch_size"])


def config_index(params) -> int:
    """The position of ``params`` in :func:`configurations` (what the torch engines seed by): 0-7
    for the default grid, then 8, 9, ... for the others of the largest grid, in its order."""
    def key(c):
        return float(c["learning_rate"]), int(c["width"]), int(c["batch_size"])

    base = [key(c) for c in configurations()]
    order = base + [k for k in map(key, configurations(4 * len(LEARNING_RATES))) if k not in base]
    try:
        return order.index(key(params))
    except ValueError:
        raise ValueError(f"not a configuration of the workload: {params}") from None


def keras_model(params, keras_module):
    """The MLP with ``keras_module`` (Keras 3's ``keras`` or ``tf_keras``), uncompiled."""
    layers = keras_module.layers
    return keras_module.Sequential([
        keras_module.Input((NUM_FEATURES,)),
        layers.Dense(params["width"], activation="relu"),
        layers.Dense(params["width"], activation="relu"),
        layers.Dense(NUM_CLASSES, activation="softmax"),
    ])


def compile_keras(model, params, keras_module):
    model.compile(keras_module.optimizers.Adam(params["learning_rate"]), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def torch_model(params, seed: int):
    """The MLP in PyTorch, initialised like Keras (Glorot-uniform weights, zero biases)."""
    import torch

    torch.manual_seed(seed)
    w = params["width"]
    model = torch.nn.Sequential(torch.nn.Linear(NUM_FEATURES, w), torch.nn.ReLU(), torch.nn.Linear(w, w),
                                torch.nn.ReLU(), torch.nn.Linear(w, NUM_CLASSES))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
    return model


def num_parameters(params) -> int:
    w = params["width"]
    return NUM_FEATURES * w + w + w * w + w + w * NUM_CLASSES + NUM_CLASSES


def limit_threads(n: int = 1) -> None:
    """One compute thread per worker process, set before TensorFlow or torch start their pools."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def limit_tf_threads(tf, n: int = 1) -> None:
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except RuntimeError:  # already initialised: keep what it has
        pass


# ---------------------------------------------------------------------------- data on disk

def write_dataset(directory: str | os.PathLike, x: np.ndarray, y: np.ndarray, val: np.ndarray,
                  *, shards: int = 0, replicas: int = 0) -> dict:
    """Raw little-endian arrays (``x.f32``, ``y.i64``) that every baseline reads with numpy or tf.io.

    ``full/train``, ``full/val``; ``shards/<r>/train`` (rank r's 1/shards of the training rows,
    equal sizes, at most shards-1 rows dropped) and ``replicas/<w>/train`` (full copies, one
    per task-parallel worker).  Training rows keep a seeded shuffled order.  Returns a manifest.
    """
    root = Path(directory)
    xt, yt, xv, yv = x[~val], y[~val], x[val], y[val]
    order = np.random.default_rng(7).permutation(len(xt))
    xt, yt = xt[order], yt[order]
    _save(root / "full" / "train", xt, yt)
    _save(root / "full" / "val", xv, yv)
    if shards:
        per = len(xt) // shards
        for r in range(shards):
            _save(root / "shards" / str(r) / "train", xt[r::shards][:per], yt[r::shards][:per])
    for w in range(replicas):
        _save(root / "replicas" / str(w) / "train", xt, yt)
    manifest = {"train_rows": int(len(xt)), "val_rows": int(len(xv)), "features": int(x.shape[1]),
                "shards": shards, "replicas": replicas}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def _save(prefix: Path, x: np.ndarray, y: np.ndarray) -> None:
    prefix.mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(x, dtype="<f4").tofile(prefix / "x.f32")
    np.ascontiguousarray(y, dtype="<i8").tofile(prefix / "y.i64")


def load_split(prefix: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    prefix = Path(prefix)
    x = np.fromfile(prefix / "x.f32", dtype="<f4").reshape(-1, NUM_FEATURES)
    y = np.fromfile(prefix / "y.i64", dtype="<i8")
    return x, y


def split_bytes(prefix: str | os.PathLike) -> int:
    prefix = Path(prefix)
    return sum(f.stat().st_size for f in prefix.iterdir() if f.is_file())


def dir_bytes(path: str | os.PathLike) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# ---------------------------------------------------------------------------- memory

class PeakRSS:
    """Peak resident memory summed over this process and all its descendants (worker
    processes, Ray's daemons and trial processes), sampled every ``interval`` seconds in a
    thread while the block runs.  RSS counts shared pages (libraries, a shared-memory object
    store) once per process that maps them, as ``ps`` and ``top`` do, so the sum is an upper
    bound of the memory the processes need together.  ``peak_bytes`` is None without psutil."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak_bytes: int | None = None
        self._stop = None
        self._thread = None

    def sample(self) -> int | None:
        try:
            import psutil
        except ImportError:
            return None
        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass  # ended between the listing and the read
        return total

    def _run(self) -> None:
        while True:
            value = self.sample()
            if value is not None:
                self.peak_bytes = max(self.peak_bytes or 0, value)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "PeakRSS":
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        value = self.sample()  # one last look, at the end of the block
        if value is not None:
            self.peak_bytes = max(self.peak_bytes or 0, value)
