"""The onnx backend as a user sees it: same numbers as eager, a cache that behaves, clear errors.

Tiny randomly initialised Llamas (2 layers, GQA) keep each export to seconds; one fp32
export serves this file and test_onnx_conformance.py through a session-wide cache
directory. Tests about rebuilding use a stand-in exporter that copies a known-good graph,
so only the two-process test pays for a second real export.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from structlog.testing import capture_logs

from plugstack import Model
from plugstack.backends.eager import EagerRunner
from plugstack.backends.onnx import backend as onnx_backend_module
from plugstack.backends.onnx.backend import OnnxBackend
from plugstack.backends.onnx.config import OnnxBackendConfig
from plugstack.errors import BackendUnavailableError, ConfigError, GenerationError, UnsupportedOptionError
from plugstack.generation import generate_ids
from plugstack.sampling import SamplingParams
from plugstack.testing import SlotDriver, tiny_decoder_model

# -- helpers ------------------------------------------------------------------------------

VOCAB = 128


def state_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tiny_model(seed: int = 0) -> Model:
    """The kit's tiny Llama (2 layers, GQA, vocab 128): the same graph the conformance tests
    export, so one session-wide cache serves both files."""
    return tiny_decoder_model(seed=seed)


def shared_cache(tmp_path_factory) -> Path:
    """One cache directory for the whole test session (both onnx test files)."""
    path = tmp_path_factory.getbasetemp() / "onnx-shared-cache"
    path.mkdir(exist_ok=True)
    return path


def onnx_cfg(cache_dir: Path, **kw) -> OnnxBackendConfig:
    """Cache tests run the generic exported graph (``graph=export``), whose exporter they
    can stand in for; the fused graph is covered by the correctness tests and the kit."""
    return OnnxBackendConfig(**{"cache_dir": str(cache_dir), "threads": 1, "graph": "export", **kw})


def step_inputs(prompts: list[list[int]], start: int = 0) -> dict[str, torch.Tensor]:
    """Inputs of equal-length prompts appended after ``start`` positions: ids and positions."""
    ids = torch.tensor(prompts)
    return {"input_ids": ids, "position_ids": start + torch.arange(ids.shape[1]).expand_as(ids)}


def greedy(runner, prompts: list[list[int]], steps: int) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Greedy decode through the slot API (each prompt admitted into its own slot, then
    every slot stepped together); returns new tokens per row and logits per step."""
    driver = SlotDriver(runner, len(prompts))
    logits = torch.cat([driver.feed([p], [row]) for row, p in enumerate(prompts)])
    tokens: list[list[int]] = [[] for _ in prompts]
    all_logits = []
    for step in range(steps):
        all_logits.append(logits)
        nxt = logits.argmax(-1)
        for row, t in enumerate(nxt.tolist()):
            tokens[row].append(t)
        if step + 1 < steps:
            logits = driver.feed(nxt[:, None])
    return tokens, all_logits


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return shared_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def tiny() -> Model:
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def fp32_runner(tiny, cache_dir):
    runner = OnnxBackend(onnx_cfg(cache_dir)).prepare(tiny)
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def fused_runner(tiny, cache_dir):
    runner = OnnxBackend(onnx_cfg(cache_dir, graph="fused", kv_cache="concat")).prepare(tiny)
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def shared_runner(tiny, cache_dir, fused_runner):
    """The fused graph with its KV cache in preallocated buffers appended in place (a cache hit)."""
    runner = OnnxBackend(onnx_cfg(cache_dir, graph="fused", kv_cache="shared")).prepare(tiny)
    yield runner
    runner.close()


@pytest.fixture(params=["export", "fused", "fused-shared-kv"])
def any_runner(request):
    """Each way of making the graph (the torch.onnx export, the fused-operator build) and of
    keeping the fused graph's KV cache (concatenated per step, or one shared buffer)."""
    fixture = {"export": "fp32_runner", "fused": "fused_runner", "fused-shared-kv": "shared_runner"}
    return request.getfixturevalue(fixture[request.param])


