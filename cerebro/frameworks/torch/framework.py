"""The PyTorch adapter behind :class:`cerebro.frameworks.base.Framework`."""

from __future__ import annotations

import logging
import os
import random
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch

from cerebro._checks import check_int
from cerebro.frameworks.arrays import feature_arrays, target_arrays
from cerebro.frameworks.base import DataSample, Framework

from .ablation import ablate
from .estimator import TorchEstimator
from .model import TorchModel, default_device, evaluate, model_from_config, predict, train_sub_epoch
from .spec import TorchSpec, make_spec
from .state import transfer_learning_rate

__all__ = ["TorchFramework", "STATE_FILE"]

log = logging.getLogger(__name__)

#: the file :meth:`TorchFramework.save` writes (the state bytes)
STATE_FILE = "state.pt"


def _io(spec_or_model: Any) -> tuple[tuple, tuple, int]:
    if isinstance(spec_or_model, (TorchSpec, TorchModel)):
        return tuple(spec_or_model.input_shapes), tuple(spec_or_model.input_dtypes), int(spec_or_model.num_outputs)
    raise TypeError(f"expected a TorchSpec or a built torch model; got {type(spec_or_model).__name__}")


class TorchFramework(Framework):
    """PyTorch: ``torch.nn.Module`` + ``torch.optim`` optimizer (+ scheduler), state by ``state_dict``."""

    name = "torch"

    # ------------------------------------------------------------------ driver process

    def seed(self, seed: int) -> None:
        seed = int(seed) % 2**32
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def check_estimator(self, estimator: Any) -> None:
        if not isinstance(estimator, TorchEstimator):
            raise TypeError(f"expected a TorchEstimator; got {type(estimator).__name__}")

    def metric_names(self, estimator: Any) -> list[str]:
        self.check_estimator(estimator)
        return estimator.metric_names()

    def make_spec(self, estimator: Any, input_shapes: Sequence[Sequence[int]], sample: DataSample | None = None) -> TorchSpec:
        self.check_estimator(estimator)
        return make_spec(estimator, input_shapes, sample)

    def transfer_learning_rate(self, state: bytes, donor: bytes) -> bytes:
        return transfer_learning_rate(state, donor)

    def ablate(self, estimator: Any, *, drop_layer: str | None = None, input_width: int | None = None) -> TorchEstimator:
        self.check_estimator(estimator)
        return ablate(estimator, drop_layer=drop_layer, input_width=input_width)

    # ------------------------------------------------------------------ worker

    def limit_threads(self, num_threads: int | None) -> None:
        """``torch.set_num_threads`` and ``set_num_interop_threads``; the inter-op pool can be
        sized only before torch first uses it, later attempts log a warning and keep it."""
        if num_threads is None:
            return
        n = check_int("limit_threads", "num_threads", num_threads, minimum=1, expected="None or an int >= 1")
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        if torch.get_num_interop_threads() != n:
            try:
                torch.set_num_interop_threads(n)
            except RuntimeError as exc:
                log.warning("cannot set torch's inter-op threads to %d (keeping %d): %s",
                            n, torch.get_num_interop_threads(), exc)

    def warm_up(self) -> None:
        """``Optimizer.load_state_dict`` imports ``torch._dynamo`` on first use (about 1.4 s
        here): import it while the worker starts, not in its first hop."""
        import torch._dynamo  # noqa: F401

    def build(self, spec: TorchSpec) -> TorchModel:
        return model_from_config(spec.config, default_device(), spec.info())

    def load_state(self, model: TorchModel, data: bytes) -> None:
        model.load(data)

    def state_to_bytes(self, model: TorchModel) -> bytes:
        return model.state_bytes()

    def state_token(self, model: TorchModel) -> Hashable:
        return model.version

    def make_inputs(self, spec_or_model: Any, features: Mapping[str, Any], feature_columns: Sequence[str]) -> Any:
        shapes, dtypes, _ = _io(spec_or_model)
        return feature_arrays(shapes, dtypes, features, feature_columns)

    def make_targets(self, spec_or_model: Any, labels: Mapping[str, Any], label_columns: Sequence[str]) -> Any:
        _, _, num_outputs = _io(spec_or_model)
        return target_arrays(num_outputs, labels, label_columns)

    def train_sub_epoch(self, model: TorchModel, x: Any, y: Any, *, batch_size: int, seed: int,
                        epoch_end: bool = False) -> dict[str, float]:
        return train_sub_epoch(model, x, y, batch_size=batch_size, seed=seed, epoch_end=epoch_end)

    def evaluate(self, model: TorchModel, x: Any, y: Any, *, batch_size: int) -> dict[str, float]:
        return evaluate(model, x, y, batch_size=batch_size)

    # ------------------------------------------------------------------ results

    def predict(self, model: TorchModel, x: Any, *, batch_size: int = 1024) -> list[np.ndarray]:
        return predict(model, x, batch_size=batch_size)

    def output_widths(self, model: TorchModel) -> tuple[int, ...]:
        return tuple(model.output_widths)

    def user_model(self, model: TorchModel) -> torch.nn.Module:
        return model.module

    def save(self, model: TorchModel, spec: TorchSpec, directory: str) -> dict[str, Any]:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, STATE_FILE), "wb") as f:
            f.write(model.state_bytes())
        return {"torch": torch.__version__}

    def load(self, spec: TorchSpec, directory: str, custom_objects: Mapping[str, Any] | None = None) -> TorchModel:
        model = self.build(spec)
        with open(os.path.join(directory, STATE_FILE), "rb") as f:
            model.load(f.read())
        return model
