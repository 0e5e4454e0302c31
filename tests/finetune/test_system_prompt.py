"""``model.system_prompt``: the system message every app's chat gets when it has none (the
tokenizer renders it, so generate, chat, serve and training data alike); a chat's own
system message wins. And ``model.adapter`` takes a shipped adapter's name."""

from __future__ import annotations

import pytest
from badinput import check

from plugstack.plugins.llama.adapter import KNOWN_ADAPTERS, adapter_path
from plugstack.plugins.llama.config import LlamaModelConfig
from plugstack.plugins.llama.loader import load


def test_a_chat_without_a_system_message_gets_the_models(tiny_model_dir):
    tok = load(LlamaModelConfig(path=str(tiny_model_dir), system_prompt="Be brief.")).tokenizer
    plain = load(LlamaModelConfig(path=str(tiny_model_dir))).tokenizer
    user = [{"role": "user", "content": "Hi"}]
    own = [{"role": "system", "content": "Be long."}, *user]
    assert tok.apply_chat_template(user) == plain.apply_chat_template([{"role": "system", "content": "Be brief."},
                                                                       *user])
    assert tok.apply_chat_template(own) == plain.apply_chat_template(own)  # the chat's own wins
    assert "Be brief." not in plain.apply_chat_template(user)


def test_the_system_prompt_reaches_the_generate_app(tiny_model_dir, cli_in_process, tmp_path):
    with cli_in_process({"PLUGSTACK_OUTPUTS": str(tmp_path)}) as run:
        argv = ["model=llama", f"model.path={tiny_model_dir}", "backend=cpu", "app.max_new_tokens=3", "Hi"]
        a, b, c = (run([*argv, *extra]) for extra in ([], ["model.system_prompt=Be brief."],
                                                     ["model.system_prompt=Be brief.", "app.system=Be brief."]))
    for r in (a, b, c):
        check(r, 0)
    assert b.stdout == c.stdout  # the model's default is what app.system would have said


def test_shipped_adapters_resolve_inside_the_package():
    for name in KNOWN_ADAPTERS:
        assert adapter_path(name).is_file(), f"{name}: {adapter_path(name)} is missing from the package"
    assert adapter_path("~/x.safetensors").is_absolute()


def test_an_unknown_adapter_name_says_which_are_shipped(tiny_model_dir):
    from plugstack.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"does not exist .* name a shipped adapter \(support\)"):
        load(LlamaModelConfig(path=str(tiny_model_dir), adapter="suport"))


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_system_prompt_is_refused_saying_how_to_turn_it_off(tiny_model_dir, empty):
    from plugstack.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"model.system_prompt is empty: .*\(model.system_prompt=null\)"):
        load(LlamaModelConfig(path=str(tiny_model_dir), system_prompt=empty))
