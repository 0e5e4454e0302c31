"""What the llama model offers ``app=train``: supervised fine-tuning on chat JSONL, LoRA or full.

``model.finetune`` (:class:`~.config.LlamaFinetuneConfig`) chooses. With LoRA (the
default), PEFT's ``inject_adapter_in_model`` wraps the target ``nn.Linear`` modules of the
plugin's own ``Llama`` and only the adapter's matrices train; checkpoints and the final
``model.safetensors`` hold those matrices alone, with the adapter's description (rank,
alpha, targets, the base weights' digest) in the metadata, which ``model.adapter=``
reads (:mod:`.adapter`). With ``full=true`` every weight trains and is saved.

A batch is a dict of right-padded ``input_ids`` and ``attention_mask`` ``[B, T]``,
``select`` ``[B, T]`` (the positions whose next token is the assistant's) and ``labels``
``[N]`` (those next tokens): padding sits after every real token, so under the causal
mask it changes nothing the loss sees, and the loss is the mean over the batch's
assistant tokens.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plugstack.errors import ConfigError, PlugstackError
from plugstack.model import Model
from plugstack.training import Trainable, epoch_shards, to_device

from .adapter import adapter_metadata
from .config import LORA_MODULES
from .model import Llama, causal_mask
from .sft_data import Example, load_examples

__all__ = ["CausalLM", "LlamaTrainable", "SFTTrainable", "add_lora", "check_options", "collate", "make_trainable"]

OBJECTIVES = ("sft", "dpo", "grpo")


class CausalLM(nn.Module):
    """The ``Llama`` over whole sequences without a cache, returning the logits of the
    positions ``select`` picks only (the output head is the costliest matrix: most
    positions of a chat are not the assistant's)."""

    def __init__(self, llama: Llama) -> None:
        super().__init__()
        self.llama = llama

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
        m = self.llama
        b, t = input_ids.shape
        positions = torch.arange(t, device=input_ids.device).expand(b, t)
        x = m.embed_tokens(input_ids)
        cos, sin = m.rotary(positions, x.dtype)
        mask = causal_mask(attention_mask, t)
        empty = x.new_zeros(b, m.cfg.num_kv_heads, 0, m.cfg.head_dim)  # no past: one pass over the sequence
        for layer in m.layers:
            x, _, _ = layer(x, cos, sin, mask, empty, empty)
        return m.lm_head(m.norm(x[select])).float()


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """``examples`` as one right-padded batch (see the module's docstring)."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    targets = torch.zeros((len(examples), width), dtype=torch.bool)
    for row, e in enumerate(examples):
        n = len(e.ids)
        ids[row, :n] = torch.tensor(e.ids)
        mask[row, :n] = 1
        targets[row, :n] = torch.tensor(e.targets)
    select = torch.zeros_like(targets)
    select[:, :-1] = targets[:, 1:]  # position j predicts token j + 1
    return {"input_ids": ids, "attention_mask": mask, "select": select, "labels": ids[:, 1:][targets[:, 1:]]}


def add_lora(llama: Llama, *, rank: int, alpha: float, dropout: float, targets: Sequence[str]) -> None:
    """Wrap ``targets`` of every layer with PEFT's LoRA and freeze everything else."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ConfigError("LoRA fine-tuning needs PEFT: pip install 'plugstack[finetune]' (or peft), or train every "
                          "weight with model.finetune.full=true.") from None

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    inject_adapter_in_model(config, llama)
    for name, p in llama.named_parameters():
        p.requires_grad_(".lora_" in name)


