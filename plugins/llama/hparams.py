"""The Llama plugin's hyper-parameters and step signature. Light (no torch): a run whose
graph is cached describes the model from these alone and never builds the module."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from plugstack.model import Model
from plugstack.signature import FLOAT, StepSignature, TensorSpec

__all__ = ["LlamaConfig", "inplace_kv_step", "llama_model", "llama_signature"]


@dataclass
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    context_length: int = 2048
    tie_embeddings: bool = True
    #: Bias on the q/k/v projections (Qwen2); Llama has none.
    qkv_bias: bool = False

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def llama_signature(c: LlamaConfig, *, all_logits: bool = False) -> StepSignature:
    """The step every backend runs: ``(input_ids, position_ids, attention_mask, *past) ->
    (logits, *present)``, a key and a value per layer ``[batch, kv_heads, positions, head_dim]``."""
    kv = (c.num_kv_heads, c.head_dim)
    inputs = [
        TensorSpec("input_ids", "int64", ("batch", "seq")),
        TensorSpec("position_ids", "int64", ("batch", "seq")),
        TensorSpec("attention_mask", "int64", ("batch", "total")),
    ]
    logits_shape = ("batch", "seq", c.vocab_size) if all_logits else ("batch", c.vocab_size)
    outputs = [TensorSpec("logits", "float32", logits_shape)]
    state = []
    for i in range(c.num_layers):
        for part in ("key", "value"):
            inputs.append(TensorSpec(f"past.{i}.{part}", FLOAT, ("batch", kv[0], "past", kv[1])))
            outputs.append(TensorSpec(f"present.{i}.{part}", FLOAT, ("batch", kv[0], "total", kv[1])))
            state.append((f"past.{i}.{part}", f"present.{i}.{part}"))
    meta = {"vocab_size": c.vocab_size, "context_length": c.context_length}
    return StepSignature(tuple(inputs), tuple(outputs), tuple(state), state_axis="past", new_axis="seq",
                         mask="attention_mask", positions="position_ids", meta=meta)


def inplace_kv_step(model: Any) -> Any:
    """``Model.builders["torch.inplace_kv"]``: the in-place step over the model's own module."""
    from .model import InplaceKVStep

    return InplaceKVStep(model.module)


def llama_model(cfg: LlamaConfig, *, name: str, module: Any = None, make_module: Any = None, blocks: Any = None,
                no_blocks: str = "", low_rank: Any = None, **fields: Any) -> Model:
    """A :class:`plugstack.Model` of a ``Llama`` with these hyper-parameters: given as
    ``module``, or built by ``make_module`` on first use; with the plugin's builders (its
    fused ONNX graph, fed ``blocks``, the weights as a GGUF stores them, for native
    quantisation, or ``no_blocks``: why it has none, and ``low_rank``: a LoRA adapter's
    terms to keep beside those blocks; its in-place KV step). ``fields``: the other
    ``Model`` fields."""
    from .onnx_graph import LlamaOnnxBuilder

    def example_inputs(**sizes: int) -> Any:
        return model.module.example_inputs(**sizes)

    model = Model(name=name, kind="decoder", module=module, make_module=make_module, signature=llama_signature(cfg),
                  example_inputs=module.example_inputs if module is not None else example_inputs,
                  context_length=cfg.context_length,
                  builders={"onnx": LlamaOnnxBuilder(blocks, cfg=cfg, no_blocks=no_blocks, low_rank=low_rank),
                            "torch.inplace_kv": inplace_kv_step}, **fields)
    return model
