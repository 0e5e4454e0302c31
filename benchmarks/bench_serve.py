"""Serving throughput with continuous batching: `plugstack app=serve` at 1, 4 and 8 concurrent
streams, next to llama.cpp's own `llama-server` on the same GGUF, in one run.

    .venv/bin/python benchmarks/bench_serve.py                          # cpu + onnx fp32/int8/int4
    .venv/bin/python benchmarks/bench_serve.py --systems onnx-int4 --streams 1,8
    LLAMA_SERVER=/path/to/llama-server .venv/bin/python benchmarks/bench_serve.py

Every system is a real server process on loopback driven by the official `openai` client:
each stream sends its own chat prompt (greedy, `max_tokens`, `ignore_eos` so every answer
has the same length) and reads the server-sent events. Columns: aggregate output tokens/s
(all streams' tokens over the wall time from the first request to the last token), time to
first token p50/p99 over the streams, and the aggregate's ratio to the same system's one
stream. llama-server is optional (benchmark-only; `benchmarks/README.md` says how to build
it): without `LLAMA_SERVER` or `--llama-server` its rows are skipped, and the run says so.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).with_name("plugstack")
PROMPTS = ["Tell me about the sea.", "Write a story about a fox.", "Explain how rain forms.",
           "Describe a city at night.", "What makes a good teacher?", "Tell me about mountains.",
           "Write a letter to a friend.", "Explain how plants grow."]
SYSTEMS = {  # name -> plugstack overrides
    "cpu-fp32": ["backend=cpu"],
    "cpu-int8": ["backend=cpu", "backend.quantize=int8"],
    "onnx-fp32": ["backend=onnx", "backend.quantize=null"],
    "onnx-native-l0": ["backend=onnx", "backend.quantize=native", "backend.accuracy_level=0"],
    "onnx-native-l4": ["backend=onnx", "backend.quantize=native", "backend.accuracy_level=4"],
    "onnx-int8": ["backend=onnx", "backend.quantize=int8"],
    "onnx-int4": ["backend=onnx", "backend.quantize=int4"],
}


def start_plugstack(overrides: list[str], threads: int) -> tuple[subprocess.Popen, str]:
    args = [str(BIN), "app=serve", "app.port=0", "app.max_batch=8", f"backend.threads={threads}", *overrides]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()  # "plugstack serve: http://127.0.0.1:PORT" once it accepts connections
    if not line.startswith("plugstack serve: "):
        proc.kill()
        raise RuntimeError(f"plugstack {' '.join(overrides)} did not start: {line!r}")
    return proc, line.split()[-1]


def start_llama_server(binary: str, gguf: Path, threads: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [binary, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", "8", "-t", str(threads),
            "-c", str(8 * 512), "--cont-batching"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("llama-server did not become healthy in 60 s")


def one_stream(client, model: str, prompt: str, tokens: int, t0: float, out: list) -> None:
    first, count = None, 0
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=tokens, temperature=0,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter()
        if chunk.usage is not None:
            count = chunk.usage.completion_tokens
    out.append((first - t0 if first else float("nan"), count, time.perf_counter()))


def measure(url: str, streams: int, tokens: int) -> dict[str, float]:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key=os.environ.get("PLUGSTACK_API_KEY", "none"), max_retries=0)
    model = client.models.list().data[0].id
    one_stream(client, model, PROMPTS[0], 8, time.perf_counter(), [])  # warm-up
    results: list = []
    t0 = time.perf_counter()
    workers = [threading.Thread(target=one_stream, args=(client, model, PROMPTS[i % len(PROMPTS)], tokens, t0,
                                                         results)) for i in range(streams)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    ttft = sorted(r[0] for r in results)
    wall = max(r[2] for r in results) - t0
    return {"tok_s": sum(r[1] for r in results) / wall, "ttft_p50": statistics.median(ttft),
            "ttft_p99": ttft[min(len(ttft) - 1, round(0.99 * (len(ttft) - 1)))],
            "tokens": sum(r[1] for r in results)}


def run_system(name: str, start, streams: list[int], tokens: int) -> list[tuple[str, int, dict]]:
    proc, url = start()
    try:
        return [(name, n, measure(url, n, tokens)) for n in streams]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list of {', '.join(SYSTEMS)}")
    parser.add_argument("--streams", default="1,4,8")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per answer (ignore_eos)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER"), help="llama-server binary")
    args = parser.parse_args()
    from plugstack.plugins.llama.weights import smollm2_path

    streams = [int(n) for n in args.streams.split(",")]
    rows, skipped = [], []
    for name in args.systems.split(","):
        rows += run_system(name, lambda n=name: start_plugstack(SYSTEMS[n], args.threads), streams, args.tokens)
    if args.llama_server:
        rows += run_system("llama-server", lambda: start_llama_server(args.llama_server, smollm2_path(),
                                                                      args.threads), streams, args.tokens)
    else:
        skipped.append("llama-server: set LLAMA_SERVER or --llama-server (see benchmarks/README.md)")
    single = {name: m["tok_s"] for name, n, m in rows if n == 1}
    peer = next((m["tok_s"] for name, n, m in rows if name == "llama-server" and n == max(streams)), None)
    print(f"\n{'system':<13} {'streams':>7} {'tok/s':>8} {'ttft p50':>9} {'ttft p99':>9} {'x 1 stream':>10} "
          f"{'x llama-server':>14}")
    for name, n, m in rows:
        own = f"{m['tok_s'] / single[name]:.2f}" if name in single else "-"
        vs = f"{m['tok_s'] / peer:.2f}" if peer and n == max(streams) else "-"
        print(f"{name:<13} {n:>7} {m['tok_s']:>8.1f} {m['ttft_p50'] * 1000:>7.0f}ms {m['ttft_p99'] * 1000:>7.0f}ms "
              f"{own:>10} {vs:>14}")
    for line in skipped:
        print(f"skipped peer: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
