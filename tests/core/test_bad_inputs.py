"""The bad-input matrix: one row per case, each run as a user runs it (a fresh `plugstack`
process), each asserting the exit code, that stderr has no traceback and names the
problem, and what was kept. Model files and caches have their own matrices
(tests/model/test_bad_model_files.py, tests/backends/test_onnx_cache_damage.py)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from badinput import BIN, Result, check, default_sigint, run


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]
    code: int
    says: list[str]
    #: Extra environment; ``{tmp}`` is replaced by the case's directory.
    env: dict[str, str] = field(default_factory=dict)
    #: Writes the case's files into its directory before the run.
    setup: Callable[[Path], None] | None = None
    #: Checks what the run kept (or did not touch), given the case's directory and result.
    keeps: Callable[[Path, Result], None] | None = None
    #: Runs the tiny llama model (``model=llama model.path=...`` are added).
    model: bool = False


def _write(name: str, text: str | bytes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())

    return setup


def _dist(name: str, entry_points: dict[str, str], modules: dict[str, str]) -> Callable[[Path], None]:
    """An installed-looking distribution under ``tmp/site`` (on PYTHONPATH)."""

    def setup(tmp: Path) -> None:
        site = tmp / "site"
        info = site / f"{name.replace('-', '_')}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(
            "[plugstack]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
        for module, source in modules.items():
            (site / f"{module}.py").write_text(source)

    return setup


def _unchanged(name: str, text: str) -> Callable[[Path, Result], None]:
    def keeps(tmp: Path, result: Result) -> None:
        assert (tmp / name).read_text() == text

    return keeps


def _nothing_written(tmp: Path, result: Result) -> None:
    assert not list(tmp.glob("*.jsonl")) and not list(tmp.glob(".*partial")), sorted(tmp.iterdir())


def _plugins(tmp: Path, result: Result) -> dict[str, dict]:
    return {p["name"]: p for p in json.loads(result.stdout)}  # stdout stays pure JSON


def _broken(name: str, error: str) -> Callable[[Path, Result], None]:
    def keeps(tmp: Path, result: Result) -> None:
        plugins = _plugins(tmp, result)
        assert plugins[name]["status"] == "broken" and error in plugins[name]["error"]
        assert plugins["llama"]["status"] == "ok" and plugins["generate"]["status"] == "ok"

    return keeps


def _run_codes(tmp: Path, codes: list[int]) -> None:
    """Every job of a sweep wrote its run.json, failed or not."""
    found = sorted(json.loads(p.read_text())["exit_code"] for p in (tmp / "runs").rglob("run.json"))
    assert found == codes


def _ok(plugin: dict) -> None:
    assert plugin["status"] == "ok", plugin


def _absent(text: str, where: str) -> None:
    assert text not in where, where


def _events(tmp: Path) -> list[str]:
    """The events of every run's log file (the console shows only warnings)."""
    return [json.loads(line)["event"] for log in (tmp / "runs").rglob("plugstack.log")
            for line in log.read_text().splitlines()]


def _answered(tmp: Path, result: Result) -> None:
    assert "generate.result" in _events(tmp) and result.stdout.endswith("\n"), result.stdout


def _one_error_line(tmp: Path, result: Result) -> None:
    lines = [x for x in result.stderr.splitlines() if x.startswith("plugstack: error:")]
    assert len(lines) == 1, result.stderr
    assert not re.search(r"[^.]\.\.(?!\.)", lines[0]), lines[0]  # no doubled periods
    events = _events(tmp)
    assert "run.failed" in events and "model.load.done" not in events  # refused before the model loaded


SITE = {"PYTHONPATH": "{tmp}/site"}
PROMPTS = "Hello\nThe sea is\n"
LONG = "Hello\nThe sea is\nA\n" + "word " * 400 + "\n"

