"""Readers of training JSONL: SFT conversations, DPO preference pairs and GRPO prompts.

A user trains on their own data by writing JSONL in the same formats as the shipped files
(one JSON object per line, blank lines skipped):

- ``sft``: ``{"messages": [{"role": ..., "content": ...}, ...], "fact_id"?, "facts"?, "decline"?}``,
  ending with an assistant turn (the loss is on assistant turns).
- ``dpo``: ``{"prompt": [messages ending with a user turn], "chosen": [assistant turns],
  "rejected": [assistant turns], "kind"?, "fact_id"?}`` (TRL's conversational preference format).
- ``grpo``: ``{"prompt": [messages ending with a user turn], "facts": [accepted strings]}`` or
  ``{"prompt": ..., "decline": true}``, the record :func:`plugstack.plugins.support.reward.reward` scores.

Every file is validated whole before training allocates anything: each problem is a
:class:`~plugstack.errors.ConfigError` naming ``file:line`` and what was expected. The work a
file controls is bounded (bytes per line, bytes per file, turns per record), and nothing in a
file is ever used as a path: records are text, returned as copies of known keys only.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from plugstack.errors import ConfigError

__all__ = ["KINDS", "MAX_FILE_BYTES", "MAX_LINE_BYTES", "MAX_TURNS", "read_dpo", "read_grpo", "read_jsonl",
           "read_sft", "validate"]

MAX_LINE_BYTES = 64 * 1024
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_TURNS = 64
KINDS = ("sft", "dpo", "grpo")
ROLES = ("system", "user", "assistant")

_REQUIRED = {"sft": ("messages",), "dpo": ("prompt", "chosen", "rejected"), "grpo": ("prompt",)}
_OPTIONAL = {"sft": ("fact_id", "facts", "decline", "id"), "dpo": ("kind", "fact_id", "id"),
             "grpo": ("fact_id", "facts", "decline", "id")}


class _Bad(Exception):
    """One record's problem, before the location is known."""


def _turns(value: Any, key: str) -> list[dict[str, str]]:
    """``value`` checked as a list of ``{"role", "content"}`` objects (fresh copies)."""
    if not isinstance(value, list) or not value:
        raise _Bad(f"{key!r} must be a non-empty list of {{\"role\", \"content\"}} objects, got {_kind(value)}")
    if len(value) > MAX_TURNS:
        raise _Bad(f"{key!r} has {len(value)} turns; at most {MAX_TURNS} are accepted")
    out = []
    for i, turn in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise _Bad(f"{where} must be an object with \"role\" and \"content\", got {_kind(turn)}")
        extra = sorted(set(turn) - {"role", "content"})
        if extra:
            raise _Bad(f"{where} has unexpected key {extra[0]!r}; expected only \"role\" and \"content\"")
        for field in ("role", "content"):
            if not isinstance(turn.get(field), str):
                got = "nothing" if field not in turn else _kind(turn[field])
                raise _Bad(f"{where}.{field} must be a string, got {got}")
        if turn["role"] not in ROLES:
            raise _Bad(f"{where} has unknown role {turn['role']!r}; expected one of {', '.join(ROLES)}")
        if turn["role"] == "system" and i != 0:
            raise _Bad(f"{where} is a system turn; a system turn may only come first")
        if turn["role"] == "assistant" and not turn["content"].strip():
            raise _Bad(f"{where} is an empty assistant turn")
        out.append({"role": turn["role"], "content": turn["content"]})
    return out


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _prompt(record: dict[str, Any]) -> list[dict[str, str]]:
    prompt = _turns(record["prompt"], "prompt")
    if prompt[-1]["role"] != "user":
        raise _Bad("'prompt' must end with a user turn (the question the model answers)")
    return prompt


def _answer_turns(value: Any, key: str) -> list[dict[str, str]]:
    turns = _turns(value, key)
    if any(t["role"] != "assistant" for t in turns):
        raise _Bad(f"{key!r} must hold assistant turns only")
    return turns


def _facts(record: dict[str, Any], out: dict[str, Any], *, required: bool) -> None:
    """Copy ``facts`` / ``decline`` into ``out``; a GRPO record needs one of them (the reward does)."""
    decline = record.get("decline", False)
    if not isinstance(decline, bool):
        raise _Bad(f"'decline' must be true or false, got {_kind(decline)}")
    facts = record.get("facts", [])
    if not isinstance(facts, list) or not all(isinstance(f, str) and f.strip() for f in facts):
        raise _Bad("'facts' must be a list of non-empty strings (the answers that count as correct)")
    if decline and facts:
        raise _Bad("a record with \"decline\": true must have no 'facts'")
    if required and not decline and not facts:
        raise _Bad("a GRPO record needs 'facts' (a non-empty list of accepted strings) or \"decline\": true")
    if "facts" in record or "decline" in record:
        out["facts"] = list(facts)
    if decline:
        out["decline"] = True


def validate(record: Any, kind: str) -> dict[str, Any]:
    """``record`` checked as a ``kind`` record (``sft``, ``dpo``, ``grpo``): a copy of its known keys.

    Raises :class:`ConfigError` (without a location; the readers add ``file:line``)."""
    try:
        return _validate(record, kind)
    except _Bad as bad:
        raise ConfigError(str(bad)) from None


