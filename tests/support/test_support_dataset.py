"""The dataset interface: a user's own JSONL is read as the shipped files are, and every
malformed file is refused before anything is allocated, naming file:line and what was expected."""

from __future__ import annotations

import json
import os

import pytest

from plugstack.errors import ConfigError
from plugstack.plugins.support import read_dpo, read_grpo, read_jsonl, read_sft
from plugstack.plugins.support.dataset import MAX_LINE_BYTES, validate

S = {"role": "system", "content": "Be brief."}
U = {"role": "user", "content": "How long do I have to return an item?"}
A = {"role": "assistant", "content": "30 days."}
B = {"role": "assistant", "content": "Whenever, honestly."}
GOOD = {"sft": {"messages": [S, U, A], "facts": ["30 days"]},
        "dpo": {"prompt": [S, U], "chosen": [A], "rejected": [B], "kind": "rude"},
        "grpo": {"prompt": [S, U], "facts": ["30 days"]}}


def _line(of, /, **change):
    record = {**GOOD[of], **change}
    return json.dumps({k: v for k, v in record.items() if v is not None})


def _write(tmp_path, *lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


# (kind, line 3 of the file, what the error must say)
MALFORMED = {
    "truncated JSON": ("sft", '{"messages": [', "malformed JSON"),
    "not an object": ("sft", "[1, 2]", "expected a JSON object per line, got a list"),
    "a bare string": ("sft", '"hello"', "got a string"),
    "missing key": ("sft", '{"facts": []}', "missing key 'messages'"),
    "unexpected key": ("sft", _line("sft", path="/etc/passwd"), "unexpected key 'path'"),
    "messages not a list": ("sft", _line("sft", messages="hi"), "'messages' must be a non-empty list"),
    "no messages": ("sft", _line("sft", messages=[]), "'messages' must be a non-empty list"),
    "turn not an object": ("sft", _line("sft", messages=["hi"]), "messages[0] must be an object"),
    "unknown role": ("sft", _line("sft", messages=[{"role": "bot", "content": "x"}, A]), "unknown role 'bot'"),
    "content not text": ("sft", _line("sft", messages=[U, {"role": "assistant", "content": 5}]),
                         "messages[1].content must be a string, got a number"),
    "no role": ("sft", _line("sft", messages=[{"content": "x"}, A]), "messages[0].role must be a string, got nothing"),
    "extra key in a turn": ("sft", _line("sft", messages=[U, {**A, "name": "bob"}]), "unexpected key 'name'"),
    "no assistant turn": ("sft", _line("sft", messages=[S, U]), "must end with an assistant turn"),
    "no user turn": ("sft", _line("sft", messages=[S, A]), "needs a user turn"),
    "system in the middle": ("sft", _line("sft", messages=[U, S, A]), "system turn may only come first"),
    "empty answer": ("sft", _line("sft", messages=[U, {"role": "assistant", "content": "  "}]), "empty assistant"),
    "too many turns": ("sft", _line("sft", messages=[U, A] * 40), "at most 64"),
    "facts not a list": ("sft", _line("sft", facts="30 days"), "'facts' must be a list of non-empty strings"),
    "decline not a boolean": ("sft", _line("sft", decline="yes"), "'decline' must be true or false"),
    "decline with facts": ("sft", _line("sft", decline=True), "must have no 'facts'"),
    "id a boolean": ("sft", _line("sft", id=True), "'id' must be a string or an integer"),
    "fact_id a number": ("sft", _line("sft", fact_id=3), "'fact_id' must be a string"),
    "duplicate key": ("sft", '{"messages": [], "messages": []}', "key 'messages' appears twice"),
    "NaN": ("sft", '{"messages": NaN}', "NaN is not a JSON value"),
    "nested too deeply": ("sft", "[" * 50_000, "nested too deeply"),
    "huge integer": ("sft", '{"id": ' + "9" * 5000 + "}", "malformed JSON"),
    "not UTF-8": ("sft", b'{"messages": "caf\xe9"}', "byte 18 is not valid UTF-8"),
    "line too long": ("sft", _line("sft", fact_id="x" * MAX_LINE_BYTES), f"longer than {MAX_LINE_BYTES} bytes"),
    "dpo without rejected": ("dpo", _line("dpo", rejected=None), "missing key 'rejected'"),
    "dpo prompt ends with the answer": ("dpo", _line("dpo", prompt=[U, A]), "'prompt' must end with a user turn"),
    "dpo chosen by a user": ("dpo", _line("dpo", chosen=[U]), "'chosen' must hold assistant turns only"),
    "dpo identical pair": ("dpo", _line("dpo", rejected=[A]), "'chosen' and 'rejected' are identical"),
    "dpo kind a number": ("dpo", _line("dpo", kind=1), "'kind' must be a string"),
    "grpo without facts": ("grpo", _line("grpo", facts=None), "needs 'facts'"),
    "grpo with empty facts": ("grpo", _line("grpo", facts=[]), "needs 'facts'"),
    "grpo prompt not a list": ("grpo", _line("grpo", prompt="hi"), "'prompt' must be a non-empty list"),
    "grpo with an empty fact": ("grpo", _line("grpo", facts=[""]), "'facts' must be a list of non-empty strings"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_line_names_file_and_line(tmp_path, name):
    kind, bad, says = MALFORMED[name]
    path = _write(tmp_path, _line(kind), "", bad, _line(kind))  # line 2 is blank: still counted
    with pytest.raises(ConfigError) as caught:
        read_jsonl(path, kind)
    message = str(caught.value)
    assert message.startswith(f"{path}:3: "), message
    assert says in message, message


def test_good_files_are_read_with_known_keys_only(tmp_path):
    for kind, reader in (("sft", read_sft), ("dpo", read_dpo), ("grpo", read_grpo)):
        path = _write(tmp_path, _line(kind), "   ", _line(kind, id=7), name=f"{kind}.jsonl")
        records = reader(path)
        assert records == [GOOD[kind], {**GOOD[kind], "id": 7}]
        assert records[0] is not GOOD[kind]
    assert read_grpo(_write(tmp_path, _line("grpo", facts=None, decline=True)))[0]["decline"] is True


def test_a_path_in_a_record_is_only_text(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read me")
    line = _line("sft", messages=[U, {"role": "assistant", "content": str(secret)}])
    assert read_sft(_write(tmp_path, line))[0]["messages"][1]["content"] == str(secret)


def test_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + _line("sft").encode() + b"\r\n" + _line("sft").encode() + b"\r\n")
    assert len(read_sft(path)) == 2


def test_the_line_bound_is_exact(tmp_path):
    line = _line("sft")
    path = _write(tmp_path, line)
    assert read_sft(path, max_line_bytes=len(line))
    with pytest.raises(ConfigError, match=rf":1: line is longer than {len(line) - 1} bytes"):
        read_sft(path, max_line_bytes=len(line) - 1)


@pytest.mark.parametrize("lines", [(), ("", "  ")], ids=["empty", "blank lines"])
def test_a_file_without_records(tmp_path, lines):
    path = _write(tmp_path, *lines) if lines else tmp_path / "empty.jsonl"
    if not lines:
        path.write_bytes(b"")
    with pytest.raises(ConfigError, match="has no records; expected one JSON sft record per line") as caught:
        read_sft(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_file_bound(tmp_path):
    path = _write(tmp_path, *[_line("sft")] * 4)
    with pytest.raises(ConfigError, match="limited to 100 bytes") as caught:
        read_sft(path, max_file_bytes=100)
    assert str(path) in str(caught.value)


def test_missing_file_directory_and_kind(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the training data"):
        read_sft(tmp_path / "nope.jsonl")
    with pytest.raises(ConfigError, match="is not a regular file"):
        read_sft(tmp_path)
    with pytest.raises(ConfigError, match="Unknown record kind 'ppo'"):
        read_jsonl(_write(tmp_path, _line("sft")), "ppo")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_pipe_is_not_read(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ConfigError, match="is not a regular file"):
        read_sft(tmp_path / "pipe")


def test_validate_one_record():
    assert validate(GOOD["dpo"], "dpo") == GOOD["dpo"]
    with pytest.raises(ConfigError, match="missing key 'prompt'"):
        validate({}, "grpo")