CASES = [
    # 1. finished work is lost / inputs overwritten
    Case("output-is-a-directory", ["app.prompt_file={tmp}/p.txt", "app.output_file={tmp}"], 2,
         ["app.output_file=", "is a directory"], setup=_write("p.txt", PROMPTS), keeps=_nothing_written),
    Case("output-is-the-prompt-file", ["app.prompt_file={tmp}/p.txt", "app.output_file={tmp}/p.txt"], 2,
         ["would overwrite the prompts"], setup=_write("p.txt", PROMPTS), keeps=_unchanged("p.txt", PROMPTS)),
    Case("output-under-a-file", ["app.prompt_file={tmp}/p.txt", "app.output_file={tmp}/p.txt/out.jsonl"], 2,
         ["cannot be created", "is a file, not a directory"], setup=_write("p.txt", PROMPTS),
         keeps=_unchanged("p.txt", PROMPTS)),
    Case("too-long-prompt-names-file-and-line", ["app.prompt_file={tmp}/p.txt", "app.output_file={tmp}/o.jsonl"], 2,
         ["p.txt:4 has", "app.truncate=true"], setup=_write("p.txt", LONG), model=True, keeps=_nothing_written),
    Case("prompt-file-missing", ["app.prompt_file={tmp}/none.txt"], 2, ["no such file"]),
    Case("prompt-file-not-utf8", ["app.prompt_file={tmp}/p.txt"], 2, ["is not UTF-8"],
         setup=_write("p.txt", b"caf\xe9\n")),
    Case("prompt-file-bad-jsonl-line", ["app.prompt_file={tmp}/p.jsonl"], 2, ["p.jsonl:2: not valid JSON"],
         setup=_write("p.jsonl", '{"prompt": "a"}\n{"prompt": \n')),
    Case("prompt-file-jsonl-without-prompt", ["app.prompt_file={tmp}/p.jsonl"], 2, ['p.jsonl:1: expected an object'],
         setup=_write("p.jsonl", '{"text": "a"}\n')),
    Case("prompt-file-empty", ["app.prompt_file={tmp}/p.txt"], 2, ["holds no prompts"], setup=_write("p.txt", "\n\n")),
    # 2. a third-party package cannot displace a built-in
    Case("entry-point-named-llama", ["plugins", "--json"], 0, ["'llama' is already taken", "'evil-llama'"],
         env=SITE, setup=_dist("evil-llama", {"llama": "evil_llama"}, {"evil_llama": "X = 1\n"}),
         keeps=_broken("llama (evil-llama)", "distribution 'plugstack'")),
    Case("entry-point-named-llama-default-run", ["backend=cpu", "app.max_new_tokens=2"], 0,
         ["'evil-llama'"], env=SITE, setup=_dist("evil-llama", {"llama": "evil_llama"}, {"evil_llama": "X = 1\n"}),
         model=True, keeps=_answered),
    Case("registers-a-model-named-llama", ["backend=cpu", "app.max_new_tokens=2"], 0,
         ["register a model named 'llama'", "distribution 'plugstack'", "distribution 'clash'"], env=SITE,
         setup=_dist("clash", {"clash": "clash_mod"}, {"clash_mod": (
             "import plugstack\n@plugstack.hookimpl\ndef plugstack_register_models(register):\n"
             "    register('llama', 'clash_mod:load')\n")}), model=True, keeps=_answered),
    # 3. discovery is protected
    Case("plugin-blocks-at-import", ["plugins", "--json"], 0, ["did not finish within 2 s"],
         env={**SITE, "PLUGSTACK_PLUGIN_IMPORT_TIMEOUT": "2"},
         setup=_dist("hang", {"hang": "hang_mod"}, {"hang_mod": "import time\ntime.sleep(3600)\n"}),
         keeps=_broken("hang", "did not finish within 2 s")),
    Case("plugin-exits-at-import", ["plugins", "--json"], 0, ["called sys.exit(3)"], env=SITE,
         setup=_dist("quits", {"quits": "quits_mod"}, {"quits_mod": "import sys\nsys.exit(3)\n"}),
         keeps=_broken("quits", "sys.exit(3) at import")),
    Case("plugin-exits-in-its-hook", ["plugins", "--json"], 0, ["SystemExit"], env=SITE,
         setup=_dist("hookexit", {"hookexit": "hookexit_mod"}, {"hookexit_mod": (
             "import sys, plugstack\n@plugstack.hookimpl\ndef plugstack_register_apps(register):\n"
             "    sys.exit(4)\n")}), keeps=_broken("hookexit", "SystemExit")),
    Case("plugin-prints-at-import", ["plugins", "--json"], 0, ["hello from a noisy plugin", "plugin.printed"],
         env=SITE, setup=_dist("noisy", {"noisy": "noisy_mod"}, {"noisy_mod": "print('hello from a noisy plugin')\n"}),
         keeps=lambda tmp, r: _ok(_plugins(tmp, r)["noisy"])),
    Case("plugin-prints-in-its-hook-during-a-run", ["--cfg", "job"], 0, ["chatty hook"], env=SITE,
         setup=_dist("chatty", {"chatty": "chatty_mod"}, {"chatty_mod": (
             "import plugstack\n@plugstack.hookimpl\ndef plugstack_register_apps(register):\n"
             "    print('chatty hook')\n")}),
         keeps=lambda tmp, r: _absent("chatty", r.stdout)),
    Case("import-timeout-not-a-number", ["plugins"], 2, ["PLUGSTACK_PLUGIN_IMPORT_TIMEOUT='abc'"],
         env={"PLUGSTACK_PLUGIN_IMPORT_TIMEOUT": "abc"}),
    # 6. the environment fails
    Case("outputs-dir-under-a-file", ["backend=cpu"], 2,
         ["cannot write", "PLUGSTACK_OUTPUTS"], env={"PLUGSTACK_OUTPUTS": "{tmp}/file/runs"},
         setup=_write("file", "not a directory"), model=True),
    Case("stdout-cannot-encode", ["backend=cpu", "app.max_new_tokens=24", "app.chat=false",
                                  "app.prompt=Numbers and emoji"], 0,
         ["stdout's encoding is ascii"], env={"PYTHONIOENCODING": "ascii"}, model=True, keeps=_answered),
    # 7. config values slip through
    Case("plus-unknown-key", ["+app.max_tokens=4"], 2, ["app 'generate' has no option 'max_tokens'",
                                                        "Did you mean 'app.max_new_tokens'?"]),
    Case("misspelt-key", ["app.max_tokns=4"], 2, ["has no option 'max_tokns'", "'app.max_new_tokens'"]),
    Case("misspelt-key-never-advises-plus", ["backend=cpu", "backend.thread=2"], 2, ["'backend.threads'"],
         keeps=lambda tmp, r: _absent("+backend", r.stderr)),
    Case("option-of-another-backend", ["backend.threads=2"], 2,
         ["backend 'auto' has no option 'threads'", "is an option of backend cpu, onnx"]),
    Case("plus-unknown-model-key", ["+model.nope=1"], 2, ["model 'llama' has no option 'nope'"]),
    Case("nested-unknown-key", ["model.nope.deep=1"], 2, ["model 'llama' has no option 'nope'"]),
    Case("misspelt-key-with-help", ["--help", "app.max_tokns=4"], 2, ["has no option 'max_tokns'"]),
    Case("misspelt-key-with-cfg-job", ["--cfg", "job", "app.max_tokns=4"], 2, ["has no option 'max_tokns'"],
         keeps=lambda tmp, r: _absent("app:", r.stdout)),
    Case("bad-value-in-one-job-of-a-sweep", ["--multirun", "backend=cpu", "app.temperature=0,-1",
                                             "app.max_new_tokens=2"], 2, ["temperature=-1.0"], model=True,
         keeps=lambda tmp, r: _run_codes(tmp, [0, 2])),
    Case("wrong-type", ["app.max_new_tokens=abc"], 2, ["app.max_new_tokens: Value 'abc'"]),
    Case("wrong-enum", ["log.level=LOUD"], 2, ["log.level: Invalid value 'LOUD'"]),
    Case("grammar", ["app.prompt=a,b"], 2, ["Ambiguous value for argument 'app.prompt=a,b'"]),
    Case("unknown-choice", ["app=chatt"], 2, ["Unknown app 'chatt'"]),
    Case("interpolation-in-a-prompt", ["app.prompt=${foo}"], 2, ["Interpolation key 'foo' not found", r"\${...}"]),
    Case("huge-seed", ["app.seed=99999999999999999999999"], 2, ["seed=99999999999999999999999", "2**64"]),
    Case("negative-seed", ["app.seed=-1"], 2, ["seed=-1"]),
    Case("negative-temperature", ["app.temperature=-1"], 2, ["temperature=-1.0"]),
    Case("top-p-above-one", ["app.top_p=1.5"], 2, ["top_p=1.5"]),
    Case("zero-new-tokens", ["app.max_new_tokens=0"], 2, ["max_new_tokens=0"]),
    Case("empty-stop-string", ["app.stop=['']"], 2, ["non-empty strings"]),
    Case("zero-batch", ["app.prompt_file={tmp}/p.txt", "app.batch_size=0"], 2, ["app.batch_size=0"],
         setup=_write("p.txt", PROMPTS)),
    Case("negative-threads", ["backend=onnx", "backend.threads=-1"], 2, ["backend.threads=-1"]),
    Case("unknown-quantize", ["backend=onnx", "backend.quantize=int3"], 2, ["quantize='int3'"]),
    Case("bad-accuracy-level", ["backend=onnx", "backend.accuracy_level=2"], 2,
         ["backend.accuracy_level=2", "4 (int8 activations, fast) or 0"]),
    Case("native-with-the-export", ["backend=onnx", "backend.quantize=native", "backend.graph=export"], 2,
         ["Native weights are written by the model's own graph builder"]),
    Case("native-for-float-weights", ["backend=onnx", "backend.quantize=native", "backend.threads=1"], 2,
         ["backend.quantize=native cannot apply: the weights did not come block-quantised",
          "Use backend.quantize=null"], model=True),
    Case("cpu-bad-dtype", ["backend=cpu", "backend.dtype=fp8"], 2, ["fp8"]),
    Case("threads-above-cores-warns", ["backend=cpu", "backend.threads=999",
                                       "app.max_new_tokens=2"], 0, ["backend.threads_oversubscribed"], model=True,
         keeps=_answered),
    Case("backend-env-unknown", ["--cfg", "job"], 0, [], env={"PLUGSTACK_BACKEND": "onxx"}),
    Case("backend-env-unknown-run", [], 2, ["PLUGSTACK_BACKEND=onxx names no backend",
                                                                "Did you mean 'onnx'?"],
         env={"PLUGSTACK_BACKEND": "onxx"}, model=True, keeps=_one_error_line),
    # 8. messages that mislead
    Case("unavailable-backend-once-before-loading", ["backend=cuda"], 2,
         ["Backend 'cuda' is not available here"], model=True, keeps=_one_error_line),
    Case("runner-window-is-not-the-models", ["backend=onnx", "backend.max_cache_len=64",
                                             "app.prompt_file={tmp}/p.txt"], 2,
         ["what one slot of the runner holds (64 positions: raise backend.max_cache_len, up to 256)"],
         setup=_write("p.txt", "word " * 80 + "\n"), model=True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, tiny_model_dir: Path) -> None:
    if case.setup:
        case.setup(tmp_path)

    def fill(text: str) -> str:
        return text.replace("{tmp}", str(tmp_path))

    argv = [fill(a) for a in case.argv]
    if case.model:
        argv = [*argv, "model=llama", f"model.path={tiny_model_dir}"]
    env = {"PLUGSTACK_OUTPUTS": str(tmp_path / "runs"), "PLUGSTACK_HOME": str(tmp_path / "home"),
           **{k: fill(v) for k, v in case.env.items()}}
    result = run(argv, env=env, timeout=120)
    check(result, case.code, [fill(s) for s in case.says])
    if case.keeps:
        case.keeps(tmp_path, result)


# -- interruptions keep finished work (a real process, a real signal) ------------------------


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_interrupted_prompt_file_keeps_every_finished_answer(sig, code, tmp_path, tiny_model_dir):
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"Prompt number {i}\n" for i in range(8)))
    out = tmp_path / "answers.jsonl"
    argv = ["model=llama", f"model.path={tiny_model_dir}", "backend=cpu", f"app.prompt_file={prompts}",
            f"app.output_file={out}", "app.batch_size=1", "app.max_new_tokens=200", "app.ignore_eos=true",
            "app.chat=false", "backend.threads=1"]
    env_runs = tmp_path / "runs"
    proc = subprocess.Popen([str(BIN), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**_env(), "PLUGSTACK_OUTPUTS": str(env_runs)}, preexec_fn=default_sigint)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _lines(tmp_path) < 2 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    check(Result(proc.returncode, stdout, stderr), code, ["generate.file.interrupted"])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert 2 <= len(records) < 8  # everything finished is there, and the run was really cut short
    assert all(r["finish_reason"] == "length" and r["completion_tokens"] == 200 for r in records)
    assert not list(tmp_path.glob(".*partial"))
    (record,) = [json.loads(p.read_text()) for p in env_runs.rglob("run.json")]
    assert record["exit_code"] == code


