"""``describe``: what did this run get? Prints JSON about the model, runner and one step."""

from __future__ import annotations

import json
import time

import plugstack


class DescribeApp(plugstack.App):
    def run(self, ctx: plugstack.RunContext) -> int:
        model = ctx.model
        runner = ctx.runner
        report = {
            "app": "describe",
            "model": model.name,
            "kind": model.kind,
            "source": model.source,
            "backend": str(ctx.cfg.backend.name),
            "runner": type(runner).__name__,
            "dtype": runner.dtype,
            "inputs": model.signature.feed_inputs,
            "state_tensors": len(model.signature.state),
        }
        if self.cfg.run_step and model.kind == "decoder":
            import torch

            state = runner.new_state(1)
            ids = torch.tensor([[1]])
            start = time.perf_counter()
            out = runner.run({"input_ids": ids, "position_ids": torch.zeros_like(ids),
                              "attention_mask": torch.ones_like(ids)}, state)
            report["step_ms"] = round((time.perf_counter() - start) * 1000, 3)
            report["logits_shape"] = list(out.outputs["logits"].shape)
            report["logits_finite"] = bool(torch.isfinite(out.outputs["logits"]).all())
        ctx.log.info("describe.done", **{k: v for k, v in report.items() if k in ("step_ms", "runner")})
        print(json.dumps(report, indent=2), file=ctx.stdout)
        return 0
