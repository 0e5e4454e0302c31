"""The ``chat`` application.

On a terminal (stdin a tty): a prompt with line editing and history (prompt_toolkit),
replies streamed as they are generated. Enter sends and Alt+Enter (or Esc, Enter) starts a
new line (``app.multiline=true`` swaps them). Ctrl-C stops a reply and keeps the part shown
in the conversation; at the prompt it clears the line, and on an empty line a second
Ctrl-C in a row leaves, as do Ctrl-D and ``/exit`` (exit code 0).

From a pipe or a file: one message per line, each answer on stdout followed by a blank
line, and nothing else there (notices go to stderr), so ``printf 'Hi\\nBye\\n' | plugstack
app=chat`` is scriptable. Commands work in both modes. A line that could not be answered
(too long, an unknown command, not UTF-8) is reported on stderr, the next line is read, and
the run then exits 2.

Before each reply the oldest turns are dropped, with a notice, until the prompt and
``max_new_tokens`` fit the context window; the system message is always kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from plugstack.app import App, RunContext
from plugstack.decode import context_window
from plugstack.errors import ConfigError, Terminated, suggestion_text
from plugstack.files import cache_dir
from plugstack.generation import stream
from plugstack.model import Tokenizer
from plugstack.sampling import SamplingParams

from .config import AUTO
from .history import Conversation, TooLong, Turn

__all__ = ["COMMANDS", "ChatApp", "Session"]

#: The commands, with what ``/help`` says of each.
COMMANDS = {
    "/help": "list these commands",
    "/reset": "forget the conversation (the system message stays)",
    "/system": "<text> replaces the system message; alone, shows it; /system - removes it",
    "/history": "show the conversation as the model sees it",
    "/exit": "leave (also /quit, Ctrl-D)",
}
ALIASES = {"/quit": "/exit"}


class Session:
    """The conversation and what each line of input does to it, whichever the front end.

    Answers go to ``out``, everything else (notices, help, errors) to ``notes``.
    """

    def __init__(self, ctx: RunContext, params: SamplingParams, *, system: str | None, out: TextIO,
                 notes: TextIO, interruptible: bool) -> None:
        self.ctx, self.params, self.out, self.notes = ctx, params, out, notes
        self.tokenizer: Tokenizer = ctx.model.tokenizer
        self.window, self.window_name = context_window(ctx.runner)
        self.conversation = Conversation(system)
        #: Terminal: Ctrl-C stops only the reply. Pipe: it stops the run, as everywhere else.
        self.interruptible = interruptible
        #: Lines that could not be answered (a pipe's run then exits 2).
        self.failed = 0

    def note(self, text: str) -> None:
        print(text, file=self.notes, flush=True)

    def handle(self, line: str) -> bool:
        """Act on one message or command; False once the user asked to leave."""
        text = line.strip()
        if not text:
            return True
        if text.startswith("/") and not text.startswith("//"):
            return self.command(text)
        self.reply(text[1:] if text.startswith("//") else text)  # `//x` sends `/x`
        return True

    def command(self, text: str) -> bool:
        name, _, arg = text.partition(" ")
        name, arg = ALIASES.get(name.lower(), name.lower()), arg.strip()
        if name == "/exit":
            return False
        if name == "/help":
            width = max(map(len, COMMANDS))
            self.note("\n".join(f"  {c.ljust(width)}  {doc}" for c, doc in COMMANDS.items()))
            self.note("  Start a message with // to send one that begins with /.")
        elif name == "/reset":
            self.conversation.turns.clear()
            self.note("Conversation cleared" + (" (the system message stays)." if self.conversation.system else "."))
        elif name == "/system":
            self.system(arg)
        elif name == "/history":
            shown = self.conversation.transcript()
            self.note("\n".join(f"[{role}] {content}" for role, content in shown) or "(the conversation is empty)")
        else:
            self.failed += 1
            self.note(f"Unknown command {name}.{suggestion_text(name, [*COMMANDS, *ALIASES])} "
                      f"Commands: {', '.join(COMMANDS)} (start a message with // to send one beginning with /).")
        return True

    def system(self, arg: str) -> None:
        if not arg:
            current = self.conversation.system
            self.note(f"System message: {current}" if current else "No system message (/system <text> sets one).")
            return
        self.conversation.system = None if arg == "-" else arg
        if arg != "-":
            self.note("System message set; it applies from the next reply.")
            return
        default = getattr(self.ctx.model.tokenizer, "system_prompt", None)
        self.note(f"System message removed; the model's own (model.system_prompt) applies again: {default}"
                  if default else "System message removed.")

    def reply(self, message: str) -> None:
        """Answer ``message`` with the conversation so far, streaming the answer to ``out``."""
        try:
            fitted = self.conversation.fit(self.tokenizer, message, self.params.max_new_tokens, self.window,
                                           self.window_name)
        except TooLong as exc:
            self.failed += 1
            self.note(str(exc))
            return
        if fitted.dropped:
            self.note(f"(Dropped the {_turns(fitted.dropped)} to fit {self.window_name} of {self.window} tokens.)")
        shown: list[str] = []
        text = None
        try:
            text = stream(self.ctx.runner, self.tokenizer, fitted.prompt, self.params)
            for delta in text:
                with _held_interrupt(self.interruptible):  # the screen and `shown` get the delta, or neither
                    self.out.write(delta)
                    self.out.flush()
                    shown.append(delta)
        except Terminated:
            raise
        except KeyboardInterrupt:
            if not self.interruptible:
                raise
            if text is not None:
                text.close()
            self._interrupted(message, "".join(shown))
            return
        self.out.write("\n" if self.interruptible else "\n\n")  # a pipe's answers end with a blank line
        self.out.flush()
        self.conversation.turns.append(Turn(message, "".join(shown)))
        self._log(fitted.tokens, text.result, fitted.dropped)

    def _interrupted(self, message: str, partial: str) -> None:
        self.out.write("\n")
        self.out.flush()
        if partial:  # the model is told what the user saw, so the next reply can follow on from it
            self.conversation.turns.append(Turn(message, partial))
            self.note("(Reply stopped; the part shown stays in the conversation.)")
        else:
            self.note("(Reply stopped before it began; the message was not kept.)")
        self.ctx.log.info("chat.reply.interrupted", shown_chars=len(partial))

    def _log(self, prompt_tokens: int, result: Any, dropped: int) -> None:
        if result.finish_reason == "length":
            self.note(f"(The reply stopped at app.max_new_tokens={self.params.max_new_tokens} tokens.)")
        self.ctx.log.info("chat.reply", prompt_tokens=prompt_tokens, completion_tokens=result.completion_tokens,
                          finish_reason=result.finish_reason, dropped_turns=dropped,
                          turns=len(self.conversation.turns), decode_tok_s=round(result.timings.tokens_per_s, 1))


@contextlib.contextmanager
def _held_interrupt(active: bool) -> Iterator[None]:
    """A Ctrl-C inside the block is raised when it ends (on a terminal; elsewhere nothing changes).

    Between a write that reached the screen and the bookkeeping after it, a KeyboardInterrupt
    would make the kept reply differ from the one shown.
    """
    if not active or threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


def _turns(n: int) -> str:
    return "oldest turn" if n == 1 else f"{n} oldest turns"


class ChatApp(App):
    """Chat with ``ctx.model`` on ``ctx.runner``: in the terminal, or one message per line from a pipe."""

    def run(self, ctx: RunContext) -> int:
        params = SamplingParams(**{f.name: getattr(self.cfg, f.name) for f in dataclasses.fields(SamplingParams)})
        if ctx.model.tokenizer is None:
            raise ConfigError(f"Model {ctx.model.name!r} has no tokenizer, so the chat app cannot use it: "
                              f"choose a text model.")
        interactive = sys.stdin is not None and sys.stdin.isatty()  # None: fd 0 closed, read as empty
        system = self.cfg.system or getattr(ctx.model.tokenizer, "system_prompt", None)  # /system shows what applies
        session = Session(ctx, params, system=system, out=ctx.stdout, notes=sys.stderr,
                          interruptible=interactive)
        self._check(session)
        if interactive:
            from .terminal import run_terminal  # prompt_toolkit only for a person at a terminal

            return run_terminal(session, self.cfg, self.history_path())
        return self._piped(session)

    def _piped(self, session: Session) -> int:
        """One message (or command) per line of stdin; 2 if a line could not be answered."""
        if hasattr(sys.stdin, "reconfigure"):
            sys.stdin.reconfigure(errors="surrogateescape")  # a line that is not UTF-8 is reported, not fatal
        for number, line in enumerate(sys.stdin or (), start=1):
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:
                session.failed += 1
                session.note(f"Line {number} of stdin is not UTF-8 text: skipped.")
                continue
            if not session.handle(line):
                break
        if session.failed:
            print(f"plugstack: error: {session.failed} line(s) of input could not be answered (see above).",
                  file=sys.stderr)
            return 2
        return 0

    def _check(self, session: Session) -> None:
        """Fail before the first message: no room for a reply, or no chat template."""
        window, max_new = session.window, session.params.max_new_tokens
        if window is not None and max_new >= window:
            raise ConfigError(f"app.max_new_tokens={max_new} leaves no room for a conversation in "
                              f"{session.window_name} of {window} tokens: lower it, e.g. app.max_new_tokens="
                              f"{max(window // 4, 1)}.")
        session.conversation.render(session.tokenizer, "Hello")  # no chat template: a clear error now

    def history_path(self) -> Path | None:
        """Where prompt_toolkit keeps typed lines, or None for none."""
        value = self.cfg.history_file
        if value is None:
            return None
        return cache_dir("chat") / "history" if value == AUTO else Path(value).expanduser()
