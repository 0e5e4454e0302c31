"""LoRA through PEFT on the Llama plugin's module, saved small, merged on load: the merged
model computes what the unmerged one does; an adapter that does not fit is refused."""

from __future__ import annotations

import json

import pytest
from sft_cli import conversation, write_jsonl

from plugstack.errors import ModelLoadError


@pytest.fixture(scope="module")
def lora(tiny_model_dir, tmp_path_factory):
    """``(trainable, adapter file)``: a LoRA SFT Trainable of the tiny Llama with random
    adapter matrices (fresh ones are zero: B = 0), saved as app=train saves it."""
    import torch

    from plugstack.plugins.llama.config import LlamaFinetuneConfig, LlamaModelConfig
    from plugstack.plugins.llama.finetune import make_trainable
    from plugstack.plugins.llama.loader import load_path
    from plugstack.plugins.train.tensors import save_trainable

    root = tmp_path_factory.mktemp("lora")
    data = write_jsonl(root / "train.jsonl", [conversation(i) for i in range(4)])
    cfg = LlamaModelConfig(path=str(tiny_model_dir), finetune=LlamaFinetuneConfig(
        data=str(data), lora_rank=4, lora_alpha=8.0, lora_targets=["q_proj", "v_proj", "o_proj", "down_proj"]))
    trainable = make_trainable(load_path(tiny_model_dir), cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainable.state_dict().values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    save_trainable(trainable, root / "adapter.safetensors")
    return trainable, root / "adapter.safetensors"


def logits(module, ids):
    import torch

    mask = torch.ones_like(ids)
    with torch.no_grad():
        return module.eval()(ids, mask, mask.bool())


def test_lora_round_trip_merged_equals_unmerged(tiny_model_dir, lora):
    import torch
    from safetensors import safe_open

    from plugstack.plugins.llama.finetune import CausalLM
    from plugstack.plugins.llama.loader import load_path

    trainable, path = lora
    with safe_open(str(path), framework="pt") as f:
        names, meta = list(f.keys()), json.loads(f.metadata()["plugstack.finetune"])
    assert len(names) == 2 * 2 * 4 and all(".lora_A." in n or ".lora_B." in n for n in names)  # the adapter alone
    assert meta["kind"] == "lora" and meta["rank"] == 4 and meta["scale"] == 2.0
    assert meta["targets"] == ["q_proj", "v_proj", "o_proj", "down_proj"]
    base = load_path(tiny_model_dir)
    assert meta["base_digest"] == base.weights_digest

    ids = torch.randint(0, 320, (2, 12), generator=torch.Generator().manual_seed(1))
    merged = load_path(tiny_model_dir, adapter=path)
    want = logits(trainable.module, ids)  # PEFT's unmerged layers: W x + scale · B A x
    assert torch.allclose(logits(CausalLM(merged.module), ids), want, atol=1e-5)
    assert not torch.allclose(logits(CausalLM(base.module), ids), want, atol=1e-3)  # the adapter does something
    assert merged.weights_digest not in ("", base.weights_digest)  # a graph cache key of its own
    assert merged.builders["onnx"].blocks == {} and merged.info["adapter"]["rank"] == 4


def test_a_checkpoint_puts_back_exactly_what_it_saved(lora):
    import torch
    from safetensors.torch import load_file

    trainable, path = lora
    saved = load_file(str(path))
    with torch.no_grad():
        for p in trainable.state_dict().values():
            p.zero_()
    trainable.load_state_dict(saved)
    assert all(torch.equal(trainable.state_dict()[k], v) for k, v in saved.items())
    with pytest.raises(KeyError, match="tensors differ"):
        trainable.load_state_dict({k: v for k, v in saved.items() if "layers.0." not in k})


def rewrite(path, out, *, tensors=None, meta=None):
    """``path``'s adapter with its tensors and/or its description changed."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        have, info = {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["plugstack.finetune"])
    save_file(tensors(have) if tensors else have, str(out),
              metadata={"plugstack.finetune": json.dumps(meta(info) if meta else info)})
    return out


@pytest.mark.parametrize("change, says", [
    ({"meta": lambda m: {**m, "base_digest": "ab" * 32}}, "it was trained on base weights abababababababab"),
    ({"tensors": lambda t: {k: (v[:, :-1].contiguous() if ".lora_A." in k else v) for k, v in t.items()}},
     "8 tensor(s) have other shapes (layers.0.self_attn.q_proj.lora_A.weight is [4, 63], this model needs [4, 64])"),
    ({"meta": lambda m: {**m, "targets": [*m["targets"], "up_proj"]}}, "4 missing, 0 unexpected"),
    ({"meta": lambda m: {**m, "targets": ["lm_head"]}}, "its LoRA targets ['lm_head'] are not a list of"),
    ({"meta": lambda m: {**m, "format": 99}}, "adapter format 99"),
])
def test_an_adapter_that_does_not_fit_is_refused_naming_what_differs(tiny_model_dir, lora, tmp_path, change, says):
    from plugstack.plugins.llama.loader import load_path

    bad = rewrite(lora[1], tmp_path / "bad.safetensors", **change)
    with pytest.raises(ModelLoadError, match=r"model\.adapter=") as info:
        load_path(tiny_model_dir, adapter=bad)
    assert says in str(info.value)


def test_a_corrupt_or_foreign_file_is_a_clear_error(tiny_model_dir, lora, tmp_path):
    from plugstack.plugins.llama.loader import load_path

    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(lora[1].read_bytes()[:-100])
    cases = [(cut, "not a readable safetensors file"),
             (tiny_model_dir / "model.safetensors", "no 'plugstack.finetune' metadata"),
             (tmp_path / "absent.safetensors", "does not exist")]
    for path, says in cases:
        with pytest.raises(ModelLoadError, match=r"model\.adapter=") as info:
            load_path(tiny_model_dir, adapter=path)
        assert says in str(info.value)


def test_full_fine_tuning_saves_every_weight_and_loads_them_the_same_way(tiny_model_dir, tmp_path):
    import torch

    from plugstack.plugins.llama.config import LlamaFinetuneConfig, LlamaModelConfig
    from plugstack.plugins.llama.finetune import CausalLM, make_trainable
    from plugstack.plugins.llama.loader import load_path
    from plugstack.plugins.train.tensors import save_trainable

    data = write_jsonl(tmp_path / "train.jsonl", [conversation(0)])
    cfg = LlamaModelConfig(path=str(tiny_model_dir), finetune=LlamaFinetuneConfig(data=str(data), full=True))
    trainable = make_trainable(load_path(tiny_model_dir), cfg)
    with torch.no_grad():
        trainable.llama.layers[1].mlp.up_proj.weight.mul_(1.5)
    save_trainable(trainable, tmp_path / "full.safetensors")
    ids = torch.arange(10)[None]
    merged = load_path(tiny_model_dir, adapter=tmp_path / "full.safetensors")
    assert merged.info["adapter"]["kind"] == "full"
    assert torch.allclose(logits(CausalLM(merged.module), ids), logits(trainable.module, ids), atol=1e-6)
