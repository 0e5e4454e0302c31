"""Conformance tests every model plugin inherits: subclass, supply your model, run pytest.

::

    # tests/test_mymodel_conformance.py
    import pytest
    from plugstack.testing import ModelConformance
    from mymodel_plugstack import load, MyModelConfig

    class TestMyModel(ModelConformance):
        @pytest.fixture(scope="class")
        @classmethod
        def config(cls):
            return MyModelConfig(size="tiny")       # what the plugin is configured with

        @pytest.fixture(scope="class")
        @classmethod
        def model(cls, config):
            return load(config)                      # a plugstack.Model

What is checked: the declared step signature matches what the module really returns
(names, shapes, dtypes, how state grows); the step runs on the ``cpu`` and ``onnx``
backends with agreeing outputs (``onnx`` with the model's own graph builder where it
offers one, see ``plugstack.builders``); state round-trips (a prompt in two chunks equals
it whole, a released and re-admitted slot equals a fresh one; a stateless step, such as a
denoiser's, carries nothing from one step to the next and treats each row on its own);
the tokenizer round-trips; the config round-trips through Hydra's structured configs. A
model without a tokenizer or a config skips those tests, saying why.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, ClassVar

import pytest

from plugstack.compare import example_inputs
from plugstack.model import Model
from plugstack.signature import FLOAT

from .checks import row_of

__all__ = ["ModelConformance"]

#: Texts the tokenizer must round-trip: ASCII, accents, CJK, an emoji, whitespace.
SAMPLE_TEXTS = ["Hello, world!", "caf\u00e9 na\u00efve \u00fcber", "\u65e5\u672c\u8a9e \U0001f30a",
                "  two  spaces\tand a tab"]


class ModelConformance:
    """Inherit from this in a ``Test*`` class and override the ``model`` fixture."""

    #: Max |difference| / max(1, max |value|) between the cpu and onnx backends' outputs.
    tolerance: ClassVar[float] = 1e-4
    #: ``backend.graph`` values the onnx comparison runs (add "export" to check both paths).
    onnx_graphs: ClassVar[tuple[str, ...]] = ("auto",)
    #: Texts the tokenizer must round-trip.
    sample_texts: ClassVar[list[str]] = SAMPLE_TEXTS

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls) -> Model:
        """The model under test. Override this."""
        pytest.fail("override the `model` fixture in your ModelConformance subclass")

    @pytest.fixture(scope="class")
    @classmethod
    def config(cls) -> Any:
        """The plugin's config dataclass instance the model was loaded with (``None``: skip)."""
        return None

    @pytest.fixture(scope="class")
    @classmethod
    def onnx_cache(cls, tmp_path_factory: pytest.TempPathFactory) -> str:
        return str(tmp_path_factory.mktemp("model-kit-onnx"))

    # -- the signature -----------------------------------------------------------------

    def test_signature_matches_what_the_module_returns(self, model: Model) -> None:
        import torch

        sig = model.signature
        inputs = example_inputs(model, batch=2, seq=3, past=2)
        assert len(inputs) == len(sig.inputs), (
            f"example_inputs gives {len(inputs)} tensors for the signature's {len(sig.inputs)} inputs")
        with torch.inference_mode():
            outputs = model.module(*inputs)
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        assert len(outputs) == len(sig.outputs), (
            f"the module returns {len(outputs)} tensors, the signature declares {sig.output_names}")
        dims: dict[str, int] = {}
        for spec, value in [*zip(sig.inputs, inputs, strict=True), *zip(sig.outputs, outputs, strict=True)]:
            _check_tensor(spec, value, dims, model)
        assert dims.get("batch", 2) == 2, "the batch dimension must be the rows of example_inputs(batch=2)"

    def test_growing_state_grows_by_the_new_positions(self, model: Model) -> None:
        import torch

        sig = model.signature
        if sig.state_kind != "growing":
            pytest.skip(f"the model's state is {sig.state_kind}, not growing")
        inputs = example_inputs(model, batch=2, seq=3, past=2)
        with torch.inference_mode():
            outputs = dict(zip(sig.output_names, model.module(*inputs), strict=True))
        by_name = dict(zip(sig.input_names, inputs, strict=True))
        for past, present in sig.state:
            axis = sig.spec(past).axis(sig.state_axis)
            assert outputs[present].shape[axis] == by_name[past].shape[axis] + 3, (
                f"{present} must be {past} followed by the step's 3 new positions along {sig.state_axis!r}")

    # -- backends ----------------------------------------------------------------------

    def test_step_runs_on_cpu_and_onnx_with_agreeing_outputs(self, model: Model, onnx_cache: str) -> None:
        from plugstack.compare import compare_runners
        from plugstack.registry import create_backend

        cpu = create_backend("cpu").prepare(model)  # fp32: runs the model's own module, unchanged
        for graph in self.onnx_graphs:
            onnx = create_backend("onnx", cache_dir=onnx_cache, threads=1, graph=graph).prepare(model)
            try:
                worst = compare_runners(onnx, cpu, model)
            finally:
                onnx.close()
            assert worst["max_scaled_diff"] <= self.tolerance, (
                f"onnx (graph={graph}) and cpu disagree: {worst} exceeds {self.tolerance:g}")

    # -- state -------------------------------------------------------------------------

    def test_state_round_trips(self, model: Model) -> None:
        """A prompt in two chunks equals it whole, a re-admitted slot a fresh one; a step that
        is one whole item (no ``new_axis``) carries nothing: see :func:`_check_stateless_step`."""
        from plugstack.backends.eager import EagerRunner
        from plugstack.compare import example_feeds

        sig = model.signature
        runner = EagerRunner(copy.deepcopy(model.module), sig)
        if sig.new_axis is None:
            _check_stateless_step(runner, model, self.tolerance)
            return
        whole = example_feeds(model, 1, 6, [0])
        first, second = _split(sig, whole, 4)
        state = runner.new_state(2)
        want = runner.run(whole, state, [0]).outputs
        runner.run(first, state, [1])
        got = runner.run(second, state, [1]).outputs
        _assert_outputs_close(got, want, self.tolerance, "a prompt fed in two chunks against it whole")
        runner.release(state, 0)
        again = runner.run(whole, state, [0]).outputs
        _assert_outputs_close(again, want, self.tolerance, "a released and re-admitted slot against a fresh one")

    # -- tokenizer and config ----------------------------------------------------------

    def test_tokenizer_round_trips(self, model: Model) -> None:
        tok = model.tokenizer
        if tok is None:
            pytest.skip("the model has no tokenizer")
        for text in self.sample_texts:
            ids = tok.encode(text, add_special_tokens=False)
            assert all(isinstance(i, int) for i in ids), f"encode({text!r}) must give ints"
            assert tok.decode(ids) == text, f"decode(encode({text!r})) gives {tok.decode(ids)!r}"
        vocab = model.signature.meta.get("vocab_size")
        for special in (*tok.eos_token_ids, tok.pad_token_id):
            assert isinstance(special, int) and (vocab is None or 0 <= special < int(vocab)), special
        chat = tok.apply_chat_template([{"role": "user", "content": "Hi there"}], add_generation_prompt=True)
        assert isinstance(chat, str) and "Hi there" in chat

    def test_config_round_trips(self, config: Any) -> None:
        from omegaconf import OmegaConf

        if config is None:
            pytest.skip("no `config` fixture: the model's config is not checked")
        assert dataclasses.is_dataclass(config), "a plugin's config is a dataclass (see plugstack.Register)"
        schema = OmegaConf.structured(type(config))
        again = OmegaConf.to_object(OmegaConf.merge(schema, OmegaConf.create(OmegaConf.to_yaml(config))))
        assert again == config, f"{config!r} comes back from YAML as {again!r}"


