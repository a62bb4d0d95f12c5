"""Live progress in the driver (rich).  The library logs; only this view and the CLI print."""

from __future__ import annotations

from typing import Any, Mapping

from .core.metrics import better

_MAX_MODEL_ROWS = 12


class RichProgress:
    """An engine listener: sub-epochs done / total with ETA, the best score so far, and one
    epoch bar per model (up to 12 models; beyond that, the per-model range in the summary)."""

    def __init__(self, total: int | None, metric: str, mode: str, epochs_per_model: int | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.metric = metric
        self.mode = mode
        self.epochs_per_model = epochs_per_model
        self.best: tuple[float, str] | None = None
        self.epochs: dict[str, int] = {}
        self.latest: dict[str, float] = {}
        self.rows: dict[str, Any] = {}
        self.failed = 0
        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self.task = self.progress.add_task("[bold]MOP[/bold] starting workers", total=total, unit="sub-epochs", eta="ETA")

    def seed(self, engine) -> None:
        """Start from what a resumed engine already committed."""
        for mid, rec in engine.models.items():
            self("model_added", {"model_id": mid, "params": rec.params})
        done = sum(1 for v in engine.visits if v["status"] == "ok")
        if done:
            self.progress.advance(self.task, done)
        for row in engine.history:
            self("epoch", {"model_id": row["model_id"], "epoch": row["epoch"],
                           "metrics": {k: v for k, v in row.items() if k not in ("model_id", "epoch")}})

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def _describe(self) -> str:
        parts = [f"[bold]MOP[/bold] {len(self.epochs)} models"]
        if self.epochs:
            parts.append(f"epochs {min(self.epochs.values())}-{max(self.epochs.values())}")
        if self.best is not None:
            parts.append(f"best {self.metric}={self.best[0]:.4f} ({self.best[1]})")
        if self.failed:
            parts.append(f"[red]{self.failed} failed[/red]")
        return " | ".join(parts)

    def _row(self, model_id: str, note: str = "") -> None:
        row = self.rows.get(model_id)
        if row is not None:
            self.progress.update(row, completed=self.epochs.get(model_id, 0), description=f"  {model_id} {note}".rstrip())

    def __call__(self, event: str, info: Mapping[str, Any]) -> None:
        if event == "model_added":
            mid = info["model_id"]
            self.epochs.setdefault(mid, 0)
            if len(self.rows) < _MAX_MODEL_ROWS and mid not in self.rows:
                self.rows[mid] = self.progress.add_task(f"  {mid}", total=self.epochs_per_model, unit="epochs", eta="")
        elif event == "visit" and info.get("kind") == "train" and info.get("status") == "ok":
            self.progress.advance(self.task)
        elif event == "epoch":
            mid = info["model_id"]
            self.epochs[mid] = info["epoch"]
            score = info["metrics"].get(self.metric)
            if score is not None:
                # The best model is judged on its latest epoch, as the result's best_score is.
                self.latest[mid] = score
                self.best = None
                for other, value in sorted(self.latest.items()):  # ties: first model, as in the result
                    if self.best is None or better(value, self.best[0], self.mode):
                        self.best = (value, other)
                self._row(mid, f"{self.metric}={score:.4f}")
        elif event == "model_failed":
            self.failed += 1
            self._row(info["model_id"], "[red]failed[/red]")
        elif event == "worker_died":
            self.console.log(f"[yellow]worker {info['worker']} died; restarting it[/yellow]")
        self.progress.update(self.task, description=self._describe())
