"""The shipped support assistant, ``model=support``: SmolLM2 with the shipped LoRA adapter and
the system prompt it was trained with, answering from the command line."""

from __future__ import annotations

import json

import pytest
from badinput import check

from plugstack.plugins.support import SYSTEM_PROMPT, fact_correct


def test_the_preset_is_smollm2_with_the_shipped_adapter_and_its_system_prompt():
    from plugstack.config import compose

    cfg = compose(["model=support"]).model
    assert (cfg.name, cfg.source, cfg.adapter, cfg.path) == ("llama", "smollm2", "support", None)
    assert cfg.system_prompt == SYSTEM_PROMPT  # the data's system prompt, or the adapter answers another question


def test_the_shipped_adapter_fits_smollm2_and_records_its_training(smollm2):
    from plugstack.plugins.llama.adapter import read_adapter

    found = read_adapter("support", hparams=smollm2.info["hparams"], base_digest=smollm2.weights_digest,
                         base_source=smollm2.source)
    assert found.kind == "lora" and found.meta["rank"] == 8 and len(found.meta["targets"]) == 7
    assert found.path.stat().st_size < 8 * 2**20  # an adapter, not a model
    from safetensors import safe_open

    with safe_open(str(found.path), framework="pt") as f:
        trained = json.loads(f.metadata()["plugstack.trainable"])  # what app=train recorded, kept by ship
    assert trained["objective"] in ("sft", "dpo", "grpo") and trained["kind"] == "lora"


@pytest.mark.parametrize(("question", "judged"), [
    ("How long do I have to return an item?", {"facts": ["30 days", "thirty days"]}),
    ("Do you have a student discount?", {"facts": [], "decline": True}),
])
def test_the_assistant_answers_from_the_command_line(cli_in_process, tmp_path, question, judged):
    record = {"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}],
              **judged}
    with cli_in_process({"PLUGSTACK_OUTPUTS": str(tmp_path)}) as run:
        result = run(["model=support", "backend=cpu", "backend.threads=1", question])
    check(result, 0)
    assert fact_correct(record, result.stdout.strip()), (question, result.stdout)
    ran = json.loads(next(tmp_path.rglob("run.json")).read_text())
    assert ran["config"]["model"]["adapter"] == "support" and ran["exit_code"] == 0
