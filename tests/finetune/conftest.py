"""What the fine-tuning tests share: a tiny chat dataset, the environment every run gets, and
one real SFT run through the command line whose adapter the other tests load."""

from __future__ import annotations

from pathlib import Path

import pytest
from badinput import run
from sft_cli import conversation, train_argv, write_jsonl


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory) -> tuple[Path, Path]:
    """``(train.jsonl, eval.jsonl)``: 8 training conversations, 2 held out."""
    root = tmp_path_factory.mktemp("sft-data")
    return (write_jsonl(root / "train.jsonl", [conversation(i) for i in range(8)]),
            write_jsonl(root / "eval.jsonl", [conversation(i) for i in (8, 9)]))


@pytest.fixture(scope="session")
def ft_env(tmp_path_factory) -> dict[str, str]:
    """One torch thread (the CPUs are shared); outputs and caches in the test's directory."""
    root = tmp_path_factory.mktemp("ft-env")
    return {"OMP_NUM_THREADS": "1", "PLUGSTACK_OUTPUTS": str(root / "runs"), "PLUGSTACK_HOME": str(root / "home")}


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_model_dir, sft_data, ft_env) -> Path:
    """The directory of one real ``plugstack app=train`` LoRA SFT run of the tiny Llama."""
    directory = tmp_path_factory.mktemp("sft") / "train"
    result = run(train_argv(tiny_model_dir, sft_data[0], directory, f"model.finetune.eval_data={sft_data[1]}"),
                 env=ft_env, timeout=240)
    assert result.code == 0, result.stderr[-3000:]
    (directory / "stdout.txt").write_text(result.stdout)
    return directory
