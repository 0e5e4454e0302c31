"""Sweeps over plugins whose options differ: ``--multirun backend=cpu,onnx backend.accuracy_level=0,4``.

Hydra composes a sweep's primary config with each swept group at its default choice, so an
option of the swept choices that the default lacks fails there, and a job whose choice lacks
an option fails to compose. plugstack makes such a sweep work as its users expect:

* :func:`sweep_argv` (the CLI, before Hydra runs) turns each option of a swept group into a
  force-add (``++backend.accuracy_level=0,4``), after checking that at least one swept choice
  declares it: an option none of them has is a typo, refused before any job runs;
* :func:`not_applicable` (each job) names the forced options its own choice lacks: the job
  is skipped with that reason instead of failing the sweep.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from hydra.experimental.callback import Callback

from .errors import ConfigError, suggestion_text

__all__ = ["SweepExitCodes", "not_applicable", "sweep_argv"]

MULTIRUN_FLAGS = ("-m", "--multirun")


def _fields(group: str, choice: str) -> set[str] | None:
    """Options the plugin behind ``group=choice`` declares; ``None`` when unknown (a preset YAML)."""
    from .registry import get_registry

    registry = get_registry()
    if choice not in registry.names(group):
        return None
    config = registry.get(group, choice).config
    return {f.name for f in dataclasses.fields(config)} if dataclasses.is_dataclass(config) else None


def sweep_argv(argv: list[str], overrides: list[str]) -> list[str]:
    """``argv`` with the options of swept groups made force-adds (see the module docstring)."""
    from .config import GROUPS, parse_overrides

    if not any(flag in argv for flag in MULTIRUN_FLAGS):
        return argv
    parsed = parse_overrides(overrides)
    if parsed is None:
        return argv
    swept = {o.key_or_group: list(o.sweep_string_iterator()) for o in parsed
             if o.key_or_group in GROUPS and o.is_sweep_override() and not o.package}
    rewritten = {}
    for o in parsed:
        group, _, key = o.key_or_group.partition(".")
        if group not in swept or not key or o.is_delete():
            continue
        declared = [_fields(group, c) for c in swept[group]]
        if all(d is not None and key.split(".")[0] not in d for d in declared):
            known = sorted(set().union(*declared))
            raise ConfigError(f"{group}.{key}: none of the swept {group} choices ({', '.join(swept[group])}) has "
                              f"this option.{suggestion_text(key, known)} Their options: {', '.join(known)}.")
        if not o.input_line.startswith("+"):
            rewritten[o.input_line] = "++" + o.input_line
    return [rewritten.get(a, a) for a in argv]


def not_applicable(cfg: Any, unknown: Sequence[tuple[str, str]]) -> str | None:
    """In a sweep job, why it does not apply: every unknown option in ``unknown`` (``(group,
    key)`` pairs) was force-added for a swept group. ``None`` when it is a real mistake."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not unknown or not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    forced = {o.split("=", 1)[0][2:] for o in HydraConfig.get().overrides.task if o.startswith("++")}
    if not all(f"{g}.{k}" in forced for g, k in unknown):
        return None
    return "; ".join(f"{g} {str(cfg[g].name)!r} has no option {k!r}" for g, k in unknown)


class SweepExitCodes(Callback):
    """A Hydra callback: after a sweep, the exit code of each job (from its ``run.json``)
    reaches the command's own exit code, also when a launcher ran the jobs in other
    processes (joblib, Ray) where the command never sees them return."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        import json
        from pathlib import Path

        from . import cli

        for record in Path(str(config.hydra.sweep.dir)).glob("*/run.json"):
            try:
                cli._exit_codes.append(int(json.loads(record.read_text())["exit_code"]))
            except (OSError, ValueError, KeyError, TypeError):
                cli._exit_codes.append(1)  # a job that left no readable record did not end well
