"""The continuous-batching engine on real tiny models: what a submitter sees, and what the
runner is asked to do (one batched step of every live slot, slots reused)."""

from __future__ import annotations

import threading

import pytest
from structlog.testing import capture_logs

from plugstack.backend import RunnerWrapper
from plugstack.engine import Engine
from plugstack.errors import EngineClosedError, GenerationError, QueueFullError
from plugstack.generation import generate
from plugstack.sampling import SamplingParams

PROMPTS = ["The sea is", "What is the capital of France? Paris", "Hello", "Write a short poem about the sea",
           "Numbers: 0 1 2"]


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, **kw)


class Recording(RunnerWrapper):
    """Records the slots of every decode step; ``at_step[k]()`` runs before decode step k."""

    def __init__(self, inner, at_step=None, fail_step=None):
        super().__init__(inner)
        self.steps: list[list[int]] = []
        self.at_step = at_step or {}
        self.fail_step = fail_step

    def run(self, inputs, state=None, slots=None):
        if slots is not None and all(state.live[s] for s in slots):  # a decode step, not an admission
            k = len(self.steps)
            self.steps.append(list(slots))
            if k in self.at_step:
                self.at_step.pop(k)()
            if k == self.fail_step:
                raise RuntimeError("the device fell over")
        return self.inner.run(inputs, state, slots)


def alone(runner, tokenizer, prompt: str, params: SamplingParams):
    [r] = generate(runner, tokenizer, [prompt], params)
    return r.text, r.finish_reason, r.completion_tokens


def test_requests_joining_at_different_steps_get_their_alone_answer(runner, tokenizer):
    params = greedy(24, ignore_eos=True)  # every request runs 24 steps, so the later joins surely come
    recording = Recording(runner)
    engine = Engine(recording, tokenizer, max_batch=3)
    requests = [engine.submit(tokenizer.encode(PROMPTS[0]), params)]
    all_in = threading.Event()

    def join(prompt, last=False):
        requests.append(engine.submit(tokenizer.encode(prompt), params))
        if last:
            all_in.set()

    for step, prompt in zip((2, 5, 9, 10), PROMPTS[1:], strict=True):  # the last one waits for a free slot
        recording.at_step[step] = lambda p=prompt, last=step == 10: join(p, last)
    with capture_logs() as logs, engine:
        assert all_in.wait(timeout=30)
        answers = [r.wait(timeout=30) for r in requests]
    for prompt, (text, last) in zip(PROMPTS, answers, strict=True):
        assert (text, last.finish_reason, last.completion_tokens) == alone(runner, tokenizer, prompt, params)
    assert max(len(s) for s in recording.steps) == 3  # decoded together, up to max_batch
    assert all(len(set(s)) == len(s) and set(s) <= {0, 1, 2} for s in recording.steps)  # slots reused
    joins = [e for e in logs if e["event"] == "engine.join"]
    assert len(joins) == 4 and all(j["running"] >= 1 for j in joins)


def test_stop_strings_and_eos_end_each_request_as_alone(runner, tokenizer):
    params = [greedy(30, stop=[s]) for s in ("e", "a", " ", "o", "t")] + [greedy(30)]
    with Engine(runner, tokenizer, max_batch=4) as engine:
        requests = [engine.submit(tokenizer.encode(PROMPTS[i % 5]), p) for i, p in enumerate(params)]
        answers = [r.wait(timeout=30) for r in requests]
    expected = [alone(runner, tokenizer, PROMPTS[i % 5], p) for i, p in enumerate(params)]
    assert [(t, last.finish_reason, last.completion_tokens) for t, last in answers] == expected
    assert "stop" in [e[1] for e in expected] and "length" in [e[1] for e in expected]  # both ends are covered


def test_sampling_is_per_request_and_reproducible_with_a_seed(runner, tokenizer):
    sampled = SamplingParams(max_new_tokens=20, temperature=1.0, seed=7, ignore_eos=True)
    with Engine(runner, tokenizer, max_batch=4) as engine:
        together = [engine.submit(tokenizer.encode(PROMPTS[0]), sampled),
                    engine.submit(tokenizer.encode(PROMPTS[0]), SamplingParams(max_new_tokens=20, temperature=1.0,
                                                                               seed=8, ignore_eos=True)),
                    engine.submit(tokenizer.encode(PROMPTS[1]), greedy(20))]
        seven, eight, plain = (r.wait(timeout=30)[0] for r in together)
        again = engine.submit(tokenizer.encode(PROMPTS[0]), sampled).wait(timeout=30)[0]
    assert seven == again == alone(runner, tokenizer, PROMPTS[0], sampled)[0]
    assert seven != eight
    assert plain == alone(runner, tokenizer, PROMPTS[1], greedy(20))[0]


def test_cancel_frees_the_slot_before_the_next_step(runner, tokenizer):
    engine = Engine(runner, tokenizer, max_batch=1)
    seen = []

    def cancel_after_first(delta):
        seen.append(delta)
        if len(seen) == 1:
            long.cancel()

    long = engine.submit(tokenizer.encode(PROMPTS[0]), greedy(200, ignore_eos=True), emit=cancel_after_first)
    short = engine.submit(tokenizer.encode(PROMPTS[2]), greedy(8))  # waits for the one slot
    with engine:
        text, last = short.wait(timeout=30)
        assert seen[-1].finish_reason == "cancelled" and seen[-1].error == "cancelled by the client"
        assert seen[-1].completion_tokens == seen[0].completion_tokens  # not one token after the cancel
        assert (text, last.finish_reason) == alone(runner, tokenizer, PROMPTS[2], greedy(8))[:2]
        assert engine.counts() == {"running": 0, "waiting": 0, "max_batch": 1}


