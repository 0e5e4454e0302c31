"""The ``generate`` application.

With one prompt, the generated text is streamed to ``ctx.stdout`` as it is produced, then a
newline, and nothing else (logs go to stderr through ``ctx.log``), so
``plugstack app.prompt=... > out.txt`` captures exactly the answer. With ``prompt_file``,
prompts run in batches and results go to a JSONL file, one object per prompt:
``{"index", "prompt", "text", "finish_reason", "prompt_tokens", "completion_tokens"}``
(``index``: the prompt's position in the file), each written as soon as it ends (so in
the order they finish), so an interrupted or failed run keeps every finished answer. Every
prompt is checked to fit before the first is generated.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugstack.app import App, RunContext
from plugstack.decode import context_window, fit_prompts
from plugstack.errors import ConfigError
from plugstack.generation import GenerationResult, generate, stream
from plugstack.model import Tokenizer
from plugstack.sampling import SamplingParams

from .config import DEFAULT_PROMPT

__all__ = ["GenerateApp", "Prompt", "ResultsFile", "read_prompts"]


def sampling_params(cfg: Any) -> SamplingParams:
    """The app config's sampling fields (it inherits them) as validated :class:`SamplingParams`."""
    return SamplingParams(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(SamplingParams)})


@dataclass(frozen=True)
class Prompt:
    """One prompt of a prompt file and where it came from (for messages)."""

    text: str
    where: str


def read_prompts(path: str | os.PathLike[str]) -> list[Prompt]:
    """Prompts from a text file (one per non-blank line) or a ``.jsonl`` file
    (one ``{"prompt": "..."}`` object per non-blank line), each with its ``file:line``."""
    p = Path(path).expanduser()
    expected = 'a text file with one prompt per line, or a .jsonl file with {"prompt": "..."} per line'
    if not p.is_file():
        raise ConfigError(f"app.prompt_file={str(path)!r}: no such file. Expected {expected}.")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"app.prompt_file={str(path)!r} is not UTF-8 text ({exc.reason}).") from None
    prompts: list[Prompt] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if p.suffix.lower() != ".jsonl":
            prompts.append(Prompt(line, f"{p}:{number}"))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p}:{number}: not valid JSON ({exc.msg}). Expected {expected}.") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ConfigError(f'{p}:{number}: expected an object with a string "prompt" field, got {line[:80]!r}.')
        prompts.append(Prompt(record["prompt"], f"{p}:{number}"))
    if not prompts:
        raise ConfigError(f"app.prompt_file={str(path)!r} holds no prompts. Expected {expected}.")
    return prompts


def output_path(cfg: Any, run_dir: Path) -> Path:
    """Where prompt_file's results go, checked before anything is generated."""
    if not cfg.output_file:
        return run_dir / "generations.jsonl"
    out = Path(cfg.output_file).expanduser()
    if out.is_dir():
        raise ConfigError(f"app.output_file={cfg.output_file!r} is a directory: give a file path, "
                          f"e.g. app.output_file={out / 'generations.jsonl'}.")
    above = next(a for a in out.parents if a.exists())
    if not above.is_dir():
        raise ConfigError(f"app.output_file={cfg.output_file!r} cannot be created: {above} is a file, not a "
                          f"directory. Choose another app.output_file.")
    source = Path(cfg.prompt_file).expanduser()
    if out.resolve() == source.resolve():
        raise ConfigError(f"app.output_file={cfg.output_file!r} is the prompt file: writing results there "
                          f"would overwrite the prompts. Choose another app.output_file.")
    return out


