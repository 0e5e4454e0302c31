"""app=image as a user runs it: PNGs and a grid in the run directory, the same for the same
seed, the same on cpu and onnx within a stated tolerance, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from badinput import check, run

PROMPT = "a bold seven leaning right"
#: Max |pixel difference| (pixels in [0, 1]) between cpu and onnx images for one seed
#: (measured 3e-6 over 32 images, benchmarks/bench_digits.py).
CPU_ONNX_TOLERANCE = 1e-4


def _argv(*args: str) -> list[str]:
    return ["app=image", "model=digits-diffusion", "backend=cpu", "backend.threads=1", *args]


def _env(tmp_path: Path) -> dict[str, str]:
    return {"PLUGSTACK_OUTPUTS": str(tmp_path / "outputs"), "PLUGSTACK_HOME": str(tmp_path / "home")}


def _image(tmp_path: Path, *args: str):
    """A run in a fresh process, as a user's."""
    return run(_argv(*args), env=_env(tmp_path))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("image")
    return tmp, _image(tmp, PROMPT, "app.num_images=4", "app.seed=0")


def test_a_run_writes_one_png_per_image_a_grid_and_a_record(first_run):
    from PIL import Image

    _, result = first_run
    check(result, 0)
    paths = [Path(p) for p in result.stdout.split()]
    assert [p.name for p in paths] == [f"image-00{i}.png" for i in range(4)] + ["grid.png"]
    run_dir = paths[0].parent
    for p in paths[:4]:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size == (128, 128)  # 16 px upscaled 8x for viewing
    with Image.open(paths[-1]) as grid:
        assert grid.size == ((2 * 17 + 1) * 8,) * 2  # 2 x 2 images with 1-px borders
    record = json.loads((run_dir / "images.json").read_text())
    assert record["prompt"] == PROMPT and record["seed"] == 0 and record["backend"] == "cpu"
    assert record["steps"] > 0 and record["guidance"] > 0 and len(record["files"]) == 4
    assert json.loads((run_dir / "run.json").read_text())["config"]["app"]["seed"] == 0


def test_the_same_seed_gives_the_same_images_and_another_seed_others(first_run, cli_in_process):
    tmp, result = first_run
    with cli_in_process(_env(tmp)) as cli:
        again = cli(_argv(PROMPT, "app.num_images=4", "app.seed=0"))
        other = cli(_argv(PROMPT, "app.num_images=4", "app.seed=1"))
    check(again, 0)
    check(other, 0)
    first = [Path(p).read_bytes() for p in result.stdout.split()[:4]]
    assert [Path(p).read_bytes() for p in again.stdout.split()[:4]] == first
    assert all(a != b for a, b in zip((Path(p).read_bytes() for p in other.stdout.split()[:4]), first, strict=True))


def test_cpu_and_onnx_give_the_same_images_within_tolerance(digits_onnx_cache):
    import plugstack
    from plugstack.plugins.diffusion.loader import load

    model = load()
    sampler = model.offers["image"]
    images = {}
    for name, options in (("cpu", {}), ("onnx", {"cache_dir": digits_onnx_cache, "threads": 1})):
        runner = plugstack.create_backend(name, **options).prepare(model)
        images[name] = sampler.sample(runner, PROMPT, num_images=8, seed=3, steps=25, guidance=3.0)
        runner.close()
    worst = float(np.abs(images["cpu"] - images["onnx"]).max())
    assert worst <= CPU_ONNX_TOLERANCE, f"cpu and onnx images differ by up to {worst:.2g}"


@pytest.mark.parametrize(("args", "says"), [
    (["a purple seven leaning sideways"], ["'purple', 'sideways'", "It understands"]),
    ([PROMPT, "app.num_images=0"], ["app.num_images=0", "1 to 1024"]),
    ([PROMPT, "app.num_images=5000"], ["app.num_images=5000"]),
    ([PROMPT, "app.steps=0"], ["app.steps=0"]),
    ([PROMPT, "app.guidance=-1"], ["app.guidance=-1"]),
    ([PROMPT, "app.scale=0"], ["app.scale=0"]),
    ([], ["needs a prompt"]),
    ([PROMPT, "model.weights=/nonexistent/model.safetensors"], ["no file at /nonexistent/model.safetensors"]),
])
def test_bad_input_is_a_clear_error_and_writes_no_image(tmp_path, cli_in_process, args, says):
    with cli_in_process(_env(tmp_path)) as cli:
        result = cli(_argv(*args))
    check(result, 2, says)
    assert not list((tmp_path / "outputs").rglob("*.png"))


def test_a_model_that_makes_no_images_says_so(tmp_path, cli_in_process):
    with cli_in_process(_env(tmp_path)) as cli:
        result = cli(["app=image", "model=bigram", "backend=cpu", "a bold seven"])
    check(result, 2, ["makes no images", "model=digits-diffusion"])


@pytest.mark.parametrize(("args", "says"), [
    ([PROMPT, "app.steps=1001"], ["at most 1000 denoising steps"]),
    ([PROMPT, "app.num_images=1024", "app.scale=64"], ["million pixels", "Lower app.scale"]),
    ([PROMPT, "model.guidance=-1"], ["model.guidance=-1"]),
    (["!!!"], ["names no digit"]),
])
def test_what_the_model_bounds_is_refused_before_a_graph_is_built(tmp_path, cli_in_process, args, says):
    with cli_in_process(_env(tmp_path)) as cli:
        result = cli(["app=image", "model=digits-diffusion", "backend=onnx", f"backend.cache_dir={tmp_path / 'c'}",
                      *args])
    check(result, 2, says)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.onnx"))
