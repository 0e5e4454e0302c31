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
            "state": model.signature.state_kind,
            "state_tensors": len(model.signature.state),
        }
        if self.cfg.run_step and "input_ids" in model.signature.feed_inputs:
            import torch

            ids = torch.tensor([[1]])
            inputs = {"input_ids": ids}
            if model.signature.positions:  # each new token's position: 0 for the first
                inputs[model.signature.positions] = torch.zeros_like(ids)
            start = time.perf_counter()
            out = runner.admit(runner.new_state(1), 0, inputs)
            report["step_ms"] = round((time.perf_counter() - start) * 1000, 3)
            report["logits_shape"] = list(out.outputs["logits"].shape)
            report["logits_finite"] = bool(torch.isfinite(out.outputs["logits"]).all())
        ctx.log.info("describe.done", **{k: v for k, v in report.items() if k in ("step_ms", "runner")})
        print(json.dumps(report, indent=2), file=ctx.stdout)
        return 0
