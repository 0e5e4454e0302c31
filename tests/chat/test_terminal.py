"""`plugstack app=chat` as a person uses it: the real command on a pseudo-terminal (pexpect),
each reply checked against the greedy reply computed in this process for that conversation."""

from __future__ import annotations

import json
import re
import signal
import sys
from pathlib import Path

import pexpect
import pytest
from badinput import TRACEBACK, check, default_sigint, run

BIN = str(Path(sys.executable).with_name("plugstack"))
#: prompt_toolkit turns bracketed paste on while it reads a line and off once it is sent:
#: what lies between "off" and the next "on" is what the app printed for that line.
READING, SENT = "\x1b[?2004h", "\x1b[?2004l"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


@pytest.fixture
def env(tmp_path):
    return {"PLUGSTACK_HOME": str(tmp_path / "home"), "PLUGSTACK_OUTPUTS": str(tmp_path / "outputs"),
            "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm", "PATH": "/usr/bin:/bin"}


@pytest.fixture
def chat(chat_model_dir, env):
    """``chat(*overrides)``: ``plugstack app=chat`` on a pseudo-terminal, its prompt up."""
    children = []

    def spawn(*overrides):
        args = ["app=chat", "model=llama", f"model.path={chat_model_dir}", "backend=cpu", "app.temperature=0",
                *overrides]
        child = pexpect.spawn(BIN, args, env=env, encoding="utf-8", timeout=60, dimensions=(40, 250),
                              preexec_fn=default_sigint)
        children.append(child)
        child.expect_exact(READING)
        return child

    yield spawn
    for child in children:
        child.close(force=True)


def say(child, line):
    """Send ``line`` with Enter; what the app printed for it (the reply and its notices)."""
    child.send(line + "\r")
    child.expect_exact(SENT)
    child.expect_exact(READING)
    return child.before.replace("\r\n", "\n")


def ended(child):
    """The exit code, once the child has ended (its remaining output drained)."""
    child.expect(pexpect.EOF)
    child.close()
    assert TRACEBACK not in child.before
    return child.exitstatus


def run_record(env):
    [record] = Path(env["PLUGSTACK_OUTPUTS"]).glob("*/*/run.json")
    return json.loads(record.read_text())


def test_replies_follow_the_conversation_and_its_commands(chat, greedy, env):
    child = chat("app.max_new_tokens=12")
    a1 = greedy([user("Hello")], 12)
    assert say(child, "Hello").startswith(a1 + "\n")
    a2 = greedy([user("Hello"), assistant(a1), user("Tell me more")], 12)
    assert a2 != greedy([user("Tell me more")], 12)  # so the next check tells history from none
    assert say(child, "Tell me more").startswith(a2 + "\n")
    assert "System message set" in say(child, "/system You are a pirate.")
    a3 = greedy([{"role": "system", "content": "You are a pirate."}, user("Hello"), assistant(a1),
                 user("Tell me more"), assistant(a2), user("Again")], 12)
    assert say(child, "Again").startswith(a3 + "\n")
    assert "Conversation cleared (the system message stays)." in say(child, "/reset")
    a4 = greedy([{"role": "system", "content": "You are a pirate."}, user("Hello")], 12)
    assert say(child, "Hello").startswith(a4 + "\n")
    assert "Commands: /help, /reset, /system, /history, /exit" in say(child, "/sytem x")
    assert "/history" in say(child, "/help")
    child.send("first\x1b\rsecond")  # Esc-Enter (as Alt+Enter sends) starts a new line; Enter sends
    a5 = greedy([{"role": "system", "content": "You are a pirate."}, user("Hello"), assistant(a4),
                 user("first\nsecond")], 12)
    assert say(child, "").startswith(a5 + "\n")
    child.send("/exit\r")
    assert ended(child) == 0
    assert run_record(env)["exit_code"] == 0
    kept = (Path(env["PLUGSTACK_HOME"]) / "chat" / "history").read_text()
    assert "+Tell me more" in kept and "+first\n+second" in kept  # prompt_toolkit's FileHistory format


