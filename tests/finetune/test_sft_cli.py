"""SFT end to end through the command line: ``app=train`` writes a small adapter, which
``model.adapter=`` loads on cpu and onnx alike; a resumed run is the uninterrupted one; an
adapter of another model and a malformed data line are clear errors (exit 2)."""

from __future__ import annotations

import json

import pytest
from badinput import check
from sft_cli import conversation, train_argv, write_jsonl


@pytest.fixture
def plugstack(ft_env, cli_in_process):
    """``plugstack ARGV`` in this process (see ``cli_in_process``): seconds saved per run."""
    with cli_in_process(ft_env) as run:
        yield run


def test_sft_writes_an_adapter_alone_with_its_description(trained, tiny_model_dir):
    from safetensors import safe_open

    final = trained / "model.safetensors"
    with safe_open(str(final), framework="pt") as f:
        names, meta = list(f.keys()), f.metadata()
    assert names and all(".lora_" in n for n in names)  # 2 layers x 7 targets x (A, B)
    assert final.stat().st_size < (tiny_model_dir / "model.safetensors").stat().st_size / 5
    described = json.loads(meta["plugstack.finetune"])
    assert described["kind"] == "lora" and described["rank"] == 4 and len(described["targets"]) == 7
    trainable = json.loads(meta["plugstack.trainable"])
    assert trainable["objective"] == "sft" and trainable["train_conversations"] == 8
    for ckpt in (trained / "checkpoints").iterdir():  # checkpoints hold the adapter alone too
        with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
            assert sorted(f.keys()) == sorted(names)
    losses = [float(r.split(",")[1]) for r in (trained / "metrics.csv").read_text().splitlines()[1:]]
    evals = (trained / "eval.csv").read_text().splitlines()
    assert len(losses) == 12 and losses[-1] < losses[0] and len(evals) == 3  # header, step 6, step 12
    assert f"model.adapter={final}" in (trained / "stdout.txt").read_text()


def test_the_adapter_generates_the_same_greedy_text_on_cpu_and_onnx(trained, tiny_model_dir, plugstack):
    adapter = f"model.adapter={trained / 'model.safetensors'}"
    texts = {}
    for name, backend, extra in (("cpu", "cpu", [adapter]), ("onnx", "onnx", [adapter]), ("base", "cpu", [])):
        result = plugstack(["model=llama", f"model.path={tiny_model_dir}", *extra, f"backend={backend}",
                            "backend.threads=1", "app.max_new_tokens=8", "app.ignore_eos=true", "app.chat=false",
                            "Plus lasts"])
        check(result, 0)
        texts[name] = result.stdout
    assert texts["cpu"] == texts["onnx"] and len(texts["cpu"]) > 8  # eight tokens, alike on both
    assert texts["cpu"] != texts["base"]  # the adapter is what decodes (the tiny random base says "ssss...")


def test_a_resumed_run_ends_where_the_uninterrupted_one_did(trained, tiny_model_dir, sft_data, tmp_path, plugstack):
    import torch
    from safetensors.torch import load_file

    argv = train_argv(tiny_model_dir, sft_data[0], tmp_path / "train")
    check(plugstack([a if a != "app.steps=12" else "app.steps=6" for a in argv]), 0)  # stops after step 6
    check(plugstack(argv), 0)  # resumes from step 6's checkpoint (and evaluates on nothing)
    got, want = load_file(str(tmp_path / "train" / "model.safetensors")), load_file(str(trained / "model.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_an_adapter_of_another_model_is_refused(trained, tiny_model_dir, tmp_path, plugstack):
    import shutil

    from safetensors.torch import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    weights = load_file(str(other / "model.safetensors"))
    save_file({k: v * 1.01 for k, v in weights.items()}, str(other / "model.safetensors"), metadata={"format": "pt"})
    result = plugstack(["model=llama", f"model.path={other}", f"model.adapter={trained / 'model.safetensors'}",
                        "backend=cpu", "Hi"])
    check(result, 2, ["does not fit this model: it was trained on base weights", str(tiny_model_dir)])


def test_a_malformed_training_line_is_refused_naming_file_and_line(tiny_model_dir, tmp_path, plugstack):
    data = write_jsonl(tmp_path / "train.jsonl", [conversation(0), conversation(1)])
    data.write_text(data.read_text() + '{"messages": [{"role": "user", "content": "Hi"}]\n')
    result = plugstack(train_argv(tiny_model_dir, data, tmp_path / "train"))
    check(result, 2, [f"{data}:3: not valid JSON"])
