"""The ``cuda`` backend on a machine without a GPU, and its probe against fake drivers."""

from __future__ import annotations

import os
import stat

import pytest
from structlog.testing import capture_logs

from plugstack import BackendUnavailableError, UnsupportedOptionError
from plugstack.backends.cuda import probe as probe_mod
from plugstack.backends.cuda.backend import CudaBackend, build_runner
from plugstack.backends.cuda.config import CudaBackendConfig
from plugstack.testing import tiny_decoder_model

TORCH_HAS_CUDA = probe_mod.torch_build().cuda is not None


def cuda(**overrides) -> CudaBackend:
    return CudaBackend(CudaBackendConfig(**overrides))


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    """Put an ``nvidia-smi`` on PATH that lists the GPUs written into ``gpus.csv``."""
    listing = tmp_path / "gpus.csv"
    script = tmp_path / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat {listing}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(probe_mod, "torch_build", lambda: probe_mod.TorchBuild("2.13.0+cu128", "12.8", None))
    return listing


@pytest.mark.skipif(TORCH_HAS_CUDA, reason="checks the message of a CPU-only torch build")
def test_probe_explains_a_cpu_only_torch():
    availability = cuda().probe()
    assert not availability.available
    assert "2.13.0+cpu is built without CUDA" in availability.reason
    assert "backend=cpu or backend=onnx" in availability.reason


@pytest.mark.skipif(TORCH_HAS_CUDA, reason="checks the error of a CPU-only torch build")
def test_prepare_raises_backend_unavailable_with_the_reason():
    with pytest.raises(BackendUnavailableError, match=r"built without CUDA.*backend=cpu or backend=onnx"):
        cuda().prepare(tiny_decoder_model())


def test_torch_build_read_from_version_file():
    build = probe_mod.torch_build()
    import torch  # only to cross-check the text parsing

    assert build.version == torch.__version__
    assert build.cuda == torch.version.cuda


def test_probe_with_a_gpu_listed_by_nvidia_smi(fake_nvidia_smi):
    fake_nvidia_smi.write_text("NVIDIA H200, 143771, 9.0, 570.86\n")
    availability = cuda().probe()
    assert availability.available, availability.reason
    assert availability.device.name == "NVIDIA H200"
    assert availability.device.memory_bytes == 143771 * 2**20
    assert availability.device.dtypes == ("fp16", "bf16", "fp32")
    assert availability.device.extra["compute_capability"] == "9.0"


def test_probe_drops_bf16_on_old_gpus(fake_nvidia_smi):
    fake_nvidia_smi.write_text("Tesla T4, 15360, 7.5, 535.1\n")
    assert cuda().probe().device.dtypes == ("fp16", "fp32")


def test_probe_rejects_a_device_index_out_of_range(fake_nvidia_smi):
    fake_nvidia_smi.write_text("NVIDIA H200, 143771, 9.0, 570.86\n")
    availability = cuda(device_index=1).probe()
    assert not availability.available
    assert "device_index=1 but 1 GPU(s) are visible" in availability.reason


def test_probe_honours_cuda_visible_devices(fake_nvidia_smi, monkeypatch):
    fake_nvidia_smi.write_text("GPU A, 1024, 8.0, 1\nGPU B, 2048, 8.6, 1\n")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert cuda().probe().device.name == "GPU B"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    availability = cuda().probe()
    assert not availability.available and "hides every GPU" in availability.reason


def test_probe_reads_the_driver_proc_files(tmp_path):
    gpu = tmp_path / "0000:01:00.0"
    gpu.mkdir()
    (gpu / "information").write_text("Model: \t\t NVIDIA A100-SXM4-40GB\nIRQ: 42\n")
    assert [g.name for g in probe_mod._proc_gpus(str(tmp_path))] == ["NVIDIA A100-SXM4-40GB"]
    assert probe_mod._proc_gpus(str(tmp_path / "absent")) == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"dtype": "int8"}, "Valid values: fp16, bf16, fp32"),
        ({"cuda_graphs": True, "static_cache": False}, "needs static_cache=true"),
        ({"max_cache_len": -1}, "negative"),
        ({"device_index": -1}, "negative"),
    ],
)
def test_unsupported_options_say_what_is_valid(overrides, expected):
    with pytest.raises(UnsupportedOptionError, match=expected):
        cuda(**overrides)


# -- the runner cuda would build, built on the CPU -----------------------------------


def test_growing_state_gets_a_static_cache_of_the_context_length_written_in_place():
    import dataclasses

    from plugstack.backends.cuda.static_cache import StaticCacheRunner

    model = tiny_decoder_model(context_length=48)
    with capture_logs() as logs:
        runner = build_runner(model, CudaBackendConfig(dtype="fp32"), "cpu")
    assert isinstance(runner, StaticCacheRunner) and runner.slot_capacity == 48
    assert runner.inplace  # the Llama plugin offers its in-place step (Model.builders)
    assert [e["path"] for e in logs if e["event"] == "backend.cuda.static_cache"] == ["in place"]
    assert runner.module.llama is not model.module  # a copy moves to the device, not the caller's
    assert build_runner(model, CudaBackendConfig(dtype="fp32", max_cache_len=16), "cpu").slot_capacity == 16
    # A model that offers no in-place step gets the generic path, and the log says why.
    with capture_logs() as logs:
        generic = build_runner(dataclasses.replace(model, builders={}), CudaBackendConfig(dtype="fp32"), "cpu")
    assert not generic.inplace
    assert "offers no Model.builders['torch.inplace_kv']" in next(
        e["reason"] for e in logs if e["event"] == "backend.cuda.static_cache")


def test_fixed_size_state_runs_eagerly_and_cuda_graphs_are_refused_by_name():
    from plugstack.backends.eager import EagerRunner
    from plugstack.testing import tiny_recurrent_model

    runner = build_runner(tiny_recurrent_model(), CudaBackendConfig(dtype="fp32"), "cpu")
    assert isinstance(runner, EagerRunner)
    with pytest.raises(UnsupportedOptionError, match=r"cuda_graphs=true needs the static KV cache.*fixed state"):
        build_runner(tiny_recurrent_model(), CudaBackendConfig(dtype="fp32", cuda_graphs=True), "cpu")


def test_static_cache_longer_than_the_context_is_refused():
    with pytest.raises(UnsupportedOptionError, match="exceeds the context length"):
        build_runner(tiny_decoder_model(context_length=32), CudaBackendConfig(max_cache_len=64), "cpu")


def test_without_static_cache_the_eager_runner_is_used():
    from plugstack.backends.eager import EagerRunner

    runner = build_runner(tiny_decoder_model(), CudaBackendConfig(dtype="fp32", static_cache=False), "cpu")
    assert isinstance(runner, EagerRunner)
