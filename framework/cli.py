"""The ``plugstack`` command.

    plugstack [OVERRIDES...]      compose (Hydra) and run the chosen application
    plugstack plugins [--json]    every discovered plugin, with broken ones and why
    plugstack backends [--json]   every backend: available here or why not, and its device
    plugstack report DIR          tables and plots from the app=bench results under DIR

stdout carries only an application's (or a listing's) output; logs go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import traceback
from collections.abc import Iterator, Sequence

from . import logs
from .errors import ConfigError, PlugstackError, Terminated

__all__ = ["main"]

_exit_codes: list[int] = []


def _fail(message: str, code: int = 2) -> int:
    print(f"plugstack: error: {message}", file=sys.stderr)
    return code


# -- plugstack plugins / backends ---------------------------------------------------------


def _plugins(args: argparse.Namespace) -> int:
    from .registry import get_registry

    registry = get_registry()
    records = list(registry.plugins.values())
    if args.json:
        print(json.dumps([r.as_dict() for r in records], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="plugstack plugins")
    for column in ("plugin", "provides", "distribution", "status", "error"):
        table.add_column(column, overflow="fold")
    for r in records:
        provides = ", ".join(f"{kind} {name}" for kind, name in r.provides) or "-"
        dist = f"{r.distribution} {r.version}" if r.distribution else "-"
        status = {"ok": "[green]ok[/]", "broken": "[red]broken[/]"}.get(r.status, f"[yellow]{r.status}[/]")
        table.add_row(r.name, provides, dist, status, r.error or "")
    Console(soft_wrap=False).print(table)
    return 0


def _backends(args: argparse.Namespace) -> int:
    from .registry import get_registry

    rows = []
    for entry in get_registry().entries("backend"):
        _, availability = entry.probe()  # a broken backend is reported, not fatal
        row = {"name": entry.name, "plugin": entry.plugin, "available": availability.available,
               "reason": availability.reason, "device": None}
        if availability.device is not None:
            d = availability.device
            row["device"] = {
                "name": d.name,
                "memory_bytes": d.memory_bytes,
                "threads": d.threads,
                "dtypes": list(d.dtypes),
                **({"extra": d.extra} if d.extra else {}),
            }
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="plugstack backends")
    for column in ("backend", "available", "device", "memory", "threads", "dtypes"):
        table.add_column(column, overflow="fold")
    notes = []
    for row in rows:
        d = row["device"] or {}
        mem = f"{d['memory_bytes'] / 2**30:.1f} GiB" if d.get("memory_bytes") else "-"
        table.add_row(row["name"], "[green]yes[/]" if row["available"] else "[red]no[/]", d.get("name", "-"),
                      mem, str(d.get("threads") or "-"), ", ".join(d.get("dtypes", [])) or "-")
        details = row["reason"] or "; ".join(f"{k}={v}" for k, v in (d.get("extra") or {}).items())
        if details:
            notes.append(f"[bold]{row['name']}[/]: {details}")
    console = Console()
    console.print(table)
    for note in notes:
        console.print(note, highlight=False)
    return 0


def _report(argv: Sequence[str]) -> int:
    """Tables and plots from every app=bench result under a directory (see ``plugstack report -h``)."""
    from .registry import get_registry

    get_registry()  # the bench app is a plugin: report works when it is installed
    try:
        from plugstack.plugins.bench.report import main as report
    except ImportError as exc:
        return _fail(f"plugstack report needs the bench app ({exc}).")
    try:
        return report(list(argv))
    except PlugstackError as exc:
        return _fail(str(exc))


SUBCOMMANDS = {"plugins": _plugins, "backends": _backends, "report": _report}


def _subcommand(argv: Sequence[str]) -> int:
    if argv[0] == "report":
        return _report(argv[1:])
    parser = argparse.ArgumentParser(prog=f"plugstack {argv[0]}", description=SUBCOMMANDS[argv[0]].__doc__)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv[1:])
    try:
        return SUBCOMMANDS[argv[0]](args)
    except PlugstackError as exc:
        return _fail(str(exc))


# -- plugstack [overrides] ----------------------------------------------------------------


def _overrides(argv: Sequence[str]) -> list[str]:
    """The positional overrides of a Hydra command line (flags and their values removed)."""
    from hydra._internal.utils import get_args_parser  # Hydra's own parser: same grammar

    try:
        return list(get_args_parser().parse_args(list(argv)).overrides)
    except SystemExit:  # malformed flags: let Hydra report them
        return []


def _run_hydra(argv: Sequence[str]) -> int:
    import hydra
    from omegaconf import DictConfig

    from .config import CONFIG_MODULE
    from .run import execute

    @hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name="config", version_base="1.3")
    def _task(cfg: DictConfig) -> None:
        _label_job()
        _exit_codes.append(execute(cfg))
        if _exit_codes[-1] in (130, 143):
            raise KeyboardInterrupt  # stop a sweep too, not only this job

    _exit_codes.clear()
    saved = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = ["plugstack", *argv]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing and exiting 1
    try:
        _task()
    except KeyboardInterrupt:
        return max(_exit_codes, default=130)
    except Exception as exc:
        return _failure(exc)
    finally:
        sys.argv = saved[0]
        if saved[1] is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved[1]
    return max(_exit_codes, default=0)


def _label_job() -> None:
    """In a sweep, say on stdout which job the output that follows belongs to."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        shown = [o.removeprefix("++") for o in hc.overrides.task if not o.startswith("app.prompt=")]
        print(f"[job {hc.job.num}] {' '.join(shown)}".rstrip(), flush=True)


