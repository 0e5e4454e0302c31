"""The decode benchmark's peers, measured exactly as ``app=bench`` measures plugstack.

Each peer runs in a fresh process of its own (so its peak RSS is its own), on SmolLM2's GGUF,
with app=bench's synthetic prompts, scenarios and statistics, and writes a ``bench.json`` in
app=bench's format into ``--out/<peer>/``. ``plugstack report`` then shows peers and
plugstack's jobs in one table:

    .venv/bin/plugstack --multirun app=bench backend=cpu,onnx hydra.sweep.dir=runs/perf
    .venv/bin/python benchmarks/bench_peers.py --out runs/perf/peers
    .venv/bin/plugstack report runs/perf --baseline peer=transformers

Peers: ``transformers`` (``generate``, fp32, every batch size, timed per step by a logits
processor); ``genai-fp32``/``genai-int8``/``genai-int4`` (onnxruntime-genai on its own
builder's graph of the same weights; batch 1 only); ``llama-cpp`` (llama-cpp-python on the
GGUF itself; batch 1 only). onnxruntime-genai and llama-cpp-python are optional,
benchmark-only packages: a peer whose package is missing is recorded as skipped, with why.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from plugstack.plugins.bench.scenarios import step_gaps

PEERS = ("transformers", "genai-fp32", "genai-int8", "genai-int4", "llama-cpp")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory for <peer>/bench.json")
    p.add_argument("--peers", default=",".join(PEERS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-lengths", default="32,256")
    p.add_argument("--batch-sizes", default="1,4,8")
    p.add_argument("--decode-prompt-length", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--one", help=argparse.SUPPRESS)  # run this peer in this process
    return p.parse_args()


def options(args: argparse.Namespace) -> Any:
    """app=bench's options, from this script's flags (checked by the app's own rules)."""
    from plugstack.plugins.bench.app import check_options
    from plugstack.plugins.bench.config import BenchAppConfig

    cfg = BenchAppConfig(prompt_lengths=[int(x) for x in args.prompt_lengths.split(",")],
                         batch_sizes=[int(x) for x in args.batch_sizes.split(",")],
                         decode_prompt_length=args.decode_prompt_length, new_tokens=args.new_tokens,
                         warmup=args.warmup, repeats=args.repeats)
    check_options(cfg)
    return cfg


def transformers_peer(gguf: Path, threads: int) -> tuple[Any, dict[str, Any]]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

    torch.set_num_threads(threads)
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()

    class Clock(LogitsProcessor):  # called once per step, after the forward pass, for every row
        def __init__(self) -> None:
            self.marks: list[float] = []

        def __call__(self, input_ids, scores):
            self.marks.append(time.perf_counter())
            return scores

    @torch.inference_mode()
    def generate(prompts: list[list[int]], n: int) -> tuple[float, list[float], int]:
        ids = torch.tensor(prompts)
        clock = Clock()
        t0 = time.perf_counter()
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, pad_token_id=0, logits_processor=LogitsProcessorList([clock]))
        return clock.marks[0] - t0, step_gaps(clock.marks), (out.shape[1] - ids.shape[1]) * ids.shape[0]

    return generate, {"ran": f"transformers {transformers.__version__}", "dtype": "fp32", "max_batch": None}


def genai_peer(gguf: Path, threads: int, precision: str) -> tuple[Any, dict[str, Any]]:
    import numpy as np
    import onnxruntime_genai as og
    from rich.console import Console

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_decode import genai_model_dir

    from plugstack.backends.onnx.cache import default_cache_dir
    from plugstack.plugins.llama.loader import load_path

    model = load_path(gguf)
    path = genai_model_dir(model, gguf, precision, default_cache_dir().parent / "bench-genai", Console(stderr=True))
    config = og.Config(str(path))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
    genai = og.Model(config)

    def generate(prompts: list[list[int]], n: int) -> tuple[float, list[float], int]:
        params = og.GeneratorParams(genai)
        length = len(prompts[0]) + n  # min = max: exactly n new tokens (EOS does not stop it)
        params.set_search_options(do_sample=False, max_length=length, min_length=length)
        gen = og.Generator(genai, params)
        t0 = time.perf_counter()
        gen.append_tokens(np.asarray(prompts[0], dtype=np.int32))
        marks = []
        for _ in range(n):
            gen.generate_next_token()
            marks.append(time.perf_counter())
        return marks[0] - t0, step_gaps(marks), n

    return generate, {"ran": f"onnxruntime-genai {og.__version__}", "dtype": precision, "max_batch": 1}


