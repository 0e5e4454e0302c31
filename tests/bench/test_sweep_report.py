"""Sweeps of app=bench and `plugstack report`: a two-backend multirun gives one result per job,
a choice that does not apply to a backend is skipped with its reason, and the report writes
the table, Markdown, CSV and PNG plots that open as images."""

from __future__ import annotations

import csv
import json
import os
import tempfile
import time
from pathlib import Path

import pytest
from badinput import check, run

QUICK = ["app=bench", "backend.threads=1", "app.prompt_lengths=[8]", "app.batch_sizes=[1,2]",
         "app.decode_prompt_length=8", "app.new_tokens=4", "app.warmup=1", "app.repeats=2", "app.pause_s=0"]


def _env(root: Path) -> dict[str, str]:
    return {"PLUGSTACK_OUTPUTS": str(root / "sweeps"), "PLUGSTACK_HOME": str(root / "home"), "OMP_NUM_THREADS": "1"}


def _sweep_dir(root: Path) -> Path:
    (found,) = (root / "sweeps").glob("*/*")  # <date>/<time>: one sweep
    return found


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_model_dir):
    """cpu and onnx, with an option (accuracy_level) that only onnx has, in one multirun."""
    root = tmp_path_factory.mktemp("sweep")
    result = run(["--multirun", *QUICK, f"model.path={tiny_model_dir}", "backend=cpu,onnx",
                  "backend.quantize=null,int8", "backend.accuracy_level=4"], env=_env(root))
    return root, result


def test_a_two_backend_sweep_measures_each_job_and_skips_what_does_not_apply(sweep):
    root, result = sweep
    check(result, 0)
    jobs = sorted(_sweep_dir(root).glob("[0-9]*"), key=lambda p: int(p.name))
    assert len(jobs) == 4
    cpu_null, cpu_int8, onnx_null, onnx_int8 = jobs
    for job in (cpu_null, cpu_int8):  # cpu has no accuracy_level: skipped, not failed
        record = json.loads((job / "run.json").read_text())
        assert record["exit_code"] == 0 and record["skipped"] == "backend 'cpu' has no option 'accuracy_level'"
        assert not (job / "bench.json").exists()
    assert result.stdout.count("skipped: backend 'cpu' has no option 'accuracy_level'") == 2
    for job, weights in ((onnx_null, "fp32"), (onnx_int8, "int8")):
        record = json.loads((job / "bench.json").read_text())
        assert record["status"] == "ok" and record["load"]["preparation"]["weights"] == weights
        assert "backend.quantize=" in record["label"] and [s["name"] for s in record["scenarios"]] == [
            "prefill-8", "decode-b1", "decode-b2"]


def test_report_writes_a_table_markdown_csv_and_plots(sweep, tmp_path):
    from PIL import Image

    root, _ = sweep
    result = run(["report", str(_sweep_dir(root)), "--baseline", "quantize=null", "--baseline", "int8",
                  "--out", str(tmp_path)])
    check(result, 0)
    assert "plugstack bench report" in result.stdout and "b2 tok/s" in result.stdout
    md = (tmp_path / "report.md").read_text()
    assert "| job | runs as |" in md and "Measured on " in md
    assert md.count("| backend=onnx") == 2 and md.count("skipped: backend 'cpu' has no option") == 2
    rows = list(csv.reader((tmp_path / "report.csv").open()))
    header, body = rows[0], rows[1:]
    assert len(body) == 4 and header[-3:] == ["x quantize=null", "x int8", "status"]
    onnx = {r[0]: r for r in body if r[-1] == "ok"}
    assert onnx["backend=onnx backend.quantize=null"][-3] == "1.00x"  # the first baseline
    assert onnx["backend=onnx backend.quantize=int8"][-2] == "1.00x"  # the second
    assert float(onnx["backend=onnx backend.quantize=int8"][header.index("b2 tok/s")]) > 0
    for name in ("decode_tokens_per_s.png", "step_latency.png", "peak_memory.png"):
        with Image.open(tmp_path / name) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] >= 400
    assert not (tmp_path / "energy_per_token.png").exists() or os.path.isdir("/sys/class/powercap")


