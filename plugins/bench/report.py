"""``plugstack report <dir>``: one table, files and plots from every ``bench.json`` under a directory.

A sweep (``plugstack --multirun app=bench ...``) leaves one run directory per job; this
reads them all (and any peer results written in the same format), and writes next to them
``report.md``, ``report.csv`` and PNG plots (decode tokens/s, step latency percentiles, peak
memory, and energy per token where any job measured it), printing the table on the terminal.
Ratios are to baseline jobs (``--baseline``, repeatable: a word of a job's label; default the
first job): the batch-1 decode speed of each job over the baseline's, one column per baseline.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Any

from plugstack.errors import ConfigError
from plugstack.files import atomic_write

from .plots import _ms, write_plots

__all__ = ["Job", "load_jobs", "main"]

#: Bytes of a bench.json this reads at most (a result is a few kB; a larger file is not one).
MAX_RESULT_BYTES = 8 << 20


class Job:
    """One job's result, with the numbers a report shows."""

    def __init__(self, path: Path, record: dict[str, Any]) -> None:
        self.path, self.record = path, record
        self.status = str(record.get("status"))
        self.reason = record.get("reason")
        self.label = str(record.get("label") or path.parent.name)
        self.scenarios = {s["name"]: s for s in record.get("scenarios", [])}

    def metric(self, scenario: str, key: str) -> float | None:
        s = self.scenarios.get(scenario)
        m = s and s["metrics"].get(key)
        return m["median"] if m else None

    def latency(self, scenario: str, q: str) -> float | None:
        s = self.scenarios.get(scenario)
        return s["step_latency_s"][q] if s and s.get("step_latency_s") else None

    def energy(self, scenario: str) -> float | None:
        s = self.scenarios.get(scenario)
        return s.get("joules_per_unit") if s else None

    @property
    def peak_rss(self) -> int | None:
        return (self.record.get("memory") or {}).get("peak_rss_bytes")

    @property
    def device_peak(self) -> int | None:
        return (self.record.get("memory") or {}).get("device_peak_bytes")

    @property
    def where(self) -> str:
        b = self.record.get("backend") or {}
        weights = (self.record.get("load") or {}).get("preparation", {}).get("weights") or b.get("dtype")
        return " ".join(str(x) for x in (b.get("ran"), weights) if x) or "-"


def load_jobs(root: Path) -> tuple[list[Job], list[str]]:
    """Every readable result under ``root`` (sorted by path) and a warning for each unreadable one."""
    jobs, warnings = [], []
    for path in root.rglob("bench.json"):
        try:
            if path.stat().st_size > MAX_RESULT_BYTES:
                raise ValueError(f"larger than {MAX_RESULT_BYTES >> 20} MiB")
            record = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or record.get("schema") != 1 or not isinstance(
                    record.get("scenarios"), list):
                raise ValueError("not a plugstack bench result (schema 1)")
            jobs.append(Job(path, record))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.append(f"{path}: skipped ({exc})")
    for path in sorted(root.rglob("run.json")):
        if not (path.parent / "bench.json").exists():
            job = _unmeasured(path)
            if job is not None:
                jobs.append(job)
    jobs.sort(key=lambda j: _job_order(j.path.parent))
    _short_labels(jobs)
    return jobs, warnings


def _job_order(run_dir: Path) -> tuple:
    """Sweep jobs in their number's order (Hydra names their directories 0, 1, ... 10)."""
    return (str(run_dir.parent), int(run_dir.name) if run_dir.name.isdigit() else -1, run_dir.name)


def _unmeasured(path: Path) -> Job | None:
    """A bench job that wrote no result (skipped before it started, or failed): its reason."""
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
        if run.get("choices", {}).get("app") != "bench":
            return None
        overrides_file = path.parent / ".hydra" / "overrides.yaml"
        from omegaconf import OmegaConf

        overrides = [str(o) for o in OmegaConf.load(overrides_file)] if overrides_file.is_file() else []
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    status = "skipped" if run.get("skipped") else "failed"
    reason = run.get("skipped") or run.get("error") or f"exit code {run.get('exit_code')}"
    return Job(path, {"schema": 1, "status": status, "reason": reason, "overrides": overrides, "scenarios": []})