def _stdin_is_data() -> bool:
    """A pipe or a file on stdin (not a terminal, not /dev/null, not closed)."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (AttributeError, OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


class ResultsFile:
    """JSON lines written as each result ends (flushed), into a temporary sibling that is
    renamed into place on close, however the run ends: finished work is never lost."""

    def __init__(self, path: Path) -> None:
        self.path, self.written = path, 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # the umask applies, as for any file
        self._file = os.fdopen(fd, "w", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        self.written += 1

    def close(self) -> None:
        self._file.close()
        os.replace(self._tmp, self.path)


class GenerateApp(App):
    """Generate text with ``ctx.runner`` and ``ctx.model.tokenizer``."""

    def run(self, ctx: RunContext) -> int:
        cfg = self.cfg
        params = sampling_params(cfg)
        if cfg.batch_size < 1:
            raise ConfigError(f"app.batch_size={cfg.batch_size} is invalid: expected an integer >= 1.")
        # The prompt file and the output path are checked before the model loads.
        batch = (read_prompts(cfg.prompt_file), output_path(cfg, ctx.output_dir)) if cfg.prompt_file else None
        tokenizer = ctx.model.tokenizer
        if tokenizer is None:
            raise ConfigError(
                f"Model {ctx.model.name!r} has no tokenizer, so the generate app cannot use it: choose a text model."
            )
        if batch is None:
            return self._stream_one(ctx, tokenizer, params)
        return self._run_file(ctx, tokenizer, params, *batch)

    def _render(self, tokenizer: Tokenizer, prompt: str) -> str:
        if not self.cfg.chat:
            return prompt
        system = [{"role": "system", "content": self.cfg.system}] if self.cfg.system else []
        return tokenizer.apply_chat_template([*system, {"role": "user", "content": prompt}],
                                             add_generation_prompt=True)

    def _prompt(self) -> str:
        """app.prompt, else a piped stdin, else the default question."""
        if self.cfg.prompt is not None:
            return self.cfg.prompt
        if _stdin_is_data():
            text = sys.stdin.read().strip()
            if not text:
                raise ConfigError("stdin is empty: pipe a prompt in, or give one: plugstack \"Your question?\"")
            return text
        return DEFAULT_PROMPT

    def _stream_one(self, ctx: RunContext, tokenizer: Tokenizer, params: SamplingParams) -> int:
        text = stream(ctx.runner, tokenizer, self._render(tokenizer, self._prompt()), params,
                      truncate=self.cfg.truncate)
        for delta in text:
            ctx.stdout.write(delta)
            ctx.stdout.flush()
        ctx.stdout.write("\n")
        ctx.stdout.flush()
        r = text.result
        if r.finish_reason == "length":
            print(f"plugstack: note: the answer stopped at {r.completion_tokens} tokens (app.max_new_tokens="
                  f"{params.max_new_tokens}, or the context window); raise app.max_new_tokens for more.",
                  file=sys.stderr)
        ctx.log.info(
            "generate.result",
            finish_reason=r.finish_reason,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            prefill_ms=round(r.timings.prefill_s * 1000, 1),
            decode_tok_s=round(r.timings.tokens_per_s, 1),
        )
        return 0

    def _run_file(self, ctx: RunContext, tokenizer: Tokenizer, params: SamplingParams, prompts: list[Prompt],
                  path: Path) -> int:
        rendered = self._checked(ctx, tokenizer, params, prompts)
        out = ResultsFile(path)
        size, status = self.cfg.batch_size, "interrupted"
        try:
            for start in range(0, len(prompts), size):
                def write(row: int, r: GenerationResult, start: int = start) -> None:
                    out.write({"index": start + row, "prompt": prompts[start + row].text, "text": r.text,
                               "finish_reason": r.finish_reason, "prompt_tokens": r.prompt_tokens,
                               "completion_tokens": r.completion_tokens})

                generate(ctx.runner, tokenizer, rendered[start : start + size], params, truncate=self.cfg.truncate,
                         on_result=write)
                ctx.log.info("generate.batch.done", done=out.written, total=len(prompts))
            status = "done"
        finally:
            out.close()
            level = ctx.log.info if status == "done" else ctx.log.warning
            level(f"generate.file.{status}", kept=out.written, total=len(prompts), path=str(out.path))
        return 0

    def _checked(self, ctx: RunContext, tokenizer: Tokenizer, params: SamplingParams,
                 prompts: list[Prompt]) -> list[str]:
        """Every prompt rendered, and checked to fit before the first is generated."""
        rendered = [self._render(tokenizer, p.text) for p in prompts]
        window_len, window = context_window(ctx.runner)
        if self.cfg.truncate:  # only empty prompts can fail; generate() logs each truncation
            window_len = None
        fit_prompts([tokenizer.encode(r) for r in rendered], params.max_new_tokens, window_len, False,
                    window, labels=[f"The prompt at {p.where}" for p in prompts])
        return rendered
