"""Helpers of the fine-tuning tests: a tiny chat dataset and the options of an SFT run."""

from __future__ import annotations

import json
from pathlib import Path

#: Facts the tiny assistant is trained on: a plan and the days it lasts.
PLANS = ["Basic", "Plus", "Pro", "Team", "Family", "Student", "Travel", "Home"]


def conversation(i: int) -> dict:
    plan = PLANS[i % len(PLANS)]
    return {"messages": [{"role": "system", "content": "You answer about plans."},
                         {"role": "user", "content": f"How long does {plan} last?"},
                         {"role": "assistant", "content": f"{plan} lasts {3 + i} days."}]}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def train_argv(model_dir: Path, data: Path, directory: Path, *extra: str) -> list[str]:
    return ["app=train", "model=llama", f"model.path={model_dir}", f"model.finetune.data={data}", "backend=cpu",
            "backend.threads=1", "app.steps=12", "app.batch_size=4", "app.lr=0.02", "app.checkpoint_every=6",
            "app.eval_every=6", "model.finetune.lora_rank=4", "model.finetune.lora_dropout=0.1",
            f"app.directory={directory}", *extra]
