"""The ``bench`` application: measure the configured model on the configured backend.

One run measures, in order: loading the model, preparing it on the backend (export, graph
build, quantisation: the runner says which happened), then each scenario of
``scenarios.py``. Results go to the run directory as they complete: ``bench.json`` (every
measurement, the full composed config and the environment) and ``bench.csv`` (one row per
scenario and metric), both rewritten atomically after each scenario, so an interrupted run
keeps what it measured. ``plugstack report <dir>`` aggregates the runs of a sweep.

In a sweep (``--multirun``), a job whose backend cannot run here, or refuses one of the
swept options, is recorded as skipped with the reason instead of failing the sweep.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import time
from pathlib import Path
from typing import Any

from plugstack.app import App, RunContext
from plugstack.errors import BackendUnavailableError, ConfigError, UnsupportedOptionError
from plugstack.files import atomic_write
from plugstack.images import IMAGE
from plugstack.meters import PeakRSS, environment, rapl_meter

from .config import MAX_BATCH, MAX_NEW_TOKENS, MAX_REPEATS
from .scenarios import Scenario, decode_scenario, greedy_timings, images_scenario, prefill_scenario, synthetic_prompt

__all__ = ["BenchApp", "check_options", "csv_rows", "energy_record", "memory_record", "new_record",
           "save"]

SCHEMA = 1
CSV_FIELDS = ("scenario", "kind", "prompt_length", "batch", "new_tokens", "metric", "median", "min", "max",
              "spread", "n")


def check_options(cfg: Any) -> None:
    """Refuse values that make no measurement, before anything loads."""
    def ints(name: str, values: Any, low: int, high: int) -> None:
        values = list(values)
        if not values or any(not isinstance(v, int) or not low <= v <= high for v in values):
            raise ConfigError(f"app.{name}={values}: give a non-empty list of integers from {low} to {high}, "
                              f"e.g. app.{name}=[{low},{min(high, low * 4)}].")

    ints("prompt_lengths", cfg.prompt_lengths, 1, 1 << 20)
    ints("batch_sizes", cfg.batch_sizes, 1, MAX_BATCH)
    for name, low, high in (("decode_prompt_length", 1, 1 << 20), ("new_tokens", 2, MAX_NEW_TOKENS),
                            ("warmup", 0, MAX_REPEATS), ("repeats", 1, MAX_REPEATS), ("images", 1, 1024)):
        value = getattr(cfg, name)
        if not low <= value <= high:
            raise ConfigError(f"app.{name}={value}: give {low} to {high}.")
    if cfg.image_steps is not None and cfg.image_steps < 1:
        raise ConfigError(f"app.image_steps={cfg.image_steps}: give 1 or more steps, or null for the model's default.")
    if not 0 <= cfg.pause_s <= 60:
        raise ConfigError(f"app.pause_s={cfg.pause_s}: give 0 to 60 seconds.")


#: Said in each later job of a sweep whose jobs share one process (Hydra's basic launcher).
SHARED_PROCESS = ("the jobs of this sweep share one process, so this peak includes what earlier jobs left "
                  "(start_rss_bytes); for each job's own peak run the sweep with hydra/launcher=ray "
                  "+hydra.launcher.ray.remote.max_calls=1 (a fresh process per job)")


def _sweep() -> tuple[bool, list[str], bool]:
    """Whether this run is one job of a sweep, the overrides that make it (its label), and
    whether it shares its process with earlier jobs."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return False, [], False
    if not HydraConfig.initialized():
        return False, [], False
    hc = HydraConfig.get()
    sweep = hc.mode == RunMode.MULTIRUN
    shared = sweep and "BasicLauncher" in str(hc.launcher.get("_target_", "")) and int(hc.job.num) > 0
    return sweep, list(hc.overrides.task), shared


