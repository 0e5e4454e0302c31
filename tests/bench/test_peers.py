"""benchmarks/bench_peers.py: a peer measured by app=bench's own scenarios on the real SmolLM2,
written as a bench.json that `plugstack report` shows beside plugstack's jobs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from badinput import check, run

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "bench_peers.py"


def test_peers_are_measured_like_plugstack_and_reported_beside_it(tmp_path, smollm2_gguf):
    out = tmp_path / "sweep" / "peers"
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--peers", "transformers,llama-cpp",
                           "--threads", "1", "--prompt-lengths", "8", "--batch-sizes", "1,2",
                           "--decode-prompt-length", "8", "--new-tokens", "4", "--warmup", "0", "--repeats", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    hf = json.loads((out / "transformers" / "bench.json").read_text())
    assert hf["kind"] == "peer" and hf["status"] == "ok" and hf["backend"]["ran"].startswith("transformers ")
    assert [s["name"] for s in hf["scenarios"]] == ["prefill-8", "decode-b1", "decode-b2"]
    decode = hf["scenarios"][2]
    assert decode["metrics"]["decode_tok_s"]["median"] > 0 and decode["step_latency_s"]["n"] == 3
    assert hf["memory"]["peak_rss_bytes"] > 200 << 20  # its own process: the model's weights at least
    cpp = json.loads((out / "llama-cpp" / "bench.json").read_text())
    if importlib.util.find_spec("llama_cpp") is None:  # optional: recorded as skipped, with why
        assert cpp["status"] == "skipped" and "No module named 'llama_cpp'" in cpp["reason"]
    else:
        assert cpp["status"] == "ok" and [s["name"] for s in cpp["scenarios"]] == ["prefill-8", "decode-b1"]

    report = run(["report", str(tmp_path / "sweep"), "--baseline", "peer=transformers"])
    check(report, 0)
    md = (tmp_path / "sweep" / "report.md").read_text()
    assert "| peer=transformers | transformers " in md and "x peer=transformers" in md


def test_a_bad_flag_fails_before_any_peer_runs(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--batch-sizes", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "app.batch_sizes=[0]" in done.stderr
    assert not any(tmp_path.iterdir())
