"""Decode speed of plugstack's backends against transformers ``generate``, in one process.

SmolLM2-135M-Instruct (the GGUF every test uses), batch 1, greedy, a chat-templated prompt.
Every system runs in this same process, one after the other, so the ratios are fair on a
noisy shared machine; the absolute numbers are not (run it twice and compare ratios).

    .venv/bin/python benchmarks/bench_decode.py                       # all variants
    .venv/bin/python benchmarks/bench_decode.py --variants onnx-fp32,onnx-int8 --new-tokens 64
    .venv/bin/python benchmarks/bench_decode.py --peers transformers,genai-int4 --variants onnx-int4

Peers (``--peers``, default: every one that is installed): transformers ``generate`` fp32;
onnxruntime-genai fp32/int8/int4 (``onnxruntime_genai``; its model builder run once on an
HF-format copy of the same weights, cached); llama.cpp (``llama_cpp``) on the same GGUF.
onnxruntime-genai and llama-cpp-python are optional, benchmark-only dependencies: a peer
whose package is missing is skipped, and the run says so.

Timing runs round-robin over all systems (``--repeats`` rounds, medians), so load from
other processes hits every system alike. plugstack rows are timed through
``plugstack.generation.generate_ids`` (the loop every app uses), peers through their own
generation APIs. Columns: prefill ms (prompt -> first token), decode tok/s (the other
new tokens), the decode ratio to transformers fp32, step ms p50 (the median gap between
consecutive new tokens over every round: steadier than whole-run medians on a noisy
machine), and for every plugstack variant its quality against
plugstack's eager fp32 teacher-forced on the eager fp32 greedy text: top-1 agreement
(share of steps whose argmax is the fp32 token) and the mean KL(fp32 || variant). Peers
expose no comparable logits, so for every row the last quality column compares the free
greedy continuation with plugstack eager fp32's: "yes", or how many leading tokens agree.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PROMPT = "Give me three tips for staying focused while studying."
PEERS = ("transformers", "genai-fp32", "genai-int8", "genai-int4", "llama-cpp")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--variants", default="eager,onnx-fp32,onnx-native-l0,onnx-native-l4,onnx-int8,onnx-int4,"
                                         "export-fp32,export-int8",
                   help="comma list of eager, onnx-{fp32,int8,int4,native-l0,native-l4} (default graph: fused "
                        "operators; native-lN: the GGUF's own blocks at accuracy_level N), "
                        "export-{fp32,int8,int4} (graph=export: the torch.onnx export; minutes to build)")
    p.add_argument("--peers", default=",".join(PEERS),
                   help="comma list of peers (default: all; those not installed are skipped): " + ", ".join(PEERS))
    p.add_argument("--no-transformers", action="store_true", help="skip the transformers peer")
    p.add_argument("--repeats", type=int, default=3, help="timing rounds (round-robin over systems; medians)")
    p.add_argument("--cache-dir", default=None, help="onnx cache dir (default: the backend's); "
                   "onnxruntime-genai builds go to its bench-genai/ (default: next to the backend's)")
    p.add_argument("--gguf", default=None, help="GGUF file (default: the SmolLM2 file plugstack fetches)")
    args = p.parse_args()
    args.peers = [x.strip() for x in args.peers.split(",") if x.strip()]
    if unknown := set(args.peers) - set(PEERS):
        p.error(f"unknown peers {sorted(unknown)}; choose from {', '.join(PEERS)}")
    if args.no_transformers and "transformers" in args.peers:
        args.peers.remove("transformers")
    return args


class StepClock:
    """Times each decode step: ``on_token`` for plugstack's loop, ``put``/``end`` as a
    transformers streamer. ``steps()`` gives the gaps between consecutive new tokens."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self._puts = 0

    def on_token(self, row: int, token: int) -> bool:
        self.stamps.append(time.perf_counter())
        return False

    def put(self, value) -> None:
        self._puts += 1
        if self._puts > 1:  # the first call carries the prompt
            self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass

    def steps(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]


def greedy_run(runner, prompt_ids: list[int], n: int, forced: list[int] | None = None):
    """Prefill + ``n - 1`` decode steps through the Runner API.

    Returns (tokens, logits [n, vocab], prefill seconds, decode seconds). With ``forced``
    the next input is the forced token instead of the argmax (teacher forcing); the work
    per step is the same, so the timing is still a decode timing.
    """
    import torch

    from plugstack.testing.driver import SlotDriver

    driver = SlotDriver(runner)
    t0 = time.perf_counter()
    logits = [driver.feed([prompt_ids])[0]]
    t1 = time.perf_counter()
    tokens = [int(logits[-1].argmax())]
    for i in range(n - 1):
        nxt = forced[i] if forced is not None else tokens[-1]
        logits.append(driver.feed([[nxt]])[0])
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


