"""app=bench as a user runs it: bench.json and bench.csv in the run directory with every
field, energy marked unavailable where the machine has no counter (and measured where it
has one), a denoiser's images/s, and clear errors for bad input."""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from pathlib import Path

import pytest
from badinput import check

#: Small enough to run in seconds on the tiny model, large enough to give every metric.
QUICK = ["app=bench", "backend=cpu", "backend.threads=1", "app.prompt_lengths=[8,24]", "app.batch_sizes=[1,3]",
         "app.decode_prompt_length=8", "app.new_tokens=6", "app.warmup=1", "app.repeats=2", "app.pause_s=0"]


def _bench(cli_in_process, tmp_path: Path, model_dir: Path, *args: str, env: dict | None = None):
    run_dir = tmp_path / "run"
    with cli_in_process({"PLUGSTACK_HOME": str(tmp_path / "home"), **(env or {})}) as cli:
        result = cli([*QUICK, f"model.path={model_dir}", f"hydra.run.dir={run_dir}", *args])
    return result, run_dir


@pytest.fixture(scope="module")
def no_rapl(tmp_path_factory):
    return tmp_path_factory.mktemp("no-powercap") / "powercap"


def test_a_run_writes_json_and_csv_with_every_field(cli_in_process, tmp_path, tiny_model_dir, monkeypatch, no_rapl):
    monkeypatch.setattr("plugstack.meters.POWERCAP", no_rapl)  # as on a VM: no RAPL counters
    result, run_dir = _bench(cli_in_process, tmp_path, tiny_model_dir)
    check(result, 0)
    record = json.loads((run_dir / "bench.json").read_text())
    assert record["status"] == "ok" and record["reason"] is None
    assert record["config"]["app"]["batch_sizes"] == [1, 3] and record["config"]["backend"]["name"] == "cpu"
    env = record["environment"]
    assert env["cpu"] and env["cpus_usable"] >= 1 and env["python"].count(".") == 2
    assert {"plugstack", "torch", "numpy"} <= set(env["versions"])
    assert record["backend"]["ran"] == "cpu" and record["backend"]["dtype"] == "fp32"
    assert record["load"]["model_load_s"] > 0 and record["load"]["prepare_s"] >= 0
    memory = record["memory"]
    assert memory["peak_rss_bytes"] >= memory["start_rss_bytes"] > 10 << 20
    assert memory["device_peak_bytes"] is None and "host memory" in memory["device_source"]
    energy = record["energy"]
    assert energy["available"] is False and str(no_rapl) in energy["reason"]

    by_name = {s["name"]: s for s in record["scenarios"]}
    assert list(by_name) == ["prefill-8", "prefill-24", "decode-b1", "decode-b3"]
    for name in ("prefill-8", "prefill-24"):
        s = by_name[name]
        assert set(s["metrics"]) == {"ttft_s", "prefill_tok_s"}
        ttft = s["metrics"]["ttft_s"]
        assert ttft["n"] == 2 and 0 < ttft["min"] <= ttft["median"] <= ttft["max"]
        assert s["metrics"]["prefill_tok_s"]["median"] == pytest.approx(s["prompt_length"] / ttft["median"], rel=0.3)
        assert s["joules_per_unit"] is None
    for batch in (1, 3):
        s = by_name[f"decode-b{batch}"]
        assert s["batch"] == batch and s["new_tokens"] == 6
        assert set(s["metrics"]) == {"ttft_s", "decode_tok_s", "per_seq_tok_s"}
        m = s["metrics"]
        assert m["per_seq_tok_s"]["median"] == pytest.approx(m["decode_tok_s"]["median"] / batch)
        lat = s["step_latency_s"]
        assert lat["n"] == 2 * 5  # 5 steps after the first token, in each of 2 timed runs
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]

    rows = list(csv.DictReader((run_dir / "bench.csv").open()))
    metrics = {(r["scenario"], r["metric"]) for r in rows}
    assert ("decode-b3", "decode_tok_s") in metrics and ("decode-b1", "step_latency_p99_s") in metrics
    assert ("prefill-24", "prefill_tok_s") in metrics
    row = next(r for r in rows if (r["scenario"], r["metric"]) == ("decode-b3", "decode_tok_s"))
    assert float(row["median"]) == pytest.approx(by_name["decode-b3"]["metrics"]["decode_tok_s"]["median"])
    assert "decode-b3" in result.stdout and "energy: unavailable" in result.stdout


class FakeRapl:
    """A powercap tree whose package counter a thread advances 1 J per ms, rolling over."""

    def __init__(self, root: Path) -> None:
        self.counter = root / "intel-rapl:0" / "energy_uj"
        self.counter.parent.mkdir(parents=True)
        (root / "intel-rapl:0" / "intel-rapl:0:0").mkdir()  # a sub-domain: must not be added again
        (self.counter.parent / "max_energy_range_uj").write_text("50000000\n")
        self.counter.write_text("49990000\n")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._tick, daemon=True)

    def _tick(self) -> None:
        value = 49_990_000
        while not self.stop.is_set():
            value = (value + 1_000_000) % 50_000_000
            tmp = self.counter.with_name("energy_uj.tmp")
            tmp.write_text(f"{value}\n")
            os.replace(tmp, self.counter)  # as the kernel's: a reader never sees half a number
            time.sleep(0.001)


