"""Grid and random search drivers."""

from __future__ import annotations

from typing import Any

from ..space import grid, sample
from .base import FixedEpochsDriver


class GridDriver(FixedEpochsDriver):
    """Every combination of the hp_choice dimensions, in sorted-key order."""

    def configurations(self) -> list[dict[str, Any]]:
        return grid(self.space)  # type: ignore[arg-type]

    def total_sub_epochs(self, num_partitions: int) -> int | None:
        return len(grid(self.space)) * self.num_epochs * num_partitions  # type: ignore[arg-type]


class RandomDriver(FixedEpochsDriver):
    """``num_models`` configurations drawn from one seeded generator."""

    def __init__(self, num_models: int, num_epochs: int) -> None:
        super().__init__(num_epochs)
        self.num_models = num_models

    def configurations(self) -> list[dict[str, Any]]:
        return [sample(self.space, self.rng) for _ in range(self.num_models)]

    def total_sub_epochs(self, num_partitions: int) -> int | None:
        return self.num_models * self.num_epochs * num_partitions
