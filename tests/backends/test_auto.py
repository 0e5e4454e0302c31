"""The ``auto`` backend's choice, and that probing the PyTorch backends imports no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import structlog

from plugstack import (
    Availability,
    Backend,
    BackendUnavailableError,
    ConfigError,
    DeviceInfo,
    UnknownPluginError,
)
from plugstack.backends.auto import backend as auto_mod
from plugstack.backends.auto.backend import AutoBackend
from plugstack.backends.auto.config import AutoBackendConfig
from plugstack.registry import Entry


class FakeBackend(Backend):
    def __init__(self, name: str, available: bool, reason: str = "") -> None:
        super().__init__(None)
        self.name, self.available, self.reason = name, available, reason
        self.capabilities = frozenset({"inference", f"from:{name}"})
        self.prepared = []

    def probe(self) -> Availability:
        if self.available:
            return Availability(True, device=DeviceInfo(name=f"{self.name}-device", extra={"k": 1}))
        return Availability.no(self.reason)

    def prepare(self, model):
        self.prepared.append(model)
        return f"runner from {self.name}"


class FakeRegistry:
    def __init__(self, *backends: FakeBackend) -> None:
        self.backends = {b.name: b for b in backends}

    def get(self, kind: str, name: str) -> Entry:
        assert kind == "backend"
        if name not in self.backends:
            raise UnknownPluginError(kind, name, self.backends)
        backend = self.backends[name]
        return Entry("backend", name, lambda cfg: backend, plugin="fake")


@pytest.fixture
def machine(monkeypatch):
    """A registry with a GPU backend that is missing, an onnx and a cpu that are there."""
    monkeypatch.delenv("PLUGSTACK_BACKEND", raising=False)
    registry = FakeRegistry(
        FakeBackend("cuda", False, "no NVIDIA GPU found"),
        FakeBackend("onnx", True),
        FakeBackend("cpu", True),
    )
    monkeypatch.setattr(auto_mod, "_registry", lambda: registry)
    return registry.backends


def auto(*order: str) -> AutoBackend:
    return AutoBackend(AutoBackendConfig(order=list(order))) if order else AutoBackend()


def test_picks_the_first_available_in_order_and_logs_why(machine):
    backend = auto()
    with structlog.testing.capture_logs() as logs:
        availability = backend.probe()
    assert availability.available and backend.selected == "onnx"
    assert availability.device.name == "onnx-device"
    assert availability.device.extra["auto.selected"] == "onnx"
    assert availability.device.extra["auto.skipped"] == {"cuda": "no NVIDIA GPU found"}
    assert machine["onnx"].probe().device.extra == {"k": 1}  # the delegate's own info is not altered
    [event] = [e for e in logs if e["event"] == "backend.auto.selected"]
    assert event["backend"] == "onnx" and event["skipped"] == {"cuda": "no NVIDIA GPU found"}


def test_prepare_delegates_to_the_choice(machine):
    backend = auto("cuda", "cpu", "onnx")
    assert backend.prepare("the model") == "runner from cpu"
    assert machine["cpu"].prepared == ["the model"]
    assert "from:cpu" in backend.capabilities


def test_unregistered_names_are_skipped(machine):
    backend = auto("tpu", "cpu")
    assert backend.selected == "cpu"
    assert "no plugin registers" in backend.select().skipped["tpu"]


def test_environment_variable_wins_over_order(machine, monkeypatch):
    monkeypatch.setenv("PLUGSTACK_BACKEND", "cpu")
    backend = auto("onnx", "cpu")
    assert backend.selected == "cpu"
    assert backend.prepare("m") == "runner from cpu"


def test_environment_choice_does_not_fall_back(machine, monkeypatch):
    monkeypatch.setenv("PLUGSTACK_BACKEND", "cuda")
    backend = auto()
    availability = backend.probe()
    assert not availability.available
    assert "PLUGSTACK_BACKEND=cuda" in availability.reason and "no NVIDIA GPU found" in availability.reason
    with pytest.raises(BackendUnavailableError, match="no NVIDIA GPU found"):
        backend.prepare("m")
    assert machine["onnx"].prepared == [] and machine["cpu"].prepared == []


def test_environment_naming_an_unknown_backend(machine, monkeypatch):
    monkeypatch.setenv("PLUGSTACK_BACKEND", "cpux")
    availability = auto().probe()
    assert not availability.available and "Did you mean 'cpu'" in availability.reason
    assert "PLUGSTACK_BACKEND=cpux names no backend" in availability.reason
    with pytest.raises(ConfigError, match="Set PLUGSTACK_BACKEND to one of cpu, "):
        auto().prepare("m")
    monkeypatch.setenv("PLUGSTACK_BACKEND", "auto")
    with pytest.raises(ConfigError, match="choose itself"):
        auto().prepare("m")


def test_nothing_available_lists_every_reason(machine):
    machine["onnx"].available, machine["onnx"].reason = False, "onnxruntime is not installed"
    backend = auto("cuda", "onnx")
    availability = backend.probe()
    assert not availability.available
    assert "cuda: no NVIDIA GPU found" in availability.reason
    assert "onnx: onnxruntime is not installed" in availability.reason
    with pytest.raises(BackendUnavailableError, match="PLUGSTACK_BACKEND"):
        backend.prepare("m")


def test_with_the_real_registry(monkeypatch):
    from plugstack.backends.cuda.probe import probe_cuda

    monkeypatch.delenv("PLUGSTACK_BACKEND", raising=False)
    backend = auto("cuda", "cpu")
    expected = "cuda" if probe_cuda().available else "cpu"
    assert backend.selected == expected
    if expected == "cpu":
        assert "CUDA" in backend.select().skipped["cuda"]


PROBE_SCRIPT = """
import json, os, sys
os.environ.pop("PLUGSTACK_BACKEND", None)
from plugstack.backends.cpu.backend import CpuBackend
from plugstack.backends.cuda.backend import CudaBackend
from plugstack.backends.auto.backend import AutoBackend
from plugstack.backends.auto.config import AutoBackendConfig
results = {
    "cpu": CpuBackend().probe().available,
    "cuda": CudaBackend().probe().available,
    "auto": AutoBackend(AutoBackendConfig(order=["cuda", "cpu"])).probe().available,
}
print(json.dumps({"results": results, "torch": "torch" in sys.modules}))
"""


def test_probes_do_not_import_torch():
    out = subprocess.run([sys.executable, "-c", PROBE_SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["results"]["cpu"] is True and report["results"]["auto"] is True
    assert report["torch"] is False, "probing cpu/cuda/auto imported torch"