@pytest.fixture(scope="module")
def eager_runner(tiny):
    return EagerRunner(copy.deepcopy(tiny.module), tiny.signature)


# -- same numbers as eager ------------------------------------------------------------------


def test_fp32_logits_match_eager_on_prefill_and_8_decode_steps(any_runner, eager_runner):
    prompt = [[5, 17, 99, 3, 42, 7]]
    onnx_tokens, onnx_logits = greedy(any_runner, prompt, steps=9)
    eager_tokens, eager_logits = greedy(eager_runner, prompt, steps=9)
    for step, (a, b) in enumerate(zip(onnx_logits, eager_logits, strict=True)):
        assert a.shape == (1, VOCAB) and a.dtype == torch.float32
        assert (a - b).abs().max().item() <= 1e-4, f"step {step}"
    assert onnx_tokens == eager_tokens
    assert any_runner.state_length(any_runner.new_state(1)) == 0


def test_two_slots_of_different_lengths_match_eager_and_single_rows(any_runner, eager_runner):
    prompts = [[5, 17, 99, 3, 42, 7, 11], [64, 2, 90]]
    onnx_tokens, onnx_logits = greedy(any_runner, prompts, steps=8)
    eager_tokens, eager_logits = greedy(eager_runner, prompts, steps=8)
    for a, b in zip(onnx_logits, eager_logits, strict=True):
        assert (a - b).abs().max().item() <= 1e-4
    assert onnx_tokens == eager_tokens
    # Company must not change a row's result: the short prompt alone gives the same logits.
    alone_tokens, alone_logits = greedy(any_runner, prompts[1:], steps=8)
    assert alone_tokens[0] == onnx_tokens[1]
    for a, b in zip(alone_logits, onnx_logits, strict=True):
        assert (a[0] - b[1]).abs().max().item() <= 1e-4


def test_state_length_grows_with_each_step(any_runner):
    state = any_runner.new_state(1)
    any_runner.run(step_inputs([[1, 2, 3, 4]]), state)
    assert any_runner.state_length(state) == 4
    any_runner.run(step_inputs([[9]], start=4), state)
    assert any_runner.state_length(state) == 5


def test_shared_kv_buffer_is_appended_in_place_and_sized_by_max_cache_len(tiny, cache_dir, fused_runner,
                                                                          eager_runner):
    runner = OnnxBackend(onnx_cfg(cache_dir, graph="fused", max_cache_len=8)).prepare(tiny)
    assert runner.kv_cache == "shared" and runner.slot_capacity == 8 and not runner.cache_entry.built
    # A slot's buffer is the runner's context window: generation checks it before it starts.
    with pytest.raises(GenerationError, match=r"one slot of the runner holds \(8 positions: raise backend.max_cache"):
        generate_ids(runner, [[5, 17, 99, 3, 42, 7]], SamplingParams(max_new_tokens=5))
    assert len(generate_ids(runner, [[5, 17, 99, 3, 42, 7]], SamplingParams(max_new_tokens=2))[0].token_ids) == 2
    prompt = [[5, 17, 99, 3, 42, 7]]
    state = runner.new_state(1)
    buffers = [a.ctypes.data for a in state.arrays]
    tokens, logits = greedy(runner, prompt, steps=3)  # 6 + 2 positions: exactly full
    assert tokens == greedy(eager_runner, prompt, steps=3)[0]
    out = runner.run(step_inputs(prompt), state)
    assert torch.equal(out.outputs["logits"], logits[0])
    for pos in (6, 7):
        runner.run(step_inputs([[1]], start=pos), state)
    assert [a.ctypes.data for a in state.arrays] == buffers  # the same memory, no copy per step
    assert runner.state_length(state) == 8
    with pytest.raises(GenerationError, match=r"slot 0 holds 8 positions; 1 more exceed its capacity of 8"):
        runner.run(step_inputs([[1]], start=8), state)
    # 0 means the model's context length; larger values are capped at it.
    assert OnnxBackend(onnx_cfg(cache_dir, max_cache_len=0)).cache_capacity(tiny) == 64
    assert OnnxBackend(onnx_cfg(cache_dir, max_cache_len=10_000)).cache_capacity(tiny) == 64


