"""The training loop: optimiser, schedule, autocast, clipping, evaluation, checkpoints, DDP.

Step ``s`` (1-based) seeds torch's global generator from ``(seed, s, rank)``, takes batch
``s - 1`` of this rank's ``batches("train")``, and sets the learning rate from the step
alone; with the weights and optimiser state restored bit for bit from safetensors, a
resumed run computes what an uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from plugstack import __version__
from plugstack.errors import PluginError, PlugstackError
from plugstack.files import module_digest
from plugstack.training import Trainable, to_device

from .metrics import MetricsFile, plot_loss
from .schedule import lr_at, step_seed
from .store import FORMAT, Checkpoint
from .tensors import load_optimizer, load_trainable, optimizer_state, save_tensors, save_trainable

__all__ = ["Trainer", "TrainingDiverged"]


class TrainingDiverged(PlugstackError):
    """The loss or the gradient norm stopped being a finite number."""


def build_optimizer(cfg: Any, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             weight_decay=cfg.weight_decay)


class Trainer:
    """One training run of one process (rank); rank 0 alone writes files and shows progress."""

    def __init__(self, ctx: Any, cfg: Any, tdir: Any, launch: Any, options: dict[str, Any], precision: str) -> None:
        self.ctx, self.cfg, self.tdir, self.launch = ctx, cfg, tdir, launch
        self.options, self.precision = options, precision
        self.log = ctx.log.bind(rank=launch.rank) if launch.distributed else ctx.log
        self.history: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
        self.metrics = {split: MetricsFile(tdir.path / name) for split, name in
                        (("train", "metrics.csv"), ("eval", "eval.csv"))}
        self.progress: Any = None
        self._drawn: tuple[int, int] | None = None  # the rows loss.png shows
        self._saved = 0  # the newest checkpoint's step
        self._consistent = True  # do the weights match the last recorded step?
        self.model_name = str(ctx.model.name)

    # -- setup ------------------------------------------------------------------------

    def run(self, make: Any, device: str, resume: Checkpoint | None) -> int:
        self.device = torch.device(self.launch.start(device))
        try:
            threads = int(self.ctx.cfg.backend.get("threads", 0) or 0)
            if threads > 0:  # backend=cpu's option: torch's process-wide thread count
                torch.set_num_threads(threads)
            trainable = self._trainable(make)
            module = trainable.module.to(self.device).train()
            params = [p for p in module.parameters() if p.requires_grad]
            if not params:
                raise PluginError(f"model {self.model_name!r}'s Trainable.module has no parameter with "
                                  f"requires_grad=True: there is nothing to train.")
            optimizer = build_optimizer(self.cfg, params)
            start = self._restore(resume, trainable, optimizer)
            self._train(trainable, module, params, optimizer, start)
            self._hide_progress()  # before the report on stdout, which shares the terminal
            self._finish(trainable, module, optimizer)
        finally:
            for file in self.metrics.values():
                file.close()
            self._hide_progress()
            self.launch.stop()
        return 0

    def _trainable(self, make: Any) -> Trainable:
        torch.manual_seed(step_seed(self.cfg.seed, 0, 0))  # the same initial weights on every rank and rerun
        trainable = make()
        if not isinstance(trainable, Trainable) or not isinstance(getattr(trainable, "module", None), torch.nn.Module):
            raise PluginError(f"model {self.model_name!r} offers 'train', but calling it returned "
                              f"{type(trainable).__name__}: expected a plugstack.Trainable whose .module is a "
                              f"torch.nn.Module.")
        return trainable

    def _restore(self, resume: Checkpoint | None, trainable: Trainable, optimizer: Any) -> int:
        """Load the checkpoint's weights, optimiser state and metrics; return its step."""
        if resume is not None:
            load_trainable(trainable, resume.path / "model.safetensors", self.model_name)
            load_optimizer(optimizer, resume.path / "optimizer.safetensors", resume.state["optimizer"])
            self.history = {k: list(v) for k, v in resume.state.get("metrics", {}).items()}
            self.history.setdefault("train", [])
            self.history.setdefault("eval", [])
        if self.launch.main:  # each step up to the checkpoint once; a killed run's later rows go
            for split, file in self.metrics.items():
                file.restart(self.history[split])
        return resume.step if resume is not None else 0

    # -- the loop ---------------------------------------------------------------------

    def _autocast(self) -> Any:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _batches(self, trainable: Trainable, start: int) -> Iterator[Any]:
        cfg, launch = self.cfg, self.launch
        batches = trainable.batches("train", batch_size=cfg.batch_size, seed=cfg.seed, rank=launch.rank,
                                    world_size=launch.world_size)
        return itertools.islice(batches, start, None)  # the batches a resumed run already trained on

    def _train(self, trainable: Trainable, module: torch.nn.Module, params: list[Any], optimizer: Any,
               start: int) -> None:
        cfg = self.cfg
        wrapped = self.launch.wrap(module, str(self.device))
        batches = self._batches(trainable, start)
        self._show_progress(start)
        self.log.info("train.start", start_step=start, steps=cfg.steps, device=str(self.device),
                      precision=self.precision, world_size=self.launch.world_size,
                      parameters=sum(p.numel() for p in params))
        self._saved, self._consistent = start, True
        try:
            for step in range(start + 1, cfg.steps + 1):
                began = time.perf_counter()
                row = self._step(trainable, wrapped, params, optimizer, batches, step)
                row["step_s"] = round(time.perf_counter() - began, 6)
                if self.launch.main:
                    self._record(row)
                self._consistent = True
                if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                    self._evaluate(trainable, module, step)
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
                    self._checkpoint(trainable, module, optimizer, step)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep the steps done since the last checkpoint
            done = self.history["train"][-1]["step"] if self.history["train"] else 0
            if self.launch.main and self._consistent and done > self._saved:
                self._checkpoint(trainable, module, optimizer, done)
                print(f"plugstack: note: interrupted: checkpoint at step {done} written; rerun the same command "
                      f"to go on.", file=sys.stderr)
            raise

    def _step(self, trainable: Trainable, wrapped: Any, params: list[Any], optimizer: Any, batches: Iterator[Any],
              step: int) -> dict[str, Any]:
        cfg = self.cfg
        torch.manual_seed(step_seed(cfg.seed, step, self.launch.rank))
        batch = next(batches, None)
        if batch is None:
            raise PluginError(f"model {self.model_name!r}'s Trainable.batches('train') ended before step {step}: "
                              f"it must never end (epoch after epoch).")
        lr = lr_at(step, lr=cfg.lr, schedule=cfg.schedule, warmup_steps=cfg.warmup_steps, steps=cfg.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with self._autocast():
            loss, extra = self._loss(trainable, wrapped, to_device(batch, self.device))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip is not None else math.inf)
        values = torch.stack([loss.detach().float(), norm.detach().float().to(loss.device),
                              *(torch.as_tensor(float(v), device=loss.device) for v in extra.values())])
        values = self.launch.mean(values).tolist()  # every rank's loss, so every rank decides alike
        if not (math.isfinite(values[0]) and math.isfinite(values[1])):
            raise self._diverged(step, values[0], values[1])
        self._consistent = False  # until this step's row is recorded, the weights are ahead of the history
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        named = dict(zip(extra, values[2:], strict=True))
        return {"step": step, "loss": values[0], "lr": lr, "grad_norm": values[1], **named}

    def _loss(self, trainable: Trainable, wrapped: Any, batch: Any) -> tuple[torch.Tensor, Mapping[str, float]]:
        out = trainable.loss(wrapped, batch)
        loss, extra = out if isinstance(out, tuple) else (out, {})
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
            raise PluginError(f"model {self.model_name!r}'s Trainable.loss returned {type(loss).__name__} "
                              f"{tuple(getattr(loss, 'shape', ()))}: expected a scalar tensor that requires grad, "
                              f"computed through the module it is given.")
        return loss.reshape(()), dict(extra)

    def _diverged(self, step: int, loss: float, norm: float) -> TrainingDiverged:
        kept = self.tdir.steps()
        last = f"the checkpoints up to step {kept[-1][0]} are kept" if kept else "no checkpoint was written yet"
        return TrainingDiverged(
            f"training diverged at step {step}: the loss is {loss}, the gradient norm {norm} ({last}). Lower app.lr "
            f"(now {self.cfg.lr}), clip gradients (app.grad_clip), warm up (app.warmup_steps) or use "
            f"app.precision=fp32, and start over with app.resume=false or another app.directory.")

    def _record(self, row: dict[str, Any]) -> None:
        cfg = self.cfg
        self.history["train"].append(row)
        self.metrics["train"].append(row)
        step = row["step"]
        if self.progress is not None:
            self.progress.update(self._task, completed=step, loss=f"{row['loss']:.4f}")
        if step % cfg.log_every == 0 or step == cfg.steps or len(self.history["train"]) == 1:
            self.log.info("train.step", **{k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})

    def _evaluate(self, trainable: Trainable, module: torch.nn.Module, step: int) -> None:
        """Held-out metrics on rank 0, in eval mode without gradients (other ranks go on)."""
        if not self.launch.main:
            return
        torch.manual_seed(step_seed(self.cfg.seed, step, -1))  # the next step reseeds: training is unaffected
        module.eval()
        try:
            with torch.no_grad(), self._autocast():
                result = trainable.evaluate(module, batch_size=self.cfg.batch_size, seed=self.cfg.seed)
        finally:
            module.train()
        row = {"step": step, **{k: float(v) for k, v in result.items()}}
        self.history["eval"].append(row)
        self.metrics["eval"].append(row)
        self.log.info("train.eval", **row)

    # -- files ------------------------------------------------------------------------

    def _show_progress(self, start: int) -> None:
        if not (self.launch.main and getattr(sys.stderr, "isatty", lambda: False)()):
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn(f"train {self.model_name}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(),
                                 console=Console(stderr=True))
        self._task = self.progress.add_task("train", total=self.cfg.steps, completed=start, loss="-")
        self.progress.start()

    def _hide_progress(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def _config(self) -> Any:
        from omegaconf import OmegaConf

        from plugstack.run import redacted

        return redacted(OmegaConf.to_container(self.ctx.cfg, resolve=True, enum_to_str=True))  # weights get shared

    def _state(self, trainable: Trainable, step: int, optimizer_rest: dict[str, Any]) -> dict[str, Any]:
        return {"format": FORMAT, "step": step, "model": self.model_name, "options": self.options,
                "config": self._config(),
                "trainable": trainable.describe(), "optimizer": optimizer_rest, "metrics": self.history,
                "precision": self.precision, "device": str(self.device), "plugstack_version": __version__,
                "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def _checkpoint(self, trainable: Trainable, module: torch.nn.Module, optimizer: Any, step: int) -> None:
        if not self.launch.main:
            return
        tensors, rest = optimizer_state(optimizer)

        def fill(tmp: Any) -> None:
            save_trainable(trainable, tmp / "model.safetensors")
            save_tensors(tensors, tmp / "optimizer.safetensors", "the optimiser state")

        path = self.tdir.write(step, fill, self._state(trainable, step, rest))
        self._saved = step
        self.tdir.prune(self.cfg.keep_checkpoints)
        self._plot()
        self.log.info("train.checkpoint", step=step, path=str(path))

    def _plot(self) -> None:
        drawn = (len(self.history["train"]), len(self.history["eval"]))
        if drawn == self._drawn:
            return  # the end's checkpoint drew these rows already
        self._drawn = drawn
        plot_loss(self.tdir.path / "loss.png", self.history["train"], self.history["eval"],
                  f"{self.model_name}: {self.cfg.optimizer}, lr {self.cfg.lr}, batch {self.cfg.batch_size}"
                  + (f" x {self.launch.world_size} ranks" if self.launch.distributed else ""))

    def _finish(self, trainable: Trainable, module: torch.nn.Module, optimizer: Any) -> None:
        digests = self.launch.gather(module_digest(module))  # DDP keeps the ranks' weights equal: check it
        if len(set(digests)) != 1:
            raise PluginError(f"the {len(digests)} ranks ended with different weights: model {self.model_name!r}'s "
                              f"Trainable.loss must compute through the module it is given (DDP's), not "
                              f"Trainable.module.")
        if not self.launch.main:
            return
        step = self.history["train"][-1]["step"] if self.history["train"] else 0
        meta = {"plugstack.model": self.model_name, "plugstack.step": str(step),
                "plugstack.config": json.dumps(self._config(), default=str),
                "plugstack.trainable": json.dumps(trainable.describe(), default=str),
                "plugstack.world_size": str(self.launch.world_size), "plugstack.rank_digests": json.dumps(digests)}
        final = self.tdir.path / "model.safetensors"
        save_trainable(trainable, final, meta)
        self._plot()
        self._report(final, step, trainable.usage(str(final)))

    def _report(self, final: Any, step: int, usage: str | None = None) -> None:
        last = self.history["train"][-1] if self.history["train"] else {}
        evals = self.history["eval"][-1] if self.history["eval"] else {}
        self.log.info("train.done", step=step, loss=last.get("loss"), path=str(final),
                      **{k: v for k, v in evals.items() if k != "step"})
        shown = ", ".join(f"{k} {v:.4g}" for k, v in [("loss", last.get("loss")), *evals.items()]
                          if k != "step" and isinstance(v, float))
        out = self.ctx.stdout
        print(f"Trained {self.model_name} to step {step} ({shown}): {final}", file=out)
        if usage:
            print(f"  use it: {usage}", file=out)
        else:
            print("  its tensors are the Trainable's state_dict() (by default its module's): "
                  "safetensors.torch.load_file(path), then module.load_state_dict(...); the file's metadata holds "
                  "the training config", file=out)
        print(f"  train longer: rerun this command with a larger app.steps (checkpoints in {self.tdir.checkpoints}; "
              f"metrics.csv and loss.png in {self.tdir.path})", file=out)
        out.flush()
