"""Ship a trained adapter as the support assistant's: ``weights/support-lora.safetensors``.

    python -m plugstack.plugins.support.ship runs/grpo/model.safetensors

copies the adapter ``app=train`` wrote into the package as fp16 (half the bytes; the merge
computes in fp32, and LoRA's matrices lose nothing that shows in the answers), keeping its
metadata (what it was trained on and how) and writing atomically. ``model=support`` and
``model.adapter=support`` load it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SHIPPED = Path(__file__).resolve().parent / "weights" / "support-lora.safetensors"


def ship(source: Path, target: Path = SHIPPED) -> Path:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save

    from plugstack.files import atomic_write

    with safe_open(str(source), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k).to(torch.float16).contiguous() for k in f.keys()}
    if "plugstack.finetune" not in meta:
        raise SystemExit(f"{source} is not an adapter app=train wrote (no plugstack.finetune metadata)")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, save(tensors, metadata=meta))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", type=Path, help="the model.safetensors app=train wrote")
    parser.add_argument("--to", type=Path, default=SHIPPED, help="where to write it (default: the package's)")
    args = parser.parse_args(argv)
    print(f"shipped {ship(args.adapter, args.to)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
