"""The ``generate`` application.

With one prompt, the generated text is streamed to ``ctx.stdout`` as it is produced, then a
newline, and nothing else (logs go to stderr through ``ctx.log``), so
``plugstack app.prompt=... > out.txt`` captures exactly the answer. With ``prompt_file``,
prompts run in batches and results go to a JSONL file, one object per prompt:
``{"prompt", "text", "finish_reason", "prompt_tokens", "completion_tokens"}``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from plugstack.app import App, RunContext
from plugstack.errors import ConfigError
from plugstack.generation import generate, stream
from plugstack.model import Tokenizer
from plugstack.sampling import SamplingParams

__all__ = ["GenerateApp", "read_prompts"]


def sampling_params(cfg: Any) -> SamplingParams:
    """The app config's sampling fields (it inherits them) as validated :class:`SamplingParams`."""
    return SamplingParams(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(SamplingParams)})


def read_prompts(path: str | os.PathLike[str]) -> list[str]:
    """Prompts from a text file (one per non-blank line) or a ``.jsonl`` file
    (one ``{"prompt": "..."}`` object per non-blank line)."""
    p = Path(path).expanduser()
    expected = 'a text file with one prompt per line, or a .jsonl file with {"prompt": "..."} per line'
    if not p.is_file():
        raise ConfigError(f"app.prompt_file={str(path)!r}: no such file. Expected {expected}.")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"app.prompt_file={str(path)!r} is not UTF-8 text ({exc.reason}).") from None
    prompts: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if p.suffix.lower() != ".jsonl":
            prompts.append(line)
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p}:{number}: not valid JSON ({exc.msg}). Expected {expected}.") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ConfigError(f'{p}:{number}: expected an object with a string "prompt" field, got {line[:80]!r}.')
        prompts.append(record["prompt"])
    if not prompts:
        raise ConfigError(f"app.prompt_file={str(path)!r} holds no prompts. Expected {expected}.")
    return prompts


def _write_jsonl_atomic(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Write all records, then move the file into place: no half-written results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class GenerateApp(App):
    """Generate text with ``ctx.runner`` and ``ctx.model.tokenizer``."""

    def run(self, ctx: RunContext) -> int:
        cfg = self.cfg
        params = sampling_params(cfg)
        if cfg.batch_size < 1:
            raise ConfigError(f"app.batch_size={cfg.batch_size} is invalid: expected an integer >= 1.")
        prompts = read_prompts(cfg.prompt_file) if cfg.prompt_file else None
        tokenizer = ctx.model.tokenizer
        if tokenizer is None:
            raise ConfigError(
                f"Model {ctx.model.name!r} has no tokenizer, so the generate app cannot use it: choose a text model."
            )
        if prompts is None:
            return self._stream_one(ctx, tokenizer, params)
        return self._run_file(ctx, tokenizer, params, prompts)

    def _render(self, tokenizer: Tokenizer, prompt: str) -> str:
        if not self.cfg.chat:
            return prompt
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)

    def _stream_one(self, ctx: RunContext, tokenizer: Tokenizer, params: SamplingParams) -> int:
        text = stream(
            ctx.runner, tokenizer, self._render(tokenizer, self.cfg.prompt), params, truncate=self.cfg.truncate
        )
        for delta in text:
            ctx.stdout.write(delta)
            ctx.stdout.flush()
        ctx.stdout.write("\n")
        ctx.stdout.flush()
        r = text.result
        ctx.log.info(
            "generate.result",
            finish_reason=r.finish_reason,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            prefill_ms=round(r.timings.prefill_s * 1000, 1),
            decode_tok_s=round(r.timings.tokens_per_s, 1),
        )
        return 0

    def _run_file(self, ctx: RunContext, tokenizer: Tokenizer, params: SamplingParams, prompts: list[str]) -> int:
        out = Path(self.cfg.output_file).expanduser() if self.cfg.output_file else ctx.output_dir / "generations.jsonl"
        size = self.cfg.batch_size
        records = []
        for start in range(0, len(prompts), size):
            batch = prompts[start : start + size]
            results = generate(
                ctx.runner, tokenizer, [self._render(tokenizer, p) for p in batch], params, truncate=self.cfg.truncate
            )
            for prompt, r in zip(batch, results, strict=True):
                records.append(
                    {
                        "prompt": prompt,
                        "text": r.text,
                        "finish_reason": r.finish_reason,
                        "prompt_tokens": r.prompt_tokens,
                        "completion_tokens": r.completion_tokens,
                    }
                )
            ctx.log.info("generate.batch.done", done=len(records), total=len(prompts))
        _write_jsonl_atomic(out, records)
        ctx.log.info("generate.file.done", prompts=len(records), path=str(out))
        return 0