def test_a_full_queue_refuses_and_a_cancelled_waiter_leaves_it(runner, tokenizer):
    engine = Engine(runner, tokenizer, max_batch=1, max_queue=2)  # not started: nothing leaves the queue
    first = engine.submit(tokenizer.encode(PROMPTS[0]), greedy(4))
    engine.submit(tokenizer.encode(PROMPTS[1]), greedy(4))
    with pytest.raises(QueueFullError, match="2 requests are already waiting"):
        engine.submit(tokenizer.encode(PROMPTS[2]), greedy(4))
    first.cancel()
    with engine:
        assert first.wait(timeout=30)[1].finish_reason == "cancelled"
        text, _ = engine.submit(tokenizer.encode(PROMPTS[2]), greedy(4)).wait(timeout=30)
        assert text == alone(runner, tokenizer, PROMPTS[2], greedy(4))[0]
    with pytest.raises(EngineClosedError):
        engine.submit(tokenizer.encode(PROMPTS[2]), greedy(4))


@pytest.mark.parametrize(("prompt", "changes", "param", "match"), [
    ("Hello", {"temperature": -1.0}, "temperature", r"temperature=-1\.0"),
    ("Hello", {"top_p": 0.0}, "top_p", "top_p=0.0"),
    ("Hello", {"seed": -3}, "seed", "seed=-3"),
    ("Hello", {"max_new_tokens": 65}, "max_new_tokens", "more than the 64 tokens"),
    ("Hello world! " * 40, {}, "prompt", "context window is 96"),
    ("", {}, "prompt", "no tokens"),
], ids=["temperature", "top_p", "seed", "limit", "too long", "empty"])
def test_bad_requests_are_refused_before_they_are_queued(tokenizer, make_llama, prompt, changes, param, match):
    engine = Engine(make_llama(tokenizer.vocab_size, context_length=96), tokenizer, max_tokens_limit=64)
    params = greedy(8)
    for name, value in changes.items():  # after construction, which checks too: submit must check again
        setattr(params, name, value)
    with pytest.raises(GenerationError, match=match) as err:
        engine.submit(tokenizer.encode(prompt), params)
    assert err.value.param == param
    assert "truncate" not in str(err.value)
    assert engine.counts()["waiting"] == 0


def test_a_failed_step_ends_its_requests_and_the_engine_goes_on(runner, tokenizer):
    with Engine(Recording(runner, fail_step=3), tokenizer, max_batch=2) as engine:
        broken = engine.submit(tokenizer.encode(PROMPTS[0]), greedy(10, ignore_eos=True))
        _, last = broken.wait(timeout=30)
        assert last.finish_reason == "error" and "the device fell over" in last.error
        text, last = engine.submit(tokenizer.encode(PROMPTS[1]), greedy(10)).wait(timeout=30)
    assert (text, last.finish_reason) == alone(runner, tokenizer, PROMPTS[1], greedy(10))[:2]


def test_stop_cancels_what_is_running_and_refuses_more(runner, tokenizer):
    gate = threading.Event()
    engine = Engine(Recording(runner, at_step={1: gate.wait}), tokenizer, max_batch=1).start()
    running = engine.submit(tokenizer.encode(PROMPTS[0]), greedy(100, ignore_eos=True))
    waiting = engine.submit(tokenizer.encode(PROMPTS[1]), greedy(4))
    threading.Timer(0.2, gate.set).start()  # let the engine leave step 1 while stop() waits for it
    engine.stop("shutting down", timeout=30)
    for request in (running, waiting):
        last = list(request.deltas(timeout=5))[-1]
        assert (last.finish_reason, last.error) == ("cancelled", "shutting down")
    with pytest.raises(EngineClosedError, match="shutting down"):
        engine.submit(tokenizer.encode(PROMPTS[2]), greedy(4))


# (the recurrent model on onnx goes through torch.onnx export: 8 s for nothing the others miss)
@pytest.mark.parametrize(("kit_model", "backend"), [("tiny-llama", "cpu"), ("tiny-llama", "onnx"),
                                                   ("tiny-recurrent", "cpu")])
def test_any_decoder_on_any_backend_gets_its_alone_answers(kit_model, backend, tmp_path, monkeypatch):
    """Model-agnostic: a KV-cache decoder and a fixed-state recurrent one, eager and ONNX Runtime."""
    import plugstack
    from plugstack.testing.tiny_models import KIT_MODELS, ByteTokenizer

    monkeypatch.setenv("PLUGSTACK_HOME", str(tmp_path))  # where ONNX graphs are cached
    runner = plugstack.create_backend(backend, threads=1).prepare(KIT_MODELS[kit_model](seed=3))
    tok, params = ByteTokenizer(), greedy(12, ignore_eos=True)
    prompts = ["The sea", "Hello there, sea", "Hi", "Why is the sea calm"]
    with Engine(runner, tok, max_batch=2) as engine:
        requests = [engine.submit(tok.encode(p), params) for p in prompts]
        answers = [r.wait(timeout=60)[0] for r in requests]
    assert answers == [alone(runner, tok, p, params)[0] for p in prompts]
    assert max(r.max_batch for r in requests) == 2