def csv_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per scenario and metric (step latency percentiles as metrics of their own)."""
    rows = []
    for s in record["scenarios"]:
        base = {k: s[k] for k in ("kind", "prompt_length", "batch", "new_tokens")} | {"scenario": s["name"]}
        for metric, m in s["metrics"].items():
            rows.append(base | {"metric": metric} | {k: m[k] for k in ("median", "min", "max", "spread", "n")})
        for q in ("p50", "p90", "p99"):
            if s.get("step_latency_s"):
                lat = s["step_latency_s"]
                rows.append(base | {"metric": f"step_latency_{q}_s", "median": lat[q], "n": lat["n"]})
        if s.get("joules_per_unit") is not None:
            rows.append(base | {"metric": "joules_per_unit", "median": s["joules_per_unit"]})
    return rows


def new_record(label: list[str], choices: dict[str, str], config: Any, kind: str = "plugstack") -> dict[str, Any]:
    """A result before any measurement: who, with what, where (``kind`` "peer" for other systems)."""
    return {
        "schema": SCHEMA, "kind": kind, "status": "running", "reason": None,
        "label": " ".join(label), "overrides": label, "choices": choices, "config": config,
        "environment": environment(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load": {}, "memory": {}, "energy": {}, "scenarios": [],
    }


def save(run_dir: Path, record: dict[str, Any]) -> None:
    """``bench.json`` and ``bench.csv`` of ``record`` in ``run_dir``, each written atomically."""
    atomic_write(run_dir / "bench.json", json.dumps(record, indent=2, default=str))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(csv_rows(record))
    atomic_write(run_dir / "bench.csv", out.getvalue())


def energy_record(meter: Any, why: str) -> dict[str, Any]:
    return {"available": meter is not None, "source": meter.source if meter else None, "reason": why or None}


def memory_record(peak: PeakRSS, device_peak: int | None, note: str | None = None) -> dict[str, Any]:
    return {"peak_rss_bytes": peak.peak(), "start_rss_bytes": peak.start_bytes, "rss_source": peak.source(),
            "device_peak_bytes": device_peak,
            "device_source": "the backend's allocator" if device_peak is not None else
            "none: the backend runs in host memory (counted in the RSS)", "note": note}


class Results:
    """``bench.json`` and ``bench.csv`` in the run directory, rewritten as results arrive."""

    def __init__(self, ctx: RunContext, label: list[str]) -> None:
        from omegaconf import OmegaConf

        from plugstack.run import redacted

        self.dir = Path(ctx.output_dir)
        config = redacted(OmegaConf.to_container(ctx.cfg, resolve=True, enum_to_str=True))
        self.record = new_record(label, {g: str(ctx.cfg[g].name) for g in ("app", "model", "backend")}, config)
        self.record["run_id"] = ctx.run_id

    def save(self) -> None:
        save(self.dir, self.record)


class BenchApp(App):
    """See the module docstring."""

    def run(self, ctx: RunContext) -> int:
        cfg = self.cfg
        check_options(cfg)
        in_sweep, label, shared = _sweep()
        results = Results(ctx, label)
        record = results.record
        peak = PeakRSS()
        try:
            ready = self._prepare(ctx, record)
        except (BackendUnavailableError, UnsupportedOptionError) as exc:
            if not in_sweep:
                raise
            record.update(status="skipped", reason=str(exc))
            results.save()
            ctx.log.warning("bench.skipped", reason=str(exc))
            print(f"skipped: {exc}", file=ctx.stdout, flush=True)
            return 0
        runner, model = ready
        meter, why = self._energy(ctx)
        record["energy"] = energy_record(meter, why)
        results.save()
        if shared:
            ctx.log.warning("bench.memory.shared_process", note=SHARED_PROCESS)
        plan = self._plan(runner, model)
        with _progress(len(plan) * (cfg.warmup + cfg.repeats)) as tick:
            for name, measure in plan:
                ctx.log.info("bench.scenario.start", scenario=name)
                scenario = measure(meter, tick)
                record["scenarios"].append(scenario.as_dict())
                record["memory"] = memory_record(peak, ctx.backend.peak_memory(), SHARED_PROCESS if shared else None)
                results.save()
                ctx.log.info("bench.scenario.done", scenario=name, **_headline(scenario))
        record.update(status="ok", finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        results.save()
        _print_table(record, ctx.stdout)
        return 0

    def _prepare(self, ctx: RunContext, record: dict[str, Any]) -> tuple[Any, Any]:
        """Backend, model and runner, each timed; backend refusals surface here, before work."""
        t0 = time.perf_counter()
        backend = ctx.backend
        backend.reset_peak_memory()
        model = ctx.model
        t1 = time.perf_counter()
        self._check_fits(model.context_length)
        self._plan(None, model)  # a model it cannot measure is refused before it is prepared
        runner = ctx.runner
        t2 = time.perf_counter()
        self._check_fits(_window(runner))
        availability = backend.probe()
        device = availability.device
        record["load"] = {"model_load_s": t1 - t0, "prepare_s": t2 - t1, "preparation": runner.preparation()}
        record["backend"] = {
            "choice": str(ctx.cfg.backend.name), "ran": backend.runs_as() or str(ctx.cfg.backend.name),
            "dtype": runner.dtype, "device": device.name if device else None,
            "threads": device.threads if device else None}
        record["model"] = {"name": model.name, "weights_digest": model.weights_digest,
                           "context_length": model.context_length}
        return runner, model

    def _check_fits(self, window: int | None) -> None:
        cfg = self.cfg
        if not window:
            return
        longest = max([*cfg.prompt_lengths, cfg.decode_prompt_length])
        if longest + cfg.new_tokens > window:
            raise ConfigError(f"a prompt of {longest} tokens plus app.new_tokens={cfg.new_tokens} does not fit the "
                              f"context window of {window} positions: lower app.prompt_lengths, "
                              f"app.decode_prompt_length or app.new_tokens.")

    def _energy(self, ctx: RunContext) -> tuple[Any, str]:
        meter = ctx.backend.energy_meter()
        return (meter, "") if meter is not None else rapl_meter()

    def _plan(self, runner: Any, model: Any) -> list[tuple[str, Any]]:
        """The scenarios this model's signature allows, as (name, measure(meter, tick))."""
        cfg = self.cfg
        sig = model.signature
        if "input_ids" in sig.feed_inputs and "logits" in sig.output_names:
            vocab = sig.meta.get("vocab_size")
            tok = model.tokenizer

            def prompts(length: int, batch: int) -> list[list[int]]:
                return [synthetic_prompt(tok, vocab, length, row) for row in range(batch)]

            generate = functools.partial(greedy_timings, runner)
            plan = [(f"prefill-{n}", lambda m, t, n=n: prefill_scenario(generate, prompts(n, 1)[0], cfg, m, t))
                    for n in cfg.prompt_lengths]
            plan += [(f"decode-b{b}", lambda m, t, b=b: decode_scenario(
                generate, prompts(cfg.decode_prompt_length, b), cfg, m, t)) for b in cfg.batch_sizes]
            return plan
        sampler = model.offers.get(IMAGE)
        if sampler is not None and sampler.example_prompt:
            if cfg.image_steps is not None and sampler.max_steps and cfg.image_steps > sampler.max_steps:
                raise ConfigError(f"app.image_steps={cfg.image_steps}: model {model.name!r} takes at most "
                                  f"{sampler.max_steps} steps.")
            return [("images", lambda m, t: images_scenario(runner, sampler, cfg, m, t))]
        raise ConfigError(f"app=bench measures decoders (a step from input_ids to logits) and models that offer "
                          f"images with an example prompt; model {model.name!r} steps {sig.feed_inputs} to "
                          f"{sig.output_names} and offers {sorted(model.offers) or 'nothing'}.")


