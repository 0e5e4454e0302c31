"""Fixtures of the serve tests: the model they serve and the greedy answers to compare with."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def serve_model_dir(tiny_model_dir, tmp_path_factory):
    """``tiny_model_dir`` (its tokenizer and ChatML template) with larger random weights:
    peaked logits make greedy answers differ from prompt to prompt, so an answer given to
    the wrong request, or computed from another request's cache, shows."""
    import torch
    import transformers

    out = tmp_path_factory.mktemp("serve-llama")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, out / name)
    config = transformers.LlamaConfig.from_pretrained(tiny_model_dir)
    config.initializer_range = 0.3
    torch.manual_seed(1)
    transformers.LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def reference(serve_model_dir):
    """``reference(messages=... | prompt=..., max_tokens=, stop=)`` -> (text, finish_reason):
    the greedy answer of ``plugstack.generate`` alone, in this process, on the same files."""
    import torch

    import plugstack
    from plugstack.generation import generate
    from plugstack.plugins.llama.loader import load_path
    from plugstack.sampling import SamplingParams

    model = load_path(serve_model_dir)
    runner = plugstack.create_backend("cpu").prepare(model)
    tok = model.tokenizer

    def answer(*, messages=None, prompt=None, max_tokens: int, stop=()):
        text = tok.apply_chat_template(messages, add_generation_prompt=True) if messages else prompt
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the server runs (and two threads spin against each other on a tiny model)
        try:
            [r] = generate(runner, tok, [text], SamplingParams(max_new_tokens=max_tokens, stop=list(stop)))
        finally:
            torch.set_num_threads(threads)
        return r.text, r.finish_reason

    return answer
