"""What the app=train tests share: a test plugin installed on PYTHONPATH (``trainplug``),
the environment every run gets, and one uninterrupted reference training."""

from __future__ import annotations

import shutil
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
def plugstack_cli(train_env, cli_in_process):
    """``plugstack ARGV`` in this process with the test plugin discoverable (see
    ``cli_in_process``): for runs refused before torch would be imported."""
    with cli_in_process(train_env) as run:
        yield run
