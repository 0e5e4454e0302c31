"""Prompts as people type them: words on the command line or a pipe, taken literally, and a
console that shows the answer, not the log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from badinput import check, run

from plugstack.prompt_args import literal_override, split_prompt

TRICKY = [
    "What's 2+2, roughly?",
    'He said "hi" [ok] {a: b}, (maybe)',
    "${oc.env:HOME} and \\${x} and $y",
    "a=b is it?",
    "back\\slash \\' end\\",
    "tab\tand 100%",
]


@pytest.mark.parametrize("text", TRICKY)
def test_a_prompt_reaches_the_app_as_typed(text):
    from plugstack.config import compose

    cfg = compose([literal_override("app.prompt", text)])
    assert cfg.app.prompt == text


@pytest.mark.parametrize(("argv", "kept", "prompt"), [
    (["Hello"], [], "Hello"),
    (["Hello,", "world!", "backend=cpu"], ["backend=cpu"], "Hello, world!"),
    (["--cfg", "job", "Hi there"], ["--cfg", "job"], "Hi there"),
    (["-m", "backend=cpu,onnx", "Say hi"], ["-m", "backend=cpu,onnx"], "Say hi"),
    (["--info", "config"], ["--info", "config"], None),
    (["app.max_new_tokens=3", "x=3", "is", "it?"], ["app.max_new_tokens=3"], "x=3 is it?"),
    (["~app.stop", "+app.x=1", "hydra/launcher=joblib"], ["~app.stop", "+app.x=1", "hydra/launcher=joblib"], None),
    (["-sc", "query=bash"], ["-sc", "query=bash"], None),
])
def test_words_that_are_not_flags_or_overrides_are_the_prompt(argv, kept, prompt):
    assert split_prompt(argv) == (kept, prompt)


def _run(tmp_path: Path, tiny: Path, *argv: str, stdin: str | None = None):
    return run(["model=llama", f"model.path={tiny}", "backend=cpu", "app.chat=false", "app.max_new_tokens=6",
                *argv], env={"PLUGSTACK_OUTPUTS": str(tmp_path / "runs")}, stdin=stdin)


def _records(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").rglob("run.json"))]


def test_a_typed_prompt_a_piped_one_and_app_prompt_are_the_same_run(tmp_path, tiny_model_dir):
    text = "What's up, ${USER}?"
    typed = _run(tmp_path, tiny_model_dir, text)
    piped = _run(tmp_path, tiny_model_dir, stdin=text + "\n")
    check(typed, 0)
    check(piped, 0)
    assert typed.stdout == piped.stdout and typed.stdout.strip()
    assert _records(tmp_path)[0]["config"]["app"]["prompt"] == text  # recorded literally, resolved


def test_an_empty_pipe_is_a_clear_error(tmp_path, tiny_model_dir):
    check(_run(tmp_path, tiny_model_dir, stdin=""), 2, ["stdin is empty"])


def test_the_prompt_given_twice_is_refused(tmp_path, tiny_model_dir):
    check(_run(tmp_path, tiny_model_dir, "Hello", "app.prompt=Hi"), 2, ["the prompt is given twice"])


def test_a_plain_run_shows_the_answer_and_a_note_at_the_token_limit(tmp_path, tiny_model_dir):
    result = _run(tmp_path, tiny_model_dir, "Hello there", "app.ignore_eos=true")
    check(result, 0, ["plugstack: note: the answer stopped at 6 tokens (app.max_new_tokens=6"])
    assert "[info" not in result.stderr and result.stdout.strip()
    (log,) = (tmp_path / "runs").rglob("plugstack.log")
    assert {"run.start", "generate.result", "run.end"} <= {json.loads(x)["event"] for x in log.read_text().splitlines()}


def test_sweep_outputs_are_labelled_by_job(tmp_path, tiny_model_dir):
    result = run(["--multirun", "model=llama", f"model.path={tiny_model_dir}", "backend=cpu,pinned-cpu",
                  "app.chat=false", "app.max_new_tokens=3", "app.ignore_eos=true", "Good morning"],
                 env={"PLUGSTACK_OUTPUTS": str(tmp_path / "runs")})
    check(result, 0)
    labels = [line for line in result.stdout.splitlines() if line.startswith("[job ")]
    assert [label.split()[:2] for label in labels] == [["[job", "0]"], ["[job", "1]"]]
    assert "backend=cpu " in labels[0] and "backend=pinned-cpu " in labels[1]
    assert "Good morning" not in result.stdout  # the prompt is not repeated in the labels