def test_admitting_a_slot_writes_only_that_slots_rows_of_the_buffers(shared_runner, eager_runner):
    state = shared_runner.new_state(3)
    shared_runner.admit(state, 1, step_inputs([[5, 17, 99]]))
    before = [a.copy() for a in state.arrays]
    shared_runner.admit(state, 2, step_inputs([[8, 9, 10, 11]]))
    for old, new in zip(before, state.arrays, strict=True):
        assert (old[:2] == new[:2]).all()  # slots 0 and 1 untouched
        assert (new[2, :, :4] != 0).any()  # slot 2 written at its own positions
    # A step of slots 1 and 2 parks a token in the free slot 0, at its first position only.
    out = shared_runner.run(step_inputs([[1], [2]]), state, [1, 2])
    assert out.outputs["logits"].shape == (2, VOCAB)
    assert [shared_runner.state_length(state, s) for s in range(3)] == [0, 4, 5]
    assert not state.arrays[0][0, :, 1:].any()
    want = greedy(eager_runner, [[8, 9, 10, 11, 2]], steps=1)[1][0]
    assert (out.outputs["logits"][1:] - want).abs().max().item() <= 1e-4


def test_shared_kv_buffers_are_reused_once_no_state_holds_them(shared_runner, eager_runner):
    shared_runner.new_state(1)  # dropped at once: its buffers wait for the next new_state
    first = shared_runner.new_state(1)
    held = [id(a) for a in first.arrays]
    second = shared_runner.new_state(1)  # `first` is alive: fresh buffers
    assert [id(a) for a in second.arrays] != held
    out = shared_runner.run(step_inputs([[5, 17, 99, 3, 42, 7]]), first)
    kept_logits = out.outputs["logits"]
    del first, out  # the last reference to that state: its buffers go back to the runner
    again = shared_runner.new_state(1)
    assert [id(a) for a in again.arrays] == held and shared_runner.state_length(again) == 0
    # Stale positions in a reused buffer are never read: a shorter prompt gives eager's numbers.
    got = shared_runner.run(step_inputs([[8, 9, 10]]), again).outputs["logits"]
    want = eager_runner.run(step_inputs([[8, 9, 10]])).outputs["logits"]
    assert (got - want).abs().max().item() <= 1e-4
    # Logits handed out earlier are the caller's: later steps do not write into them.
    assert not torch.equal(kept_logits, got)
    assert (kept_logits - eager_runner.run(step_inputs([[5, 17, 99, 3, 42, 7]])).outputs["logits"]
            ).abs().max().item() <= 1e-4
    # A state of another size never takes them.
    del again
    assert shared_runner.new_state(2).size == 2


def test_concurrent_generations_on_one_runner_get_their_own_buffers(shared_runner):
    prompts = [[5, 17, 99, 3], [42, 7, 8], [1, 2, 3, 4, 5], [60, 61]]
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    want = [generate_ids(shared_runner, [p], params)[0].token_ids for p in prompts]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # each loop lowers it to 1 while it runs; the last one out restores it
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            for _ in range(3):  # buffers are handed back and taken again between rounds
                got = list(pool.map(lambda p: generate_ids(shared_runner, [p], params)[0].token_ids, prompts))
                assert got == want
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("spin, stop", [(True, "0"), (False, "1")])
def test_spin_between_runs_sets_whether_onnx_runtime_stops_spinning(spin, stop):
    from plugstack.backends.onnx.runner import session_options

    options = session_options(OnnxBackendConfig(spin_between_runs=spin))
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert options.get_session_config_entry("session.force_spinning_stop") == stop


def test_kv_cache_auto_shares_where_the_graph_appends_in_place(fp32_runner, shared_runner):
    from plugstack.state import TensorSlots

    assert OnnxBackendConfig().kv_cache == "auto"
    assert fp32_runner.kv_cache == "concat" and isinstance(fp32_runner.new_state(1), TensorSlots)
    assert shared_runner.kv_cache == "shared"


