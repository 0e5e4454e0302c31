"""Quality of reduced-precision variants against fp32, teacher-forced on a fixed text.

Every variant reads the same text (benchmarks/data/quality.txt, ~300 tokens of plain
English) one token at a time through its Runner, exactly as the generation loop feeds it.
For each position we keep the next-token distribution and report, against the eager fp32
reference measured in the same run:

- perplexity of the text under the variant (lower is better; fp32 is the baseline),
- top-1 agreement: how often the variant's most likely next token equals fp32's,
- mean KL(fp32 || variant) over positions, in nats.

    python benchmarks/bench_quality.py [--variants cpu-int8,onnx-fp32,onnx-int8,onnx-int4] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

TEXT = Path(__file__).with_name("data") / "quality.txt"

VARIANTS = {
    "cpu-bf16": ("cpu", {"dtype": "bf16"}),
    "cpu-int8": ("cpu", {"quantize": "int8"}),
    "onnx-fp32": ("onnx", {"quantize": None}),
    "onnx-native-l0": ("onnx", {"quantize": "native", "accuracy_level": 0}),
    "onnx-native-l4": ("onnx", {"quantize": "native", "accuracy_level": 4}),
    "onnx-int8": ("onnx", {"quantize": "int8"}),
    "onnx-int4": ("onnx", {"quantize": "int4"}),
}


def teacher_forced_logprobs(runner, ids: list[int]) -> torch.Tensor:
    """``[len(ids) - 1, vocab]`` log-probabilities of the token after each position."""
    from plugstack.testing.driver import SlotDriver

    driver = SlotDriver(runner)
    rows = [torch.log_softmax(driver.feed([[token]])[0].double(), -1) for token in ids[:-1]]
    return torch.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from rich.console import Console
    from rich.table import Table

    from plugstack.backends.eager import EagerRunner
    from plugstack.plugins.llama.loader import load_path
    from plugstack.plugins.llama.weights import smollm2_path
    from plugstack.registry import get_registry

    model = load_path(smollm2_path())
    ids = model.tokenizer.encode(TEXT.read_text().strip())
    targets = torch.tensor(ids[1:])
    start = time.perf_counter()
    ref = teacher_forced_logprobs(EagerRunner(model.module, model.signature), ids)
    rows = [("eager fp32 (reference)", ref, time.perf_counter() - start)]
    for name in args.variants.split(","):
        kind, options = VARIANTS[name]
        entry = get_registry().get("backend", kind)
        cfg = entry.default_config()
        for key, value in {"threads": args.threads, **options}.items():
            setattr(cfg, key, value)
        runner = entry.create(cfg).prepare(model)
        start = time.perf_counter()
        rows.append((name, teacher_forced_logprobs(runner, ids), time.perf_counter() - start))
        runner.close()

    table = Table(title=f"SmolLM2-135M-Instruct, teacher-forced on {len(ids)} tokens of {TEXT.name}")
    for column in ("variant", "perplexity", "vs fp32", "top-1 agreement", "mean KL (nats)", "seconds"):
        table.add_column(column, justify="right" if column != "variant" else "left")
    ref_ppl = math.exp(-ref.gather(1, targets[:, None]).mean().item())
    for name, logp, seconds in rows:
        ppl = math.exp(-logp.gather(1, targets[:, None]).mean().item())
        agree = (logp.argmax(-1) == ref.argmax(-1)).double().mean().item()
        kl = (ref.exp() * (ref - logp)).sum(-1).mean().item()
        table.add_row(name, f"{ppl:.3f}", f"{ppl / ref_ppl:.3f}x", f"{agree:.1%}", f"{kl:.4f}", f"{seconds:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