def _short_labels(jobs: list[Job]) -> None:
    """Drop the overrides every plugstack job shares, so labels say what differs (peers keep theirs)."""
    ours = [j for j in jobs if j.record.get("kind", "plugstack") != "peer"]
    lists = [j.record.get("overrides") or [] for j in ours]
    common = set.intersection(*map(set, lists)) if len(lists) > 1 and all(lists) else {"app=bench"}
    for job, overrides in zip(ours, lists, strict=True):
        kept = [o.removeprefix("++") for o in overrides if o not in common]
        if kept:
            job.label = " ".join(kept)


def _scenario_names(jobs: list[Job], kind: str) -> list[str]:
    seen: dict[str, tuple[int, int]] = {}
    for j in jobs:
        for s in j.scenarios.values():
            if s["kind"] == kind:
                seen[s["name"]] = (s["prompt_length"], s["batch"])
    return sorted(seen, key=seen.get)


def _columns(jobs: list[Job]) -> list[tuple[str, Any]]:
    """(header, job -> value) for every column the results support."""
    prefills, decodes = _scenario_names(jobs, "prefill"), _scenario_names(jobs, "decode")
    first = decodes[0] if decodes else None
    cols: list[tuple[str, Any]] = [("job", lambda j: j.label), ("runs as", lambda j: j.where),
                                   ("load s", lambda j: j.record.get("load", {}).get("model_load_s")),
                                   ("prep s", lambda j: j.record.get("load", {}).get("prepare_s"))]
    if first:
        cols.append(("TTFT ms", lambda j: _ms(j.metric(first, "ttft_s"))))
    cols += [(f"prefill {p.split('-')[1]} tok/s", lambda j, p=p: j.metric(p, "prefill_tok_s")) for p in prefills]
    cols += [(f"b{d.split('-b')[1]} tok/s", lambda j, d=d: j.metric(d, "decode_tok_s")) for d in decodes]
    if first:
        cols += [(f"{q} ms", lambda j, q=q: _ms(j.latency(first, q))) for q in ("p50", "p90", "p99")]
    if any(j.metric("images", "images_per_s") is not None for j in jobs):
        cols.append(("images/s", lambda j: j.metric("images", "images_per_s")))
    cols.append(("RSS MiB", lambda j: j.peak_rss / 2**20 if j.peak_rss else None))
    if any(j.device_peak for j in jobs):
        cols.append(("device MiB", lambda j: j.device_peak / 2**20 if j.device_peak else None))
    if first and any(j.energy(first) is not None for j in jobs):
        cols.append(("J/token", lambda j: j.energy(first)))
    return cols


def _speed(job: Job) -> float | None:
    """The number ratios compare: decode tokens/s at the smallest batch (or images/s)."""
    decodes = sorted((s for s in job.scenarios.values() if s["kind"] == "decode"), key=lambda s: s["batch"])
    if decodes:
        return job.metric(decodes[0]["name"], "decode_tok_s")
    return job.metric("images", "images_per_s")


