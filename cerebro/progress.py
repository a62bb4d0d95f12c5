"""Live progress in the driver (rich).  The library logs; only this view and the CLI print."""

from __future__ import annotations

from typing import Any, Mapping

from .core.metrics import best_of

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
        self.index: dict[str, int] = {}      # model id -> creation index (ties in the best rule)
        self.failed = 0
        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self.task = self.progress.add_task("[bold]MOP[/bold] starting workers", total=total, unit="sub-epochs", eta="ETA")

    def seed(self, state) -> None:
        """Start from what a resumed experiment already committed (an
        :class:`~cerebro.core.state.ExperimentState`), read as it is, not rebuilt."""
        self.index = {mid: rec.index for mid, rec in state.models.items()}
        for mid in state.models:
            self._add(mid)
        done = sum(1 for v in state.visits if v["status"] == "ok")
        if done:
            self.progress.advance(self.task, done)
        for row in state.history:
            self.epochs[row["model_id"]] = row["epoch"]
            score = row.get(self.metric)
            if score is not None:
                self.latest[row["model_id"]] = score
        self.failed = sum(1 for rec in state.models.values() if rec.status == "failed")
        self._update_best()
        for mid in self.rows:
            self._row(mid)
        self.progress.update(self.task, description=self._describe())

    def _add(self, mid: str) -> None:
        self.epochs.setdefault(mid, 0)
        if len(self.rows) < _MAX_MODEL_ROWS and mid not in self.rows:
            self.rows[mid] = self.progress.add_task(f"  {mid}", total=self.epochs_per_model, unit="epochs", eta="")

    def _update_best(self) -> None:
        # The best model is judged on its latest epoch, as the result's best_score is, by the
        # one rule of cerebro.core.metrics (NaN never wins; ties go to the model created first).
        best = best_of(((mid, score, self.index.get(mid, 0)) for mid, score in self.latest.items()), self.mode)
        self.best = None if best is None else (best[1], best[0])

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
            self.index[info["model_id"]] = info.get("index", len(self.index))
            self._add(info["model_id"])
        elif event == "visit" and info.get("kind") == "train" and info.get("status") == "ok":
            self.progress.advance(self.task)
        elif event == "epoch":
            mid = info["model_id"]
            self.epochs[mid] = info["epoch"]
            score = info["metrics"].get(self.metric)
            if score is not None:
                self.latest[mid] = score
                self._update_best()
                self._row(mid, f"{self.metric}={score:.4f}")
        elif event == "model_failed":
            self.failed += 1
            self._row(info["model_id"], "[red]failed[/red]")
        elif event == "worker_died":
            self.console.log(f"[yellow]worker {info['worker']} died; restarting it[/yellow]")
        self.progress.update(self.task, description=self._describe())
