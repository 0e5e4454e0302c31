"""On-policy DPO pairs: each wrong answer of the model becomes a pair against the reference."""

from __future__ import annotations

import json

from plugstack.plugins.support import read_dpo, read_grpo
from plugstack.plugins.support.onpolicy import ANSWERS, _prompts, pairs, uncertain


def test_wrong_answers_become_pairs_and_right_or_repeated_ones_do_not(tmp_path):
    prompts = _prompts()
    fact = next(p for p in prompts if not p.get("decline"))
    decline = next(p for p in prompts if p.get("decline"))
    right = ANSWERS[fact["fact_id"]]
    wrong = "Returns are accepted within 12 days, and shipping is always free."
    found = pairs([right, wrong, wrong, " ", "Sure, we offer that at 50% off!", ANSWERS[decline["fact_id"]]],
                  [fact, fact, fact, fact, decline, decline])
    assert [(p["fact_id"], p["rejected"][0]["content"]) for p in found] == [
        (fact["fact_id"], wrong), (decline["fact_id"], "Sure, we offer that at 50% off!")]
    assert found[0]["chosen"][0]["content"] == right and found[0]["prompt"] == fact["prompt"]
    path = tmp_path / "pairs.jsonl"  # what app=train reads: the shop's own DPO format
    path.write_text("".join(json.dumps(p) + "\n" for p in found))
    assert len(read_dpo(path)) == 2


def test_prompts_answered_both_right_and_wrong_become_grpo_prompts(tmp_path):
    prompts = _prompts()
    mixed, always = next(p for p in prompts if not p.get("decline")), prompts[-1]
    right, wrong = ANSWERS[mixed["fact_id"]], "Returns are accepted within 12 days."
    found = uncertain([right, wrong, wrong, wrong], [mixed, mixed, always, always])
    assert [r["prompt"] for r in found] == [mixed["prompt"]]  # `always` was never right: no group would differ
    assert found[0]["fact_id"] == mixed["fact_id"] and "messages" not in found[0]
    path = tmp_path / "uncertain.jsonl"  # what app=train's GRPO reads
    path.write_text("".join(json.dumps(r) + "\n" for r in found))
    assert read_grpo(path)[0]["facts"] == mixed["facts"]
