"""The ``cpu`` backend: probe, options (threads, dtype, int8, compile) and their errors."""

from __future__ import annotations

import os

import pytest

from plugstack import UnsupportedOptionError
from plugstack.backends.cpu.backend import CpuBackend
from plugstack.backends.cpu.config import CpuBackendConfig
from plugstack.backends.cpu.device import _cpuinfo
from plugstack.testing import SlotDriver, tiny_decoder_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = [[5, 17, 42, 99, 3, 64]]


def cpu(**overrides) -> CpuBackend:
    return CpuBackend(CpuBackendConfig(**overrides))


def prefill(runner):
    return SlotDriver(runner, 1).feed(PROMPT)


def reference_logits():
    from plugstack.backends.eager import EagerRunner

    m = tiny_decoder_model()
    return prefill(EagerRunner(m.module, m.signature))


def test_probe_describes_this_cpu():
    availability = cpu().probe()
    assert availability.available, availability.reason
    device = availability.device
    assert device.name and device.name != "cpu"  # the model name from /proc/cpuinfo here
    assert device.threads == len(os.sched_getaffinity(0))
    assert device.memory_bytes > 2**28
    assert device.dtypes == ("fp32", "bf16")
    assert isinstance(device.extra["fast_bf16"], bool)
    assert device.extra["torch"].startswith("2.")


def test_cpuinfo_parsing(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Example CPU @ 2.0GHz\nflags\t\t: fpu sse avx512_bf16 amx_tile\n\n"
        "processor\t: 1\nmodel name\t: Example CPU @ 2.0GHz\nflags\t\t: fpu\n"
    )
    name, flags = _cpuinfo(str(info))
    assert name == "Example CPU @ 2.0GHz"
    assert "avx512_bf16" in flags and "amx_tile" in flags
    assert _cpuinfo(str(tmp_path / "absent")) == ("", set())


def test_registered_under_the_plugstack_entry_point():
    from plugstack.registry import get_registry

    entry = get_registry().get("backend", "cpu")
    assert entry.config is CpuBackendConfig
    assert isinstance(entry.create(entry.default_config()), CpuBackend)


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_option_sets_torch_threads(threads):
    import torch

    cpu(threads=threads).prepare(tiny_decoder_model())
    assert torch.get_num_threads() == threads


def test_threads_zero_keeps_torch_default():
    import torch

    before = torch.get_num_threads()
    cpu(threads=0).prepare(tiny_decoder_model())
    assert torch.get_num_threads() == before


def test_int8_quantises_a_copy_of_every_linear():
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    model = tiny_decoder_model()
    weight_before = model.module.layers[0].mlp.up_proj.weight.detach().clone()
    runner = cpu(quantize="int8").prepare(model)

    linears = [m for m in model.module.modules() if isinstance(m, torch.nn.Linear)]
    quantised = [m for m in runner.module.modules() if isinstance(m, DynamicLinear)]
    assert len(linears) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer + head
    assert len(quantised) == len(linears)
    assert not any(isinstance(m, torch.nn.Linear) for m in runner.module.modules())
    assert all(m.weight().qscheme() == torch.per_channel_affine for m in quantised)  # one scale per row
    # The caller's model is untouched: still float Linear layers with the same weights.
    assert torch.equal(model.module.layers[0].mlp.up_proj.weight, weight_before)

    got, want = prefill(runner), reference_logits()
    assert (got - want).abs().max() < 5e-2
    assert got.argmax() == want.argmax()


def test_bf16_runs_on_a_copy():
    import torch

    model = tiny_decoder_model()
    runner = cpu(dtype="bf16").prepare(model)
    assert runner.dtype == "bf16"
    assert next(runner.module.parameters()).dtype == torch.bfloat16
    assert next(model.module.parameters()).dtype == torch.float32
    logits = prefill(runner)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert (logits - reference_logits()).abs().max() < 3e-2


def test_fp32_shares_the_module_without_copying():
    model = tiny_decoder_model()
    runner = cpu().prepare(model)
    assert runner.module is model.module  # no second copy of the weights


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"dtype": "fp16"}, "Valid values: fp32, bf16"),
        ({"dtype": "float32"}, "Valid values: fp32, bf16"),
        ({"quantize": "int4"}, "Valid values: int8"),
        ({"quantize": "int8", "dtype": "bf16"}, "backend.dtype=fp32"),
        ({"threads": -2}, "negative"),
    ],
)
def test_unsupported_options_say_what_is_valid(overrides, expected):
    with pytest.raises(UnsupportedOptionError, match=expected):
        cpu(**overrides)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised by torch._dynamo's own imports