def _window(runner: Any) -> int | None:
    from plugstack.decode import context_window

    return context_window(runner)[0]


def _headline(s: Scenario) -> dict[str, Any]:
    return {k: round(m["median"], 4) for k, m in s.metrics.items()}


class _progress:
    """A transient progress bar on a terminal's stderr (nothing elsewhere); ``tick`` advances it."""

    def __init__(self, total: int) -> None:
        import sys

        from rich.progress import Progress

        self.bar = Progress(transient=True, disable=not sys.stderr.isatty())
        self.task = self.bar.add_task("benchmarking", total=total)

    def __enter__(self) -> Any:
        self.bar.start()
        return lambda: self.bar.advance(self.task)

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()


def _cell(metrics: dict[str, Any], key: str, scale: float = 1.0, fmt: str = ".1f") -> str:
    return format(metrics[key]["median"] * scale, fmt) if key in metrics else "-"


def _print_table(record: dict[str, Any], out: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    b, load, mem = record["backend"], record["load"], record["memory"]
    weights = load["preparation"].get("weights") or b["dtype"]
    title = (f"{record['choices']['model']} on {b['ran']} ({weights}): load {load['model_load_s']:.2f} s, "
             f"prepare {load['prepare_s']:.2f} s, peak RSS {mem['peak_rss_bytes'] / 2**20:.0f} MiB")
    table = Table(title=title)
    for col in ("scenario", "TTFT ms", "prefill tok/s", "decode tok/s", "images/s", "step p50 ms", "step p99 ms",
                "spread", "J/unit"):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for s in record["scenarios"]:
        m, lat = s["metrics"], s.get("step_latency_s") or {}
        main = "decode_tok_s" if "decode_tok_s" in m else next(iter(m))
        table.add_row(s["name"], _cell(m, "ttft_s", 1000), _cell(m, "prefill_tok_s"), _cell(m, "decode_tok_s"),
                      _cell(m, "images_per_s", fmt=".2f"),
                      f"{lat['p50'] * 1000:.2f}" if lat else "-", f"{lat['p99'] * 1000:.2f}" if lat else "-",
                      f"{m[main]['spread'] * 100:.0f}%",
                      f"{s['joules_per_unit']:.3g}" if s.get("joules_per_unit") is not None else "n/a")
    Console(file=out, width=140).print(table)
    if not record["energy"]["available"]:
        print(f"energy: unavailable ({record['energy']['reason']})", file=out)
