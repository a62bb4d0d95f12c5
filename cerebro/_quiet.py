"""A quiet console: TensorFlow's C++ start-up lines never reach the user's terminal.

TensorFlow 2.21 writes, while ``import tensorflow`` runs, lines such as ``oneDNN custom
operations are on ...``, ``cpu_feature_guard.cc ... rebuild TensorFlow with the appropriate
compiler flags`` and absl's ``All log messages before absl::InitializeLog() ...`` straight to
file descriptor 2, twice, from C++; ``TF_CPP_MIN_LOG_LEVEL`` does not silence the oneDNN one.
``import cerebro`` therefore installs a meta-path hook that, around the first import of
``tensorflow`` in this process (the user's own ``import keras`` included, when cerebro is
imported first, as isort orders them), points fd 2 at a temporary file, and afterwards writes
back to the real stderr everything except the known start-up lines (a genuine warning or
error printed during the import still shows).  Worker processes additionally send their whole
stdout/stderr to the worker log files.

``import cerebro`` also sets ``TF_CPP_MIN_LOG_LEVEL=1`` (TensorFlow's C++ INFO lines off;
warnings and errors stay) unless the variable is already set.  Set
``CEREBRO_TF_STARTUP_LINES=show`` to turn both off.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
from typing import Any

#: Lines TensorFlow/absl print while TensorFlow loads; nothing else is held back.
STARTUP_LINE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|port\.cc:\d+\] oneDNN custom operations are on"
    r"|cpu_feature_guard\.cc:\d+\]"
    r"|^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
    r"|TF-TRT Warning: Could not find TensorRT"
    r"|Could not find cuda drivers on your machine"
    r"|cuda_dnn\.cc:\d+\]|cuda_fft\.cc:\d+\]|cuda_blas\.cc:\d+\]"
)


def filter_startup_lines(text: str) -> str:
    """``text`` without TensorFlow's start-up lines."""
    return "".join(line for line in text.splitlines(keepends=True) if not STARTUP_LINE.search(line))


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        with startup_lines_held_back():
            self._loader.exec_module(module)


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Wraps the loader of the first ``tensorflow`` import, then takes itself off the path."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "tensorflow":
            return None
        _uninstall()
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _QuietLoader(spec.loader)
        return spec


class startup_lines_held_back:
    """Context manager: fd 2 goes to a temporary file; on exit all but the start-up lines go back."""

    def __enter__(self) -> "startup_lines_held_back":
        self._saved = None
        try:
            sys.stderr.flush()
            self._file = tempfile.TemporaryFile(mode="w+b")
            self._saved = os.dup(2)
            os.dup2(self._file.fileno(), 2)
        except (OSError, ValueError, AttributeError):   # no real fd 2 (some embedded interpreters)
            self._saved = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._saved is None:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        kept = filter_startup_lines(self._file.read().decode("utf-8", "replace"))
        self._file.close()
        if kept:
            os.write(2, kept.encode())


_FINDER = _QuietFinder()


def _uninstall() -> None:
    try:
        sys.meta_path.remove(_FINDER)
    except ValueError:
        pass


def install() -> None:
    """Quiet TensorFlow's start-up in this process, unless already imported or turned off."""
    if os.environ.get("CEREBRO_TF_STARTUP_LINES", "").lower() == "show":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if "tensorflow" not in sys.modules and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
