"""``metrics.csv`` / ``eval.csv``, appended as steps complete, and the ``loss.png`` curve.

The rows live in each checkpoint's ``state.json`` too; a resumed run rewrites the CSVs from
there, so they hold every step up to the checkpoint exactly once (the steps a killed run
did past its last checkpoint are trained again, and written again, by the resumed one).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plugstack.files import atomic_open, atomic_write

__all__ = ["MetricsFile", "plot_loss"]


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


class MetricsFile:
    """One CSV whose columns are fixed by its first rows (a later key is kept in state.json only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: list[str] = []
        self._file: Any = None

    def restart(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Replace the file (atomically) with ``rows``, then append after them."""
        self.close()
        self.columns = _columns(rows)
        if rows:
            text = io.StringIO()
            writer = csv.DictWriter(text, self.columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            atomic_write(self.path, text.getvalue())
        else:
            self.path.unlink(missing_ok=True)

    def append(self, row: Mapping[str, Any]) -> None:
        if self._file is None:
            new = not self.columns
            self.columns = self.columns or list(row)
            self._file = open(self.path, "a", encoding="utf-8", newline="")  # kept open for the run
            self._writer = csv.DictWriter(self._file, self.columns, extrasaction="ignore", lineterminator="\n")
            if new:
                self._writer.writeheader()
        self._writer.writerow(row)
        self._file.flush()  # a kill keeps every finished row

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def plot_loss(path: Path, train: Sequence[Mapping[str, Any]], evals: Sequence[Mapping[str, Any]], title: str) -> None:
    """Draw the training (and held-out) loss by step into ``path`` (PNG, written atomically).
    Uses a Figure with its own Agg canvas: no pyplot, no global state, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.92, bottom=0.12)  # fixed margins: a layout engine doubles the time
    ax = fig.add_subplot()
    steps, losses = [r["step"] for r in train], [r["loss"] for r in train]
    ax.plot(steps, losses, lw=0.8, alpha=0.5 if len(train) > 50 else 1.0, label="train loss")
    if len(train) > 50:  # the noisy per-step curve, and its trend
        span = max(5, len(train) // 20)
        ax.plot(steps, _centred_mean(losses, span), lw=1.6, color="C0", label=f"train loss (mean of {span} steps)")
    points = [(r["step"], r["eval_loss"]) for r in evals if isinstance(r.get("eval_loss"), (int, float))]
    if points:
        ax.plot(*zip(*points, strict=True), "o-", color="C1", label="eval loss")
    finite = [v for v in losses + [p[1] for p in points] if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 20:
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")


def _centred_mean(values: Sequence[float], span: int) -> list[float]:
    """Mean over a window centred on each step (shrunk at the ends): a trend that does not
    lag behind the fast early fall the way a trailing average does."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    v[~np.isfinite(v)] = np.nan
    half = span // 2
    sums = np.concatenate([[0.0], np.nancumsum(v)])
    counts = np.concatenate([[0], np.cumsum(np.isfinite(v))])
    lo = np.clip(np.arange(len(v)) - half, 0, len(v))
    hi = np.clip(np.arange(len(v)) + half + 1, 0, len(v))
    n = counts[hi] - counts[lo]
    return np.where(n > 0, (sums[hi] - sums[lo]) / np.maximum(n, 1), np.nan).tolist()
