"""``model=bigram``: a byte-level bigram language model counted from a text, the smallest
complete model plugin (README: "Writing a model plugin").

The step is stateless: the next byte depends on the last one only, so the generation loop
(which feeds each new token) needs nothing carried between steps. Every backend runs it
through its generic path: the module is one table lookup, an ONNX ``Gather``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from torch import nn

import plugstack
from plugstack.files import module_digest

#: Byte ids 0-255, then end-of-text.
EOS = 256
VOCAB = 257
#: Bigger corpora are cut: counting is linear in the text, and the file comes from the user.
MAX_CORPUS_BYTES = 16 << 20


class ByteTokenizer:
    """UTF-8 bytes as ids, ``EOS`` ending each line of the corpus and each answer."""

    eos_token_ids = (EOS,)
    pad_token_id = EOS

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Any, *, skip_special_tokens: bool = False) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: Any, *, add_generation_prompt: bool = True) -> str:
        return "".join(f"{m['content']}\n" for m in messages)


class Bigram(nn.Module):
    """``forward(input_ids [batch, seq]) -> logits [batch, vocab]`` of the byte after the last."""

    def __init__(self, log_probs: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Embedding.from_pretrained(log_probs, freeze=True)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.table(input_ids[:, -1]).float(),)

    def signature(self) -> plugstack.StepSignature:
        return plugstack.StepSignature(
            inputs=(plugstack.TensorSpec("input_ids", "int64", ("batch", "seq")),),
            outputs=(plugstack.TensorSpec("logits", "float32", ("batch", VOCAB)),),
            new_axis="seq",  # no state: a step of n tokens adds n positions and forgets them
            meta={"vocab_size": VOCAB},
        )

    def example_inputs(self, batch: int = 2, seq: int = 3, past: int = 0) -> tuple[torch.Tensor]:
        return (torch.randint(0, VOCAB, (batch, seq)),)


def count(text: bytes, smoothing: float) -> torch.Tensor:
    """``[VOCAB, VOCAB]`` log-probabilities of the next byte given the last, from ``text``."""
    counts = torch.full((VOCAB, VOCAB), float(smoothing))
    for line in text.splitlines():
        ids = torch.tensor([*line, EOS]) if line else torch.tensor([EOS])
        counts.index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1), accumulate=True)
    return (counts / counts.sum(-1, keepdim=True)).log()


def load(cfg: Any) -> plugstack.Model:
    """The model factory: ``cfg`` is a :class:`plugstack_example.plugin.BigramConfig`."""
    if cfg.smoothing <= 0:
        raise plugstack.ConfigError(f"model.smoothing={cfg.smoothing} must be > 0 (unseen byte pairs need some mass).")
    path = Path(cfg.corpus).expanduser() if cfg.corpus else Path(str(files("plugstack_example") / "data/corpus.txt"))
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_CORPUS_BYTES)
    except OSError as exc:
        raise plugstack.ModelLoadError(f"model.corpus={str(path)!r} cannot be read ({exc.strerror}): "
                                       f"give a text file to count byte pairs from.") from None
    if not text.strip():
        raise plugstack.ModelLoadError(f"model.corpus={str(path)!r} is empty: give a text file with some text in it.")
    trained = load_weights(cfg.weights) if cfg.weights else None
    module = Bigram(count(text, cfg.smoothing) if trained is None else trained).eval()
    digest = module_digest(module, extra="bigram")

    def trainable() -> plugstack.Trainable:  # what app=train trains: from uniform, or on from model.weights
        from .training import BigramTrainable

        return BigramTrainable(text, trained, source=str(path))

    return plugstack.Model(name="bigram", kind="decoder", module=module, signature=module.signature(),
                           example_inputs=module.example_inputs, tokenizer=ByteTokenizer(), weights_digest=digest,
                           source=str(cfg.weights or path), info={"corpus_bytes": len(text)},
                           offers={"train": trainable})


def load_weights(weights: str) -> torch.Tensor:
    """The ``table.weight`` of a ``model.safetensors`` that ``app=train`` wrote."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(weights).expanduser()
    try:
        table = load_file(str(path)).get("table.weight")
    except (OSError, SafetensorError) as exc:
        raise plugstack.ModelLoadError(f"model.weights={weights!r} cannot be read as safetensors ({exc}): give the "
                                       f"model.safetensors that app=train wrote for model=bigram.") from None
    if table is None or tuple(table.shape) != (VOCAB, VOCAB):
        raise plugstack.ModelLoadError(f"model.weights={weights!r} holds no [{VOCAB}, {VOCAB}] 'table.weight': give "
                                       f"the model.safetensors that app=train wrote for model=bigram.")
    return table.float()