def test_kv_cache_shared_where_it_cannot_apply_is_refused_by_name(tiny, cache_dir):
    from plugstack.testing import tiny_recurrent_model

    with pytest.raises(UnsupportedOptionError, match="kv_cache=shared cannot apply: its graph concatenates"):
        OnnxBackend(onnx_cfg(cache_dir, kv_cache="shared")).prepare(tiny)  # graph=export
    with pytest.raises(UnsupportedOptionError, match="has no KV cache \\(its state is fixed\\)"):
        OnnxBackend(onnx_cfg(cache_dir, kv_cache="shared", graph="auto")).prepare(tiny_recurrent_model())


def test_prepare_leaves_the_users_model_untouched(tiny, cache_dir, fp32_runner, monkeypatch):
    before = state_digest(tiny.module)
    monkeypatch.setattr("plugstack.backends.onnx.export.export_step", _no_export)
    OnnxBackend(onnx_cfg(cache_dir, quantize="int8")).prepare(tiny).close()
    assert tiny.module.lm_head.weight is tiny.module.embed_tokens.weight  # still tied
    assert state_digest(tiny.module) == before


def test_bad_step_input_is_a_generation_error_not_a_stack_trace(any_runner):
    bad = step_inputs([[1, 2, 3]])
    with pytest.raises(GenerationError, match="ONNX Runtime rejected the step inputs"):
        any_runner.run({**bad, "input_ids": torch.zeros(1, 3, 2)}, any_runner.new_state(1))  # 3-D token ids
    with pytest.raises(GenerationError, match=r"missing step input.*position_ids"):
        any_runner.run({"input_ids": torch.tensor([[1, 2, 3]])})


# -- cache ----------------------------------------------------------------------------------


def _no_export(*args, **kwargs):
    raise AssertionError("exported although the graph should have come from the cache")


def test_second_prepare_is_a_cache_hit_and_does_not_export(tiny, cache_dir, fp32_runner, monkeypatch):
    monkeypatch.setattr("plugstack.backends.onnx.export.export_step", _no_export)
    with capture_logs() as logs:
        runner = OnnxBackend(onnx_cfg(cache_dir)).prepare(tiny)
    assert not runner.cache_entry.built
    assert runner.cache_entry.path == fp32_runner.cache_entry.path
    assert any(e["event"] == "onnx.cache.hit" for e in logs)
    feed = step_inputs([[3, 4, 5]])
    assert torch.equal(runner.run(feed).outputs["logits"], fp32_runner.run(feed).outputs["logits"])


class CountingExport:
    """Stands in for the exporter: copies a known-good graph and counts the calls."""

    def __init__(self, source: Path) -> None:
        self.source, self.calls = source, 0

    def __call__(self, model, path, **kw) -> float:
        self.calls += 1
        shutil.copy(self.source, path)
        return 0.0


def test_changed_weights_are_a_cache_miss(cache_dir, fp32_runner, monkeypatch):
    export = CountingExport(fp32_runner.cache_entry.model_path)
    monkeypatch.setattr("plugstack.backends.onnx.export.export_step", export)
    runner = OnnxBackend(onnx_cfg(cache_dir, verify=False)).prepare(tiny_model(seed=1))
    assert export.calls == 1 and runner.cache_entry.built
    assert runner.cache_entry.path != fp32_runner.cache_entry.path