def _failure(exc: Exception) -> int:
    """An error raised outside a run (composition, run directory): the user's mistake or
    the machine's (exit 2, one line), else a bug (exit 1, with the traceback to report)."""
    from .config import explain
    from .run import environment_error

    if isinstance(exc, PlugstackError):
        return _fail(str(exc))
    explained = explain(exc) or (environment_error(exc) if isinstance(exc, OSError) else None)
    if explained is not None:
        return _fail(str(explained))
    traceback.print_exception(exc)
    return _fail(f"internal error ({type(exc).__name__}: {exc}). This is a bug in plugstack or a plugin: "
                 "please report it with the traceback above.", code=1)


def _group_lines(loader, parent: str = "") -> list[str]:
    """``group: choice, choice`` for every config group outside ``hydra/``, recursively."""
    from hydra.core.object_type import ObjectType

    lines = []
    for group in sorted(loader.list_groups(parent)):
        path = f"{parent}/{group}" if parent else group
        if path == "hydra":
            continue
        options = loader.get_group_options(path, ObjectType.CONFIG)
        if options:
            lines.append(f"{path}: {', '.join(options)}")
        lines += _group_lines(loader, path)
    return lines


def _help(argv: Sequence[str]) -> int:
    """``--help``, rendered from the same template Hydra uses (``hydra/help``). Hydra's
    own renderer also walks every ``hydra/*`` group only to drop them, doubling start-up;
    this lists the application's groups directly."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict

    from .config import CONFIG_MODULE

    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        groups = "\n".join(_group_lines(GlobalHydra.instance().config_loader()))
        cfg = compose(config_name="config", overrides=_overrides(argv), return_hydra_config=True)
    help_cfg = OmegaConf.to_container(cfg.hydra.help, resolve=False)
    with open_dict(cfg):
        del cfg["hydra"]
    text = (
        str(help_cfg["template"])
        .replace("${hydra.help.header}", str(help_cfg["header"]))
        .replace("${hydra.help.footer}", str(help_cfg["footer"]))
        .replace("$APP_CONFIG_GROUPS", groups)
        .replace("$CONFIG", OmegaConf.to_yaml(cfg))
    )
    print(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logs.configure("console", "WARNING")  # until the run's own settings apply
    with _sigterm_as_interrupt():
        if argv and argv[0] in SUBCOMMANDS:
            return _subcommand(argv)
        try:
            from .config import check_choices, prepare_hydra
            from .sweeps import sweep_argv

            argv = _with_prompt(argv)
            prepare_hydra()
            overrides = _overrides(argv)
            check_choices(overrides)
            argv = sweep_argv(argv, overrides)
            if "--help" in argv or "-h" in argv:
                return _help(argv)
        except BrokenPipeError:
            raise  # a reader that closed the pipe (`| head`): entry_point exits 141 quietly
        except Exception as exc:
            return _failure(exc)
        return _run_hydra(argv)


def _with_prompt(argv: list[str]) -> list[str]:
    """Words that are not flags or overrides are the prompt (``plugstack "Hi, there?"``)."""
    from .prompt_args import literal_override, split_prompt

    argv, prompt = split_prompt(argv)
    if prompt is None:
        return argv
    if any(a.lstrip("+").startswith("app.prompt=") for a in argv):
        raise ConfigError(f"the prompt is given twice: as {prompt!r} and as app.prompt=...; give one.")
    overrides = [i for i, a in enumerate(argv) if not a.startswith("-") and "=" in a]
    at = overrides[-1] + 1 if overrides else len(argv)  # next to the others: argparse takes one run of them
    return [*argv[:at], literal_override("app.prompt", prompt), *argv[at:]]


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops a run the way Ctrl-C does: finished work kept, ``run.json`` written."""

    def _raise(signum: int, frame: object) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _safe_stdout() -> None:
    """A stdout that cannot encode some characters prints them as ``?`` instead of failing."""
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    if encoding and encoding != "utf8" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")
        print(f"plugstack: note: stdout's encoding is {sys.stdout.encoding}: characters it cannot show "
              "print as '?' (set PYTHONIOENCODING=utf-8 to keep them).", file=sys.stderr)


def entry_point() -> None:
    """Console-script entry: exit with the run's code; Ctrl-C outside a run exits 130
    quietly; a closed stdout (``| head``) exits 141 without a traceback."""
    _safe_stdout()
    try:
        code = main()
        sys.stdout.flush()
    except KeyboardInterrupt as exc:
        code = 143 if isinstance(exc, Terminated) else 130
    except BrokenPipeError:
        code = 141
    if code == 141:  # nothing more can reach the reader; keep the interpreter's final flush quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(code)
