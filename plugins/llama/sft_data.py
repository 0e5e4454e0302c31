"""Chat-format JSONL for fine-tuning, tokenised with the model's own chat template.

Three formats, one JSON object a line (blank lines skipped): SFT conversations (below),
DPO preference pairs ``{"prompt": [turns ending with the user's], "chosen": [assistant
turns], "rejected": [assistant turns]}`` (TRL's conversational format) and GRPO prompts
``{"prompt": [turns ending with the user's], ...}`` whose other keys go to the reward.

An SFT conversation is ``{"messages": [{"role": "user", "content": "..."}, {"role":
"assistant", "content": "..."}, ...]}`` (blank lines are skipped). A conversation is
rendered whole, as the model will see it when it answers, and each token is marked as the
assistant's or not: the loss is taken on the assistant's tokens only (its replies and the
end-of-turn token that closes each), never on the system prompt, the user's turns or the
template's role headers. A reply's characters are found by rendering the conversation up to
the reply (with the generation prompt) and up to its end: the difference is the reply.

A malformed line is a :class:`ConfigError` naming ``file:line`` and what is wrong there.
Light: no torch (the Trainable makes tensors).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugstack.errors import ConfigError, GenerationError

__all__ = ["Example", "Pair", "Prompt", "encode_conversation", "json_lines", "load_examples", "load_pairs",
           "load_prompts", "read_conversations"]


@dataclass(frozen=True)
class Example:
    """One tokenised conversation: its ids and, for each, whether the loss predicts it."""

    ids: tuple[int, ...]
    targets: tuple[bool, ...]
    #: Where it came from (``file:line``), for messages.
    where: str


def _message_error(where: str, i: int, m: Any) -> str | None:
    if not isinstance(m, dict):
        return f"message {i} is {type(m).__name__}, expected an object with 'role' and 'content'"
    for key in ("role", "content"):
        if not isinstance(m.get(key), str):
            return f"message {i} has no text {key!r} (it holds {sorted(m)})"
    return None


def _conversation(record: Any, where: str) -> list[dict[str, str]]:
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        got = f"an object with keys {sorted(record)}" if isinstance(record, dict) else type(record).__name__
        raise ConfigError(f"{where}: expected an object with a non-empty 'messages' list, got {got}.")
    for i, m in enumerate(messages):
        why = _message_error(where, i, m)
        if why:
            raise ConfigError(f"{where}: {why}.")
    if not any(m["role"] == "assistant" for m in messages):
        raise ConfigError(f"{where}: the conversation has no 'assistant' message, so there is nothing to learn from.")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def json_lines(path: str | Path, setting: str) -> list[tuple[str, Any]]:
    """``(file:line, value)`` of every non-blank line of the JSONL file at ``path``."""
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{setting}={path} cannot be read ({e.strerror or e}). Point it at a chat JSONL "
                          f"file.") from None
    out = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        where = f"{path}:{number}"
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise ConfigError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start}).") from None
        if not text:
            continue
        try:
            out.append((where, json.loads(text)))
        except ValueError as e:
            raise ConfigError(f"{where}: not valid JSON ({e}). Each line must be one JSON object.") from None
    if not out:
        raise ConfigError(f"{setting}={path} holds no record (the file is empty).")
    return out


def read_conversations(path: str | Path,
                       setting: str = "model.finetune.data") -> list[tuple[str, list[dict[str, str]]]]:
    """``(file:line, messages)`` of every conversation in the JSONL file at ``path``."""
    return [(where, _conversation(record, where)) for where, record in json_lines(path, setting)]


def _assistant_spans(tokenizer: Any, messages: Sequence[dict[str, str]], text: str,
                     where: str) -> list[tuple[int, int]]:
    """The character ranges of ``text`` (the whole conversation rendered) that are replies."""
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True) if i else ""
        upto = tokenizer.apply_chat_template(messages[: i + 1], add_generation_prompt=False)
        if not (upto.startswith(before) and text.startswith(upto)):
            raise ConfigError(f"{where}: the model's chat template does not render this conversation one turn "
                              f"after another, so its replies cannot be told from the rest.")
        spans.append((len(before), len(upto.rstrip())))  # the reply and its end-of-turn token, not what follows
    return spans


def encode_conversation(tokenizer: Any, messages: Sequence[dict[str, str]], *, max_length: int,
                        where: str = "") -> Example:
    """``messages`` rendered with the chat template, tokenised and cut at ``max_length``."""
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
        spans = _assistant_spans(tokenizer, messages, text, where)
    except GenerationError as e:
        raise ConfigError(f"{where}: {e}") from None
    encoding = tokenizer.backend.encode(text, add_special_tokens=True)  # as generation encodes a prompt
    ids = encoding.ids[:max_length]
    targets = []
    for j, (start, end) in enumerate(encoding.offsets[: len(ids)]):
        inside = end > start and any(a <= start < b for a, b in spans)
        targets.append(bool(inside and j > 0))  # the first token has nothing before it to predict it
    return Example(tuple(ids), tuple(targets), where)


def _check_chat(tokenizer: Any, setting: str) -> None:
    if getattr(tokenizer, "backend", None) is None or getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError(f"{setting}: this model's tokenizer has no chat template, which chat-format training "
                          f"data needs. Use a model that ships one.")


def load_examples(path: str | Path, tokenizer: Any, *, max_length: int,
                  setting: str = "model.finetune.data") -> tuple[list[Example], int]:
    """Every conversation of ``path`` as an :class:`Example`, and how many were left out
    because ``max_length`` cut away all of their replies."""
    _check_chat(tokenizer, setting)
    examples = [encode_conversation(tokenizer, m, max_length=max_length, where=w)
                for w, m in read_conversations(path, setting)]
    kept = [e for e in examples if any(e.targets)]
    if not kept:
        raise ConfigError(f"{setting}={path}: model.finetune.max_length={max_length} cuts away every reply of "
                          f"every conversation. Raise model.finetune.max_length.")
    return kept, len(examples) - len(kept)


def _turns(record: dict[str, Any], key: str, where: str, *, roles: tuple[str, ...]) -> list[dict[str, str]]:
    turns = record.get(key)
    if not isinstance(turns, list) or not turns:
        raise ConfigError(f"{where}: {key!r} must be a non-empty list of {{\"role\", \"content\"}} objects.")
    for i, m in enumerate(turns):
        why = _message_error(where, i, m) or (None if m["role"] in roles else
                                              f"message {i} has role {m['role']!r}, expected {' or '.join(roles)}")
        if why:
            raise ConfigError(f"{where}: {key}: {why}.")
    return [{"role": m["role"], "content": m["content"]} for m in turns]


def _prompt(record: Any, where: str, kind: str) -> list[dict[str, str]]:
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: expected a {kind} object with a 'prompt' list, got {type(record).__name__}.")
    prompt = _turns(record, "prompt", where, roles=("system", "user", "assistant"))
    if prompt[-1]["role"] != "user":
        raise ConfigError(f"{where}: 'prompt' must end with a user turn (the one to answer), not "
                          f"{prompt[-1]['role']!r}.")
    return prompt


@dataclass(frozen=True)
class Pair:
    """One DPO preference: the prompt with the chosen answer, and with the rejected one."""

    chosen: Example
    rejected: Example
    where: str


def load_pairs(path: str | Path, tokenizer: Any, *, max_length: int,
               setting: str = "model.finetune.data") -> tuple[list[Pair], int]:
    """Every preference pair of ``path`` (see the module) as two :class:`Example` s, and how
    many were left out because ``max_length`` cut away all of either answer."""
    _check_chat(tokenizer, setting)
    pairs = []
    for where, record in json_lines(path, setting):
        prompt = _prompt(record, where, "preference")
        sides = [encode_conversation(tokenizer, prompt + _turns(record, key, where, roles=("assistant",)),
                                     max_length=max_length, where=where) for key in ("chosen", "rejected")]
        pairs.append(Pair(*sides, where))
    kept = [p for p in pairs if any(p.chosen.targets) and any(p.rejected.targets)]
    if not kept:
        raise ConfigError(f"{setting}={path}: model.finetune.max_length={max_length} cuts away the answers of "
                          f"every pair. Raise model.finetune.max_length.")
    return kept, len(pairs) - len(kept)


@dataclass(frozen=True)
class Prompt:
    """One GRPO prompt: its token ids (rendered to be answered) and the record the reward reads."""

    ids: tuple[int, ...]
    record: dict[str, Any]
    where: str


def load_prompts(path: str | Path, tokenizer: Any, *, max_length: int,
                 setting: str = "model.finetune.data") -> list[Prompt]:
    """Every prompt of ``path``; one longer than ``max_length`` tokens is an error naming it."""
    _check_chat(tokenizer, setting)
    out = []
    for where, record in json_lines(path, setting):
        prompt = _prompt(record, where, "prompt")
        try:
            text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True)
        except GenerationError as e:
            raise ConfigError(f"{where}: {e}") from None
        ids = tuple(tokenizer.backend.encode(text, add_special_tokens=True).ids)
        if len(ids) >= max_length:
            raise ConfigError(f"{where}: the prompt is {len(ids)} tokens, which leaves no room for an answer within "
                              f"model.finetune.max_length={max_length}. Shorten it or raise the limit.")
        out.append(Prompt(ids, dict(record), where))
    return out
