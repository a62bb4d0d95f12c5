"""Live progress in the driver (rich).  The library logs; only this view and the CLI print."""

from __future__ import annotations

from typing import Any, Mapping

from .core.metrics import better


class RichProgress:
    """An engine listener showing sub-epochs done, per-model epochs and the best score so far."""

    def __init__(self, total: int | None, metric: str, mode: str, num_models_hint: int | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.metric = metric
        self.mode = mode
        self.best: tuple[float, str] | None = None
        self.epochs: dict[str, int] = {}
        self.latest: dict[str, float] = {}
        self.failed = 0
        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]MOP[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("sub-epochs"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self.task = self.progress.add_task("starting workers", total=total)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def _describe(self) -> str:
        parts = [f"{len(self.epochs)} models"]
        if self.epochs:
            parts.append(f"epochs {min(self.epochs.values())}-{max(self.epochs.values())}")
        if self.best is not None:
            parts.append(f"best {self.metric}={self.best[0]:.4f} ({self.best[1]})")
        if self.failed:
            parts.append(f"[red]{self.failed} failed[/red]")
        return " | ".join(parts)

    def __call__(self, event: str, info: Mapping[str, Any]) -> None:
        if event == "model_added":
            self.epochs[info["model_id"]] = 0
        elif event == "visit" and info.get("kind") == "train" and info.get("status") == "ok":
            self.progress.advance(self.task)
        elif event == "epoch":
            self.epochs[info["model_id"]] = info["epoch"]
            score = info["metrics"].get(self.metric)
            if score is not None:
                # The best model is judged on its latest epoch, as the result's best_score is.
                self.latest[info["model_id"]] = score
                self.best = None
                for mid, value in self.latest.items():
                    if self.best is None or better(value, self.best[0], self.mode):
                        self.best = (value, mid)
        elif event == "model_failed":
            self.failed += 1
        elif event == "worker_died":
            self.console.log(f"[yellow]worker {info['worker']} died; restarting it[/yellow]")
        self.progress.update(self.task, description=self._describe())