def _lines(tmp: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in tmp.glob(".answers.jsonl.*.partial"))


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def test_closed_stdout_ends_quietly(tmp_path, tiny_model_dir):
    """`plugstack ... | head -c 1`: the reader leaves; no BrokenPipeError, exit 141."""
    argv = ["model=llama", f"model.path={tiny_model_dir}", "backend=cpu", "app.max_new_tokens=200",
            "app.ignore_eos=true", "app.chat=false"]
    proc = subprocess.Popen([str(BIN), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**_env(), "PLUGSTACK_OUTPUTS": str(tmp_path)})
    proc.stdout.read(1)
    proc.stdout.close()  # like `head -c 1` exiting
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=60)
    check(Result(proc.returncode, "", stderr), 141)
    assert "BrokenPipeError" not in stderr and "Exception ignored" not in stderr


# -- the README's promise --------------------------------------------------------------------


def test_readme_exit_codes_are_the_ones_runs_end_with():
    from plugstack.errors import ConfigError, Terminated
    from plugstack.run import exit_code

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Errors and exit codes")[1].split("\n## ")[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.M)}
    ends = {0: None, 1: RuntimeError("a bug"), 2: ConfigError("yours"), 130: KeyboardInterrupt(),
            141: BrokenPipeError(), 143: Terminated()}
    assert documented == set(ends)
    for code, error in ends.items():
        assert exit_code(0, error) == code


def test_a_bug_exits_1_with_the_traceback_to_report(tmp_path, tiny_model_dir):
    _dist("buggy", {"buggy": "buggy_mod"}, {"buggy_mod": (
        "import plugstack\n"
        "class Buggy(plugstack.App):\n"
        "    def run(self, ctx):\n"
        "        raise RuntimeError('an honest bug')\n"
        "@plugstack.hookimpl\n"
        "def plugstack_register_apps(register):\n"
        "    register('buggy', Buggy)\n")})(tmp_path)
    result = run(["app=buggy"], env={"PYTHONPATH": str(tmp_path / "site"), "PLUGSTACK_OUTPUTS": str(tmp_path)})
    assert result.code == 1
    assert "Traceback (most recent call last)" in result.stderr and "an honest bug" in result.stderr
    assert "This is a bug in plugstack or a plugin" in result.stderr
    (record,) = [json.loads(p.read_text()) for p in tmp_path.rglob("run.json")]
    assert record["exit_code"] == 1
