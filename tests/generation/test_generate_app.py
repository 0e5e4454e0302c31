"""The `generate` application, run with a hand-built RunContext (tiny model, test tokenizer)."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest
import structlog

from plugstack.app import RunContext
from plugstack.errors import ConfigError
from plugstack.generation import generate, stream
from plugstack.model import Model
from plugstack.plugins.generate.app import GenerateApp
from plugstack.plugins.generate.config import GenerateAppConfig
from plugstack.sampling import SamplingParams


@pytest.fixture
def make_ctx(runner, tokenizer, tmp_path):
    def make() -> RunContext:
        model = Model(
            name="tiny",
            kind="decoder",
            module=runner.module,
            signature=runner.signature,
            example_inputs=lambda: (),
            tokenizer=tokenizer,
            context_length=runner.signature.meta["context_length"],
        )
        return RunContext(
            cfg=None,
            log=structlog.get_logger("test"),
            run_id="test",
            output_dir=tmp_path / "run",
            stdout=io.StringIO(),
            _model=model,
            _runner=runner,
        )

    return make


def app_cfg(**kw) -> GenerateAppConfig:
    return replace(GenerateAppConfig(), max_new_tokens=12, **kw)


def test_single_prompt_prints_only_the_generated_text(make_ctx, runner, tokenizer):
    ctx = make_ctx()
    cfg = app_cfg(prompt="The sea is", temperature=0.7, seed=5, ignore_eos=True)
    assert GenerateApp(cfg).run(ctx) == 0
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "The sea is"}], add_generation_prompt=True)
    expected = generate(
        runner, tokenizer, [chat], SamplingParams(max_new_tokens=12, temperature=0.7, seed=5, ignore_eos=True)
    )
    assert ctx.stdout.getvalue() == expected[0].text + "\n"
    assert len(expected[0].token_ids) == 12


def test_chat_false_uses_the_raw_prompt(make_ctx, runner, tokenizer):
    ctx = make_ctx()
    GenerateApp(app_cfg(prompt="Hello", chat=False, ignore_eos=True)).run(ctx)
    s = stream(runner, tokenizer, "Hello", SamplingParams(max_new_tokens=12, ignore_eos=True))
    assert ctx.stdout.getvalue() == "".join(s) + "\n"


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_prompt_file_writes_one_jsonl_record_per_prompt(make_ctx, runner, tokenizer, tmp_path, suffix):
    prompts = ["The sea is", "What is the capital of France?", 'Say "hi"\tplease', "Hello"]
    path = tmp_path / f"prompts{suffix}"
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps({"prompt": p, "id": i}) for i, p in enumerate(prompts)) + "\n\n")
    else:
        path.write_text("\n".join(prompts) + "\n\n")
    ctx = make_ctx()
    assert GenerateApp(app_cfg(prompt_file=str(path), batch_size=3, chat=False)).run(ctx) == 0
    assert ctx.stdout.getvalue() == ""
    out = ctx.output_dir / "generations.jsonl"
    records = sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda r: r["index"])
    assert [r["prompt"] for r in records] == prompts
    for i, (prompt, record) in enumerate(zip(prompts, records, strict=True)):
        [alone] = generate(runner, tokenizer, [prompt], SamplingParams(max_new_tokens=12))
        assert record == {
            "index": i,
            "prompt": prompt,
            "text": alone.text,
            "finish_reason": alone.finish_reason,
            "prompt_tokens": len(tokenizer.encode(prompt)),
            "completion_tokens": len(alone.token_ids),
        }
    assert list(out.parent.iterdir()) == [out]  # no temp file left behind


def test_output_file_option(make_ctx, tmp_path):
    src = tmp_path / "p.txt"
    src.write_text("Hello\n")
    dest = tmp_path / "sub" / "out.jsonl"
    GenerateApp(app_cfg(prompt_file=str(src), output_file=str(dest))).run(make_ctx())
    assert len(dest.read_text().splitlines()) == 1


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("missing.txt", None, "no such file"),
        ("empty.txt", "\n  \n", "no prompts"),
        ("empty.jsonl", "", "no prompts"),
        ("bad.jsonl", '{"prompt": "ok"}\nnot json\n', "bad.jsonl:2: not valid JSON"),
        ("noprompt.jsonl", '{"text": "x"}\n', 'string "prompt" field'),
    ],
)
def test_bad_prompt_files_are_config_errors(make_ctx, tmp_path, name, content, match):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        GenerateApp(app_cfg(prompt_file=str(path))).run(make_ctx())


def test_app_generate_is_its_dataclass_composed_with_overrides():
    """No YAML restates the options: the choice comes from the dataclass (defaults, docs)."""
    from hydra.errors import ConfigCompositionException

    from plugstack.config import compose
    from plugstack.errors import GenerationError
    from plugstack.run import group_config

    cfg = compose(["app=generate", "app.max_new_tokens=5", "app.stop=[END]", "app.temperature=0.5"])
    assert group_config(cfg.app) == replace(GenerateAppConfig(), max_new_tokens=5, stop=["END"], temperature=0.5)
    with pytest.raises(ConfigCompositionException, match="max_new_tokens"):
        compose(["app.max_new_tokens=many"])
    with pytest.raises(GenerationError, match=r"temperature=-1\.0"):  # the SamplingParams checks apply
        group_config(compose(["app.temperature=-1"]).app)


def test_plugin_registers_the_generate_app_without_importing_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import plugstack.plugins.generate as plugin\n"
        "calls = []\n"
        "plugin.plugstack_register_apps(lambda *a, **k: calls.append((a, k)))\n"
        "(name, factory), kw = calls[0]\n"
        "print(name, factory, kw['config'].__name__, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["generate", "plugstack.plugins.generate.app:GenerateApp", "GenerateAppConfig", "False"]
    module, _, attr = out[1].partition(":")
    import importlib

    assert getattr(importlib.import_module(module), attr) is GenerateApp


def test_system_prompt_comes_before_the_users(make_ctx, runner, tokenizer):
    ctx = make_ctx()
    GenerateApp(app_cfg(prompt="Hello", system="Be brief.", ignore_eos=True)).run(ctx)
    chat = tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "Hello"}], add_generation_prompt=True)
    expected = stream(runner, tokenizer, chat, SamplingParams(max_new_tokens=12, ignore_eos=True))
    assert ctx.stdout.getvalue() == "".join(expected) + "\n"
