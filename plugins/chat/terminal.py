"""The chat's terminal front end: a prompt_toolkit prompt feeding a :class:`~.app.Session`.

Imported only when a person is at the terminal, so piped runs and ``--help`` never load
prompt_toolkit.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.output import create_output

from plugstack.errors import Terminated

from .app import Session

__all__ = ["run_terminal"]

PROMPT = ">>> "
CONTINUATION = "... "


def run_terminal(session: Session, cfg: Any, history_path: Path | None) -> int:
    """Read and answer messages until ``/exit``, Ctrl-D or two Ctrl-C in a row; exit code 0."""
    prompt = PromptSession(
        history=_history(session, history_path),
        multiline=True,  # always, so that a new line can be typed; key_bindings decide what Enter does
        key_bindings=_keys(cfg.multiline),
        prompt_continuation=CONTINUATION,
        # The prompt needs a terminal; with stdout redirected (`> chat.txt`) it goes to stderr's.
        output=create_output(always_prefer_tty=True),
    )
    keys = "Alt+Enter sends, Enter starts a new line" if cfg.multiline else "Alt+Enter starts a new line"
    model = session.ctx.model
    session.note(f"Chatting with {Path(model.source).name if model.source else model.name}. /help lists "
                 f"commands; {keys}; Ctrl-C stops a reply; Ctrl-D or /exit leaves.")
    armed = False  # a Ctrl-C on an empty line; a second one in a row leaves
    while True:
        try:
            with _sigterm_through(prompt):
                line = prompt.prompt(PROMPT)
        except EOFError:
            return 0
        except Terminated:
            raise
        except KeyboardInterrupt:
            if armed:
                return 0
            armed = True
            session.note("(Ctrl-C again, Ctrl-D or /exit leaves.)")
            continue
        armed = False
        if not session.handle(line):
            return 0


@contextlib.contextmanager
def _sigterm_through(prompt: PromptSession) -> Iterator[None]:
    """SIGTERM while the prompt is up ends it through prompt_toolkit's own loop, which then
    raises :class:`Terminated` here: raised from the handler inside that loop, it can leave
    the loop waiting forever (seen in CI). One arriving as a line is sent is raised after it."""
    got: list[int] = []

    def leave(app: Any) -> None:
        if app.future is not None and not app.future.done():
            app.exit(exception=Terminated())

    def handler(signum: int, frame: object) -> None:
        got.append(signum)
        app = prompt.app
        loop = getattr(app, "loop", None)
        if app.is_running and loop is not None:
            loop.call_soon_threadsafe(leave, app)  # safe from a signal handler: a write to the loop's pipe
        else:
            raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
    if got:
        raise Terminated()


def _keys(multiline: bool) -> KeyBindings:
    """Ctrl-C clears a line that has text, and leaves the prompt (KeyboardInterrupt) on an empty
    one; Enter and Alt+Enter (Esc, Enter) send or start a new line as ``multiline`` says."""
    keys = KeyBindings()

    @keys.add("c-c")
    def _clear_or_interrupt(event: Any) -> None:
        if event.current_buffer.text:
            event.current_buffer.reset()
        else:
            event.app.exit(exception=KeyboardInterrupt())

    @keys.add("enter")
    def _enter(event: Any) -> None:
        if multiline:
            event.current_buffer.insert_text("\n")
        else:
            event.current_buffer.validate_and_handle()

    @keys.add("escape", "enter")
    def _alt_enter(event: Any) -> None:
        if multiline:
            event.current_buffer.validate_and_handle()
        else:
            event.current_buffer.insert_text("\n")

    return keys


def _history(session: Session, path: Path | None) -> History:
    """The typed-lines history file, or one in memory when there is none or it cannot be written."""
    if path is None:
        return InMemoryHistory()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab"):  # fail now, not at the first line typed
            pass
    except OSError as exc:
        session.note(f"(Input history is not kept: cannot write {path} ({exc.strerror or exc}); set "
                     f"app.history_file to another file, or null.)")
        return InMemoryHistory()
    return FileHistory(str(path))
