"""Whole-process cost of the README's main command next to llama.cpp on the same GGUF and prompt.

Each run is a fresh process, timed from start to exit (wall seconds) with its peak resident
memory (``ru_maxrss`` from ``os.wait4``). Rows, alternating so machine noise hits both alike
(medians of ``--repeats``):

- plugstack, warm cache: ``plugstack "<prompt>"`` with the graph already cached;
- plugstack, cold: the same with an empty graph cache (the weights already fetched), i.e. the
  first run after the download: graph build and verification included;
- llama.cpp: llama-cpp-python (``llama_cpp``) answering the same chat in a fresh Python, or a
  llama.cpp's ``llama-simple`` given with ``--llama-bin`` (see benchmarks/README.md for
  building it), when the package is not installed.

    .venv/bin/python benchmarks/bench_process.py [--repeats 5] [--llama-bin PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "What is the capital of France?"
LLAMA_CPP_PY = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=512, n_threads=2, verbose=False)
out = llm.create_chat_completion([{"role": "user", "content": sys.argv[2]}], max_tokens=64, temperature=0)
print(out["choices"][0]["message"]["content"])
"""


def measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of one fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{cmd[0]} exited {proc.returncode}; run it by hand to see why")
    return wall, usage.ru_maxrss / 1024, out.strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--llama-bin", default=os.environ.get("LLAMA_BIN"), help="llama.cpp's llama-simple binary, used "
                   "when llama-cpp-python is not installed")
    args = p.parse_args()

    from plugstack.plugins.llama.weights import known_path

    gguf = known_path("smollm2")  # fetched once if needed, outside every timing
    plugstack = str(Path(sys.executable).with_name("plugstack"))
    home = Path(os.environ.get("PLUGSTACK_HOME", Path.home() / ".cache" / "plugstack"))
    base = {**os.environ, "PLUGSTACK_OUTPUTS": tempfile.mkdtemp(prefix="bench-process-")}
    warm_env = {**base, "PLUGSTACK_HOME": str(home)}
    ours = [plugstack, args.prompt]
    measured(ours, warm_env)  # the graph is cached from here on

    peer: list[str] | None = None
    if importlib.util.find_spec("llama_cpp") is not None:
        peer, peer_name = [sys.executable, "-c", LLAMA_CPP_PY, str(gguf), args.prompt], "llama-cpp-python"
    elif args.llama_bin:
        peer = [args.llama_bin, "-m", str(gguf), "-n", "64", args.prompt]  # llama-simple: greedy, all cores
        peer_name = Path(args.llama_bin).name
    rows: dict[str, list[tuple[float, float, str]]] = {"plugstack (warm cache)": [], "plugstack (cold cache)": []}
    if peer:
        rows[peer_name] = []
    for r in range(args.repeats):
        rows["plugstack (warm cache)"].append(measured(ours, warm_env))
        with tempfile.TemporaryDirectory(prefix="bench-cold-home-") as cold:
            (Path(cold) / "models").mkdir()
            shutil.copy(gguf, Path(cold) / "models" / gguf.name)  # the download is done: only the graph is cold
            rows["plugstack (cold cache)"].append(measured(ours, {**base, "PLUGSTACK_HOME": cold}))
        if peer:
            rows[peer_name].append(measured(peer, base))
        print(f"round {r + 1}/{args.repeats} done", file=sys.stderr)

    def median(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    ref = rows.get(peer_name) if peer else None
    print(f"\n{'system':28s} {'wall s':>8s} {'peak RSS MiB':>13s} {'x llama.cpp wall':>17s} {'x RSS':>7s}  answer")
    for name, got in rows.items():
        wall, rss = median([g[0] for g in got]), median([g[1] for g in got])
        ratio = (f"{wall / median([g[0] for g in ref]):17.2f} {rss / median([g[1] for g in ref]):7.2f}"
                 if ref else f"{'-':>17s} {'-':>7s}")
        print(f"{name:28s} {wall:8.2f} {rss:13.0f} {ratio}  {got[-1][2][:60]!r}")
    if not peer:
        print("\nno llama.cpp peer: pip install llama-cpp-python, or pass --llama-bin (benchmarks/README.md)")


if __name__ == "__main__":
    main()
