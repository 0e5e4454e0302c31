"""The chat's conversation logic in this process: fitting the window, commands, piped input."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from dataclasses import replace

import pytest
import structlog

from plugstack.app import RunContext
from plugstack.errors import ConfigError
from plugstack.plugins.chat.app import ChatApp, Session
from plugstack.plugins.chat.config import ChatAppConfig
from plugstack.plugins.chat.history import Conversation, TooLong, Turn
from plugstack.sampling import SamplingParams


@pytest.fixture
def tokenizer(chat_model):
    return chat_model[0].tokenizer


def test_fit_keeps_everything_that_fits(tokenizer):
    conv = Conversation("Be brief.", [Turn("Hi", "Hello there")])
    fitted = conv.fit(tokenizer, "Bye", 10, 4096)
    assert fitted.dropped == 0
    assert fitted.prompt == tokenizer.apply_chat_template(conv.messages("Bye"), add_generation_prompt=True)
    assert fitted.tokens == len(tokenizer.encode(fitted.prompt))


def test_fit_drops_the_oldest_turns_and_never_the_system_message(tokenizer):
    turns = [Turn(f"question {i}", f"answer number {i}") for i in range(6)]
    conv = Conversation("Be brief.", list(turns))
    full = conv.render(tokenizer, "last")[1]
    one_turn = full - Conversation("Be brief.", turns[1:]).render(tokenizer, "last")[1]
    window = full + 8 - 2 * one_turn  # room for all but two turns, with 8 tokens to reply
    fitted = conv.fit(tokenizer, "last", 8, window)
    assert fitted.dropped == 2
    assert conv.turns == turns[2:]
    assert conv.system == "Be brief."
    assert fitted.tokens + 8 <= window
    assert fitted.prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_a_message_too_long_alone_raises_and_keeps_the_conversation(tokenizer):
    turns = [Turn("Hi", "Hello")]
    conv = Conversation("Be brief.", list(turns))
    with pytest.raises(TooLong, match=r"does not fit: .* tokens \(the system message takes \d+ of them\).*"
                                      r"app.max_new_tokens=32 .* is 128"):
        conv.fit(tokenizer, "word " * 200, 32, 128)
    assert conv.turns == turns


@pytest.fixture
def make_ctx(chat_model, tmp_path):
    """A run context over the in-process model, its stdout a StringIO."""
    model, runner = chat_model
    return lambda: RunContext(cfg=None, log=structlog.get_logger("test"), run_id="test", output_dir=tmp_path,
                              stdout=io.StringIO(), _model=model, _runner=runner)


@pytest.fixture
def make_session(make_ctx):
    def make(max_new_tokens=8, system=None, interruptible=True):
        ctx = make_ctx()
        params = SamplingParams(max_new_tokens=max_new_tokens)
        return Session(ctx, params, system=system, out=ctx.stdout, notes=io.StringIO(), interruptible=interruptible)

    return make


def test_each_reply_is_conditioned_on_the_conversation(make_session, greedy):
    s = make_session(system="You are terse.")
    s.handle("Hello")
    s.handle("  And then?  ")  # surrounding blanks are not part of the message
    first = greedy([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello"}], 8)
    second = greedy([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello"},
                     {"role": "assistant", "content": first}, {"role": "user", "content": "And then?"}], 8)
    assert first != second
    assert s.out.getvalue() == f"{first}\n{second}\n"
    assert s.conversation.turns == [Turn("Hello", first), Turn("And then?", second)]


def test_commands(make_session):
    s = make_session(system="Old.")
    s.handle("Hello")
    assert s.handle("/system New one.") and s.conversation.system == "New one."
    s.handle("/system")
    assert "System message: New one." in s.notes.getvalue()
    s.handle("/history")
    assert "[system] New one.\n[user] Hello\n[assistant] " in s.notes.getvalue()
    s.handle("/reset")
    assert s.conversation.turns == [] and s.conversation.system == "New one."
    s.handle("/system -")
    assert s.conversation.system is None
    s.handle("/help")
    assert all(c in s.notes.getvalue() for c in ("/reset", "/system", "/history", "/exit"))
    assert s.failed == 0
    assert s.handle("/EXIT") is False and s.handle("/quit") is False


def test_an_unknown_command_lists_the_commands_and_sends_nothing(make_session):
    s = make_session()
    assert s.handle("/rest") is True
    notes = s.notes.getvalue()
    assert "Unknown command /rest. Did you mean '/reset'" in notes
    assert "Commands: /help, /reset, /system, /history, /exit" in notes
    assert s.out.getvalue() == "" and s.conversation.turns == [] and s.failed == 1


def test_a_double_slash_sends_a_message_that_begins_with_a_slash(make_session, greedy):
    s = make_session()
    s.handle("//usr/bin is a folder")
    assert s.conversation.turns[0].user == "/usr/bin is a folder"
    assert s.out.getvalue() == greedy([{"role": "user", "content": "/usr/bin is a folder"}], 8) + "\n"


def test_a_message_too_long_is_reported_and_the_session_goes_on(make_session, chat_model):
    s = make_session(max_new_tokens=8)
    s.window = 64  # as with model.context_length=64
    s.handle("word " * 100)
    assert "This message does not fit" in s.notes.getvalue()
    assert s.out.getvalue() == "" and s.conversation.turns == [] and s.failed == 1
    s.handle("Hi")
    assert len(s.conversation.turns) == 1


def test_turns_dropped_are_announced(make_session):
    s = make_session(max_new_tokens=8)
    s.window = 80
    for i in range(6):
        s.handle(f"message {i}")
    assert "(Dropped the oldest turn to fit the model's context window of 80 tokens.)" in s.notes.getvalue()
    assert s.conversation.turns[-1].user == "message 5" and s.conversation.turns[0].user != "message 0"


def test_piped_stdin_answers_each_line_then_a_blank_line(make_ctx, monkeypatch, capsys, greedy):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n\n/reset\nBye\n"))
    ctx = make_ctx()
    assert ChatApp(replace(ChatAppConfig(), max_new_tokens=6)).run(ctx) == 0
    hello = greedy([{"role": "user", "content": "Hello"}], 6)
    bye = greedy([{"role": "user", "content": "Bye"}], 6)  # /reset forgot Hello
    assert ctx.stdout.getvalue() == f"{hello}\n\n{bye}\n\n"
    assert "Conversation cleared." in capsys.readouterr().err


def test_piped_input_that_cannot_be_answered_makes_the_run_exit_2(make_ctx, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("/nope\n" + "word " * 3000 + "\nHi\n"))
    ctx = make_ctx()
    assert ChatApp(replace(ChatAppConfig(), max_new_tokens=6)).run(ctx) == 2
    err = capsys.readouterr().err
    assert "Unknown command /nope." in err and "This message does not fit" in err
    assert err.endswith("plugstack: error: 2 line(s) of input could not be answered (see above).\n")
    assert ctx.stdout.getvalue().count("\n\n") == 1  # "Hi" was answered


def test_a_line_that_is_not_utf8_is_skipped_and_the_run_exits_2(make_ctx, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9\nHi\n"), encoding="utf-8"))
    ctx = make_ctx()
    assert ChatApp(replace(ChatAppConfig(), max_new_tokens=6)).run(ctx) == 2
    assert "Line 1 of stdin is not UTF-8 text: skipped." in capsys.readouterr().err
    assert ctx.stdout.getvalue().count("\n\n") == 1  # "Hi" was answered


def test_no_room_for_a_reply_is_a_config_error(make_ctx, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n"))
    ctx = make_ctx()
    with pytest.raises(ConfigError, match=r"app.max_new_tokens=4096 leaves no room .* of 4096 tokens"):
        ChatApp(replace(ChatAppConfig(), max_new_tokens=4096)).run(ctx)


def test_importing_the_app_loads_neither_prompt_toolkit_nor_torch():
    code = ("import sys, plugstack.plugins.chat.app; "
            "print(sorted(m for m in ('prompt_toolkit', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_removing_the_system_message_says_the_models_own_applies_again(make_session, monkeypatch):
    s = make_session(system="Old.")
    monkeypatch.setattr(s.ctx.model.tokenizer, "system_prompt", "Be a shop.", raising=False)
    s.handle("/system -")
    assert s.conversation.system is None
    said = "System message removed; the model's own (model.system_prompt) applies again: Be a shop."
    assert said in s.notes.getvalue()


class _CtrlCOnWrite(io.StringIO):
    """A screen that gets a Ctrl-C (SIGINT to this process) as its ``at``-th write reaches it."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.writes = at, 0

    def write(self, text: str) -> int:
        written = super().write(text)
        self.writes += 1
        if self.writes == self.at:
            os.kill(os.getpid(), signal.SIGINT)  # Python raises it at the next bytecode, right after this write
        return written


def test_ctrl_c_as_a_delta_reaches_the_screen_keeps_exactly_what_was_shown(make_session, greedy):
    s = make_session(max_new_tokens=40)
    s.out = _CtrlCOnWrite(at=5)
    s.handle("Hello")
    shown = s.out.getvalue().removesuffix("\n")
    assert "(Reply stopped; the part shown stays" in s.notes.getvalue()
    full = greedy([{"role": "user", "content": "Hello"}], 40)
    assert full.startswith(shown) and 0 < len(shown) < len(full)  # stopped early
    assert s.conversation.turns == [Turn("Hello", shown)]  # the fifth delta too: it reached the screen
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the reply's handler is gone
