"""One run: from a composed config to an application's exit code.

config --registry--> app, model and backend entries (by ``name`` in each group)
model entry(cfg.model)      -> Model     (on first use of ctx.model)
backend entry(cfg.backend)  -> Backend   -> .prepare(model) -> Runner (ctx.runner)
app entry(cfg.app).run(ctx) -> exit code
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import uuid
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

import structlog
from omegaconf import DictConfig, OmegaConf

from . import logs
from .app import RunContext
from .errors import BackendUnavailableError, PlugstackError
from .files import atomic_write
from .registry import Registry, get_registry

__all__ = ["execute", "group_config"]

log = structlog.get_logger("plugstack.run")


def group_config(node: Any) -> Any:
    """What a factory receives: its config dataclass instance when the group has a
    schema, else the DictConfig itself."""
    if isinstance(node, DictConfig) and is_dataclass(OmegaConf.get_type(node)):
        return OmegaConf.to_object(node)
    return node


def _output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(tempfile.mkdtemp(prefix="plugstack-run-"))


def _make_backend(registry: Registry, cfg: DictConfig):
    entry = registry.get("backend", cfg.backend.name)
    backend = entry.create(group_config(cfg.backend))
    availability = backend.probe()
    if not availability.available:
        usable = [
            other.name
            for other in registry.entries("backend")
            if other.name not in (entry.name, "auto") and other.probe()[1].available
        ]
        raise BackendUnavailableError(
            f"Backend {entry.name!r} is not available here: {availability.reason}. "
            f"Available backends: {', '.join(usable) or '(none)'}; choose one with backend=<name>."
        )
    log.info("backend.ready", device=availability.device.name if availability.device else None)
    return backend


def execute(cfg: DictConfig, *, registry: Registry | None = None, stdout=None) -> int:
    """Run the application ``cfg`` selects; return its exit code (errors are logged and
    printed to stderr as one clear line, never raised)."""
    registry = registry or get_registry()
    log_cfg = OmegaConf.to_container(cfg.log, enum_to_str=True)
    logs.configure(str(log_cfg["format"]), str(log_cfg["level"]))
    run_id = uuid.uuid4().hex[:12]
    names = {g: str(cfg[g].name) for g in ("app", "model", "backend")}
    logs.bind_run(run_id=run_id, **names)
    output_dir = _output_dir()
    started = time.time()
    ctx: RunContext | None = None
    code, error = 1, None
    try:
        app_entry = registry.get("app", names["app"])
        model_entry = registry.get("model", names["model"])
        registry.get("backend", names["backend"])  # fail before anything loads
        ctx = RunContext(
            cfg=cfg,
            log=structlog.get_logger("plugstack.app"),
            run_id=run_id,
            output_dir=output_dir,
            stdout=stdout or sys.stdout,
            _load_model=lambda: model_entry.create(group_config(cfg.model)),
            _make_backend=lambda: _make_backend(registry, cfg),
        )
        app = app_entry.create(group_config(cfg.app))
        log.info("run.start", output_dir=str(output_dir))
        registry.notify("plugstack_run_start", ctx=ctx)
        try:
            result = app.run(ctx)
            code = 0 if result is None else int(result)
        except BaseException as exc:
            error = exc
            raise
        finally:
            registry.notify("plugstack_run_end", ctx=ctx, exit_code=_exit_code(code, error), error=error)
    except PlugstackError as exc:
        code = _exit_code(code, exc)
        log.error("run.failed", error=str(exc), error_type=type(exc).__name__)
        print(f"plugstack: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt as exc:
        code = _exit_code(code, exc)
        log.warning("run.interrupted")
    finally:
        if ctx is not None:
            ctx.close()
        _write_run_record(output_dir, cfg, run_id, code, time.time() - started)
    log.info("run.end", exit_code=code, seconds=round(time.time() - started, 3))
    return code


def _exit_code(code: int, error: BaseException | None) -> int:
    """The process exit code for a run that returned ``code`` or raised ``error``:
    2 for a user-facing error, 130 for Ctrl-C, 1 for a bug."""
    if error is None:
        return code
    if isinstance(error, PlugstackError):
        return 2
    return 130 if isinstance(error, KeyboardInterrupt) else 1


def _write_run_record(output_dir: Path, cfg: DictConfig, run_id: str, code: int, seconds: float) -> None:
    """``run.json``: what ran, with what and how it ended — every run dir describes itself."""
    from . import __version__

    record = {
        "run_id": run_id,
        "plugstack_version": __version__,
        "exit_code": code,
        "seconds": round(seconds, 3),
        "choices": {g: str(cfg[g].name) for g in ("app", "model", "backend")},
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
    }
    try:
        atomic_write(output_dir / "run.json", json.dumps(record, indent=2, default=str))
    except OSError as exc:
        log.warning("run.record_failed", error=str(exc))