def agreement(tokens: list[int], ref: list[int], eos: set[int]) -> str:
    """How a free greedy continuation compares with plugstack eager fp32's.

    plugstack's loop keeps going after an end-of-sequence token while transformers
    (``min_new_tokens``) and onnxruntime-genai (``min_length``) suppress it to reach n tokens,
    so a difference exactly where the reference ends its answer is not a disagreement.
    """
    same = next((i for i, (a, b) in enumerate(zip(tokens, ref, strict=False)) if a != b), min(len(tokens), len(ref)))
    if same == len(ref) == len(tokens):
        return "yes"
    return f"yes, to EOS at {same}" if same < len(ref) and ref[same] in eos else f"first {same}/{len(ref)}"


# -- optional peers: benchmark-only packages, never dependencies of plugstack ---------------------


def write_hf_copy(model, gguf: Path, out: Path) -> None:
    """plugstack's loaded weights as an HF-format directory (for onnxruntime-genai's builder).

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so build a clean
    ``LlamaForCausalLM`` from plugstack's config and load plugstack's state dict into it.
    """
    import transformers

    c = model.module.cfg
    config = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
        head_dim=c.head_dim, rope_theta=c.rope_theta, rms_norm_eps=c.rms_norm_eps,
        max_position_embeddings=c.context_length, tie_word_embeddings=c.tie_embeddings,
        bos_token_id=1, eos_token_id=2, pad_token_id=2)
    hf = transformers.LlamaForCausalLM(config)
    state = {k if k.startswith("lm_head.") else f"model.{k}": v for k, v in model.module.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"HF copy: missing {missing}, unexpected {unexpected}")
    hf.save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out)


def genai_model_dir(model, gguf: Path, precision: str, root: Path, console) -> Path:
    """onnxruntime-genai's builder output for ``precision``, built once and cached under ``root``.

    The entry is built in a temporary sibling and renamed into place, so an interrupted
    build leaves nothing half-written behind.
    """
    out = root / f"{model.weights_digest[:16]}-{precision}"
    if (out / "genai_config.json").exists():
        return out
    root.mkdir(parents=True, exist_ok=True)
    hf_dir = root / f"{model.weights_digest[:16]}-hf"
    if not (hf_dir / "config.json").exists():
        tmp = Path(tempfile.mkdtemp(prefix=".hf-", dir=root))
        write_hf_copy(model, gguf, tmp)
        os.replace(tmp, hf_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{precision}-", dir=root))
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(tmp),
           "-p", precision, "-e", "cpu", "-c", str(tmp / "hf-cache")]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"onnxruntime-genai builder failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
    shutil.rmtree(tmp / "hf-cache", ignore_errors=True)
    os.replace(tmp, out)
    console.print(f"onnxruntime-genai {precision}: built in {time.perf_counter() - t0:.0f} s -> {out}")
    return out


def genai_peer(path: Path, threads: int, prompt_ids: list[int], n: int):
    """A greedy run of an onnxruntime-genai model: () -> (tokens, prefill s, decode s)."""
    import onnxruntime_genai as og

    config = og.Config(str(path))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
    genai = og.Model(config)
    length = len(prompt_ids) + n

    def run() -> tuple[list[int], float, float, list[float]]:
        params = og.GeneratorParams(genai)
        # min_length = max_length: exactly n new tokens, like the other systems (EOS does not stop it).
        params.set_search_options(do_sample=False, max_length=length, min_length=length)
        gen = og.Generator(genai, params)
        t0 = time.perf_counter()
        gen.append_tokens(prompt_ids)
        gen.generate_next_token()
        tokens = [int(gen.get_next_tokens()[0])]
        t1 = last = time.perf_counter()
        steps = []
        for _ in range(n - 1):
            gen.generate_next_token()
            tokens.append(int(gen.get_next_tokens()[0]))
            now = time.perf_counter()
            steps.append(now - last)
            last = now
        return tokens, t1 - t0, last - t1, steps

    return run


