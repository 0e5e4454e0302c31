"""The report's PNG plots: one horizontal bar chart per quantity, one bar (group) per job.

Figures with their own Agg canvas: no pyplot, no global state, no display needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plugstack.files import atomic_open

if TYPE_CHECKING:
    from .report import Job

__all__ = ["write_plots"]


def _bars(path: Path, title: str, xlabel: str, labels: list[str], series: dict[str, list[float | None]]) -> Path:
    """Grouped horizontal bars: ``series`` name -> one value per label (None: no bar)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height = 1.2 + 0.35 * len(labels) * max(1, len(series)) ** 0.7
    fig = Figure(figsize=(8, height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        ys = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
        shown = [(y, v) for y, v in zip(ys, values, strict=True) if v is not None]
        if shown:
            bars = ax.barh([y for y, _ in shown], [v for _, v in shown], height=width * 0.9, label=name)
            ax.bar_label(bars, fmt="%.3g", padding=2, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()  # first job on top, as in the table
    ax.set(xlabel=xlabel, title=title)
    ax.grid(axis="x", alpha=0.3)
    ax.margins(x=0.15)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    return path


def _by(jobs: Sequence[Job], get: Callable[[Job], float | None]) -> list[float | None]:
    return [get(j) for j in jobs]


def write_plots(jobs: Sequence[Job], out: Path) -> list[Path]:
    """Every plot the results support, written into ``out``; the paths written."""
    if not jobs:
        return []
    labels = [j.label for j in jobs]
    decodes = sorted({(s["batch"], s["name"]) for j in jobs for s in j.scenarios.values() if s["kind"] == "decode"})
    written = []
    if decodes:
        series: dict[str, Any] = {f"batch {b}": _by(jobs, lambda j, n=n: j.metric(n, "decode_tok_s"))
                                  for b, n in decodes}
        written.append(_bars(out / "decode_tokens_per_s.png", "Decode throughput (all sequences)", "tokens/s",
                             labels, series))
        first = decodes[0][1]
        lat = {q: _by(jobs, lambda j, q=q: _ms(j.latency(first, q))) for q in ("p50", "p90", "p99")}
        written.append(_bars(out / "step_latency.png", f"Per-token latency ({first})", "ms", labels, lat))
        energy = _by(jobs, lambda j: j.energy(first))
        if any(e is not None for e in energy):
            written.append(_bars(out / "energy_per_token.png", f"Energy per token ({first})", "joules", labels,
                                 {"J/token": energy}))
    if any(j.metric("images", "images_per_s") is not None for j in jobs):
        written.append(_bars(out / "images_per_s.png", "Image throughput", "images/s", labels,
                             {"images/s": _by(jobs, lambda j: j.metric("images", "images_per_s"))}))
    rss = _by(jobs, lambda j: j.peak_rss / 2**20 if j.peak_rss else None)
    written.append(_bars(out / "peak_memory.png", "Peak memory (process RSS)", "MiB", labels, {"peak RSS": rss}))
    return written


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000
