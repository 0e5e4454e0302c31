"""app=train under torchrun: two processes, PyTorch DDP over gloo, one training directory.

It trains the example package's third-party ``model=bigram`` (``plugstack-example``), and
the weights it writes load back into that model, which then generates text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from train_cli import rows, steps_of

TORCHRUN = Path(sys.executable).with_name("torchrun")
PLUGSTACK = Path(sys.executable).with_name("plugstack")


def test_two_ranks_train_one_model_under_torchrun(tmp_path, train_env):
    from safetensors import safe_open

    import plugstack
    from plugstack_example.bigram import load
    from plugstack_example.plugin import BigramConfig

    directory, runs = tmp_path / "train", tmp_path / "runs"
    argv = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(PLUGSTACK), "app=train", "model=bigram",
            "backend=cpu", "app.steps=8", "app.batch_size=32", "app.lr=0.1", "app.checkpoint_every=0",
            "app.eval_every=0", f"app.directory={directory}"]
    env = {**os.environ, **train_env, "PLUGSTACK_OUTPUTS": str(runs)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("Trained bigram to step 8") == 1, done.stdout  # rank 0 alone reports
    assert steps_of(directory / "metrics.csv") == list(range(1, 9))  # rank 0 alone writes: each step once
    assert float(rows(directory / "metrics.csv")[-1]["loss"]) < float(rows(directory / "metrics.csv")[0]["loss"])
    records = [json.loads(p.read_text()) for p in runs.rglob("run.json")]
    assert sorted(r["exit_code"] for r in records) == [0, 0]  # each rank composed its own run
    state = json.loads((directory / "checkpoints" / "step-000008" / "state.json").read_text())
    assert state["options"]["world_size"] == 2
    with safe_open(directory / "model.safetensors", "pt") as f:
        meta = f.metadata()
    digests = json.loads(meta["plugstack.rank_digests"])
    assert meta["plugstack.world_size"] == "2" and len(digests) == 2 and digests[0] == digests[1]  # DDP kept them equal

    model = load(BigramConfig(weights=str(directory / "model.safetensors")))  # the trained weights, used
    runner = plugstack.create_backend("cpu").prepare(model)
    params = plugstack.SamplingParams(max_new_tokens=12)
    (result,) = plugstack.generate(runner, model.tokenizer, ["The harbour "], params)
    assert result.completion_tokens > 0