def test_rapl_counters_give_joules_across_a_rollover(tmp_path):
    from plugstack.meters import rapl_meter

    rapl = FakeRapl(tmp_path)
    meter, why = rapl_meter(tmp_path)
    assert why == "" and "intel-rapl:0" in meter.source and "intel-rapl:0:0" not in meter.source
    mark = meter.start()
    rapl.counter.write_text("5000000\n")  # past the 50 J range: rolled over once
    assert meter.joules_since(mark) == pytest.approx(50 - 49.99 + 5)


def test_unreadable_or_missing_counters_say_why(tmp_path):
    from plugstack.meters import rapl_meter

    meter, why = rapl_meter(tmp_path / "absent")
    assert meter is None and f"no {tmp_path / 'absent'}" in why
    (tmp_path / "intel-rapl:0").mkdir()
    meter, why = rapl_meter(tmp_path)
    assert meter is None and "energy_uj" in why


def test_energy_per_token_where_rapl_is_readable(cli_in_process, tmp_path, tiny_model_dir, monkeypatch):
    root = tmp_path / "powercap"
    root.mkdir()
    rapl = FakeRapl(root)
    monkeypatch.setattr("plugstack.meters.POWERCAP", root)
    rapl.thread.start()
    try:
        result, run_dir = _bench(cli_in_process, tmp_path, tiny_model_dir, "app.prompt_lengths=[8]",
                                 "app.batch_sizes=[2]")
    finally:
        rapl.stop.set()
        rapl.thread.join()
    check(result, 0)
    record = json.loads((run_dir / "bench.json").read_text())
    assert record["energy"]["available"] is True, record["energy"]
    assert "RAPL" in record["energy"]["source"]
    decode = next(s for s in record["scenarios"] if s["kind"] == "decode")
    assert decode["unit"] == "token" and decode["joules_per_unit"] > 0


def test_a_denoiser_is_measured_in_images_per_second(cli_in_process, tmp_path):
    with cli_in_process({"PLUGSTACK_HOME": str(tmp_path / "home")}) as cli:
        result = cli(["app=bench", "model=digits-diffusion", "backend=cpu", "backend.threads=1", "app.images=2",
                      "app.image_steps=2", "app.warmup=0", "app.repeats=3", "app.pause_s=0",
                      f"hydra.run.dir={tmp_path / 'run'}"])
    check(result, 0)
    record = json.loads((tmp_path / "run" / "bench.json").read_text())
    (images,) = record["scenarios"]
    assert images["kind"] == "images" and images["unit"] == "image"
    m = images["metrics"]
    assert m["images_per_s"]["median"] == pytest.approx(1 / m["s_per_image"]["median"])  # odd n: one middle run


@pytest.mark.parametrize(("args", "says"), [
    (["app.batch_sizes=[0]"], "app.batch_sizes=[0]: give a non-empty list of integers from 1 to 256"),
    (["app.prompt_lengths=[]"], "app.prompt_lengths=[]"),
    (["app.repeats=0"], "app.repeats=0: give 1 to 100"),
    (["app.new_tokens=1"], "app.new_tokens=1: give 2 to"),
    (["app.pause_s=-1"], "app.pause_s=-1.0"),
    (["app.prompt_lengths=[300]"], "does not fit the context window of 256 positions"),
    (["backend.quantize=int4"], "backend=cpu does not support quantize='int4'"),  # one run: not skipped
])
def test_bad_input_is_a_clear_error_and_measures_nothing(cli_in_process, tmp_path, tiny_model_dir, args, says):
    result, run_dir = _bench(cli_in_process, tmp_path, tiny_model_dir, *args)
    check(result, 2, [says])
    if (run_dir / "bench.json").exists():
        assert json.loads((run_dir / "bench.json").read_text())["scenarios"] == []


def test_a_model_it_cannot_measure_is_refused_before_it_is_prepared(cli_in_process, tmp_path):
    """A regressor (tests/train's plugin): neither a decoder nor an image model."""
    import shutil

    site = tmp_path / "site"
    info = site / "trainplug-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: trainplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[plugstack]\ntrainplug = trainplug\n")
    shutil.copy(Path(__file__).parents[1] / "train" / "trainplug.py", site / "trainplug.py")
    with cli_in_process({"PYTHONPATH": str(site), "PLUGSTACK_HOME": str(tmp_path / "home")}) as cli:
        result = cli(["app=bench", "model=no-train", "backend=cpu", f"hydra.run.dir={tmp_path / 'run'}"])
    check(result, 2, ["app=bench measures decoders (a step from input_ids to logits) and models that offer images",
                      "model 'no-train' steps"])
    assert not (tmp_path / "run" / "bench.json").exists()
