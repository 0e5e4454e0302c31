"""Prompts as people type them: ``plugstack "What's 2+2, roughly?"``.

An argument that is neither a flag (nor a flag's value) nor a Hydra override of one of
plugstack's config roots is part of the prompt, taken literally: it reaches the app as
``app.prompt`` through an override quoted so that Hydra's grammar and OmegaConf's
``${...}`` interpolation leave every character as typed (checked by parsing it back).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .errors import ConfigError

__all__ = ["literal_override", "split_prompt"]

#: Top-level keys an override may set (the rest of a command line is the prompt).
ROOTS = ("backend", "model", "app", "log", "hydra")
_OVERRIDE = re.compile(r"^(?:~|\+{1,2})?(?P<key>[A-Za-z_][\w\-]*)(?:[./@:][\w\-./@:]*)?(?:=|$)")


def _flag_values() -> tuple[set[str], dict[str, tuple[str, ...]]]:
    """Hydra's flags that take a value, and those whose value is optional (with its choices)."""
    from hydra._internal.utils import get_args_parser

    required, optional = set(), {}
    for action in get_args_parser()._actions:
        if action.nargs == 0 or not action.option_strings:
            continue
        if action.nargs == "?":
            optional.update({flag: tuple(action.choices or ()) for flag in action.option_strings})
        else:
            required.update(action.option_strings)
    return required, optional


def _is_override(arg: str) -> bool:
    match = _OVERRIDE.match(arg)
    if match is None:
        return False
    return arg.startswith(("~", "+")) or match["key"] in ROOTS


def split_prompt(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """``argv`` without the prompt's words, and the prompt (``None`` when there is none)."""
    if "-sc" in argv or "--shell-completion" in argv:
        return list(argv), None  # completion queries are Hydra's business
    required, optional = _flag_values()
    kept, words = [], []
    args = iter(argv)
    for arg in args:
        flag = arg.split("=", 1)[0]
        if arg.startswith("-") and flag in required and "=" not in arg:
            kept += [arg, next(args, "")]
        elif arg.startswith("-") and flag in optional:
            kept.append(arg)
        elif arg.startswith("-") or _is_override(arg):
            kept.append(arg)
        elif kept and kept[-1] in optional and arg in optional[kept[-1]]:
            kept.append(arg)  # e.g. `--info config`
        else:
            words.append(arg)
    return kept, (" ".join(words) if words else None)


def literal_override(key: str, text: str) -> str:
    """``key='text'`` quoted so that Hydra and OmegaConf read back exactly ``text``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    quoted = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)  # OmegaConf: a literal ${
    quoted = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), quoted)  # Hydra
    override = f"{key}='{quoted}'"
    value = OverridesParser.create().parse_overrides([override])[0].value()
    if OmegaConf.create({"v": value}).v != text:
        raise ConfigError(f"could not pass this prompt through literally: {text[:80]!r}. Use app.prompt_file.")
    return override
