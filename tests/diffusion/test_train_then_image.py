"""End to end through the command line: app=train trains the diffusion model, app=image
draws with what it wrote. (The training app's own guarantees are in tests/train.)"""

from __future__ import annotations

import csv
from pathlib import Path

from badinput import check, run

TINY = ["model=digits-diffusion", "model.weights=random", "model.channels=[8,16]", "model.text_width=8",
        "backend=cpu", "backend.threads=1"]


def test_a_model_trained_by_app_train_draws_with_app_image(tmp_path):
    env = {"PLUGSTACK_OUTPUTS": str(tmp_path / "outputs")}
    directory = tmp_path / "train"
    trained = run(["app=train", *TINY, "app.steps=30", "app.batch_size=16", "app.lr=3e-3", "app.eval_every=15",
                   "app.checkpoint_every=15", f"app.directory={directory}"], env=env)
    check(trained, 0)
    weights = directory / "model.safetensors"
    assert str(weights) in trained.stdout
    rows = list(csv.DictReader((directory / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    first, last = (sum(float(r["loss"]) for r in part) / 5 for part in (rows[:5], rows[-5:]))
    assert last < first, f"the noise-prediction loss did not fall: {first:.3f} -> {last:.3f}"

    drawn = run(["app=image", *TINY[:1], f"model.weights={weights}", *TINY[2:], "a bold 7", "app.num_images=2",
                 "app.steps=5"], env=env)
    check(drawn, 0)
    assert [Path(p).name for p in drawn.stdout.split()] == ["image-000.png", "image-001.png", "grid.png"]