def test_compile_wraps_the_module():
    # Not run: compiling even this tiny model's prefill and decode takes 30-60 s on 2 shared
    # cores; compile=True correctness is torch.compile's (see the notes for timings).
    model = tiny_decoder_model()
    runner = cpu(compile=True).prepare(model)
    assert type(runner.module).__name__ == "OptimizedModule"
    assert runner.module._orig_mod is model.module


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cpu", {"threads": 0, "dtype": "fp32", "quantize": None, "compile": False}),
        ("cuda", {"dtype": "fp16", "static_cache": True, "cuda_graphs": False, "max_cache_len": 0}),
        ("auto", {"order": ["cuda", "onnx", "cpu"]}),
    ],
)
def test_config_groups_compose_into_working_backends(name, expected):
    from omegaconf import OmegaConf

    from plugstack.backends.auto.config import AutoBackendConfig
    from plugstack.backends.cuda.config import CudaBackendConfig
    from plugstack.config import compose
    from plugstack.registry import get_registry

    cfg = compose([f"backend={name}"]).backend
    as_object = OmegaConf.to_object(cfg)  # validated against the registered dataclass
    assert type(as_object) is {"cpu": CpuBackendConfig, "cuda": CudaBackendConfig, "auto": AutoBackendConfig}[name]
    assert {k: getattr(as_object, k) for k in expected} == expected
    backend = get_registry().get("backend", name).create(cfg)
    assert backend.probe().available in (True, False)


def test_a_mistyped_option_fails_at_composition():
    from plugstack.config import compose

    with pytest.raises(Exception, match=r"backend\.threads"):
        compose(["backend=cpu", "backend.threads=two"])


def test_a_stateless_model_with_a_float_input_runs_in_bf16():
    """A denoiser-like step (no state, a float input): the eager runner casts the input to
    the compute dtype the signature's "float" asks for."""
    import torch

    from plugstack import Model, StepSignature, TensorSpec

    class Denoise(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

        def forward(self, x):
            return (self.proj(x),)

    sig = StepSignature(inputs=(TensorSpec("x", "float", ("batch", 4)),),
                        outputs=(TensorSpec("y", "float", ("batch", 4)),))
    module = Denoise()
    model = Model(name="denoise", kind="denoiser", module=module, signature=sig,
                  example_inputs=lambda: (torch.randn(2, 4),))
    x = torch.randn(3, 4)
    got = cpu(dtype="bf16").prepare(model).run({"x": x}).outputs["y"]
    assert got.dtype == torch.float32 and got.shape == (3, 4)
    assert (got - module(x)[0]).abs().max().item() < 5e-2
    runner = cpu().prepare(model)
    state = runner.new_state(3)
    runner.run({"x": x}, state)
    assert runner.state_length(state, 2) == 1  # steps taken, for a signature without new_axis


def test_model_author_mistakes_are_clear_model_load_errors():
    """A state dimension left unsized, and sizeless example inputs for a model with new_axis."""
    import dataclasses

    import torch

    from plugstack import ModelLoadError, StepSignature, TensorSpec
    from plugstack.compare import example_inputs
    from plugstack.testing import tiny_recurrent_model

    sig = StepSignature(
        inputs=(TensorSpec("ids", "int64", ("batch", "seq")), TensorSpec("h", "float", ("batch", "width"))),
        outputs=(TensorSpec("logits", "float32", ("batch", 4)), TensorSpec("h2", "float", ("batch", "width"))),
        state=(("h", "h2"),), new_axis="seq")
    with pytest.raises(ModelLoadError, match=r"state tensor 'h' leaves a dimension .* unsized: \['batch', 'width'\]"):
        sig.state_shape("h", rows=1, positions=0)
    model = tiny_recurrent_model()
    sizeless = dataclasses.replace(model, example_inputs=lambda: (torch.zeros(2, 3, dtype=torch.int64),))
    with pytest.raises(ModelLoadError, match=r"example_inputs\(\) takes no batch/seq/past sizes"):
        example_inputs(sizeless, batch=2, seq=3, past=2)