def llama_cpp_peer(gguf: Path, threads: int, context: int) -> tuple[Any, dict[str, Any]]:
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=context, n_threads=threads, n_threads_batch=threads, verbose=False)

    def generate(prompts: list[list[int]], n: int) -> tuple[float, list[float], int]:
        llm.reset()  # else the cached prompt makes prefill free
        gen = llm.generate(prompts[0], top_k=1, temp=0.0, reset=True)
        t0 = time.perf_counter()
        marks = []
        for _ in range(n):
            next(gen)
            marks.append(time.perf_counter())
        gen.close()
        return marks[0] - t0, step_gaps(marks), n

    return generate, {"ran": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})", "dtype": "Q4_1 GGUF",
                      "max_batch": 1}


def run_one(peer: str, args: argparse.Namespace) -> int:
    """Measure ``peer`` in this process and write its bench.json."""
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from plugstack.meters import PeakRSS, rapl_meter
    from plugstack.plugins.bench.app import energy_record, memory_record, new_record, save
    from plugstack.plugins.bench.scenarios import decode_scenario, prefill_scenario, synthetic_prompt
    from plugstack.plugins.llama.gguf_loader import read_gguf
    from plugstack.plugins.llama.tokenizer import from_gguf_metadata
    from plugstack.plugins.llama.weights import smollm2_path

    cfg = options(args)
    peak = PeakRSS()
    out = Path(args.out) / peer
    out.mkdir(parents=True, exist_ok=True)
    gguf = smollm2_path()
    record = new_record([f"peer={peer}"], {"app": "bench", "model": "smollm2", "backend": peer},
                        {"peer": peer, "threads": args.threads, "app": vars(cfg)}, kind="peer")
    t0 = time.perf_counter()
    try:
        if peer == "transformers":
            generate, facts = transformers_peer(gguf, args.threads)
        elif peer.startswith("genai-"):
            generate, facts = genai_peer(gguf, args.threads, peer.split("-", 1)[1])
        else:
            longest = max([*cfg.prompt_lengths, cfg.decode_prompt_length]) + cfg.new_tokens
            generate, facts = llama_cpp_peer(gguf, args.threads, longest + 16)
    except ImportError as exc:
        record.update(status="skipped", reason=f"{exc} (an optional, benchmark-only package)")
        save(out, record)
        print(f"{peer}: skipped ({exc})", file=sys.stderr)
        return 0
    record["load"] = {"model_load_s": time.perf_counter() - t0, "prepare_s": 0.0, "preparation": {}}
    record["backend"] = {"choice": peer, "ran": facts["ran"], "dtype": facts["dtype"], "threads": args.threads}
    meter, why = rapl_meter()
    record["energy"] = energy_record(meter, why)
    tokenizer = from_gguf_metadata(read_gguf(gguf).tokenizer)  # the file's own tokenizer, weights untouched

    def prompts(length: int, batch: int) -> list[list[int]]:
        return [synthetic_prompt(tokenizer, None, length, row) for row in range(batch)]

    def tick() -> None:
        print(".", end="", file=sys.stderr, flush=True)

    measures = [lambda n=n: prefill_scenario(generate, prompts(n, 1)[0], cfg, meter, tick) for n in cfg.prompt_lengths]
    for b in cfg.batch_sizes:
        if facts["max_batch"] is None or b <= facts["max_batch"]:
            measures.append(lambda b=b: decode_scenario(generate, prompts(cfg.decode_prompt_length, b), cfg, meter,
                                                        tick))
        else:
            record.setdefault("notes", []).append(f"decode-b{b}: {peer} is measured at batch 1 only")
    for measure in measures:
        record["scenarios"].append(measure().as_dict())
        record["memory"] = memory_record(peak, None)
        save(out, record)
    record["status"] = "ok"
    save(out, record)
    print(f"{peer}: {out / 'bench.json'}", file=sys.stderr)
    return 0


def main() -> int:
    args = parse()
    if args.one:
        return run_one(args.one, args)
    from plugstack.errors import ConfigError

    try:
        options(args)  # bad flags fail before any peer starts
    except ConfigError as exc:
        print(f"bench_peers: error: {exc}", file=sys.stderr)
        return 2
    code = 0
    for peer in [p.strip() for p in args.peers.split(",") if p.strip()]:
        if peer not in PEERS:
            print(f"bench_peers: unknown peer {peer!r}; peers: {', '.join(PEERS)}", file=sys.stderr)
            return 2
        argv = [sys.executable, __file__, "--one", peer, *sys.argv[1:]]
        code = max(code, subprocess.run(argv, check=False).returncode)
    return code


if __name__ == "__main__":
    sys.exit(main())
