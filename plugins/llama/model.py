"""A Llama-family decoder in plain PyTorch, written to be read.

RMSNorm, rotary embeddings, grouped-query attention, SwiGLU MLP, tied or untied head,
optional q/k/v bias (Qwen2-style). ``Llama.forward`` is the step the backends run:

    forward(input_ids, position_ids, attention_mask, *past) -> (logits, *present)

with ``past``/``present`` as explicit per-layer key and value tensors laid out
``[batch, kv_heads, positions, head_dim]``. Prefill and decode are the same step with a
different number of new tokens; left padding is expressed by ``attention_mask`` (one
entry per past + new position, 1 = real token) and per-row ``position_ids``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plugstack.model import Model
from plugstack.signature import StepSignature

from .hparams import LlamaConfig, inplace_kv_step, llama_model, llama_signature

__all__ = ["Llama", "LlamaConfig", "as_model", "init_weights", "inplace_kv_step", "param_count"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 whatever the compute dtype, as the reference implementation does.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Rotary(nn.Module):
    """cos/sin tables computed from the positions of each row (so rows may differ)."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq  # [B, T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, T, D]
        return emb.cos().to(dtype), emb.sin().to(dtype)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)

    def qkv(self, x, cos, sin):
        """Queries ``[B, H, T, D]`` and keys/values ``[B, KV, T, D]`` of the new positions, rotated."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v

    def attend(self, q, k, v, mask):
        """``q`` over all keys/values ``[B, KV, P, D]`` under ``mask`` ``[B, 1, T, P]``; ``[B, T, hidden]``."""
        b, _, t, _ = q.shape
        # Grouped-query attention: each kv head serves n_heads // n_kv query heads.
        rep = self.n_heads // self.n_kv
        k_all = k.repeat_interleave(rep, dim=1) if rep > 1 else k
        v_all = v.repeat_interleave(rep, dim=1) if rep > 1 else v
        y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    def forward(self, x, cos, sin, mask, past_k, past_v):
        q, k, v = self.qkv(x, cos, sin)
        k = torch.cat((past_k, k), dim=2)
        v = torch.cat((past_v, v), dim=2)
        return self.attend(q, k, v, mask), k, v

    def forward_inplace(self, x, cos, sin, mask, k_buf, v_buf, rows, cache_position):
        """Write the new keys/values into the buffers at ``cache_position`` ``[B, T]`` (in place,
        as gpt-fast's ``KVCache.update`` does, per row), then attend over the buffers."""
        q, k, v = self.qkv(x, cos, sin)
        k_buf[rows, :, cache_position] = k.transpose(1, 2)  # [B, T, KV, D] into [B, KV, P, D]
        v_buf[rows, :, cache_position] = v.transpose(1, 2)
        return self.attend(q, k_buf, v_buf, mask)


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, past_k, past_v):
        a, k, v = self.self_attn(self.input_layernorm(x), cos, sin, mask, past_k, past_v)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), k, v

    def forward_inplace(self, x, cos, sin, mask, k_buf, v_buf, rows, cache_position):
        x = x + self.self_attn.forward_inplace(self.input_layernorm(x), cos, sin, mask, k_buf, v_buf, rows,
                                               cache_position)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    """The decoder. Parameter names follow Hugging Face's ``LlamaForCausalLM`` minus the
    ``model.`` prefix, so safetensors checkpoints map one to one."""

    def __init__(self, cfg: LlamaConfig, *, all_logits: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        #: Return logits for every new position (``[B, T, V]``) instead of the last one
        #: (``[B, V]``). Prefill only needs the last; scoring a text needs all.
        self.all_logits = all_logits
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta)

    def untie_head(self) -> None:
        """Give the head its own copy of the embedding (quantisers skip shared weights)."""
        if self.lm_head.weight is self.embed_tokens.weight:
            self.lm_head.weight = nn.Parameter(self.embed_tokens.weight.detach().clone())

    def forward(self, input_ids, position_ids, attention_mask, *past):
        t = input_ids.shape[1]
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary(position_ids, x.dtype)
        mask = causal_mask(attention_mask, t)
        present = []
        for i, layer in enumerate(self.layers):
            x, k, v = layer(x, cos, sin, mask, past[2 * i], past[2 * i + 1])
            present += [k, v]
        if not self.all_logits:
            x = x[:, -1, :]
        logits = self.lm_head(self.norm(x))
        return (logits.float(), *present)

    # -- the contract with backends -------------------------------------------------

    def signature(self) -> StepSignature:
        return llama_signature(self.cfg, all_logits=self.all_logits)

    def example_inputs(self, batch: int = 2, seq: int = 3, past: int = 2) -> tuple[torch.Tensor, ...]:
        """Valid inputs with every dynamic dim >= 2 (exporters specialise 0 and 1)."""
        c = self.cfg
        dtype = self.embed_tokens.weight.dtype
        ids = torch.randint(0, c.vocab_size, (batch, seq))
        pos = torch.arange(past, past + seq).expand(batch, seq).contiguous()
        mask = torch.ones(batch, past + seq, dtype=torch.int64)
        kv = [torch.randn(batch, c.num_kv_heads, past, c.head_dim, dtype=dtype) for _ in range(2 * c.num_layers)]
        return (ids, pos, mask, *kv)


