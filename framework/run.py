"""One run: from a composed config to an application's exit code.

config --registry--> app, model and backend entries (by ``name`` in each group)
model entry(cfg.model)      -> Model     (on first use of ctx.model)
backend entry(cfg.backend)  -> Backend   -> .prepare(model) -> Runner (ctx.runner)
app entry(cfg.app).run(ctx) -> exit code
"""

from __future__ import annotations

import errno
import json
import os
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
from .config import check_keys, unknown_keys
from .errors import BackendUnavailableError, PlugstackError, StorageError, Terminated
from .files import STORAGE_ERRNOS, atomic_write
from .registry import Registry, get_registry
from .sweeps import not_applicable

__all__ = ["environment_error", "execute", "exit_code", "group_config", "redacted"]

log = structlog.get_logger("plugstack.run")


def group_config(node: Any) -> Any:
    """What a factory receives: its config dataclass instance when the group has a
    schema, else the DictConfig itself."""
    from omegaconf.errors import OmegaConfBaseException

    from .config import explain

    try:
        if isinstance(node, DictConfig) and is_dataclass(OmegaConf.get_type(node)):
            return OmegaConf.to_object(node)
        return node
    except OmegaConfBaseException as exc:  # e.g. an unresolvable ${...} in a value
        raise explain(exc) from None


#: OS errors that say something about this machine, not about a bug: the storage ones, and
#: a path that names a directory or is too long.
_ENVIRONMENT_ERRNOS = STORAGE_ERRNOS | {errno.EISDIR, errno.ENAMETOOLONG}


def environment_error(exc: OSError) -> PlugstackError | None:
    """An OS error caused by the environment as a :class:`StorageError` naming the path and
    the variable that moves it; ``None`` for other OS errors."""
    if exc.errno not in _ENVIRONMENT_ERRNOS:
        return None
    from .files import cache_dir, home_setting, storage_error

    path = Path(os.path.abspath(exc.filename)) if isinstance(exc.filename, str) else None
    outputs = Path(os.path.abspath(os.environ.get("PLUGSTACK_OUTPUTS") or "outputs"))
    for root, what, setting in ((outputs, "run directories", "PLUGSTACK_OUTPUTS"),
                                (cache_dir(), "the cache", home_setting())):
        related = path is not None and (path.is_relative_to(root) or root.is_relative_to(path))
        err = storage_error(exc, root, what=what, setting=setting) if related else None
        if err is not None:
            return err
    return StorageError(f"cannot write {exc.filename or 'a file'}: {exc.strerror or exc}. Check the path; "
                        "PLUGSTACK_OUTPUTS moves run directories and PLUGSTACK_HOME the caches.")


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
            f"Backend {entry.name!r} is not available here: {str(availability.reason).rstrip('.')}. "
            f"Available backends: {', '.join(usable) or '(none)'}; choose one with backend=<name>."
        )
    running = backend.runs_as()
    if running:  # every later line names the backend that runs, not only the one chosen
        structlog.contextvars.bind_contextvars(backend=running, backend_choice=entry.name)
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
    skipped = None
    try:
        skipped = not_applicable(cfg, unknown_keys(cfg))
        if skipped is not None:  # a sweep's option that this job's plugin lacks: not a mistake
            return _skip(output_dir, cfg, run_id, skipped, stdout or sys.stdout)
        check_keys(cfg)
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
            registry.notify("plugstack_run_end", ctx=ctx, exit_code=exit_code(code, error), error=error)
    except BrokenPipeError as exc:
        code = exit_code(code, exc)  # the reader of stdout went away (`| head`): stop quietly
        log.info("run.stdout_closed")
    except (PlugstackError, OSError) as exc:
        failure = exc if isinstance(exc, PlugstackError) else environment_error(exc)
        if failure is None:
            raise  # an OS error that is not about the environment: a bug
        code = exit_code(code, failure)
        error = failure
        log.error("run.failed", error=str(failure), error_type=type(exc).__name__)
        print(f"plugstack: error: {failure}", file=sys.stderr)
    except KeyboardInterrupt as exc:
        code = exit_code(code, exc)
        log.warning("run.interrupted", signal="SIGTERM" if isinstance(exc, Terminated) else "SIGINT")
    finally:
        ran = None
        if ctx is not None:
            ran = ctx._backend.runs_as() if ctx._backend is not None else None
            ctx.close()
        if skipped is None:
            failed = str(error) if isinstance(error, PlugstackError) else None
            _write_run_record(output_dir, cfg, run_id, code, time.time() - started, ran, error=failed)
    log.info("run.end", exit_code=code, seconds=round(time.time() - started, 3))
    return code


def exit_code(code: int, error: BaseException | None) -> int:
    """The process exit code for a run that returned ``code`` or raised ``error``: 2 for
    the user's mistake, 130 for Ctrl-C, 143 for SIGTERM, 141 when stdout closed, 1 for a bug."""
    if error is None:
        return code
    if isinstance(error, PlugstackError):
        return 2
    if isinstance(error, BrokenPipeError):
        return 141
    if isinstance(error, KeyboardInterrupt):
        return 143 if isinstance(error, Terminated) else 130
    return 1


def _plain(cfg: DictConfig) -> Any:
    """The config as plain data, resolved where it can be (a bad ``${...}`` stays as written)."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    except OmegaConfBaseException:
        return OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)


#: Config keys whose values a run record never holds (run.json is as readable as any result).
SECRET_KEYS = ("api_key", "password", "secret")


def redacted(value: Any) -> Any:
    """``value`` with every secret-named key's value replaced by ``"***"``."""
    if isinstance(value, dict):
        return {k: "***" if str(k).endswith(SECRET_KEYS) and v is not None else redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value


def _skip(output_dir: Path, cfg: DictConfig, run_id: str, reason: str, stdout: Any) -> int:
    """A sweep job that does not apply: said on stdout and in ``run.json``, exit 0."""
    log.warning("run.skipped", reason=reason)
    print(f"skipped: {reason}", file=stdout, flush=True)
    _write_run_record(output_dir, cfg, run_id, 0, 0.0, None, skipped=reason)
    return 0


def _write_run_record(output_dir: Path, cfg: DictConfig, run_id: str, code: int, seconds: float,
                      ran: str | None, *, error: str | None = None, skipped: str | None = None) -> None:
    """``run.json``: what ran, with what and how it ended — every run dir describes itself."""
    from . import __version__

    record = {
        "run_id": run_id,
        "plugstack_version": __version__,
        "exit_code": code,
        "seconds": round(seconds, 3),
        "choices": {g: str(cfg[g].name) for g in ("app", "model", "backend")},
        "backend_ran": ran or str(cfg.backend.name),  # auto names its choice
        **({"error": error} if error else {}),
        **({"skipped": skipped} if skipped else {}),
        "config": redacted(_plain(cfg)),
    }
    try:
        atomic_write(output_dir / "run.json", json.dumps(record, indent=2, default=str))
    except OSError as exc:
        log.warning("run.record_failed", error=str(exc))
