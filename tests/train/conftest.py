"""What the app=train tests share: a test plugin installed on PYTHONPATH (``trainplug``),
the environment every run gets, and one uninterrupted reference training."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import pytest
from train_cli import TINY, train

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def train_env(tmp_path_factory) -> dict[str, str]:
    """PYTHONPATH with the ``trainplug`` distribution, one torch thread (the CPUs are shared),
    and outputs and caches inside the test's temporary directory."""
    root = tmp_path_factory.mktemp("train-env")
    site = root / "site"
    info = site / "trainplug-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: trainplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[plugstack]\ntrainplug = trainplug\n")
    shutil.copy(HERE / "trainplug.py", site / "trainplug.py")
    return {"PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "PLUGSTACK_OUTPUTS": str(root / "runs"),
            "PLUGSTACK_HOME": str(root / "home")}


@pytest.fixture(scope="session")
def reference(tmp_path_factory, train_env) -> Path:
    """The training directory of one uninterrupted run of :data:`TINY`."""
    directory = tmp_path_factory.mktemp("reference") / "train"
    result = train([*TINY, f"app.directory={directory}"], train_env)
    assert result.code == 0, result.stderr[-3000:]
    (directory / "stdout.txt").write_text(result.stdout)
    return directory


@pytest.fixture
def plugstack_cli(train_env, monkeypatch, capfd):
    """``plugstack ARGV`` run in this process, as a :class:`badinput.Result`: the CLI's own
    code from the argument list to the exit code, without a fresh interpreter — for runs
    that are refused before torch would be imported (a second each instead of several)."""
    from badinput import Result

    from plugstack.cli import main
    from plugstack.registry import reset_registry

    monkeypatch.syspath_prepend(train_env["PYTHONPATH"])
    for key, value in train_env.items():
        if key != "PYTHONPATH":
            monkeypatch.setenv(key, value)
    reset_registry()  # discover the test plugin too

    def run(argv: list[str]) -> Result:
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
        capfd.readouterr()
        try:
            code = main(list(argv))
        finally:  # Hydra's handlers write to this test's captured stderr: none may outlive it
            for handler in root.handlers:
                if handler not in handlers:
                    handler.close()
            root.handlers[:], root.level = handlers, level
            if threads is not None:  # backend.threads sets torch's process-wide count
                sys.modules["torch"].set_num_threads(threads)
        out, err = capfd.readouterr()
        return Result(code, out, err)

    yield run
    reset_registry()  # later tests discover without it
