"""A real ``plugstack app=serve`` process on loopback, as the serve tests start it."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

BIN = Path(sys.executable).with_name("plugstack")
API_KEY = "test-key-0123456789"


class Server:
    """One server process: its URL (read from stdout), its JSON log lines (stderr, read as
    they come so the pipe never fills) and a clean stop (SIGTERM)."""

    def __init__(self, model_dir: Path, tmp: Path, *overrides: str, api_key: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PLUGSTACK_API_KEY"}
        env.update(PLUGSTACK_OUTPUTS=str(tmp / "outputs"), PLUGSTACK_HOME=str(tmp / "home"), PYTHONUNBUFFERED="1")
        if api_key:
            env["PLUGSTACK_API_KEY"] = api_key
        args = [str(BIN), "app=serve", "model=llama", f"model.path={model_dir}", "backend=cpu", "backend.threads=1",
                "app.port=0", "log.format=json", *overrides]
        if not any(o.startswith("log.level=") for o in overrides):
            args.append("log.level=INFO")  # the events the tests read (the console's default is WARNING)
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self._stdout: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._drain, args=(self.process.stderr, self.lines.append), daemon=True).start()
        threading.Thread(target=self._drain, args=(self.process.stdout, self._stdout.put), daemon=True).start()
        try:
            first = self._stdout.get(timeout=120)
        except queue.Empty:
            self.process.kill()
            raise AssertionError("the server printed no URL in 120 s:\n" + "".join(self.lines[-30:])) from None
        assert first.startswith("plugstack serve: http://"), first + "".join(self.lines[-30:])
        self.url = first.split()[-1]

    @staticmethod
    def _drain(stream, put) -> None:
        for line in stream:
            put(line)

    def events(self, name: str) -> list[dict]:
        """The server's log records of event ``name`` so far."""
        out = []
        for line in list(self.lines):
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == name:
                    out.append(record)
        return out

    def stop(self) -> int:
        """SIGTERM, then the exit code (143: stopped by SIGTERM, handled like Ctrl-C)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def assert_stopped_cleanly(self) -> None:
        code = self.stop()
        log = "".join(self.lines)
        assert code == 143, log[-3000:]
        assert self.events("serve.stopped") and self.events("run.interrupted"), log[-3000:]
        assert "Traceback" not in log and not self.events("engine.crashed"), log[-3000:]
