"""The SFT objective's data: chat JSONL rendered with the model's template, the loss on the
assistant's tokens only, padding that changes nothing, batches fixed by the seed."""

from __future__ import annotations

import re

import pytest
from sft_cli import conversation, write_jsonl

from plugstack.errors import ConfigError


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from plugstack.plugins.llama.loader import load_path

    return load_path(tiny_model_dir)


def sft(tiny, data, **options):
    """The tiny model's SFT Trainable over ``data`` (a fresh module each time)."""
    from plugstack.plugins.llama.config import LlamaFinetuneConfig, LlamaModelConfig
    from plugstack.plugins.llama.finetune import make_trainable
    from plugstack.plugins.llama.loader import load_path

    model = load_path(tiny.source)
    return make_trainable(model, LlamaModelConfig(path=tiny.source, finetune=LlamaFinetuneConfig(data=str(data),
                                                                                              **options)))


def test_the_loss_sees_the_assistants_replies_and_nothing_else(tiny):
    from plugstack.plugins.llama.sft_data import encode_conversation

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a sea."},
                {"role": "assistant", "content": "The calm sea."}, {"role": "user", "content": "And a city?"},
                {"role": "assistant", "content": "Paris, France."}]
    example = encode_conversation(tiny.tokenizer, messages, max_length=256)
    tok = tiny.tokenizer
    assert tok.decode(example.ids) == tok.apply_chat_template(messages, add_generation_prompt=False)
    learned = tok.decode([i for i, t in zip(example.ids, example.targets, strict=True) if t])
    assert learned == "The calm sea.<|im_end|>Paris, France.<|im_end|>"  # each reply and the token that ends it

    from plugstack.plugins.llama.finetune import collate

    batch = collate([example], tok.pad_token_id)
    assert tok.decode(batch["labels"].tolist()) == learned  # what the loss predicts, position by position
    assert int(batch["select"].sum()) == len(batch["labels"])


def test_max_length_cuts_at_the_end_and_drops_conversations_left_without_a_reply(tiny, tmp_path):
    from plugstack.plugins.llama.sft_data import encode_conversation, load_examples

    example = encode_conversation(tiny.tokenizer, conversation(0)["messages"], max_length=256)
    first = example.targets.index(True)
    cut = encode_conversation(tiny.tokenizer, conversation(0)["messages"], max_length=first + 2)
    assert cut.ids == example.ids[: first + 2] and sum(cut.targets) == 2
    short = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    path = write_jsonl(tmp_path / "mixed.jsonl", [conversation(0), short])
    kept, dropped = load_examples(path, tiny.tokenizer, max_length=first)
    assert dropped == 1 and len(kept) == 1 and kept[0].where == f"{path}:2"
    with pytest.raises(ConfigError, match="cuts away every reply"):
        load_examples(path, tiny.tokenizer, max_length=3)


@pytest.mark.parametrize("line, says", [
    (b'{"messages": [{"role": "user", "content": "Hi"}', "not valid JSON"),
    (b'{"conversation": []}', "non-empty 'messages' list"),
    (b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant"}]}', "message 1 has no text 'content'"),
    (b'{"messages": [{"role": "user", "content": "Hi"}]}', "no 'assistant' message"),
    (b'{"messages": ["Hi"]}', "message 0 is str"),
    (b'\xff\xfe', "not UTF-8"),
])
def test_a_malformed_line_is_a_clear_error_naming_file_and_line(tiny, tmp_path, line, says):
    from plugstack.plugins.llama.sft_data import load_examples

    path = tmp_path / "train.jsonl"
    good = write_jsonl(tmp_path / "good.jsonl", [conversation(0)]).read_bytes()
    path.write_bytes(good + b"\n" + line + b"\n")  # line 2 is blank (skipped), the bad one is line 3
    with pytest.raises(ConfigError, match=f"{re.escape(str(path))}:3: .*{re.escape(says)}"):
        load_examples(path, tiny.tokenizer, max_length=256)


def test_padding_changes_nothing_the_loss_sees(tiny, tmp_path):
    import torch
    import torch.nn.functional as F

    from plugstack.plugins.llama.finetune import collate

    records = [conversation(0), {"messages": [{"role": "user", "content": "Tell me all about the calm sea tonight."},
                                              {"role": "assistant", "content": "It is calm, and Paris is far."}]}]
    trainable = sft(tiny, write_jsonl(tmp_path / "two.jsonl", records), full=True)
    module, pad = trainable.module.eval(), trainable.pad_id
    a, b = trainable.train
    assert len(a.ids) != len(b.ids)
    with torch.no_grad():
        both = collate([a, b], pad)
        joint = module(both["input_ids"], both["attention_mask"], both["select"])
        alone = [collate([e], pad) for e in (a, b)]
        single = torch.cat([module(x["input_ids"], x["attention_mask"], x["select"]) for x in alone])
        assert torch.allclose(joint, single, atol=1e-5)  # every assistant position's logits, padded or not
        total = sum(float(F.cross_entropy(module(x["input_ids"], x["attention_mask"], x["select"]), x["labels"],
                                          reduction="sum")) for x in alone)
        loss, extra = trainable.loss(module, both)
    assert extra["tokens"] == len(both["labels"])
    assert float(loss) == pytest.approx(total / len(both["labels"]), abs=1e-5)  # the mean over assistant tokens


def test_batches_follow_the_seed_and_ranks_take_disjoint_shares(tiny, tmp_path):
    import itertools

    trainable = sft(tiny, write_jsonl(tmp_path / "ten.jsonl", [conversation(i) for i in range(10)]), full=True)

    def firsts(seed, rank=0, world=1, n=6):
        batches = trainable.batches("train", batch_size=2, seed=seed, rank=rank, world_size=world)
        return [tuple(map(tuple, b["input_ids"].tolist())) for b in itertools.islice(batches, n)]

    assert firsts(0) == firsts(0) and firsts(0) != firsts(1)
    epoch = set(itertools.chain.from_iterable(firsts(0, n=5)))
    assert len(epoch) == 10  # one epoch: every conversation once
    r0, r1 = (set(itertools.chain.from_iterable(firsts(0, rank, 2, n=2))) for rank in (0, 1))
    assert len(r0) == len(r1) == 4 and not r0 & r1
    with pytest.raises(ConfigError, match=r"app\.batch_size=6 on 2 process"):
        next(trainable.batches("train", batch_size=6, seed=0, rank=0, world_size=2))
    assert trainable.evaluate(trainable.module, batch_size=2, seed=0) == {}  # no held-out data: no metric
