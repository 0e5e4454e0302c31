"""Options of the ``llama`` model plugin (the ``model`` config group). Light: no torch here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

#: The modules of a ``Llama`` layer LoRA may adapt (``plugins/llama/model.py``'s names).
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LlamaFinetuneConfig:
    """What ``app=train`` trains on this model (``model.finetune.*``): the objective, its
    data, and a LoRA adapter or every weight."""

    #: Training objective: sft (next-token loss on the assistant's turns), dpo (preference
    #: pairs against a frozen reference) or grpo (sampled answers scored by model.finetune.reward).
    objective: str = "sft"
    #: JSONL to train on: chat conversations (sft), preference pairs (dpo) or prompts (grpo).
    data: Optional[str] = None
    #: Held-out JSONL of the same form, for app.eval_every; null = no held-out metrics.
    eval_data: Optional[str] = None
    #: A LoRA adapter app=train wrote (e.g. the SFT one) to start from; its rank, alpha and
    #: targets are used, and dpo/grpo's reference is it. null = a fresh adapter.
    init_adapter: Optional[str] = None
    #: dpo: the strength of the pull towards the reference (beta of the DPO loss).
    beta: float = 0.1
    #: dpo: weight of the chosen answers' next-token loss added to DPO's (RPO); 0 = plain DPO.
    sft_weight: float = 0.0
    #: grpo: "package.module:function" scoring (record, answer) -> float, the record being the prompt's JSONL object.
    reward: Optional[str] = None
    #: grpo: answers sampled per prompt; each is scored against its group's mean and spread.
    group_size: int = 4
    #: grpo: the longest sampled answer, in tokens.
    max_new_tokens: int = 64
    #: grpo: sampling temperature of the answers (> 0).
    temperature: float = 1.0
    #: Longest training sequence in tokens (at most the model's context); longer ones are cut at the end.
    max_length: int = 512
    #: Train every weight (the result is a whole model's weights) instead of a LoRA adapter.
    full: bool = False
    #: LoRA rank r: the adapter adds B @ A, A [r, in] and B [out, r], to each target matrix.
    lora_rank: int = 8
    #: LoRA alpha: the update is scaled by lora_alpha / lora_rank.
    lora_alpha: float = 16.0
    #: Dropout on the LoRA branch's input while training, in [0, 1).
    lora_dropout: float = 0.05
    #: Layer modules LoRA adapts, any of q_proj k_proj v_proj o_proj gate_proj up_proj down_proj.
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_MODULES))


@dataclass
class LlamaModelConfig:
    """Where the weights of a Llama-family decoder come from.

    ``path`` (a ``.gguf`` file or a Hugging Face directory with ``config.json`` and
    ``*.safetensors``) wins over ``source``, a known-weights id fetched and cached on
    first use. ``model=smollm2`` (the default) is this plugin with ``source=smollm2``.
    """

    name: str = "llama"
    #: Known-weights id (``smollm2``: SmolLM2-135M-Instruct, Q4_1 GGUF); see
    #: :data:`plugstack.plugins.llama.weights.KNOWN_SOURCES`.
    source: Optional[str] = None
    #: A ``.gguf`` file or a Hugging Face model directory; wins over ``source``.
    path: Optional[str] = None
    #: Cap on the positions the model will be asked to handle (``None``: the file's own).
    context_length: Optional[int] = None
    #: Weights app=train wrote for this base model (a LoRA adapter or fully fine-tuned
    #: weights, .safetensors), merged into it before any backend sees the model.
    adapter: Optional[str] = None
    #: The system message of a chat that has none (every app: generate, chat, serve, the web
    #: page); null = the chat template's own default. A preset's adapter is trained with one.
    system_prompt: Optional[str] = None
    #: What app=train trains (see LlamaFinetuneConfig).
    finetune: LlamaFinetuneConfig = field(default_factory=LlamaFinetuneConfig)
