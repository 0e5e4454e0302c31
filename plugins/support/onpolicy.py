"""On-policy preference pairs: the model's own wrong answers, rejected against the right ones.

The shipped DPO pairs (``make_data.dpo``) reject a made-up fact, an invented policy or a rude
tone next to the reference answer: pairs an SFT model already ranks right. What DPO can fix
are the mistakes the model really makes, so this answers every training prompt (SFT
questions and the paraphrased GRPO prompts) with the model itself, greedily and by sampling,
judges each answer by its fact, and writes a pair for each wrong one: the reference answer
chosen, the model's answer rejected. Held-out questions are never asked.

    python -m plugstack.plugins.support.onpolicy --adapter support --out runs/onpolicy.jsonl \\
        --prompts-out runs/uncertain.jsonl   # GRPO prompts: answered both right and wrong
    plugstack app=train model=smollm2 model.finetune.objective=dpo \\
        model.finetune.data=runs/onpolicy.jsonl model.finetune.init_adapter=<the SFT adapter> ...
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from . import data_path, fact_correct, read_grpo, read_sft
from .knowledge import DECLINES, FACTS

__all__ = ["main", "pairs", "uncertain"]

ANSWERS = {item.id: item.answer for item in (*FACTS, *DECLINES)}


def _prompts() -> list[dict[str, Any]]:
    """Every training prompt with what judges it: SFT questions, then the GRPO paraphrases."""
    out = []
    for r in read_sft(data_path("sft_train")):
        out.append({**r, "prompt": r["messages"][:-1]})
    out += read_grpo(data_path("grpo_train"))
    return out


def pairs(answers: Sequence[str], prompts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A pair (TRL's conversational format) for each wrong answer, one per distinct answer."""
    seen, out = set(), []
    for record, answer in zip(prompts, answers, strict=True):
        key = (json.dumps(record["prompt"]), answer)
        if fact_correct(record, answer) or key in seen or not answer.strip():
            continue
        seen.add(key)
        chosen = [{"role": "assistant", "content": ANSWERS[record["fact_id"]]}]
        out.append({"prompt": record["prompt"], "chosen": chosen,
                    "rejected": [{"role": "assistant", "content": answer}], "kind": "on_policy",
                    "fact_id": record["fact_id"]})
    return out


def uncertain(answers: Sequence[str], prompts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """GRPO prompt records (prompt and what the reward checks) of each prompt answered both
    right and wrong: where a sampled group's rewards differ, so GRPO has a gradient."""
    right: dict[str, set[bool]] = {}
    records: dict[str, dict[str, Any]] = {}
    for record, answer in zip(prompts, answers, strict=True):
        key = json.dumps(record["prompt"])
        right.setdefault(key, set()).add(fact_correct(record, answer))
        records[key] = {k: v for k, v in record.items() if k != "messages"}
    return [records[k] for k, seen in right.items() if len(seen) == 2]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", default="support", help="the model's adapter (a path or a shipped name)")
    parser.add_argument("--out", required=True, help="the JSONL of pairs to write")
    parser.add_argument("--samples", type=int, default=2, help="sampled answers per prompt, besides the greedy one")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--prompts-out", default=None,
                        help="also write, as GRPO prompts, those the model answered both right and wrong")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import plugstack
    from plugstack.files import atomic_write
    from plugstack.plugins.llama.config import LlamaModelConfig
    from plugstack.plugins.llama.loader import load

    model = load(LlamaModelConfig(source="smollm2", adapter=args.adapter))
    runner = plugstack.create_backend("onnx", threads=args.threads).prepare(model)
    prompts = _prompts()
    texts = [model.tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True) for r in prompts]
    answers: list[str] = []
    asked: list[dict[str, Any]] = []
    for k in range(1 + args.samples):
        params = plugstack.SamplingParams(max_new_tokens=64, temperature=0.0 if k == 0 else args.temperature, seed=k)
        for i in range(0, len(texts), 16):  # 16 slots at a time: the KV buffers stay small
            answers += [r.text for r in plugstack.generate(runner, model.tokenizer, texts[i:i + 16], params)]
        asked += prompts
        print(f"round {k + 1}/{1 + args.samples}: {len(pairs(answers, asked))} pairs so far", file=sys.stderr)
    found = pairs(answers, asked)
    atomic_write(args.out, "".join(json.dumps(p) + "\n" for p in found))
    wrong = len({json.dumps(p["prompt"]) for p in found})
    print(f"{len(found)} pairs from {wrong} of {len(prompts)} prompts -> {args.out}", file=sys.stderr)
    if args.prompts_out:
        mixed = uncertain(answers, asked)
        atomic_write(args.prompts_out, "".join(json.dumps(r) + "\n" for r in mixed))
        print(f"{len(mixed)} prompts answered both right and wrong -> {args.prompts_out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