@pytest.mark.parametrize("quantize, bits", [("int8", 8), ("int4", 4)])
def test_quantize_option_is_a_cache_miss_that_reuses_the_fp32_export(
    tiny, fp32_runner, monkeypatch, tmp_path, quantize, bits
):
    import onnx

    private = tmp_path / "cache"  # holds only the fp32 entry, whatever ran before
    shutil.copytree(fp32_runner.cache_entry.path, private / fp32_runner.cache_entry.path.name)
    monkeypatch.setattr("plugstack.backends.onnx.export.export_step", _no_export)
    runner = OnnxBackend(onnx_cfg(private, quantize=quantize)).prepare(tiny)
    entry = runner.cache_entry
    assert entry.built and entry.path != fp32_runner.cache_entry.path
    assert runner.dtype == quantize
    # Every projection and the head are block-quantised; no float weight matrix is left.
    graph = onnx.load(str(entry.model_path)).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 7 * 2 + 1
    assert all(a.i == bits for n in nbits for a in n.attribute if a.name == "bits")
    assert not [n for n in graph.node if n.op_type in ("MatMul", "Gemm")
                and any(i.name == n.input[1] for i in graph.initializer)]
    assert entry.model_path.stat().st_size < 0.6 * fp32_runner.cache_entry.model_path.stat().st_size
    # Verified on build against eager, within the documented relative bound.
    verify = entry.manifest["verify"]
    assert verify["variant"] == quantize and verify["min_cosine"] >= {"int8": 0.98, "int4": 0.5}[quantize]
    tokens, logits = greedy(runner, [[5, 17, 99, 3]], steps=4)
    assert len(tokens[0]) == 4 and all(torch.isfinite(x).all() for x in logits)