class InplaceKVStep(nn.Module):
    """The Llama step over preallocated KV buffers it writes in place: the Llama plugin's
    ``Model.builders["torch.inplace_kv"]`` (see ``plugstack.builders.InplaceKVBuilder``).

    ``forward(input_ids, position_ids, cache_position, *buffers) -> (logits,)``, each buffer
    ``[batch, kv_heads, capacity, head_dim]``: no cache is concatenated or copied per step.
    """

    def __init__(self, llama: Llama) -> None:
        super().__init__()
        self.llama = llama

    def forward(self, input_ids, position_ids, cache_position, *buffers):
        m = self.llama
        b = input_ids.shape[0]
        x = m.embed_tokens(input_ids)
        cos, sin = m.rotary(position_ids, x.dtype)
        # Query i of row b sees the buffer positions up to its own: [B, 1, T, capacity].
        slots = torch.arange(buffers[0].shape[2], device=input_ids.device)
        mask = (slots[None, None, :] <= cache_position[:, :, None])[:, None]
        rows = torch.arange(b, device=input_ids.device)[:, None]
        for i, layer in enumerate(m.layers):
            x = layer.forward_inplace(x, cos, sin, mask, buffers[2 * i], buffers[2 * i + 1], rows, cache_position)
        if not m.all_logits:
            x = x[:, -1, :]
        return (m.lm_head(m.norm(x)).float(),)


def as_model(module: Llama, *, name: str, blocks: Any = None, **fields) -> Model:
    """``module`` as a :class:`plugstack.Model` (see :func:`~.hparams.llama_model`)."""
    return llama_model(module.cfg, name=name, module=module, blocks=blocks, **fields)


def causal_mask(attention_mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Boolean ``[B, 1, T, P+T]`` mask: new token i sees past and new tokens up to itself,
    minus padded positions. Each token always sees itself, so a padding row never becomes
    all-masked (which would give NaN that leaks through the values)."""
    total = attention_mask.shape[1]
    past_len = total - new_tokens
    q_pos = torch.arange(new_tokens, device=attention_mask.device)[:, None] + past_len
    k_pos = torch.arange(total, device=attention_mask.device)[None, :]
    causal = k_pos <= q_pos  # [T, P+T]
    keep = causal[None] & attention_mask[:, None, :].bool()
    keep = keep | (k_pos == q_pos)[None]
    return keep[:, None]


def init_weights(model: Llama, seed: int = 0, std: float = 0.02) -> Llama:
    """Random initialisation for tiny test models (deterministic for a seed)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


