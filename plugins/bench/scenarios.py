"""The measurements themselves: each scenario runs warm-up rounds, then timed repeats, and
returns its metrics as summaries of those repeats.

* ``prefill``: one prompt of ``prompt_length`` tokens to its first new token (batch 1):
  time to first token and prompt tokens per second.
* ``decode``: ``batch`` prompts decoded together for ``new_tokens`` greedy tokens each (EOS
  ignored): time to first token of the batch, aggregate and per-sequence tokens per second
  after the first token, and per-step latency percentiles (one step = one token per sequence).
* ``images``: a model's image sampler making ``images`` images: images per second.

Decoders are driven through a :data:`Generate` function: for plugstack's runners,
:func:`greedy_timings` over :func:`plugstack.generate_ids`, the loop every app uses; a peer
(``benchmarks/bench_peers.py``) passes its own, so both are measured the same way.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from plugstack.generation import generate_ids
from plugstack.meters import EnergyMeter
from plugstack.sampling import SamplingParams

from .stats import latency, summary

__all__ = ["Generate", "Scenario", "decode_scenario", "greedy_timings", "images_scenario", "prefill_scenario",
           "step_gaps", "synthetic_prompt"]

#: ``(prompts, new_tokens) -> (seconds to the batch's first token, seconds of each later step,
#: tokens made)``: one greedy run of every prompt together, EOS ignored.
Generate = Callable[[list[list[int]], int], tuple[float, list[float], int]]

#: Ordinary English the synthetic prompts are cut from (its tokens, repeated to length).
TEXT = ("The committee met on a grey Tuesday morning to weigh the harbour plan. Some wanted the old pier "
        "rebuilt in stone, others a floating dock that could follow the tides; the engineers brought "
        "drawings, costs and a model of the bay, and the fishermen brought questions about the winter storms.")


@dataclass
class Scenario:
    """One measured situation and what it gave."""

    name: str
    kind: str
    prompt_length: int = 0
    batch: int = 1
    new_tokens: int = 0
    #: metric -> summary over the timed repeats (see :func:`plugstack.plugins.bench.stats.summary`).
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Per-step latency percentiles over every step of every timed repeat.
    step_latency_s: dict[str, Any] | None = None
    #: What ``joules_per_unit`` counts: "prompt token" (prefill), "token" (decode), "image".
    unit: str = "token"
    #: Joules per unit over the timed repeats (decode: prefill included); None: not measured.
    joules_per_unit: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def synthetic_prompt(tokenizer: Any, vocab_size: int | None, length: int, row: int = 0) -> list[int]:
    """``length`` token ids of ordinary text (row ``r`` starts further in, so rows differ)."""
    base = tokenizer.encode(TEXT, add_special_tokens=False) if tokenizer is not None else []
    if vocab_size:
        base = [t for t in base if t < vocab_size]
    if len(base) < 8:  # no (usable) tokenizer: ids spread over the vocabulary
        base = [(17 * i + 3) % (vocab_size or 256) for i in range(256)]
    start = (7 * row) % len(base)
    repeats = (start + length) // len(base) + 1
    return (base * repeats)[start:start + length]


@dataclass
class _Timed:
    """What one timed run gave: named values, step latencies, units made."""

    values: dict[str, float]
    steps: list[float] = field(default_factory=list)
    units: int = 0


def _repeat(run: Callable[[], _Timed], warmup: int, repeats: int, pause_s: float,
            meter: EnergyMeter | None, tick: Callable[[], None]) -> tuple[list[_Timed], float | None]:
    """``warmup`` untimed runs, then ``repeats`` timed ones; the joules of the timed ones."""
    for _ in range(warmup):
        run()
        tick()
    timed, joules = [], 0.0
    for _ in range(repeats):
        time.sleep(pause_s)  # the last run's worker threads go idle before the next is timed
        mark = meter.start() if meter else None
        timed.append(run())
        if meter is not None:
            joules += meter.joules_since(mark)
        tick()
    return timed, (joules if meter is not None else None)


def _finish(scenario: Scenario, timed: list[_Timed], joules: float | None) -> Scenario:
    for key in timed[0].values:
        scenario.metrics[key] = summary([t.values[key] for t in timed])
    steps = [s for t in timed for s in t.steps]
    scenario.step_latency_s = latency(steps) if steps else None
    units = sum(t.units for t in timed)
    scenario.joules_per_unit = joules / units if joules is not None and units else None
    return scenario


def step_gaps(marks: list[float]) -> list[float]:
    """Seconds between consecutive token times: the per-step latencies."""
    return [b - a for a, b in itertools.pairwise(marks)]


def greedy_timings(runner: Any, prompts: list[list[int]], new_tokens: int) -> tuple[float, list[float], int]:
    """A :data:`Generate` over a plugstack runner (bind it: ``functools.partial(greedy_timings, runner)``)."""
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    marks: list[float] = []

    def on_token(row: int, token: int) -> bool:
        if row == 0:  # row 0 lives to the end (EOS is ignored): one mark per step
            marks.append(time.perf_counter())
        return False

    t0 = time.perf_counter()
    results = generate_ids(runner, prompts, params, on_token=on_token)
    made = sum(r.completion_tokens for r in results)
    steps = step_gaps(marks)
    return marks[0] - t0, steps, made


def prefill_scenario(generate: Generate, prompt: list[int], opts: Any, meter: EnergyMeter | None,
                     tick: Callable[[], None]) -> Scenario:
    def run() -> _Timed:
        ttft, _, _ = generate([prompt], 1)
        return _Timed({"ttft_s": ttft, "prefill_tok_s": len(prompt) / ttft}, units=len(prompt))

    timed, joules = _repeat(run, opts.warmup, opts.repeats, opts.pause_s, meter, tick)
    scenario = Scenario(f"prefill-{len(prompt)}", "prefill", len(prompt), 1, 1, unit="prompt token")
    return _finish(scenario, timed, joules)


def decode_scenario(generate: Generate, prompts: list[list[int]], opts: Any, meter: EnergyMeter | None,
                    tick: Callable[[], None]) -> Scenario:
    batch, n = len(prompts), opts.new_tokens

    def run() -> _Timed:
        ttft, steps, made = generate(prompts, n)
        values = {"ttft_s": ttft}
        if steps:  # tokens after the first, over the time after it
            rate = batch * len(steps) / sum(steps)
            values.update(decode_tok_s=rate, per_seq_tok_s=rate / batch)
        return _Timed(values, steps, made)

    timed, joules = _repeat(run, opts.warmup, opts.repeats, opts.pause_s, meter, tick)
    return _finish(Scenario(f"decode-b{batch}", "decode", len(prompts[0]), batch, n), timed, joules)


def images_scenario(runner: Any, sampler: Any, opts: Any, meter: EnergyMeter | None,
                    tick: Callable[[], None]) -> Scenario:
    steps = opts.image_steps or sampler.default_steps
    count = opts.images

    def run() -> _Timed:
        t0 = time.perf_counter()
        sampler.sample(runner, sampler.example_prompt, num_images=count, seed=0, steps=steps,
                       guidance=sampler.default_guidance)
        seconds = time.perf_counter() - t0
        return _Timed({"images_per_s": count / seconds, "s_per_image": seconds / count,
                       "step_s": seconds / steps}, units=count)

    timed, joules = _repeat(run, opts.warmup, opts.repeats, opts.pause_s, meter, tick)
    return _finish(Scenario("images", "images", 0, count, steps, unit="image"), timed, joules)
