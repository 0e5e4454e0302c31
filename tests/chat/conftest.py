"""Fixtures of the chat tests: a tiny model whose greedy replies depend on the conversation."""

from __future__ import annotations

import json
import shutil

import pytest


@pytest.fixture(scope="session")
def chat_model_dir(tiny_model_dir, tmp_path_factory):
    """``tiny_model_dir`` with its own output head and a 4096-token window. The tied head makes
    every greedy reply repeat the prompt's last token ("\\n" after the chat template), so no
    test could tell conversations apart; this head only scores tokens that decode to
    printable ASCII (and never EOS), so each reply is max_new_tokens of plain, varying text,
    and a long reply (for Ctrl-C) fits."""
    import torch
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer

    out = tmp_path_factory.mktemp("chat-llama")
    for f in tiny_model_dir.iterdir():
        shutil.copy(f, out / f.name)
    weights = load_file(out / "model.safetensors")
    embed = weights["model.embed_tokens.weight"]
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    printable = [tok.decode([i]).isascii() and tok.decode([i]).isprintable() and i not in
                 {tok.token_to_id(s) for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
                 for i in range(embed.shape[0])]
    head = torch.randn(embed.shape, generator=torch.Generator().manual_seed(1))
    head[~torch.tensor(printable)] = 0.0  # a zero row scores 0, below the best of ~100 random ones
    weights["lm_head.weight"] = head
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config.update(tie_word_embeddings=False, max_position_embeddings=4096)
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="session")
def chat_model(chat_model_dir):
    """``chat_model_dir`` loaded in this process, with its cpu runner."""
    from plugstack import create_backend
    from plugstack.plugins.llama.loader import load_path

    model = load_path(chat_model_dir)
    return model, create_backend("cpu").prepare(model)


@pytest.fixture(scope="session")
def greedy(chat_model):
    """``greedy(messages, n)``: the greedy reply to chat ``messages``, ``n`` tokens at most,
    computed in this process: what the chat app must print for that conversation."""
    from plugstack.generation import generate
    from plugstack.sampling import SamplingParams

    model, runner = chat_model

    def reply(messages: list[dict[str, str]], n: int) -> str:
        prompt = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return generate(runner, model.tokenizer, [prompt], SamplingParams(max_new_tokens=n))[0].text

    return reply
