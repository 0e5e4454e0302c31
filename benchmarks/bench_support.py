"""Fact accuracy of the support assistant on the held-out questions, per model variant.

Each held-out question of ``plugins/support/data/sft_heldout.jsonl`` (system prompt + user
turn) is answered greedily through plugstack's own generation loop, and the answer is
judged by the checkable fact it must state (``plugstack.plugins.support.fact_correct``;
a question the policy does not cover must be declined). Prints accuracy overall, on fact
questions and on declines, and the mean GRPO reward, per variant:

    python benchmarks/bench_support.py                          # the base model
    python benchmarks/bench_support.py --variant sft=outputs/train/llama/model.safetensors

``--variant name=adapter`` adds a model with that adapter (``model.adapter``); ``base`` is
always measured first, in the same run.
"""

from __future__ import annotations

import argparse
import json
import time


def measure(runner, model, records, max_new_tokens: int) -> dict[str, float]:
    import plugstack
    from plugstack.plugins.support import fact_correct, reward

    prompts = [model.tokenizer.apply_chat_template(r["messages"][:-1], add_generation_prompt=True) for r in records]
    params = plugstack.SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    start = time.perf_counter()
    answers = [r.text for r in plugstack.generate(runner, model.tokenizer, prompts, params)]
    seconds = time.perf_counter() - start
    correct = [fact_correct(r, a) for r, a in zip(records, answers, strict=True)]
    facts = [c for r, c in zip(records, correct, strict=True) if not r.get("decline")]
    declines = [c for r, c in zip(records, correct, strict=True) if r.get("decline")]
    return {"fact_accuracy": sum(correct) / len(correct),
            "on_facts": sum(facts) / max(len(facts), 1), "on_declines": sum(declines) / max(len(declines), 1),
            "mean_reward": sum(reward(r, a) for r, a in zip(records, answers, strict=True)) / len(records),
            "seconds": round(seconds, 1), "example": answers[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=[], help="name=path/to/adapter.safetensors")
    parser.add_argument("--backend", default="onnx")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="only the first N held-out questions")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()

    import plugstack
    from plugstack.plugins.llama.config import LlamaModelConfig
    from plugstack.plugins.llama.loader import load
    from plugstack.plugins.support import data_path, read_sft

    records = read_sft(data_path("sft_heldout"))
    records = records[: args.limit] if args.limit else records
    report = {}
    for name, adapter in [("base", None), *(v.split("=", 1) for v in args.variant)]:
        model = load(LlamaModelConfig(source="smollm2", adapter=adapter))
        runner = plugstack.create_backend(args.backend, threads=args.threads).prepare(model)
        report[name] = measure(runner, model, records, args.max_new_tokens)
        runner.close()
        print(name, json.dumps(report[name]), flush=True)
    base = report["base"]["fact_accuracy"]
    for name, row in report.items():
        print(f"{name:>10}: fact accuracy {row['fact_accuracy']:.1%} ({row['fact_accuracy'] - base:+.1%} vs base), "
              f"facts {row['on_facts']:.1%}, declines {row['on_declines']:.1%}, mean reward {row['mean_reward']:.3f}")


if __name__ == "__main__":
    main()
