"""The PyTorch adapter: what a torch model is, how it trains one sub-epoch, and how it hops.

Needs the extra ``cerebro-mop[torch]``; ``import cerebro`` never imports this package.

* ``estimator.py``: :class:`TorchEstimator` (model, optimizer, loss, metrics, batch size,
  scheduler) and the loss / metric names it understands.
* ``spec.py``: :class:`TorchSpec` and ``make_spec``: the configuration shipped with
  cloudpickle, its initial state, the worker-cache key, the checks before training.
* ``state.py``: state bytes (``torch.save`` of the model's, optimizer's and scheduler's
  ``state_dict``; read back with ``weights_only=True``) and PBT's learning-rate transfer.
* ``model.py``: :class:`TorchModel` (what a worker holds) and train / evaluate / predict.
* ``functions.py``: named losses and metrics, target adaptation.
* ``ablation.py``: leave-one-layer / one-feature-out variants of an ``nn.Sequential``.
* ``framework.py``: :class:`TorchFramework`, the :class:`cerebro.frameworks.base.Framework`
  the rest of cerebro talks to (``FRAMEWORK`` below).
"""

from __future__ import annotations

from .estimator import LOSS_NAMES, METRIC_NAMES, TorchEstimator
from .framework import TorchFramework
from .model import TorchModel
from .spec import TorchSpec

__all__ = ["TorchEstimator", "TorchSpec", "TorchModel", "TorchFramework", "FRAMEWORK", "LOSS_NAMES", "METRIC_NAMES"]

FRAMEWORK = TorchFramework()