def lora_tensors(llama: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's matrices by the names adapter files use (PEFT's, less ``.default``)."""
    return {n.replace(".default.", "."): p for n, p in llama.named_parameters() if ".lora_" in n}


class LlamaTrainable(Trainable):
    """What every objective shares: the ``Llama`` under :class:`CausalLM`, and what is saved
    (the adapter's matrices, or every weight) with its description."""

    objective = ""
    #: What :attr:`train` holds, in messages (``app.batch_size`` too large for it).
    items = "examples"

    def __init__(self, llama: Llama, *, train: list[Any], held_out: list[Any], pad_id: int,
                 lora: Mapping[str, Any] | None, base: Mapping[str, str], facts: Mapping[str, Any]) -> None:
        self.module = CausalLM(llama)
        self.llama, self.train, self.held_out, self.pad_id = llama, train, held_out, pad_id
        self.lora, self.base, self.facts = dict(lora) if lora else None, dict(base), dict(facts)

    def make_batch(self, rows: list[Any]) -> dict[str, torch.Tensor]:
        """Rows of :attr:`train` or :attr:`held_out` as one batch."""
        raise NotImplementedError

    def batches(self, split: str, *, batch_size: int, seed: int, rank: int = 0,
                world_size: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        """``"eval"``: the held-out rows once, in order; else this rank's share of
        :attr:`train`, epoch after epoch (:func:`plugstack.training.epoch_shards`)."""
        if split == "eval":
            for start in range(0, len(self.held_out), batch_size):
                yield self.make_batch(self.held_out[start : start + batch_size])
            return
        for _, order in epoch_shards(len(self.train), batch_size=batch_size, seed=seed, rank=rank,
                                     world_size=world_size, items=self.items, source="model.finetune.data"):
            for start in range(0, len(order), batch_size):
                yield self.make_batch([self.train[i] for i in order[start : start + batch_size]])

    def trained_copy(self) -> dict[str, torch.Tensor]:
        """The trained parameters as they are now, by the module's names (a frozen reference)."""
        return {n: p.detach().clone() for n, p in self.module.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return lora_tensors(self.llama) if self.lora else self.llama.state_dict()

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        if not self.lora:
            self.llama.load_state_dict(dict(tensors), strict=True)
            return
        own = lora_tensors(self.llama)
        if set(own) != set(tensors):
            odd = sorted(set(own) ^ set(tensors))
            raise KeyError(f"the adapter's tensors differ ({len(odd)} names, e.g. {odd[0]!r})")
        with torch.no_grad():
            for name, p in own.items():
                if p.shape != tensors[name].shape:
                    raise ValueError(f"{name} is {list(tensors[name].shape)}, expected {list(p.shape)}")
                p.copy_(tensors[name])  # in place: the optimiser holds these parameters

    def weights_metadata(self) -> dict[str, str]:
        kind = {**self.lora, "layers": self.llama.cfg.num_layers} if self.lora else {}
        return adapter_metadata("lora" if self.lora else "full", base_digest=self.base["digest"],
                                base_source=self.base["source"], objective=self.objective, **kind)

    def usage(self, weights: str) -> str:
        return f"plugstack model=llama {self.base['option']} model.adapter={shlex.quote(weights)} \"Hello\""

    def sizes(self) -> dict[str, Any]:
        """What the data amounts to, for :meth:`describe`."""
        return {}

    def describe(self) -> dict[str, Any]:
        kind = {"kind": "lora", "lora": self.lora} if self.lora else {"kind": "full"}
        return {"objective": self.objective, **kind, **self.sizes(), **self.facts}


class SFTTrainable(LlamaTrainable):
    """Next-token loss on the assistant's tokens of chat conversations (see the module)."""

    objective = "sft"
    items = "conversations"

    def make_batch(self, rows: list[Example]) -> dict[str, torch.Tensor]:
        return collate(rows, self.pad_id)

    def loss(self, module: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = module(batch["input_ids"], batch["attention_mask"], batch["select"])
        return F.cross_entropy(logits, batch["labels"]), {"tokens": float(batch["labels"].numel())}

    def evaluate(self, module: nn.Module, *, batch_size: int, seed: int) -> dict[str, float]:
        """The mean loss per assistant token of the held-out conversations (none given: no metric)."""
        if not self.held_out:
            return {}
        device = next(module.parameters()).device
        total, count = 0.0, 0
        for batch in self.batches("eval", batch_size=batch_size, seed=seed):
            b = to_device(batch, device)
            logits = module(b["input_ids"], b["attention_mask"], b["select"])
            total += float(F.cross_entropy(logits, b["labels"], reduction="sum"))
            count += b["labels"].numel()
        return {"eval_loss": total / count}

    def sizes(self) -> dict[str, Any]:
        return {"train_conversations": len(self.train), "eval_conversations": len(self.held_out),
                "train_tokens": sum(len(e.ids) for e in self.train)}


def check_options(ft: Any) -> None:
    """Refuse an invalid ``model.finetune`` option by name, saying what is valid."""
    if ft.objective not in OBJECTIVES:
        raise ConfigError(f"model.finetune.objective={ft.objective!r} is not known: expected one of "
                          f"{' | '.join(OBJECTIVES)}.")
    if not ft.data:
        raise ConfigError("app=train needs training data: set model.finetune.data=/path/to/train.jsonl (chat "
                          'JSONL, one {"messages": [...]} a line).')
    if not (isinstance(ft.max_length, int) and ft.max_length >= 2):
        raise ConfigError(f"model.finetune.max_length={ft.max_length} is invalid: expected an integer >= 2 (tokens).")
    _check_objective(ft)
    if ft.full:
        if ft.init_adapter:
            raise ConfigError("model.finetune.init_adapter with model.finetune.full=true: a LoRA adapter cannot "
                              "start a full fine-tuning. Drop one of them.")
        return
    if not (isinstance(ft.lora_rank, int) and ft.lora_rank >= 1):
        raise ConfigError(f"model.finetune.lora_rank={ft.lora_rank} is invalid: expected an integer >= 1, e.g. 8.")
    if not (math.isfinite(ft.lora_alpha) and ft.lora_alpha > 0):
        raise ConfigError(f"model.finetune.lora_alpha={ft.lora_alpha} is invalid: expected a number > 0, e.g. 16.")
    if not 0 <= ft.lora_dropout < 1:
        raise ConfigError(f"model.finetune.lora_dropout={ft.lora_dropout} is invalid: expected a number in [0, 1).")
    targets = list(ft.lora_targets)
    unknown = [t for t in targets if t not in LORA_MODULES]
    if not targets or unknown or len(set(targets)) != len(targets):
        raise ConfigError(f"model.finetune.lora_targets={targets} is invalid: expected distinct names among "
                          f"{', '.join(LORA_MODULES)} (e.g. [q_proj,v_proj]), or model.finetune.full=true.")


def _check_objective(ft: Any) -> None:
    """The options of dpo and grpo (each checked whatever the objective: a typo is a typo)."""
    if not (isinstance(ft.beta, (int, float)) and math.isfinite(ft.beta) and ft.beta > 0):
        raise ConfigError(f"model.finetune.beta={ft.beta} is invalid: expected a number > 0, e.g. 0.1.")
    if not (isinstance(ft.sft_weight, (int, float)) and math.isfinite(ft.sft_weight) and ft.sft_weight >= 0):
        raise ConfigError(f"model.finetune.sft_weight={ft.sft_weight} is invalid: expected a number >= 0 (0: plain "
                          f"DPO).")
    if not (isinstance(ft.group_size, int) and ft.group_size >= 2):
        raise ConfigError(f"model.finetune.group_size={ft.group_size} is invalid: expected an integer >= 2 (answers "
                          f"per prompt, compared with each other).")
    if not (isinstance(ft.max_new_tokens, int) and ft.max_new_tokens >= 1):
        raise ConfigError(f"model.finetune.max_new_tokens={ft.max_new_tokens} is invalid: expected an integer >= 1.")
    if not (isinstance(ft.temperature, (int, float)) and math.isfinite(ft.temperature) and ft.temperature > 0):
        raise ConfigError(f"model.finetune.temperature={ft.temperature} is invalid: expected a number > 0, e.g. 1.0.")
    if ft.objective == "grpo" and not ft.reward:
        raise ConfigError("model.finetune.objective=grpo needs a reward: set model.finetune.reward=package.module:"
                          "function, e.g. plugstack.plugins.support:reward (scores (record, answer) -> float).")


def _lora_options(ft: Any) -> dict[str, Any]:
    return {"rank": ft.lora_rank, "alpha": float(ft.lora_alpha), "scale": float(ft.lora_alpha) / ft.lora_rank,
            "dropout": float(ft.lora_dropout), "targets": list(ft.lora_targets)}


def _start_from(model: Model, llama: Llama, ft: Any) -> dict[str, Any]:
    """Wrap ``llama`` with the LoRA of ``init_adapter`` and load its matrices; its options."""
    from safetensors.torch import load_file

    from .adapter import read_adapter

    setting = f"model.finetune.init_adapter={ft.init_adapter}"
    try:
        found = read_adapter(ft.init_adapter, hparams=model.info["hparams"], base_digest=model.weights_digest,
                             base_source=model.source)
    except PlugstackError as e:
        raise ConfigError(str(e).replace(f"model.adapter={ft.init_adapter}", setting)) from None
    if found.kind != "lora":
        raise ConfigError(f"{setting} holds fully fine-tuned weights; starting from them needs model.path set to "
                          f"a model directory of them. init_adapter takes a LoRA adapter.")
    meta = found.meta
    lora = {"rank": int(meta["rank"]), "alpha": float(meta["alpha"]), "scale": float(meta["scale"]),
            "dropout": float(ft.lora_dropout), "targets": list(meta["targets"])}
    add_lora(llama, rank=lora["rank"], alpha=lora["alpha"], dropout=lora["dropout"], targets=lora["targets"])
    tensors = load_file(str(found.path))
    own = lora_tensors(llama)
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(tensors[name])  # read_adapter checked every name and shape
    return {**lora, "init_adapter": {"path": str(found.path), "sha256": found.digest}}


def make_trainable(model: Model, cfg: Any) -> LlamaTrainable:
    """``model``'s ``offers["train"]``: its ``Llama`` set up for ``cfg.finetune`` (``cfg``: the
    :class:`~.config.LlamaModelConfig` it was loaded with)."""
    ft = cfg.finetune
    check_options(ft)
    max_length = min(ft.max_length, model.context_length or ft.max_length)  # positions past the context do not exist
    if cfg.adapter:
        raise ConfigError(f"model.adapter={cfg.adapter} with app=train: the adapter would be merged into the weights "
                          f"being trained. To go on from it, set model.finetune.init_adapter={cfg.adapter} instead.")
    if ft.objective == "grpo":
        from .grpo import reward_function

        reward = reward_function(ft.reward)  # a typo in the reward's name before any data is read
    llama = model.module
    lora = None
    if ft.init_adapter:
        lora = _start_from(model, llama, ft)
    elif not ft.full:
        lora = _lora_options(ft)
        add_lora(llama, rank=ft.lora_rank, alpha=ft.lora_alpha, dropout=ft.lora_dropout, targets=ft.lora_targets)
    option = f"model.path={shlex.quote(str(cfg.path))}" if cfg.path else f"model.source={cfg.source}"
    base = {"digest": model.weights_digest, "source": model.source, "option": option}
    facts = {"data": str(ft.data), "eval_data": ft.eval_data, "max_length": max_length}
    common = {"pad_id": model.tokenizer.pad_token_id, "lora": lora, "base": base, "facts": facts}
    if ft.objective == "dpo":
        from .dpo import make_dpo

        return make_dpo(model, ft, max_length, **common)
    if ft.objective == "grpo":
        from .grpo import make_grpo

        return make_grpo(model, ft, max_length, reward, **common)
    tok = model.tokenizer
    train, skipped = load_examples(ft.data, tok, max_length=max_length)
    held_out = load_examples(ft.eval_data, tok, max_length=max_length,
                             setting="model.finetune.eval_data")[0] if ft.eval_data else []
    facts["skipped_too_long"] = skipped
    return SFTTrainable(llama, train=train, held_out=held_out, **common)