def test_report_on_a_damaged_result_warns_and_reports_the_rest(sweep, tmp_path):
    import shutil

    root, _ = sweep
    copy = tmp_path / "copy"
    shutil.copytree(_sweep_dir(root), copy)
    (copy / "2" / "bench.json").write_text("{not json")
    result = run(["report", str(copy)])
    check(result, 0)
    assert "2/bench.json: skipped (" in result.stderr
    assert (copy / "report.md").read_text().count("| backend=onnx") == 1


@pytest.mark.parametrize(("argv", "says"), [
    (["report", "{tmp}/absent"], "no such directory"),
    (["report", "{tmp}"], "no bench results under"),
    (["report", "{sweep}", "--baseline", "backend=tpu"], "--baseline 'backend=tpu' matches no finished job"),
])
def test_report_bad_input_is_a_clear_error(sweep, tmp_path, argv, says):
    root, _ = sweep
    argv = [a.format(tmp=tmp_path, sweep=_sweep_dir(root)) for a in argv]
    check(run(argv), 2, [says])


def test_an_option_no_swept_backend_has_is_refused_before_any_job(tmp_path, tiny_model_dir):
    result = run(["--multirun", *QUICK, f"model.path={tiny_model_dir}", "backend=cpu,onnx",
                  "backend.acuracy_level=0"], env=_env(tmp_path))
    check(result, 2, ["backend.acuracy_level: none of the swept backend choices (cpu, onnx) has this option",
                      "Did you mean 'accuracy_level'?"])
    assert not (tmp_path / "sweeps").exists()


def test_a_failing_job_fails_the_sweep_with_joblib(tmp_path, tiny_model_dir):
    """joblib runs jobs in worker processes: their exit codes still reach the command's."""
    result = run(["--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *QUICK,
                  f"model.path={tiny_model_dir}", "backend=cpu", "app.new_tokens=4,999"], env=_env(tmp_path))
    check(result, 2, ["does not fit the context window"])
    ok, failed = sorted(_sweep_dir(tmp_path).glob("[0-9]*"))
    assert json.loads((ok / "bench.json").read_text())["status"] == "ok"
    assert "does not fit" in json.loads((failed / "run.json").read_text())["error"]


def _processes_naming(text: str) -> list[str]:
    """Pids whose command line mentions ``text`` (what ``pgrep -f`` does, without procps)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(cmdline.parent.name)
        except OSError:
            continue  # it ended while we looked
    return found


def test_a_ray_sweep_of_two_jobs_runs_on_a_local_cluster(tmp_path_factory, tiny_model_dir):
    """hydra/launcher=ray with no address starts a local Ray; its temp dir is inside the test's
    own, and no Ray process outlives the sweep. Ray's socket paths must fit 107 bytes, which
    pytest's temp dirs do not always leave room for (under xdist: .../popen-gw0/...), so Ray
    is given a short link to it."""
    root = tmp_path_factory.mktemp("r")
    ray_tmp = root / "ray"
    ray_tmp.mkdir()
    link = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp")) / "t"
    link.symlink_to(ray_tmp)
    env = {**_env(root), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    try:
        result = run(["--multirun", "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
                      f"+hydra.launcher.ray.init._temp_dir={link}", "+hydra.launcher.ray.init.include_dashboard=false",
                      *QUICK, f"model.path={tiny_model_dir}", "backend=cpu,onnx"], env=env, timeout=600)
    finally:
        link.unlink()
        link.parent.rmdir()
    check(result, 0)
    jobs = sorted(_sweep_dir(root).glob("[0-9]*"))
    assert [json.loads((j / "bench.json").read_text())["backend"]["ran"] for j in jobs] == ["cpu", "onnx"]
    assert any(ray_tmp.glob("session_*")), "Ray kept its files elsewhere"
    for _ in range(50):  # Ray's processes end with its driver, within seconds
        left = _processes_naming(str(ray_tmp)) + _processes_naming(str(link))
        if not left:
            break
        time.sleep(0.2)
    assert not left, f"Ray processes outlived the sweep: {left}"
    report = run(["report", str(_sweep_dir(root))])
    check(report, 0)
    assert (_sweep_dir(root) / "decode_tokens_per_s.png").stat().st_size > 1000
