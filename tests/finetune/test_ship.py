"""``python -m plugstack.plugins.support.ship``: an adapter copied as fp16 with its metadata,
which loads as the original does; a file app=train did not write is refused."""

from __future__ import annotations

import pytest

from plugstack.plugins.support.ship import main, ship


def test_a_shipped_adapter_is_half_the_bytes_and_answers_alike(trained, tiny_model_dir, tmp_path):
    import torch
    from safetensors import safe_open

    from plugstack.plugins.llama.config import LlamaModelConfig
    from plugstack.plugins.llama.loader import load

    source = trained / "model.safetensors"
    target = ship(source, tmp_path / "weights" / "a.safetensors")
    with safe_open(str(source), framework="pt") as f, safe_open(str(target), framework="pt") as g:
        assert f.metadata()["plugstack.finetune"] == g.metadata()["plugstack.finetune"]
        assert {g.get_tensor(k).dtype for k in g.keys()} == {torch.float16}
    assert target.stat().st_size < 0.6 * source.stat().st_size
    from plugstack.plugins.llama.finetune import CausalLM

    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want, got = (CausalLM(load(LlamaModelConfig(path=str(tiny_model_dir), adapter=str(a))).module).eval()(
            ids, mask, mask.bool()) for a in (source, target))
    assert torch.allclose(got, want, atol=1e-3) and not torch.equal(got, want)  # fp16 rounding, nothing more


def test_a_file_that_is_not_an_adapter_is_refused(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    other = tmp_path / "weights.safetensors"
    save_file({"w": torch.ones(2)}, str(other))
    with pytest.raises(SystemExit, match="is not an adapter app=train wrote"):
        main([str(other), "--to", str(tmp_path / "out.safetensors")])
    assert not (tmp_path / "out.safetensors").exists()