def test_truncated_entry_is_detected_and_rebuilt(tiny, fp32_runner, tmp_path, monkeypatch):
    private = tmp_path / "cache"
    name = fp32_runner.cache_entry.path.name
    shutil.copytree(fp32_runner.cache_entry.path, private / name)
    model_file = private / name / "model.onnx"
    size = model_file.stat().st_size
    with open(model_file, "r+b") as f:
        f.truncate(size // 2)
    # The rebuild re-exports and re-verifies; a stand-in exporter keeps this test fast.
    export = CountingExport(fp32_runner.cache_entry.model_path)
    monkeypatch.setattr("plugstack.backends.onnx.export.export_step", export)
    with capture_logs() as logs:
        runner = OnnxBackend(onnx_cfg(private)).prepare(tiny)
    assert export.calls == 1 and runner.cache_entry.built
    corrupt = [e for e in logs if e["event"] == "onnx.cache.corrupt"]
    assert corrupt and "bytes" in corrupt[0]["reason"] and corrupt[0]["action"] == "rebuild"
    assert any(e["event"] == "onnx.verify" and e["ok"] for e in logs)
    assert model_file.stat().st_size == size
    feed = step_inputs([[3, 4, 5]])
    assert torch.equal(runner.run(feed).outputs["logits"], fp32_runner.run(feed).outputs["logits"])
    assert sorted(p.name for p in private.iterdir() if not p.name.endswith(".lock")) == [name]
    # ...and the next prepare trusts the rebuilt entry again.
    assert not OnnxBackend(onnx_cfg(private)).prepare(tiny).cache_entry.built


def test_a_flipped_byte_fails_the_manifest_check(fp32_runner, tmp_path):
    from plugstack.backends.onnx.cache import _check

    entry = tmp_path / "entry"
    shutil.copytree(fp32_runner.cache_entry.path, entry)
    assert _check(entry)[0] is not None
    with open(entry / "model.onnx", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    manifest, why = _check(entry)
    assert manifest is None and "sha256" in why


def test_graph_that_disagrees_with_eager_is_refused_and_not_cached(fp32_runner, tmp_path, monkeypatch):
    """A wrong export (here: another model's graph) must fail verification, loudly."""
    monkeypatch.setattr("plugstack.backends.onnx.export.export_step",
                        CountingExport(fp32_runner.cache_entry.model_path))
    with pytest.raises(ConfigError, match="disagrees with the eager model"):
        OnnxBackend(onnx_cfg(tmp_path / "cache")).prepare(tiny_model(seed=7))
    assert [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


CONCURRENT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests_dir!r})
    from test_onnx import tiny_model, onnx_cfg, step_inputs
    from plugstack.backends.onnx.backend import OnnxBackend
    runner = OnnxBackend(onnx_cfg(sys.argv[1])).prepare(tiny_model(seed=3))
    logits = runner.run(step_inputs([[1, 2, 3]])).outputs["logits"]
    print(json.dumps({{"built": runner.cache_entry.built, "sum": float(logits.sum())}}))
    """
)


def test_two_processes_preparing_at_once_both_succeed_with_one_entry(tmp_path):
    script = tmp_path / "prepare.py"
    script.write_text(CONCURRENT_SCRIPT.format(tests_dir=str(Path(__file__).parent)))
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(cache)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["built"] for r in results) == [False, True]
    assert results[0]["sum"] == pytest.approx(results[1]["sum"], abs=1e-5)
    entries = [p for p in cache.iterdir() if not p.name.endswith(".lock")]
    assert len(entries) == 1 and (entries[0] / "manifest.json").exists()


# -- options and probe ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value, valid",
    [
        ("providers", ["CPUExecutionProviderr"], "CPUExecutionProvider"),
        ("quantize", "int3", "int8, int4"),
        ("graph_optimization", "max", "disable, basic, extended, all"),
        ("dtype", "fp16", "fp32"),
        ("dtype", "bf16", "fp32, fp16"),
        ("opset", 11, "18..23"),
        ("graph", "fast", "auto, export, fused"),
        ("kv_cache", "paged", "concat, shared"),
        ("max_cache_len", -1, "0 (the model's context length)"),
    ],
)
def test_unsupported_options_name_the_valid_values(option, value, valid):
    with pytest.raises(UnsupportedOptionError) as e:
        OnnxBackend(OnnxBackendConfig(**{option: value}))
    assert f"backend.{option}" in str(e.value) and valid in str(e.value)


def test_typo_in_provider_suggests_the_right_name():
    with pytest.raises(UnsupportedOptionError, match="Did you mean 'CPUExecutionProvider'"):
        OnnxBackend(OnnxBackendConfig(providers=["CPUExecutionProvidr"]))


def test_the_composed_group_is_the_dataclass_with_overrides():
    from plugstack.config import compose
    from plugstack.run import group_config

    cfg = compose(["backend=onnx", "backend.quantize=int8"])
    backend = OnnxBackend(group_config(cfg.backend))
    assert backend.options == OnnxBackendConfig(quantize="int8")
    assert OnnxBackend({"threads": 1}).options.threads == 1  # a mapping: the defaults filled in
    with pytest.raises(ConfigError, match="threads"):
        OnnxBackend({"threads": "many"})


def test_probe_reports_cpu_and_why_cuda_is_unavailable_without_importing_onnxruntime():
    code = textwrap.dedent(
        """
        import json, sys
        from plugstack.backends.onnx.backend import OnnxBackend
        a = OnnxBackend().probe()
        print(json.dumps({"available": a.available, "extra": a.device.extra,
                          "ort": "onnxruntime" in sys.modules, "torch": "torch" in sys.modules}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    assert got["available"] and not got["ort"] and not got["torch"]
    assert "CPUExecutionProvider" in got["extra"]["providers"]
    assert "CUDAExecutionProvider" not in got["extra"]["providers"]
    assert "onnxruntime-gpu" in got["extra"]["unavailable_providers"]["CUDAExecutionProvider"]


def test_cuda_only_providers_are_unavailable_here_with_a_reason(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_backend_module, "_nvidia_gpu_present", lambda: False)
    backend = OnnxBackend(onnx_cfg(tmp_path, providers=["CUDAExecutionProvider"]))
    availability = backend.probe()
    assert not availability.available and "CUDAExecutionProvider" in availability.reason
    with pytest.raises(BackendUnavailableError, match="CPUExecutionProvider"):
        backend.prepare(tiny)


def test_cuda_first_falls_back_to_cpu(tiny, cache_dir, fp32_runner):
    backend = OnnxBackend(onnx_cfg(cache_dir, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]))
    assert backend.probe().available
    runner = backend.prepare(tiny)
    assert runner.providers == ["CPUExecutionProvider"] and not runner.cache_entry.built


def test_registered_through_the_entry_point_hook():
    from plugstack.backends import onnx as plugin

    seen = {}
    plugin.plugstack_register_backends(lambda name, factory, **kw: seen.update({name: (factory, kw)}))
    factory, kw = seen["onnx"]
    assert factory == "plugstack.backends.onnx.backend:OnnxBackend" and kw["config"] is OnnxBackendConfig
