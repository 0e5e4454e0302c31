"""Group relative policy optimisation (Shao et al., 2024) for the llama model's ``app=train``.

A step takes ``app.batch_size`` prompts and samples ``model.finetune.group_size`` answers to
each with plugstack's own generation loop (:func:`plugstack.generate_ids` over an
:class:`plugstack.EagerRunner` of the very module being trained, so the answers are the
policy's). ``model.finetune.reward`` scores each answer; its advantage is its reward less
its group's mean, over the group's spread. The loss is the policy gradient
``-Σ A·log π(token) / tokens`` over every sampled token (one update per sample, so PPO's
ratio is 1 and its clipping never acts; no KL term, as in Dr. GRPO and DAPO: LoRA's low rank
and a short run keep the policy near its start). Sampling is seeded from the step's seed,
so a resumed run samples what the uninterrupted one did.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from plugstack.entries import import_ref
from plugstack.errors import ConfigError, PluginError
from plugstack.model import Model
from plugstack.sampling import SamplingParams

from .dpo import sequence_logprobs
from .finetune import LlamaTrainable, collate
from .model import Llama
from .sft_data import Example, Prompt, load_prompts

__all__ = ["GRPOTrainable", "make_grpo", "reward_function"]

Reward = Callable[[Mapping[str, Any], str], float]


def reward_function(spec: str | None) -> Reward:
    """The callable ``"package.module:function"`` names (``model.finetune.reward``)."""
    module, _, name = str(spec).partition(":")
    if not (module and name):
        raise ConfigError(f"model.finetune.reward={spec!r} is not package.module:function, e.g. "
                          f"plugstack.plugins.support:reward.")
    try:
        fn = import_ref(str(spec))
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"model.finetune.reward={spec}: cannot be imported ({e}). Check the module is installed "
                          f"and defines {name}.") from None
    if not callable(fn):
        raise ConfigError(f"model.finetune.reward={spec} is a {type(fn).__name__}, not a function.")
    return fn


def advantages(rewards: torch.Tensor) -> torch.Tensor:
    """``[P, G]`` rewards to advantages: centred and scaled within each prompt's group."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (rewards.std(dim=1, keepdim=True) + 1e-4)  # a group all alike teaches nothing: 0


class GRPOTrainable(LlamaTrainable):
    """GRPO on prompts and a reward (see the module)."""

    objective = "grpo"
    items = "prompts"

    def __init__(self, llama: Llama, *, reward: Reward, spec: str, group_size: int, params: SamplingParams,
                 signature: Any, tokenizer: Any, **common: Any) -> None:
        super().__init__(llama, **common)
        self.reward, self.spec = reward, spec
        self.group_size, self.params, self.signature, self.tokenizer = group_size, params, signature, tokenizer

    def make_batch(self, rows: list[Prompt]) -> dict[str, list[Prompt]]:
        return {"prompts": rows}  # answers are sampled in loss(), by the policy of that step

    def sample(self, prompts: list[Prompt], params: SamplingParams) -> list[tuple[list[int], bool]]:
        """One answer to each of ``prompts``: ``(token ids, ended by EOS)``."""
        from plugstack import EagerRunner, generate_ids

        was = self.module.training
        device = str(next(self.llama.parameters()).device)
        try:
            runner = EagerRunner(self.llama, self.signature, device=device)  # eval mode: the policy as it is now
            results = generate_ids(runner, [list(p.ids) for p in prompts], params,
                                   eos_ids=self.tokenizer.eos_token_ids)
        finally:
            self.module.train(was)
        return [(list(r.token_ids), r.finish_reason == "stop") for r in results]

    def score(self, prompt: Prompt, ids: list[int]) -> float:
        answer = self.tokenizer.decode(ids)
        value = self.reward(prompt.record, answer)
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise PluginError(f"model.finetune.reward={self.spec} returned {value!r} for {prompt.where}: expected a "
                              f"finite number.")
        return float(value)

    def loss(self, module: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        g = self.group_size
        prompts = [p for p in batch["prompts"] for _ in range(g)]  # [P·G], groups together
        seed = int(torch.randint(0, 2**62, (1,)))  # from the step's seed: a resumed run samples alike
        answers = self.sample(prompts, SamplingParams(**{**vars(self.params), "seed": seed}))
        rewards = torch.tensor([self.score(p, ids) for p, (ids, _) in zip(prompts, answers, strict=True)])
        adv = advantages(rewards.view(-1, g)).flatten()  # [P·G]
        eos = self.tokenizer.eos_token_ids[0]
        rows = [Example(p.ids + tuple(ids) + ((eos,) if stopped else ()),
                        (False,) * len(p.ids) + (True,) * (len(ids) + stopped), p.where)
                for p, (ids, stopped) in zip(prompts, answers, strict=True)]
        device = next(module.parameters()).device
        tensors = {k: v.to(device) for k, v in collate(rows, self.pad_id).items()}
        logp = sequence_logprobs(module, tensors)  # [P·G], summed over each answer's tokens
        tokens = max(int(tensors["labels"].numel()), 1)
        loss = -(adv.to(device) * logp).sum() / tokens
        return loss, {"reward": float(rewards.mean()), "reward_std": float(rewards.view(-1, g).std(dim=1).mean()),
                      "answer_tokens": tokens / len(rows)}

    def evaluate(self, module: nn.Module, *, batch_size: int, seed: int) -> dict[str, float]:
        """The mean reward of greedy answers to the held-out prompts (none given: no metric)."""
        if not self.held_out:
            return {}
        greedy = SamplingParams(**{**vars(self.params), "temperature": 0.0})
        answers = self.sample(self.held_out, greedy)
        scores = [self.score(p, ids) for p, (ids, _) in zip(self.held_out, answers, strict=True)]
        return {"eval_reward": sum(scores) / len(scores)}

    def sizes(self) -> dict[str, Any]:
        return {"reward": self.spec, "group_size": self.group_size, "train_prompts": len(self.train),
                "eval_prompts": len(self.held_out), "sampling": vars(self.params)}


def make_grpo(model: Model, ft: Any, max_length: int, reward: Reward, **common: Any) -> GRPOTrainable:
    tok = model.tokenizer
    longest = max_length - ft.max_new_tokens  # prompt and answer together fit in max_length
    if longest < 1:
        raise ConfigError(f"model.finetune.max_new_tokens={ft.max_new_tokens} leaves no room for a prompt within "
                          f"model.finetune.max_length={max_length}. Raise max_length or lower max_new_tokens.")
    prompts = load_prompts(ft.data, tok, max_length=longest)
    held_out = load_prompts(ft.eval_data, tok, max_length=longest,
                            setting="model.finetune.eval_data") if ft.eval_data else []
    params = SamplingParams(max_new_tokens=ft.max_new_tokens, temperature=float(ft.temperature), top_p=1.0)
    return GRPOTrainable(model.module, train=prompts, held_out=held_out, reward=reward,
                         spec=str(ft.reward), group_size=ft.group_size, params=params, signature=model.signature,
                         tokenizer=tok, **common)
