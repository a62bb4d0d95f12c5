"""cerebro: deep-learning model selection with model hopper parallelism (MOP).

Only public names live here, resolved lazily on first use: ``import cerebro`` imports neither
TensorFlow, PyTorch nor pandas, and ``cerebro.core`` stays importable on its own.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import _quiet

_quiet.install()   # TensorFlow's C++ start-up lines stay off the console (see cerebro/_quiet.py)

__version__ = "0.1.0"

_EXPORTS = {
    "LocalBackend": ".backends.local", "SparkBackend": ".backends.spark",
    "Store": ".storage", "LocalStore": ".storage", "HDFSStore": ".storage",
    "KerasEstimator": ".frameworks.keras", "TorchEstimator": ".frameworks.torch",
    "GridSearch": ".selection", "RandomSearch": ".selection", "TPESearch": ".selection",
    "HyperbandSearch": ".selection", "ASHASearch": ".selection", "PBTSearch": ".selection",
    "MedianStopping": ".drivers.early_stopping", "SearchDriver": ".drivers.base", "AblationStudy": ".selection",
    "hp_choice": ".space", "hp_uniform": ".space", "hp_loguniform": ".space",
    "hp_quniform": ".space", "hp_qloguniform": ".space", "hp_randint": ".space",
    "ModelSelectionResult": ".result", "TrainedModel": ".result", "load_model": ".result",
    "CerebroError": ".errors",
}

__all__ = list(_EXPORTS)

#: public name -> (the optional library it needs, what installs it)
_NEEDS = {"TorchEstimator": ("torch", "cerebro-mop[torch]")}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cerebro' has no attribute {name!r}")
    try:
        imported = importlib.import_module(module, __name__)
    except ImportError as exc:
        library = _NEEDS.get(name)
        if library and (getattr(exc, "name", None) or "").partition(".")[0] == library[0]:
            raise ImportError(f"{name} needs {library[0]}, which is not installed: pip install '{library[1]}'") from exc
        raise
    value = getattr(imported, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