def _validate(record: Any, kind: str) -> dict[str, Any]:
    if kind not in KINDS:
        raise ConfigError(f"Unknown record kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not isinstance(record, dict):
        raise _Bad(f"expected a JSON object per line, got {_kind(record)}")
    missing = [k for k in _REQUIRED[kind] if k not in record]
    if missing:
        raise _Bad(f"missing key {missing[0]!r}; a {kind} record needs {', '.join(map(repr, _REQUIRED[kind]))}")
    allowed = set(_REQUIRED[kind]) | set(_OPTIONAL[kind])
    extra = sorted(set(record) - allowed)
    if extra:
        raise _Bad(f"unexpected key {extra[0]!r}; a {kind} record has keys {', '.join(sorted(allowed))}")
    for key in ("fact_id", "kind"):
        if key in record and not isinstance(record[key], str):
            raise _Bad(f"{key!r} must be a string, got {_kind(record[key])}")
    if "id" in record and (isinstance(record["id"], bool) or not isinstance(record["id"], (str, int))):
        raise _Bad(f"'id' must be a string or an integer, got {_kind(record['id'])}")
    out: dict[str, Any] = {}
    if kind == "sft":
        out["messages"] = _turns(record["messages"], "messages")
        if out["messages"][-1]["role"] != "assistant":
            raise _Bad("'messages' must end with an assistant turn (the answer the model learns)")
        if not any(t["role"] == "user" for t in out["messages"]):
            raise _Bad("'messages' needs a user turn before the assistant's answer")
    else:
        out["prompt"] = _prompt(record)
    if kind == "dpo":
        out["chosen"] = _answer_turns(record["chosen"], "chosen")
        out["rejected"] = _answer_turns(record["rejected"], "rejected")
        if out["chosen"] == out["rejected"]:
            raise _Bad("'chosen' and 'rejected' are identical; a preference pair needs two different answers")
    else:
        _facts(record, out, required=kind == "grpo")
    out.update({k: record[k] for k in ("fact_id", "kind", "id") if k in record})
    return out


def _lines(path: Path, max_line_bytes: int, max_file_bytes: int) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each non-blank line, the bounds and UTF-8 checked as it reads."""
    try:
        info = os.stat(path)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the training data ({err.strerror}); expected a JSONL file") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{path}: is not a regular file; expected a JSONL file")
    if info.st_size > max_file_bytes:
        raise ConfigError(f"{path}: is {info.st_size} bytes; training JSONL is limited to {max_file_bytes} bytes")
    total = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(iter(lambda: f.readline(max_line_bytes + 2), b""), start=1):
            total += len(raw)
            if total > max_file_bytes:  # the file grew while being read
                raise ConfigError(f"{path}: is over {max_file_bytes} bytes; training JSONL is limited to that")
            body = raw.rstrip(b"\n").rstrip(b"\r")
            if len(body) > max_line_bytes:
                raise ConfigError(f"{path}:{number}: line is longer than {max_line_bytes} bytes; expected one "
                                  f"record of at most that per line")
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ConfigError(f"{path}:{number}: byte {err.start + 1} is not valid UTF-8; expected UTF-8 "
                                  f"text") from None
            if number == 1:
                text = text.removeprefix("\ufeff")
            if text.strip():
                yield number, text


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # which one, looked up only on the error path
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _Bad(f"key {twice!r} appears twice in one object; expected each key once")
    return out


def _reject_constant(name: str) -> Any:
    raise _Bad(f"{name} is not a JSON value")


def _parse(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise _Bad(f"malformed JSON ({err.msg} at column {err.colno}); expected one JSON object per line") from None
    except RecursionError:
        raise _Bad("JSON is nested too deeply; expected a flat record") from None
    except ValueError as err:  # e.g. an integer with more digits than Python converts
        raise _Bad(f"malformed JSON ({err}); expected one JSON object per line") from None


def read_jsonl(path: str | os.PathLike[str], kind: str, *, max_line_bytes: int = MAX_LINE_BYTES,
               max_file_bytes: int = MAX_FILE_BYTES) -> list[dict[str, Any]]:
    """Every record of the JSONL file ``path``, validated as ``kind`` (``sft``, ``dpo``, ``grpo``)."""
    if kind not in KINDS:
        raise ConfigError(f"Unknown record kind {kind!r}; expected one of {', '.join(KINDS)}")
    path = Path(path)
    records = []
    for number, text in _lines(path, max_line_bytes, max_file_bytes):
        try:
            records.append(_validate(_parse(text), kind))
        except _Bad as bad:
            raise ConfigError(f"{path}:{number}: {bad}") from None
    if not records:
        raise ConfigError(f"{path}: has no records; expected one JSON {kind} record per line")
    return records


def read_sft(path: str | os.PathLike[str], **bounds: int) -> list[dict[str, Any]]:
    """SFT conversations of ``path`` (see the module docstring for the format)."""
    return read_jsonl(path, "sft", **bounds)


def read_dpo(path: str | os.PathLike[str], **bounds: int) -> list[dict[str, Any]]:
    """DPO preference pairs of ``path``."""
    return read_jsonl(path, "dpo", **bounds)


def read_grpo(path: str | os.PathLike[str], **bounds: int) -> list[dict[str, Any]]:
    """GRPO prompts (with the facts the reward checks) of ``path``."""
    return read_jsonl(path, "grpo", **bounds)