def _check_tensor(spec: Any, value: Any, dims: dict[str, int], model: Model) -> None:
    import torch

    assert value.dim() == len(spec.shape), (
        f"{spec.name}: {value.dim()} dimensions, the signature declares {list(spec.shape)}")
    for size, dim in zip(value.shape, spec.shape, strict=True):
        if isinstance(dim, int):
            assert size == dim, f"{spec.name}: size {size} where the signature fixes {dim}"
        elif dims.setdefault(dim, size) != size:
            pytest.fail(f"{spec.name}: dimension {dim!r} is {size} here and {dims[dim]} elsewhere")
    want = next(model.module.parameters()).dtype if spec.dtype == FLOAT else getattr(torch, spec.dtype)
    assert value.dtype == want, f"{spec.name}: dtype {value.dtype}, the signature declares {spec.dtype}"


def _check_stateless_step(runner: Any, model: Model, tolerance: float) -> None:
    """A stateless step is a function of each row's own inputs: the same inputs give the same
    outputs after another step (no hidden buffers, no randomness), and each row of a batch
    equals that row alone (what lets backends batch rows, e.g. a guided denoiser's two branches)."""
    from plugstack.compare import example_feeds

    feeds, other = example_feeds(model, 2, 1, [0, 0]), example_feeds(model, 2, 1, [0, 0])
    want = runner.run(feeds).outputs
    runner.run(other)
    _assert_outputs_close(runner.run(feeds).outputs, want, tolerance, "the same step again after another one")
    for row in range(2):
        alone = runner.run(row_of(model.signature, feeds, row)).outputs
        _assert_outputs_close(alone, row_of(model.signature, want, row), tolerance,
                              f"row {row} of a batch of 2 against it alone")


def _split(sig: Any, feeds: dict[str, Any], at: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``feeds`` cut along each input's ``new_axis`` at ``at``."""
    first, second = {}, {}
    for name, value in feeds.items():
        axis = sig.spec(name).axis(sig.new_axis)
        if axis is None:
            first[name] = second[name] = value
        else:
            first[name], second[name] = value.narrow(axis, 0, at), value.narrow(axis, at, value.shape[axis] - at)
    return first, second


def _assert_outputs_close(got: dict[str, Any], want: dict[str, Any], tolerance: float, what: str) -> None:
    for name, w in want.items():
        if not w.is_floating_point():
            continue
        diff = float((got[name].float() - w.float()).abs().max()) / max(1.0, float(w.abs().max()))
        assert diff <= tolerance, f"{what}: {name} differs by {diff:.3g} (scaled), more than {tolerance:g}"