def pick_baseline(jobs: list[Job], word: str | None) -> Job:
    ok = [j for j in jobs if j.status == "ok"]
    if not ok:
        raise ConfigError("no job of the sweep finished (all skipped or failed): nothing to compare.")
    if word is None:
        return ok[0]
    found = [j for j in ok if word in j.label or word in j.where]
    if not found:
        raise ConfigError(f"--baseline {word!r} matches no finished job. Jobs: {'; '.join(j.label for j in ok)}.")
    return found[0]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def table_rows(jobs: list[Job], baselines: dict[str, Job]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: the columns the results support, ``x <word>`` per baseline, status."""
    cols = _columns([j for j in jobs if j.status == "ok"])
    bases = {word: _speed(job) for word, job in baselines.items()}
    headers = [h for h, _ in cols] + [f"x {word}" for word in bases] + ["status"]
    rows = []
    for j in jobs:
        if j.status != "ok":
            rows.append([j.label, *["-"] * (len(cols) - 1 + len(bases)), f"{j.status}: {j.reason or ''}".strip()])
            continue
        speed = _speed(j)
        ratios = [f"{speed / base:.2f}x" if speed and base else "-" for base in bases.values()]
        rows.append([_fmt(get(j)) for _, get in cols] + ratios + ["ok"])
    return headers, rows


def markdown(headers: list[str], rows: list[list[str]], caption: str) -> str:
    out = [f"| {' | '.join(headers)} |", f"|{'|'.join('---' for _ in headers)}|"]
    out += [f"| {' | '.join(c.replace('|', '/') for c in r)} |" for r in rows]
    return caption + "\n\n" + "\n".join(out) + "\n"


def _machine(jobs: list[Job]) -> str:
    env = next((j.record.get("environment") for j in jobs if j.record.get("environment")), {}) or {}
    versions = env.get("versions", {})
    libs = ", ".join(f"{k} {v}" for k, v in versions.items() if k in ("torch", "onnxruntime", "plugstack"))
    return f"{env.get('cpu', '?')}, {env.get('cpus_usable', '?')} usable cores, Python {env.get('python', '?')}; {libs}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="plugstack report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="a sweep's directory (or any directory holding bench.json files)")
    parser.add_argument("--baseline", action="append",
                        help="a word of a baseline job's label, e.g. peer=transformers; repeat for more ratio columns "
                             "(default: the first job)")
    parser.add_argument("--out", help="where report.md, report.csv and the plots go (default: DIR)")
    args = parser.parse_args(argv)
    root = Path(args.dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{args.dir}: no such directory. Give the directory of a sweep, e.g. "
                          f"multirun/2026-12-01/10-00-00-000000.")
    jobs, warnings = load_jobs(root)
    import sys

    for w in warnings:
        print(f"plugstack report: warning: {w}", file=sys.stderr)
    if not jobs:
        raise ConfigError(f"no bench results under {root}: run e.g. plugstack --multirun app=bench "
                          f"backend=cpu,onnx, then report on the directory it prints.")
    baselines = {word or "first": pick_baseline(jobs, word) for word in (args.baseline or [None])}
    out = Path(args.out).expanduser() if args.out else root
    out.mkdir(parents=True, exist_ok=True)
    headers, rows = table_rows(jobs, baselines)
    shared = any((j.record.get("memory") or {}).get("note") for j in jobs)
    caption = (f"Measured on {_machine(jobs)}. TTFT and pNN (per-token latency) at decode batch 1; "
               f"b<N> tok/s: all N sequences together; x <job>: batch-1 decode speed against that job's "
               f"({'; '.join(b.label for b in baselines.values())})."
               + (" RSS: jobs after the first shared one process, so their peaks include what earlier jobs "
                  "left; see bench.json memory.note." if shared else ""))
    atomic_write(out / "report.md", markdown(headers, rows, caption))
    buf = io.StringIO()
    csv.writer(buf).writerows([headers, *rows])
    atomic_write(out / "report.csv", buf.getvalue())
    written = write_plots([j for j in jobs if j.status == "ok"], out)
    _print(headers, rows, caption, [out / "report.md", out / "report.csv", *written])
    return 0


def _print(headers: list[str], rows: list[list[str]], caption: str, files: list[Path]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="plugstack bench report", caption=caption)
    for h in headers:
        text = h in ("job", "runs as", "status")
        table.add_column(h, justify="left" if text else "right", overflow="fold", min_width=12 if h == "job" else None)
    for r in rows:
        table.add_row(*r)
    console = Console(width=max(160, Console().width))
    console.print(table)
    for f in files:
        console.print(f"wrote {f}", highlight=False)
