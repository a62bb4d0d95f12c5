"""The search-driver interface: drivers propose configurations and decide, the engine acts.

A driver is pure: it never touches storage, workers or time.  The engine calls it from its
single loop, so no method needs to be thread-safe or may block.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..core.actions import Action, Continue, Decision, Exploit, Pause, Stop
from ..space import Dimension

__all__ = ["SearchDriver", "FixedEpochsDriver", "Action", "Decision", "Continue", "Stop", "Pause", "Exploit"]


class SearchDriver:
    """Base class of search algorithms.

    Call order, all from the engine loop:
    ``bind`` once; then ``suggest`` whenever the engine has room (at start and each time a
    model ends); ``on_epoch_end`` after every evaluated epoch of every model;
    ``on_model_failed`` when a configuration could not be built or trained.
    """

    def __init__(self) -> None:
        self.space: dict[str, Dimension] = {}
        self.rng: np.random.Generator = np.random.default_rng(0)
        self.num_workers = 1
        self.metric = "val_loss"
        self.mode = "min"

    def bind(self, space: Mapping[str, Dimension], rng: np.random.Generator, num_workers: int,
             metric: str = "val_loss", mode: str = "min") -> None:
        """Give the driver its search space, its random generator, the worker count, and the
        metric it optimises (a key of the metrics dict passed to on_epoch_end, e.g.
        "val_accuracy") with its direction ("min" or "max")."""
        self.space = dict(space)
        self.rng = rng
        self.num_workers = num_workers
        self.metric = metric
        self.mode = mode

    def suggest(self, num_active: int) -> list[dict[str, Any]] | None:
        """New configurations to start now ([] for none now); ``None`` once it will never propose again."""
        raise NotImplementedError

    def on_epoch_end(self, model_id: str, epoch: int, metrics: Mapping[str, float]) -> Action | list[Action]:
        """Decide after ``epoch`` (1-based) of ``model_id``, given its train_/val_ metrics.

        Return one action for this model (``Continue()``, ``Stop(reason)``, ``Pause()``) or a
        list of actions about any models (each paused model named at most once).  The model
        whose epoch ended must be covered: if no action names it, it is paused.
        """
        raise NotImplementedError

    def on_model_added(self, model_id: str, params: Mapping[str, Any]) -> None:
        """The engine created ``model_id`` for ``params`` (in the order they were suggested)."""

    def on_model_failed(self, model_id: str | None, params: Mapping[str, Any], error: str) -> list[Action] | None:
        """A configuration failed (``model_id`` is None when even building it failed).

        May return actions about paused models (e.g. the failure completed a rung: promote the
        best ones); each must name its model."""
        return None

    def total_sub_epochs(self, num_partitions: int) -> int | None:
        """The number of training sub-epochs the search will run, when known in advance (for progress)."""
        return None

    def get_state(self) -> dict[str, Any]:
        """Everything the driver needs to continue after a restart, as JSON-able data.

        The engine journals it after every call that may change it; :meth:`set_state` on a
        freshly bound driver must make it continue exactly as the original would have.
        """
        return {"rng": self.rng.bit_generator.state}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned (called after :meth:`bind`)."""
        self.rng.bit_generator.state = state["rng"]


class FixedEpochsDriver(SearchDriver):
    """A driver over a fixed list of configurations, each trained for ``num_epochs``."""

    def __init__(self, num_epochs: int) -> None:
        super().__init__()
        self.num_epochs = num_epochs
        self._proposed = False

    def configurations(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def suggest(self, num_active: int) -> list[dict[str, Any]] | None:
        if self._proposed:
            return None
        self._proposed = True
        return self.configurations()

    def on_epoch_end(self, model_id: str, epoch: int, metrics: Mapping[str, float]) -> Decision:
        return Continue() if epoch < self.num_epochs else Stop("finished")

    def get_state(self) -> dict[str, Any]:
        return {**super().get_state(), "proposed": self._proposed}

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self._proposed = bool(state["proposed"])
