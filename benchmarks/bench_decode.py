"""Decode speed of plugstack's backends against transformers ``generate``, in one process.

SmolLM2-135M-Instruct (the GGUF every test uses), batch 1, greedy, a chat-templated prompt.
Every system runs in this same process, one after the other, so the ratios are fair on a
noisy shared machine; the absolute numbers are not (run it twice and compare ratios).

    .venv/bin/python benchmarks/bench_decode.py                       # all variants
    .venv/bin/python benchmarks/bench_decode.py --variants onnx-fp32,onnx-int8 --new-tokens 64

Timing runs round-robin over all systems (``--repeats`` rounds, medians), so load from
other processes hits every system alike. Columns: prefill ms (prompt -> first logits),
decode tok/s (the other new tokens), the
decode ratio to transformers fp32, and for every plugstack variant its quality against
plugstack's eager fp32 teacher-forced on the eager fp32 greedy text: top-1 agreement
(share of steps whose argmax is the fp32 token) and the mean KL(fp32 || variant).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

PROMPT = "Give me three tips for staying focused while studying."


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--variants", default="eager,onnx-fp32,onnx-int8,onnx-int4,export-fp32,export-int8",
                   help="comma list of eager, onnx-{fp32,int8,int4} (default graph: fused operators), "
                        "export-{fp32,int8,int4} (graph=export: the torch.onnx export; minutes to build)")
    p.add_argument("--no-transformers", action="store_true", help="skip the transformers peer")
    p.add_argument("--repeats", type=int, default=3, help="timing rounds (round-robin over systems; medians)")
    p.add_argument("--cache-dir", default=None, help="onnx cache dir (default: the backend's)")
    p.add_argument("--gguf", default=None, help="GGUF file (default: the SmolLM2 file plugstack fetches)")
    return p.parse_args()


def greedy_run(runner, prompt_ids: list[int], n: int, forced: list[int] | None = None):
    """Prefill + ``n - 1`` decode steps through the Runner API.

    Returns (tokens, logits [n, vocab], prefill seconds, decode seconds). With ``forced``
    the next input is the forced token instead of the argmax (teacher forcing); the work
    per step is the same, so the timing is still a decode timing.
    """
    import torch

    t = len(prompt_ids)
    feed = {
        "input_ids": torch.tensor([prompt_ids]),
        "position_ids": torch.arange(t)[None],
        "attention_mask": torch.ones(1, t, dtype=torch.int64),
    }
    t0 = time.perf_counter()
    out = runner.run(feed, runner.new_state(1))
    t1 = time.perf_counter()
    logits = [out.outputs["logits"][0]]
    tokens = [int(logits[-1].argmax())]
    for i in range(n - 1):
        nxt = forced[i] if forced is not None else tokens[-1]
        pos = t + i
        feed = {
            "input_ids": torch.tensor([[nxt]]),
            "position_ids": torch.tensor([[pos]]),
            "attention_mask": torch.ones(1, pos + 1, dtype=torch.int64),
        }
        out = runner.run(feed, out.state)
        logits.append(out.outputs["logits"][0])
        tokens.append(int(logits[-1].argmax()))
    t2 = time.perf_counter()
    return tokens, torch.stack(logits), t1 - t0, t2 - t1


def quality(ref_tokens: list[int], ref_logits, logits) -> tuple[float, float]:
    """(top-1 agreement with the reference tokens, mean KL(ref || this)) over all steps."""
    import torch.nn.functional as F

    top1 = (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item()
    lp_ref = F.log_softmax(ref_logits.double(), -1)
    lp = F.log_softmax(logits.double(), -1)
    kl = (lp_ref.exp() * (lp_ref - lp)).sum(-1).mean().item()
    return top1, kl


def margin(logits) -> float:
    """Gap between the best and second-best logit (small = a near tie any rounding can flip)."""
    top = logits.topk(2).values
    return float(top[0] - top[1])


def main() -> int:
    args = parse()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    from rich.console import Console
    from rich.table import Table

    from plugstack.backends.eager import EagerRunner
    from plugstack.backends.onnx.backend import OnnxBackend
    from plugstack.backends.onnx.config import OnnxBackendConfig
    from plugstack.plugins.llama.loader import load_path
    from plugstack.plugins.llama.weights import smollm2_path

    torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    gguf = Path(args.gguf) if args.gguf else smollm2_path()
    model = load_path(gguf)
    tok = model.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True)
    prompt_ids = tok.encode(text, add_special_tokens=False)
    n = args.new_tokens
    console.print(f"SmolLM2 from {gguf.name}: prompt {len(prompt_ids)} tokens, {n} new tokens, "
                  f"{args.threads} threads, torch {torch.__version__}")

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    # Each system: a row (name, quality, notes) and a timing function -> (prefill s, decode s).
    systems: list[tuple[dict, Callable[[], tuple[float, float]]]] = []

    # -- the peer: transformers generate, fp32, same weights ---------------------------------
    hf_tokens = None
    if not args.no_transformers:
        from transformers import AutoModelForCausalLM

        t0 = time.perf_counter()
        hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                  dtype=torch.float32).eval()
        console.print(f"transformers loaded the GGUF in {time.perf_counter() - t0:.1f} s")
        ids = torch.tensor([prompt_ids])
        kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=tok.pad_token_id)

        @torch.inference_mode()
        def time_hf() -> tuple[float, float]:
            t0 = time.perf_counter()
            hf.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            hf.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
            return prefill, time.perf_counter() - t0 - prefill

        with torch.inference_mode():
            hf.generate(ids, max_new_tokens=8, min_new_tokens=8, **kw)  # warm-up
            hf_tokens = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)[0, len(prompt_ids):].tolist()
        systems.append(({"system": "transformers generate fp32"}, time_hf))

    def timer(runner) -> Callable[[], tuple[float, float]]:
        return lambda: greedy_run(runner, prompt_ids, n)[2:]

    # -- plugstack eager fp32: the quality reference -----------------------------------------
    import copy

    eager = EagerRunner(copy.deepcopy(model.module), model.signature)
    greedy_run(eager, prompt_ids, 8)  # warm-up
    ref_tokens, ref_logits, _, _ = greedy_run(eager, prompt_ids, n)
    if "eager" in variants:
        systems.append(({"system": "plugstack cpu (eager) fp32", "top1": 1.0, "kl": 0.0,
                         "same_text": None if hf_tokens is None else hf_tokens == ref_tokens}, timer(eager)))

    # -- plugstack onnx variants: quality teacher-forced on the fp32 text ---------------------
    for variant in variants:
        if not variant.startswith(("onnx-", "export-")):
            continue
        graph, dtype = variant.split("-", 1)
        graph = "auto" if graph == "onnx" else "export"
        cfg = OnnxBackendConfig(threads=args.threads, quantize=None if dtype == "fp32" else dtype,
                                cache_dir=args.cache_dir, graph=graph)
        t0 = time.perf_counter()
        runner = OnnxBackend(cfg).prepare(model)
        prep = time.perf_counter() - t0
        greedy_run(runner, prompt_ids, 8)  # warm-up
        free_tokens = greedy_run(runner, prompt_ids, n)[0]
        logits = greedy_run(runner, prompt_ids, n, forced=ref_tokens)[1]
        top1, kl = quality(ref_tokens, ref_logits, logits)
        name = f"plugstack onnx {dtype}" + (" (graph=export)" if graph == "export" else " (fused)")
        systems.append(({"system": name, "top1": top1, "kl": kl, "same_text": free_tokens == ref_tokens,
                         "note": f"prepare {prep:.1f} s ({'built' if runner.cache_entry.built else 'cached'})",
                         "max_abs": (logits - ref_logits).abs().max().item() if dtype == "fp32" else None},
                        timer(runner)))

    # -- timing: round-robin, so a noisy neighbour slows every system alike; medians --------
    samples: list[list[tuple[float, float]]] = [[] for _ in systems]
    for r in range(args.repeats):
        for i, (row, measure) in enumerate(systems):
            samples[i].append(measure())
        console.print(f"timing round {r + 1}/{args.repeats} done")
    rows = []
    for (row, _), got in zip(systems, samples):
        prefills = sorted(p for p, _ in got)
        tps = sorted((n - 1) / d for _, d in got)
        rows.append({**row, "prefill": prefills[len(prefills) // 2], "tps": tps[len(tps) // 2]})

    base = next((r["tps"] for r in rows if r["system"].startswith("transformers")), None)
    table = Table(title=f"SmolLM2-135M decode, batch 1, {args.threads} threads, prompt {len(prompt_ids)} "
                        f"tokens, {n} greedy tokens")
    for col in ("system", "prefill ms", "decode tok/s", "x transformers", "top-1 vs fp32", "mean KL",
                "greedy text = fp32", "note"):
        table.add_column(col, justify="left" if col in ("system", "note") else "right")
    for r in rows:
        note = r.get("note", "")
        if r.get("max_abs") is not None:
            note += f"; max |logit diff| {r['max_abs']:.2e}"
        table.add_row(
            r["system"], f"{r['prefill'] * 1000:.0f}", f"{r['tps']:.1f}",
            f"{r['tps'] / base:.2f}x" if base else "-",
            f"{r['top1'] * 100:.1f}%" if "top1" in r else "reference",
            f"{r['kl']:.4f}" if "kl" in r else "",
            {None: "", True: "yes", False: "no"}[r.get("same_text")], note,
        )
    Console(width=200).print(table)
    if hf_tokens is not None and hf_tokens != ref_tokens:
        first = next(i for i, (a, b) in enumerate(zip(hf_tokens + [-1], ref_tokens)) if a != b)
        console.print(f"note: transformers' greedy text leaves plugstack eager fp32's at new token {first}; "
                      f"eager logit margin there {margin(ref_logits[first]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
