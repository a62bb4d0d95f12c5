"""The Keras 3 adapter: what a model is, how it trains one sub-epoch, and how it hops.

:data:`FRAMEWORK` (a :class:`KerasFramework`) is what
:func:`cerebro.frameworks.base.get_framework` returns for ``"keras"``; the functions below are
the same operations by name, for code and tests that use this adapter directly.

Who calls what:

* The driver process calls :class:`KerasEstimator` (built by the user's ``estimator_gen_fn``),
  :meth:`KerasEstimator.make_spec` once per configuration, and :func:`export_model` to hand a
  trained model back to the user.
* A worker process calls :func:`limit_threads` once at start, keeps one :class:`ModelCache`,
  and for every sub-epoch: :meth:`ModelCache.load` (state in), :func:`make_inputs` /
  :func:`make_targets` (once per partition), :func:`train_sub_epoch` or :func:`evaluate`,
  :func:`state_to_bytes` (state out) and :meth:`ModelCache.note_saved`.

The hop is exact: a checkpoint carries every model weight (trainable and not, e.g. BatchNorm
statistics) and every optimizer variable (iteration count, learning rate, slots such as Adam's
moments), and :func:`train_sub_epoch` derives every random choice (row order, dropout masks)
from its ``seed`` argument only. So a model trained by hopping between workers equals, bit for
bit, the model trained in one process on the same data order with the same seeds.

Checkpoints never use Keras' ``model.save`` / ``.weights.h5`` files: they are 2-10x slower per
hop than moving arrays and ``.weights.h5`` silently drops the state of an unbuilt optimizer.

The modules, each importing only those above it:

* :mod:`.encoding`: names and picklable encodings of losses, metrics and optimizers;
  row-weighted metric functions; the metric names Keras will report.
* :mod:`.config`: the model as a config (serialise, rebuild, the canonical form ``arch_key``
  hashes, a built model's input and output signature).
* :mod:`.state`: checkpoint bytes (pack / unpack, state to and from a model, PBT's learning
  rate transfer).
* :mod:`.estimator`: :class:`KerasEstimator` (validation, pickling) and :class:`ModelSpec`.
* :mod:`.build`: a compiled model from a spec; :func:`export_model`.
* :mod:`.inputs`: feature and label columns to model inputs and targets
  (through :mod:`cerebro.frameworks.arrays`).
* :mod:`.train`: one sub-epoch, evaluation, thread limits and seeding.
* :mod:`.ablation`: :func:`ablate`.
* :mod:`.framework`: :class:`KerasFramework`, :data:`FRAMEWORK` and the Keras-bound
  :class:`ModelCache`.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from .ablation import ablate  # noqa: E402
from .build import export_model  # noqa: E402
from .estimator import KerasEstimator, ModelSpec  # noqa: E402
from .framework import FRAMEWORK, KerasFramework, ModelCache  # noqa: E402
from .inputs import make_inputs, make_targets  # noqa: E402
from .state import state_from_bytes, state_to_bytes, transfer_learning_rate  # noqa: E402
from .train import evaluate, limit_threads, seed_model_creation, train_sub_epoch  # noqa: E402

__all__ = [
    "KerasEstimator",
    "ModelSpec",
    "ModelCache",
    "state_to_bytes",
    "state_from_bytes",
    "make_inputs",
    "make_targets",
    "train_sub_epoch",
    "evaluate",
    "export_model",
    "limit_threads",
    "ablate",
    "seed_model_creation",
    "transfer_learning_rate",
    "KerasFramework",
    "FRAMEWORK",
]