def test_ctrl_c_stops_a_reply_and_keeps_what_was_shown(chat, greedy):
    child = chat("app.max_new_tokens=3000", "app.ignore_eos=true")
    child.send("Hello\r")
    child.expect_exact(SENT)
    child.expect(r"\S{3}")  # the reply has begun
    begun = child.before + child.after
    child.sendintr()
    child.expect_exact("\r\n(Reply stopped; the part shown stays in the conversation.)")
    shown = "".join((begun + child.before).rsplit("^C", 1))  # the terminal echoes the Ctrl-C as ^C
    child.expect_exact(READING)
    assert len(shown) >= 3 and "app.max_new_tokens" not in child.before  # stopped, not at its end
    # The next message is answered with the partial reply in the conversation (its first tokens are
    # those of the 20-token greedy reply, since greedy decoding never looks ahead).
    expected = greedy([user("Hello"), assistant(shown), user("Go on")], 20)
    child.send("Go on\r")
    child.expect_exact(SENT)
    child.expect_exact(expected)
    child.sendintr()
    child.expect_exact("(Reply stopped")
    child.expect_exact(READING)
    child.send("typed, then cleared")
    child.sendintr()  # clears the line
    child.sendintr()  # on the empty line: a hint
    child.expect_exact("(Ctrl-C again, Ctrl-D or /exit leaves.)")
    child.expect_exact(READING)
    child.sendintr()  # a second one in a row leaves
    assert ended(child) == 0


def dropped(out):
    """How many turns the notice in ``out`` says were dropped."""
    found = re.search(r"\(Dropped the (?:oldest turn|(\d+) oldest turns) to fit", out)
    return 0 if found is None else int(found[1] or 1)


def test_old_turns_are_dropped_to_fit_the_window(chat, greedy):
    child = chat("model.context_length=128", "app.max_new_tokens=24", "app.system=Be kind.")
    system = {"role": "system", "content": "Be kind."}
    turns = []
    for i in range(8):
        out = say(child, f"Message number {i}")
        n = dropped(out)
        # The reply is the one to the conversation without the dropped turns; the system message stays.
        turns = turns[2 * n:]
        reply = greedy([system, *turns, user(f"Message number {i}")], 24)
        assert reply + "\n" in out
        turns += [user(f"Message number {i}"), assistant(reply)]
        if n:
            break
    else:
        pytest.fail("eight turns in a 128-token window and none was dropped")
    assert "to fit the model's context window of 128 tokens.)" in out
    out = say(child, "word " * 150)
    assert "This message does not fit: with the chat template it is" in out
    assert "but the model's context window is 128" in out
    out = say(child, "Still there?")  # the session goes on, without the refused message
    turns = turns[2 * dropped(out):]
    assert greedy([system, *turns, user("Still there?")], 24) + "\n" in out
    child.sendeof()
    assert ended(child) == 0


def test_sigterm_at_the_prompt_ends_the_run_143_with_its_record(chat, env):
    child = chat("app.max_new_tokens=4")
    child.kill(signal.SIGTERM)
    assert ended(child) == 143
    assert run_record(env)["exit_code"] == 143


def test_piped_lines_are_answered_one_by_one(chat_model_dir, greedy, env):
    result = run(["app=chat", "model=llama", f"model.path={chat_model_dir}", "backend=cpu", "app.temperature=0",
                  "app.max_new_tokens=10"], env=env, stdin="Hello\n/reset\nBye\n/system Be brief.\nHi\n")
    check(result, 0)
    hello, bye = greedy([user("Hello")], 10), greedy([user("Bye")], 10)
    hi = greedy([{"role": "system", "content": "Be brief."}, user("Bye"), assistant(bye), user("Hi")], 10)
    assert result.stdout == f"{hello}\n\n{bye}\n\n{hi}\n\n"
    assert "Conversation cleared." in result.stderr