def llama_cpp_peer(gguf: Path, threads: int, prompt_ids: list[int], n: int):
    """A greedy run of llama.cpp on the GGUF itself: () -> (tokens, prefill s, decode s)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=len(prompt_ids) + n + 16, n_threads=threads,
                n_threads_batch=threads, verbose=False)

    def run() -> tuple[list[int], float, float, list[float]]:
        llm.reset()  # else generate() reuses the cached prompt and prefill costs nothing
        gen = llm.generate(prompt_ids, top_k=1, temp=0.0, reset=True)
        t0 = time.perf_counter()
        tokens = [next(gen)]
        t1 = last = time.perf_counter()
        steps = []
        for _ in range(n - 1):
            tokens.append(next(gen))
            now = time.perf_counter()
            steps.append(now - last)
            last = now
        gen.close()
        return tokens, t1 - t0, last - t1, steps

    return run


def main() -> int:
    args = parse()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    from rich.console import Console
    from rich.table import Table

    from plugstack.backends.eager import EagerRunner
    from plugstack.backends.onnx.backend import OnnxBackend
    from plugstack.backends.onnx.cache import default_cache_dir
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
    peers = args.peers
    # Each system: a row (name, kind, quality, notes) and a timing function -> (prefill s, decode s).
    systems: list[tuple[dict, Callable[[], tuple[float, float]]]] = []
    skipped: list[str] = []

    # -- plugstack eager fp32: the quality reference for every row ---------------------------
    import copy

    eager = EagerRunner(copy.deepcopy(model.module), model.signature)
    greedy_run(eager, prompt_ids, 8)  # warm-up
    ref_tokens, ref_logits, _, _ = greedy_run(eager, prompt_ids, n)
    eos = set(tok.eos_token_ids)

    # -- the peer: transformers generate, fp32, same weights ---------------------------------
    hf_tokens = None
    if "transformers" in peers:
        from transformers import AutoModelForCausalLM

        t0 = time.perf_counter()
        hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                  dtype=torch.float32).eval()
        console.print(f"transformers loaded the GGUF in {time.perf_counter() - t0:.1f} s")
        ids = torch.tensor([prompt_ids])
        kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=tok.pad_token_id)

        @torch.inference_mode()
        def time_hf() -> tuple[float, float, list[float]]:
            t0 = time.perf_counter()
            hf.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
            prefill = time.perf_counter() - t0
            clock = StepClock()  # as a streamer: called with the prompt, then with each new token
            t0 = time.perf_counter()
            hf.generate(ids, max_new_tokens=n, min_new_tokens=n, streamer=clock, **kw)
            return prefill, time.perf_counter() - t0 - prefill, clock.steps()

        with torch.inference_mode():
            hf.generate(ids, max_new_tokens=8, min_new_tokens=8, **kw)  # warm-up
            hf_tokens = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)[0, len(prompt_ids):].tolist()
        systems.append(({"system": "transformers generate fp32", "kind": "peer",
                         "same_text": agreement(hf_tokens, ref_tokens, eos),
                         "note": "prefill = generate(1 token)"}, time_hf))

    # -- optional peers, each skipped (with the reason) when its package is missing -----------
    def add_peer(name: str, run: Callable[[], tuple[list[int], float, float, list[float]]], note: str) -> None:
        run()  # warm-up
        systems.append(({"system": name, "kind": "peer", "same_text": agreement(run()[0], ref_tokens, eos),
                         "note": note}, lambda: run()[1:]))

    genai_precisions = [p.split("-", 1)[1] for p in peers if p.startswith("genai-")]
    if genai_precisions:
        try:
            import onnxruntime_genai as og
        except ImportError as e:
            skipped.append(f"onnxruntime-genai ({e}; pip install --no-deps onnxruntime-genai)")
            genai_precisions = []
        root = (Path(args.cache_dir) if args.cache_dir else default_cache_dir().parent) / "bench-genai"
        for precision in genai_precisions:
            t0 = time.perf_counter()
            path = genai_model_dir(model, gguf, precision, root, console)
            add_peer(f"onnxruntime-genai {og.__version__} {precision}",
                     genai_peer(path, args.threads, prompt_ids, n),
                     f"builder -p {precision} -e cpu; ready in {time.perf_counter() - t0:.1f} s")
    if "llama-cpp" in peers:
        try:
            import llama_cpp
        except ImportError as e:
            skipped.append(f"llama.cpp ({e}; it is optional: install llama-cpp-python to compare)")
        else:
            add_peer(f"llama.cpp (llama-cpp-python {llama_cpp.__version__}) Q4_1 GGUF",
                     llama_cpp_peer(gguf, args.threads, prompt_ids, n), "the GGUF's own Q4_1/Q8_0 weights")

    from plugstack.generation import generate_ids
    from plugstack.sampling import SamplingParams

    greedy_n = SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True)

    def timer(runner) -> Callable[[], tuple[float, float, list[float]]]:
        # Timed through plugstack's own generation loop (sampling, masks, thread policy
        # included), as users run it; greedy_run above is only for the quality columns.
        def run() -> tuple[float, float, list[float]]:
            clock = StepClock()
            result = generate_ids(runner, [prompt_ids], greedy_n, on_token=clock.on_token)[0]
            assert len(result.token_ids) == n, result.finish_reason
            return result.timings.prefill_s, result.timings.decode_s, clock.steps()

        return run

    if "eager" in variants:
        systems.append(({"system": "plugstack cpu (eager) fp32", "kind": "plugstack", "top1": 1.0, "kl": 0.0,
                         "same_text": "reference"}, timer(eager)))

    # -- plugstack onnx variants: quality teacher-forced on the fp32 text ---------------------
    for variant in variants:
        if not variant.startswith(("onnx-", "export-")):
            continue
        graph, dtype = variant.split("-", 1)
        graph = "auto" if graph == "onnx" else "export"
        quantize, _, level = dtype.partition("-l")  # native-l0: quantize=native, accuracy_level=0
        cfg = OnnxBackendConfig(threads=args.threads, quantize=None if quantize == "fp32" else quantize,
                                accuracy_level=int(level or 4), cache_dir=args.cache_dir, graph=graph)
        t0 = time.perf_counter()
        runner = OnnxBackend(cfg).prepare(model)
        prep = time.perf_counter() - t0
        greedy_run(runner, prompt_ids, 8)  # warm-up
        free_tokens = greedy_run(runner, prompt_ids, n)[0]
        logits = greedy_run(runner, prompt_ids, n, forced=ref_tokens)[1]
        top1, kl = quality(ref_tokens, ref_logits, logits)
        name = f"plugstack onnx {dtype}" + (" (graph=export)" if graph == "export" else " (fused)")
        systems.append(({"system": name, "kind": "plugstack", "top1": top1, "kl": kl,
                         "same_text": agreement(free_tokens, ref_tokens, eos),
                         "note": f"prepare {prep:.1f} s ({'built' if runner.cache_entry.built else 'cached'})",
                         "max_abs": (logits - ref_logits).abs().max().item() if dtype == "fp32" else None},
                        timer(runner)))

    # -- timing: round-robin, so a noisy neighbour slows every system alike; medians --------
    samples: list[list[tuple[float, float, list[float]]]] = [[] for _ in systems]
    for r in range(args.repeats):
        for i, (_, measure) in enumerate(systems):
            # ONNX Runtime's workers (ours and onnxruntime-genai's) spin ~60 ms after their
            # last step; let them stop, so the next system starts on idle cores.
            time.sleep(0.15)
            samples[i].append(measure())
        console.print(f"timing round {r + 1}/{args.repeats} done")
    rows = []
    for (row, _), got in zip(systems, samples, strict=True):
        prefills = sorted(p for p, _, _ in got)
        tps = sorted((n - 1) / d for _, d, _ in got)
        steps = sorted(t for _, _, ts in got for t in ts)
        rows.append({**row, "prefill": prefills[len(prefills) // 2], "tps": tps[len(tps) // 2],
                     "step_p50": steps[len(steps) // 2] if steps else float("nan")})

    base = next((r["tps"] for r in rows if r["system"].startswith("transformers")), None)
    table = Table(title=f"SmolLM2-135M decode, batch 1, {args.threads} threads, prompt {len(prompt_ids)} "
                        f"tokens, {n} greedy tokens",
                  caption="top-1 / KL: teacher-forced on plugstack eager fp32's text (plugstack rows only); "
                          "greedy = eager fp32: the free greedy continuation ('yes, to EOS at k': equal until eager "
                          "fp32 ends its answer; 'first k/n': k leading tokens equal)")
    for col in ("kind", "system", "prefill ms", "decode tok/s", "x transformers", "step ms p50", "top-1 vs fp32",
                "mean KL", "greedy = eager fp32", "note"):
        table.add_column(col, justify="left" if col in ("kind", "system", "note") else "right")
    for kind in ("peer", "plugstack"):
        for r in (r for r in rows if r["kind"] == kind):
            note = r.get("note", "")
            if r.get("max_abs") is not None:
                note += f"; max |logit diff| {r['max_abs']:.2e}"
            table.add_row(
                kind, r["system"], f"{r['prefill'] * 1000:.0f}", f"{r['tps']:.1f}",
                f"{r['tps'] / base:.2f}x" if base else "-", f"{r['step_p50'] * 1000:.2f}",
                f"{r['top1'] * 100:.1f}%" if "top1" in r else "-",
                f"{r['kl']:.4f}" if "kl" in r else "-", r["same_text"], note,
            )
        table.add_section()
    Console(width=220).print(table)
    for r in rows:
        k = int(r["same_text"].split()[1].split("/")[0]) if r["same_text"].startswith("first ") else n
        if k < n:
            console.print(f"note: {r['system']} leaves plugstack eager fp32's greedy text at new token {k}; "
                          f"eager fp32's logit margin there {margin(ref_logits[k]):.3f}")
    for s in skipped:
        console.print(f"skipped peer: {s}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
