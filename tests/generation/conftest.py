"""Fixtures for the generation tests: a tiny byte-level BPE tokenizer, a tiny random
Llama behind the eager runner, and a scripted runner that emits a fixed token sequence."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import torch

from plugstack.backend import Runner
from plugstack.signature import StepSignature, TensorSpec
from plugstack.state import SlotState

EOS = "<|im_end|>"
CORPUS = [
    "The sea is calm tonight. The tide is full, the moon lies fair upon the straits.",
    "What is the capital of France? Paris is the capital of France.",
    "Write a short poem about the sea and the waves and the wind.",
    "Hello world! Hello there, how are you today? I am fine, thank you.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 and punctuation: , . ; : ! ? ( ) [ ] { }",
    "caf\u00e9 na\u00efve \u00fcber \u4f60\u597d \u4e16\u754c \U0001f30a \U0001f600",
]


class ByteBPETokenizer:
    """The plugstack.Tokenizer protocol over a `tokenizers` byte-level BPE."""

    def __init__(self, tok: Any) -> None:
        self._tok = tok
        self.eos_token_ids = (tok.token_to_id(EOS),)
        self.pad_token_id = tok.token_to_id("<|endoftext|>")
        self.vocab_size = tok.get_vocab_size()

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages, *, add_generation_prompt: bool = True) -> str:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}{EOS}\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    """Tiny models are dominated by per-op overhead; two threads on a shared 2-core
    machine spin against each other and run ~10x slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer() -> ByteBPETokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return ByteBPETokenizer(tok)


def tiny_llama(vocab_size: int, *, context_length: int = 256, seed: int = 0, std: float = 0.5):
    from plugstack.backends.eager import EagerRunner
    from plugstack.plugins.llama.model import Llama, init_weights
    from plugstack.testing import tiny_llama_config

    torch.manual_seed(seed)
    cfg = tiny_llama_config(vocab_size=vocab_size, context_length=context_length)
    # A larger std than a real init gives peaked logits, so greedy paths have clear margins.
    module = init_weights(Llama(cfg), seed=seed, std=std)
    return EagerRunner(module, module.signature())


@pytest.fixture(scope="session")
def runner(tokenizer):
    """A tiny random Llama (vocab of the test tokenizer) on the eager CPU runner."""
    return tiny_llama(tokenizer.vocab_size)


class ScriptState(SlotState):
    """Slots plus how many tokens each has been given since its admission."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.steps = [0] * size


class ScriptedRunner(Runner):
    """Emits ``script[k]`` for a slot at its k-th step, whatever the inputs; records every
    call as ``(slots, inputs)``.

    Lets tests drive the loop through exact token sequences (multi-byte characters, stop
    strings across tokens, EOS) without depending on what a random model prefers.
    """

    def __init__(self, script: Sequence[int], vocab_size: int, context_length: int = 1024) -> None:
        self.script = list(script)
        self.vocab_size = vocab_size
        self.calls: list[tuple[list[int], dict[str, torch.Tensor]]] = []
        self.signature = StepSignature(
            inputs=(
                TensorSpec("input_ids", "int64", ("batch", "seq")),
                TensorSpec("position_ids", "int64", ("batch", "seq")),
            ),
            outputs=(TensorSpec("logits", "float32", ("batch", vocab_size)),),
            new_axis="seq",
            positions="position_ids",
            meta={"vocab_size": vocab_size, "context_length": context_length},
        )

    def new_state(self, slots: int) -> ScriptState:
        return ScriptState(slots)

    def step(self, inputs: Mapping[str, Any], state: ScriptState, rows: list[int], new: int) -> dict[str, Any]:
        self.calls.append((list(rows), {k: torch.as_tensor(v).clone() for k, v in inputs.items()}))
        logits = torch.zeros(len(rows), self.vocab_size)
        for i, slot in enumerate(rows):
            if not state.live[slot]:
                state.steps[slot] = 0  # admitted: the script starts again for this slot
            logits[i, self.script[min(state.steps[slot], len(self.script) - 1)]] = 10.0
            state.steps[slot] += 1
        return {"logits": logits}


@pytest.fixture
def make_llama():
    """``make_llama(vocab_size, context_length=...)`` -> a fresh tiny Llama runner."""
    return tiny_llama


@pytest.fixture
def scripted_ids(tokenizer):
    """``scripted_ids([ids...])`` -> a runner that generates exactly those ids."""
    return lambda ids: ScriptedRunner(ids, tokenizer.vocab_size)


@pytest.fixture
def scripted(tokenizer):
    """``scripted(text)`` -> a runner that generates exactly ``tokenizer.encode(text)``."""

    def make(text: str, *, then: Sequence[int] = (), context_length: int = 1024) -> ScriptedRunner:
        ids = tokenizer.encode(text) + list(then)
        return ScriptedRunner(ids, tokenizer.vocab_size, context_length)

    return make
