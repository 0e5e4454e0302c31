"""The support assistant per model variant: held-out fact accuracy, reward, preferences, speed.

Each held-out question of ``plugins/support/data/sft_heldout.jsonl`` (system prompt + user
turn) is answered greedily through plugstack's own generation loop on ``--backend`` and
judged by the checkable fact it must state (``plugstack.plugins.support.fact_correct``; a
question the policy does not cover must be declined); the GRPO reward is averaged over the
same answers. On the held-out preference pairs (``dpo_heldout.jsonl``) each variant's
preference accuracy is the share of pairs whose implicit reward prefers the chosen answer,
``(log π(c) − log π_base(c)) > (log π(r) − log π_base(r))`` (eager fp32, the base model as
the common reference), and ``logp acc`` the share with ``log π(c) > log π(r)``. The shipped
pairs' rejected answers add a sentence or swap a fact in the SFT answer, which an SFT model
ranks right every time, so the same is measured on hard pairs too: each held-out question
the first variant (``--hard-from``) got wrong, its own answer rejected and the right one chosen:

    python benchmarks/bench_support.py --variant sft=runs/sft/model.safetensors \\
        --variant sft+dpo=runs/dpo/model.safetensors --variant sft+grpo=runs/grpo/model.safetensors

``base`` is always measured first, in the same run. ``--eager`` also answers on the cpu
backend and counts the answers equal to the onnx ones; ``--speed`` times greedy decoding
(128 tokens) of the base and each adapter on onnx at the same precision, alternating.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time


def answers(runner, model, records, max_new_tokens: int) -> tuple[list[str], float]:
    import plugstack

    prompts = [model.tokenizer.apply_chat_template(r["messages"][:-1], add_generation_prompt=True) for r in records]
    params = plugstack.SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    start = time.perf_counter()
    texts = [r.text for r in plugstack.generate(runner, model.tokenizer, prompts, params)]
    return texts, time.perf_counter() - start


def judged(records, texts) -> dict[str, float]:
    from plugstack.plugins.support import fact_correct, reward

    correct = [fact_correct(r, a) for r, a in zip(records, texts, strict=True)]
    facts = [c for r, c in zip(records, correct, strict=True) if not r.get("decline")]
    declines = [c for r, c in zip(records, correct, strict=True) if r.get("decline")]
    return {"fact_accuracy": sum(correct) / len(correct),
            "on_facts": sum(facts) / max(len(facts), 1), "on_declines": sum(declines) / max(len(declines), 1),
            "mean_reward": sum(reward(r, a) for r, a in zip(records, texts, strict=True)) / len(records)}


def pair_logprobs(model, path, batch: int = 8):
    """``[P, 2]``: eager fp32 log-probabilities of each held-out pair's chosen and rejected answer."""
    import torch

    from plugstack.plugins.llama.dpo import pair_batch, sequence_logprobs
    from plugstack.plugins.llama.finetune import CausalLM
    from plugstack.plugins.llama.sft_data import load_pairs

    pairs, _ = load_pairs(path, model.tokenizer, max_length=512)
    module = CausalLM(model.module).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(pairs), batch):
            lp = sequence_logprobs(module, pair_batch(pairs[start : start + batch], model.tokenizer.pad_token_id))
            out.append(lp.view(2, -1).T)  # [2B] -> [B, (chosen, rejected)]
    return torch.cat(out)


def decode_speed(runner, model, tokens: int = 128) -> float:
    import plugstack

    prompt = model.tokenizer.apply_chat_template([{"role": "user", "content": "How long do I have to return an item?"}],
                                                 add_generation_prompt=True)
    params = plugstack.SamplingParams(max_new_tokens=tokens, temperature=0.0, ignore_eos=True)
    return plugstack.generate(runner, model.tokenizer, [prompt], params)[0].timings.tokens_per_s


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", action="append", default=[], help="name=path/to/adapter.safetensors")
    p.add_argument("--backend", default="onnx")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="only the first N held-out questions")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--eager", action="store_true", help="also answer on cpu and compare with the onnx answers")
    p.add_argument("--speed", action="store_true", help="time decoding of base and adapters on onnx")
    p.add_argument("--speed-only", action="store_true", help="only the --speed table")
    p.add_argument("--speed-quantize", default="null,int8", help="onnx backend.quantize values to time")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hard-from", default=None, help="the variant whose wrong answers make the hard pairs "
                   "(default: the first --variant)")
    return p.parse_args()


def preference(lp, base_lp) -> dict[str, float]:
    """Preference accuracy against the base model's log-probabilities, and by log-probability alone."""
    gained = lp - base_lp
    return {"accuracy": float((gained[:, 0] > gained[:, 1]).float().mean()),
            "logp_accuracy": float((lp[:, 0] > lp[:, 1]).float().mean())}


