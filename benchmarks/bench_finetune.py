"""LoRA SFT step throughput: plugstack's ``app=train`` against PEFT + transformers' ``Trainer``.

Both train SmolLM2-135M-Instruct (the same fp32 weights, dequantised from the GGUF) with the
same LoRA (rank, alpha, dropout, every linear of every layer), AdamW at the same learning
rate and clipping, on the same batches of the support assistant's SFT conversations in the
same order, the loss on assistant tokens only. plugstack runs as the README's command (a
fresh ``plugstack app=train`` process, its ``metrics.csv`` timing each step); the peer runs
in this process with a callback timing each step. The first step of each is left out (warm
up). Prints tokens/s (real tokens, padding excluded) and the ratio:

    .venv/bin/python benchmarks/bench_finetune.py --steps 9 --batch-size 8 --threads 2
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "plugins" / "support" / "data" / "sft_train.jsonl"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=9, help="steps per system (the first is warm-up)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rank", type=int, default=8)
    return p.parse_args()


def plugstack_batches(args: argparse.Namespace):
    """The batches ``app=train`` takes (seed 0), made by the same Trainable in this process."""
    from plugstack.plugins.llama.config import LlamaFinetuneConfig, LlamaModelConfig
    from plugstack.plugins.llama.loader import load
    from plugstack.training import TRAIN

    cfg = LlamaModelConfig(source="smollm2", finetune=LlamaFinetuneConfig(data=str(DATA), max_length=args.max_length,
                                                                          lora_rank=args.rank))
    model = load(cfg)
    trainable = model.offers[TRAIN]()
    batches = trainable.batches("train", batch_size=args.batch_size, seed=0)
    return model, trainable, [next(batches) for _ in range(args.steps)]


def run_plugstack(args: argparse.Namespace, out: Path) -> list[float]:
    """Seconds of each step of a real ``plugstack app=train`` run."""
    argv = [str(Path(sys.executable).with_name("plugstack")), "app=train", "model=smollm2", "backend=cpu",
            f"backend.threads={args.threads}", f"model.finetune.data={DATA}",
            f"model.finetune.max_length={args.max_length}", f"model.finetune.lora_rank={args.rank}",
            f"app.steps={args.steps}", f"app.batch_size={args.batch_size}", "app.lr=1e-3", "app.eval_every=0",
            "app.checkpoint_every=0", f"app.directory={out}"]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    with open(out / "metrics.csv") as f:
        return [float(row["step_s"]) for row in csv.DictReader(f)]


def run_peer(args: argparse.Namespace, model, trainable, batches) -> list[float]:
    """Seconds of each step of transformers' Trainer with PEFT's LoRA on the same batches."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(args.threads)
    cfg = model.module.cfg
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.context_length, tie_word_embeddings=cfg.tie_embeddings)
    hf = transformers.LlamaForCausalLM(hf_cfg)
    base = {k: v for k, v in model.module.state_dict().items() if ".lora_" not in k}
    names = {k.replace(".base_layer.", "."): v for k, v in base.items()}
    missing = hf.model.load_state_dict({k: v for k, v in names.items() if not k.startswith("lm_head")}, strict=False)
    assert not missing.unexpected_keys, missing.unexpected_keys
    lora = trainable.lora
    peft_model = get_peft_model(hf, LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                               target_modules=lora["targets"], bias="none", task_type="CAUSAL_LM"))

    class Same(torch.utils.data.IterableDataset):  # not shuffled: the batches plugstack took, in order
        def __iter__(self):
            for b in batches:
                for row in range(b["input_ids"].shape[0]):
                    keep = b["attention_mask"][row].bool()
                    ids = b["input_ids"][row][keep]
                    targets = torch.zeros_like(keep)
                    targets[1:] = b["select"][row][:-1]  # select[j] marks that token j + 1 is learnt
                    yield {"input_ids": ids, "labels": torch.where(targets[keep], ids, -100)}

    def collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        pad = lambda t, v: torch.cat([t, torch.full((width - len(t),), v, dtype=t.dtype)])  # noqa: E731
        return {"input_ids": torch.stack([pad(r["input_ids"], 0) for r in rows]),
                "labels": torch.stack([pad(r["labels"], -100) for r in rows]),
                "attention_mask": torch.stack([pad(torch.ones_like(r["input_ids"]), 0) for r in rows])}

    times: list[float] = []

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as tmp:
        targs = transformers.TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch_size, max_steps=args.steps, learning_rate=1e-3,
            lr_scheduler_type="constant", max_grad_norm=1.0, weight_decay=0.0, optim="adamw_torch", use_cpu=True,
            report_to=[], save_strategy="no", logging_steps=10**6, dataloader_num_workers=0, disable_tqdm=True)
        transformers.Trainer(model=peft_model, args=targs, train_dataset=Same(), data_collator=collate,
                             callbacks=[Clock()]).train()
    return times


def main() -> int:
    args = parse()
    model, trainable, batches = plugstack_batches(args)
    tokens = [int(b["attention_mask"].sum()) for b in batches]
    with tempfile.TemporaryDirectory() as tmp:
        ours = run_plugstack(args, Path(tmp) / "train")
    peer = run_peer(args, model, trainable, batches)
    rows = []
    for name, times in (("plugstack app=train", ours), ("PEFT + transformers Trainer", peer)):
        rate = sum(tokens[1:]) / sum(times[1:])
        rows.append((name, rate, statistics.median(times[1:])))
        print(f"{name:>28}: {rate:7.1f} tokens/s, step p50 {statistics.median(times[1:]):.2f} s "
              f"({len(times) - 1} timed steps)")
    print(f"ratio plugstack / peer: {rows[0][1] / rows[1][1]:.2f}x (batch {args.batch_size}, max_length "
          f"{args.max_length}, LoRA rank {args.rank} on every linear, {args.threads} threads)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
