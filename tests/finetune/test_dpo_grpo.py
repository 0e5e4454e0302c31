"""DPO and GRPO through ``app=train`` on the tiny Llama: the reference is where training
started (the first DPO loss is log 2 exactly), preferences are learnt, GRPO's gradient
follows the advantages, a run killed with SIGKILL resumes to the uninterrupted one's
adapter, and each bad option or data line is a clear error (exit 2)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from badinput import BIN, check
from sft_cli import PLANS, train_argv, write_jsonl

HERE = Path(__file__).parent
SYSTEM = {"role": "system", "content": "You answer about plans."}


def pair(i: int) -> dict:
    plan = PLANS[i % len(PLANS)]
    return {"prompt": [SYSTEM, {"role": "user", "content": f"How long does {plan} last?"}],
            "chosen": [{"role": "assistant", "content": f"{plan} lasts {3 + i} days."}],
            "rejected": [{"role": "assistant", "content": f"No idea, {plan} is your problem."}]}


def prompt(i: int) -> dict:
    return {"prompt": [SYSTEM, {"role": "user", "content": f"Tell me about {PLANS[i % len(PLANS)]}."}], "letter": "s"}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("dpo") / "pairs.jsonl", [pair(i) for i in range(8)])


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("grpo") / "prompts.jsonl", [prompt(i) for i in range(8)])


@pytest.fixture
def plugstack(ft_env, cli_in_process):
    with cli_in_process({**ft_env, "PYTHONPATH": str(HERE)}) as run:
        yield run


def dpo_argv(model_dir, data, directory, *extra):
    return train_argv(model_dir, data, directory, "model.finetune.objective=dpo", f"model.finetune.eval_data={data}",
                      "model.finetune.lora_dropout=0", "model.finetune.beta=0.5", *extra)


def grpo_argv(model_dir, data, directory, *extra):
    return train_argv(model_dir, data, directory, "model.finetune.objective=grpo", "model.finetune.reward=tiny_reward:"
                      "letters", "model.finetune.group_size=4", "model.finetune.max_new_tokens=6", "app.batch_size=2",
                      "app.eval_every=0", "app.steps=4", "app.checkpoint_every=2", *extra)


def rows(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    names = lines[0].split(",")
    return [dict(zip(names, map(float, line.split(",")), strict=True)) for line in lines[1:]]


def test_dpo_starts_at_its_reference_and_learns_the_preferences(tiny_model_dir, pairs, tmp_path, plugstack):
    from safetensors import safe_open

    check(plugstack(dpo_argv(tiny_model_dir, pairs, tmp_path / "dpo")), 0)
    train, evals = rows(tmp_path / "dpo" / "metrics.csv"), rows(tmp_path / "dpo" / "eval.csv")
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference: every margin 0
    assert train[0]["accuracy"] == 0 and train[0]["margin"] == pytest.approx(0, abs=1e-6)
    assert evals[-1]["eval_accuracy"] == 1.0 and evals[-1]["eval_margin"] > 0.5 and evals[-1]["eval_loss"] < 0.5
    with safe_open(str(tmp_path / "dpo" / "model.safetensors"), framework="pt") as f:
        described = json.loads(f.metadata()["plugstack.finetune"])
    assert described["objective"] == "dpo" and described["kind"] == "lora"


def test_dpo_from_the_sft_adapter_keeps_its_shape_and_starts_from_it(trained, tiny_model_dir, pairs, tmp_path,
                                                                     plugstack):
    from safetensors import safe_open

    sft = trained / "model.safetensors"
    argv = dpo_argv(tiny_model_dir, pairs, tmp_path / "dpo", f"model.finetune.init_adapter={sft}",
                    "model.finetune.lora_rank=16", "app.steps=2", "app.eval_every=0")  # rank: the adapter's wins
    check(plugstack(argv), 0)
    assert rows(tmp_path / "dpo" / "metrics.csv")[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    with safe_open(str(tmp_path / "dpo" / "model.safetensors"), framework="pt") as f, \
         safe_open(str(sft), framework="pt") as g:
        assert {k: f.get_slice(k).get_shape() for k in f.keys()} == {k: g.get_slice(k).get_shape() for k in g.keys()}
        described = json.loads(f.metadata()["plugstack.finetune"])
    assert described["rank"] == 4 and described["init_adapter"]["path"] == str(sft)
    dpo = tmp_path / "dpo" / "model.safetensors"
    result = plugstack(["model=llama", f"model.path={tiny_model_dir}", f"model.adapter={dpo}", "backend=cpu",
                        "app.max_new_tokens=4", "How long does Plus last?"])
    check(result, 0)


def test_grpo_gradient_raises_the_answers_with_positive_advantage(tiny_model_dir):
    import torch

    from plugstack.plugins.llama.dpo import sequence_logprobs
    from plugstack.plugins.llama.finetune import CausalLM, add_lora, collate
    from plugstack.plugins.llama.grpo import advantages
    from plugstack.plugins.llama.loader import load_path
    from plugstack.plugins.llama.sft_data import Example

    assert torch.equal(advantages(torch.tensor([[1.0, 1.0, 1.0]])), torch.zeros(1, 3))  # alike: nothing to learn
    adv = advantages(torch.tensor([[3.0, 1.0]]))
    assert adv[0, 0] > 0 > adv[0, 1] and adv.sum().abs() < 1e-6

    model = load_path(tiny_model_dir)
    torch.manual_seed(0)
    add_lora(model.module, rank=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj"])
    module = CausalLM(model.module)
    prompt = tuple(model.tokenizer.encode("Hi"))
    answers = [Example((*prompt, 40, 41, 42), (False,) * len(prompt) + (True,) * 3, "a"),
               Example((*prompt, 50, 51), (False,) * len(prompt) + (True,) * 2, "b")]
    batch = collate(answers, model.tokenizer.pad_token_id)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5)
    for p in params:
        if p.dim() == 2 and p.shape[0] != 4:  # give B a start so A's gradient is not zero
            torch.nn.init.normal_(p, std=0.02)
    before = sequence_logprobs(module, batch).detach()
    for _ in range(3):
        loss = -(adv.flatten() * sequence_logprobs(module, batch)).sum() / batch["labels"].numel()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = sequence_logprobs(module, batch).detach()
    assert after[0] > before[0] and after[1] < before[1]


def test_grpo_killed_with_sigkill_resumes_to_the_uninterrupted_adapter(tiny_model_dir, prompts, tmp_path, ft_env,
                                                                       plugstack):
    import torch
    from safetensors.torch import load_file

    check(plugstack(grpo_argv(tiny_model_dir, prompts, tmp_path / "whole")), 0)
    history = rows(tmp_path / "whole" / "metrics.csv")
    assert len(history) == 4 and all(r["answer_tokens"] > 0 for r in history)
    assert len({r["reward"] for r in history}) > 1  # sampled answers differ, so do their rewards

    argv = grpo_argv(tiny_model_dir, prompts, tmp_path / "killed", "app.steps=400")  # would run for minutes
    env = {**os.environ, **ft_env, "PYTHONPATH": str(HERE)}
    proc = subprocess.Popen([str(BIN), *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ckpt = tmp_path / "killed" / "checkpoints"
        deadline = time.monotonic() + 180
        while not (ckpt.is_dir() and any((d / "state.json").exists() for d in ckpt.iterdir())):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)  # no chance to clean up or write anything more
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    check(plugstack(grpo_argv(tiny_model_dir, prompts, tmp_path / "killed")), 0)  # the same training, 4 steps
    got, want = load_file(str(tmp_path / "killed" / "model.safetensors")), load_file(str(tmp_path / "whole" /
                                                                                         "model.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    untimed = [{k: v for k, v in r.items() if k != "step_s"} for r in rows(tmp_path / "killed" / "metrics.csv")]
    assert untimed == [{k: v for k, v in r.items() if k != "step_s"} for r in history]  # same samples, same rewards


@pytest.mark.parametrize(("extra", "says"), [
    (["model.finetune.objective=grpo"], ["objective=grpo needs a reward", "plugstack.plugins.support:reward"]),
    (["model.finetune.objective=grpo", "model.finetune.reward=nowhere_at_all:fn"],
     ["model.finetune.reward=nowhere_at_all:fn: cannot be imported"]),
    (["model.finetune.objective=grpo", "model.finetune.reward=tiny_reward"], ["is not package.module:function"]),
    (["model.finetune.objective=dpo", "model.finetune.beta=0"], ["model.finetune.beta=0.0 is invalid"]),
    (["model.finetune.group_size=1"], ["model.finetune.group_size=1 is invalid"]),
    (["model.finetune.sft_weight=-1"], ["model.finetune.sft_weight=-1.0 is invalid"]),
    (["model.finetune.temperature=-1"], ["model.finetune.temperature=-1.0 is invalid"]),
    (["model.finetune.objective=ppo"], ["objective='ppo' is not known", "sft | dpo | grpo"]),
    (["model.finetune.full=true", "model.finetune.init_adapter=x.safetensors"], ["cannot start a full fine-tuning"]),
])
def test_a_bad_objective_option_is_refused_by_name(tiny_model_dir, pairs, tmp_path, plugstack, extra, says):
    check(plugstack(train_argv(tiny_model_dir, pairs, tmp_path / "t", *extra)), 2, says)


@pytest.mark.parametrize(("objective", "line", "says"), [
    ("dpo", {"prompt": [SYSTEM, {"role": "user", "content": "Hi"}], "chosen": []}, "'chosen' must be a non-empty"),
    ("dpo", {"prompt": [SYSTEM], "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}]}, "'prompt' must end with a user turn"),
    ("dpo", {"prompt": [SYSTEM, {"role": "user", "content": "Hi"}], "chosen": [{"role": "user", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}]}, "has role 'user', expected assistant"),
    ("grpo", ["not", "an", "object"], "expected a prompt object with a 'prompt' list, got list"),
])
def test_a_malformed_preference_or_prompt_line_names_file_and_line(tiny_model_dir, tmp_path, plugstack, objective,
                                                                    line, says):
    data = tmp_path / "data.jsonl"
    good = pair(0) if objective == "dpo" else prompt(0)
    data.write_text(json.dumps(good) + "\n\n" + json.dumps(line) + "\n")
    argv = train_argv(tiny_model_dir, data, tmp_path / "t", f"model.finetune.objective={objective}",
                      "model.finetune.reward=tiny_reward:letters")
    check(plugstack(argv), 2, [f"{data}:3: ", says])


def test_a_reward_that_is_not_a_number_is_refused_naming_the_prompt(tiny_model_dir, prompts, tmp_path, plugstack):
    result = plugstack(grpo_argv(tiny_model_dir, prompts, tmp_path / "t", "model.finetune.reward=tiny_reward:"
                                 "not_a_number"))
    check(result, 2, ["model.finetune.reward=tiny_reward:not_a_number returned 'high' for", f"{prompts}:",
                      "expected a finite number"])


def test_an_init_adapter_of_another_model_is_refused(trained, tiny_model_dir, pairs, tmp_path, plugstack):
    import shutil

    from safetensors.torch import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    weights = load_file(str(other / "model.safetensors"))
    save_file({k: v * 1.01 for k, v in weights.items()}, str(other / "model.safetensors"), metadata={"format": "pt"})
    argv = dpo_argv(other, pairs, tmp_path / "t", f"model.finetune.init_adapter={trained / 'model.safetensors'}")
    check(plugstack(argv), 2, ["model.finetune.init_adapter=", "does not fit this model"])



def test_sft_weight_adds_the_chosen_answers_next_token_loss(tiny_model_dir, pairs):
    import torch
    import torch.nn.functional as F

    from plugstack.plugins.llama.config import LlamaFinetuneConfig, LlamaModelConfig
    from plugstack.plugins.llama.loader import load

    def trainable(weight):
        ft = LlamaFinetuneConfig(objective="dpo", data=str(pairs), lora_dropout=0.0, sft_weight=weight)
        return load(LlamaModelConfig(path=str(tiny_model_dir), finetune=ft)).offers["train"]()

    plain, rpo = trainable(0.0), trainable(0.5)
    batch = next(plain.batches("train", batch_size=4, seed=0))
    with torch.no_grad():
        dpo_loss, _ = plain.loss(plain.module, batch)
        rpo_loss, _ = rpo.loss(rpo.module, batch)
    assert dpo_loss == pytest.approx(math.log(2), abs=1e-6)
    rows = batch["input_ids"].shape[0] // 2
    chosen = {k: v[:rows] for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = rpo.module(chosen["input_ids"], chosen["attention_mask"], chosen["select"])
        labels = chosen["input_ids"][:, 1:][chosen["select"][:, :-1]]
        nll = F.cross_entropy(logits, labels)
    assert rpo_loss == pytest.approx(math.log(2) + 0.5 * float(nll), abs=1e-5)