def hard_pairs(records, texts, path) -> int:
    """Write the held-out questions a variant got wrong as pairs: the right answer chosen, its own rejected."""
    from plugstack.plugins.support import fact_correct

    with open(path, "w") as f:
        wrong = [(r, a) for r, a in zip(records, texts, strict=True) if not fact_correct(r, a)]
        for r, a in wrong:
            f.write(json.dumps({"prompt": r["messages"][:-1], "chosen": [r["messages"][-1]],
                                "rejected": [{"role": "assistant", "content": a}]}) + "\n")
    return len(wrong)


def main() -> None:
    args = parse()
    import tempfile

    import plugstack
    from plugstack.plugins.llama.config import LlamaModelConfig
    from plugstack.plugins.llama.loader import load
    from plugstack.plugins.support import data_path, read_sft

    records = read_sft(data_path("sft_heldout"))
    records = records[: args.limit] if args.limit else records
    variants = [("base", None), *(tuple(v.split("=", 1)) for v in args.variant)]
    if args.speed_only:
        speed(args, variants)
        return
    report, shipped_lp, texts_of = {}, {}, {}
    for name, adapter in variants:
        model = load(LlamaModelConfig(source="smollm2", adapter=adapter))
        runner = plugstack.create_backend(args.backend, threads=args.threads).prepare(model)
        texts, seconds = answers(runner, model, records, args.max_new_tokens)
        runner.close()
        texts_of[name] = texts
        row = {**judged(records, texts), "seconds": round(seconds, 1), "example": texts[0]}
        if args.eager and adapter:
            eager = plugstack.create_backend("cpu", threads=args.threads).prepare(model)
            row["same_as_eager"] = sum(a == b for a, b in zip(answers(eager, model, records, args.max_new_tokens)[0],
                                                               texts, strict=True)) / len(texts)
        shipped_lp[name] = pair_logprobs(model, data_path("dpo_heldout"))
        report[name] = row
        print(name, json.dumps(row), flush=True)
    hard_from = args.hard_from or (variants[1][0] if len(variants) > 1 else "base")
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/hard.jsonl"
        count = hard_pairs(records, texts_of[hard_from], path)
        hard_lp = {}
        for name, adapter in variants if count else ():
            hard_lp[name] = pair_logprobs(load(LlamaModelConfig(source="smollm2", adapter=adapter)), path)
    for name, row in report.items():
        row["preference"] = preference(shipped_lp[name], shipped_lp["base"])
        if count:
            row["hard_preference"] = preference(hard_lp[name], hard_lp["base"])
    print(f"\n{len(records)} held-out questions; preference on {len(shipped_lp['base'])} held-out pairs (shipped) and "
          f"{count} hard pairs (the right answer against {hard_from}'s own wrong one)")
    print("\n| variant | fact accuracy | vs base | on facts | on declines | mean reward | pref acc (shipped) | "
          "pref acc (hard) | logp acc (hard) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in report.items():
        hard = r.get("hard_preference", {"accuracy": math.nan, "logp_accuracy": math.nan})
        print(f"| {name} | {r['fact_accuracy']:.1%} | {r['fact_accuracy'] - report['base']['fact_accuracy']:+.1%} | "
              f"{r['on_facts']:.1%} | {r['on_declines']:.1%} | {r['mean_reward']:.3f} | "
              f"{r['preference']['accuracy']:.1%} | {hard['accuracy']:.1%} | {hard['logp_accuracy']:.1%} |")
    if args.speed:
        speed(args, variants)


def speed(args: argparse.Namespace, variants) -> None:
    """Decode tok/s of each variant on onnx per precision, the runs alternating."""
    import plugstack
    from plugstack.plugins.llama.config import LlamaModelConfig
    from plugstack.plugins.llama.loader import load

    print("\n| onnx quantize | variant | decode tok/s (median) | vs base |\n|---|---|---|---|")
    for quantize in args.speed_quantize.split(","):
        runners = {}
        for name, adapter in variants:
            model = load(LlamaModelConfig(source="smollm2", adapter=adapter))
            options = {"quantize": None if quantize == "null" else quantize}
            runners[name] = (plugstack.create_backend("onnx", threads=args.threads, **options).prepare(model), model)
        rates = {name: [] for name in runners}
        for _ in range(args.repeats):
            for name, (runner, model) in runners.items():
                rates[name].append(decode_speed(runner, model))
        base = statistics.median(rates["base"])
        for name, values in rates.items():
            print(f"| {quantize} | {name} | {statistics.median(values):.1f} | {statistics.median(values) / base:.3f} |")
        for runner, _ in runners.values():
            runner.close()


if __name__ == "__main__":
    main()
