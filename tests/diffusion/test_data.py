"""The digits data: real scans, upsampled and sheared, with attributes measured per digit."""

from __future__ import annotations

import numpy as np
import pytest

from plugstack.errors import ConfigError
from plugstack.plugins.diffusion.data import CaptionedImages, digits, ink, load_data, shear, slant


@pytest.fixture(scope="module")
def data():
    return digits(16)


def test_every_scan_comes_three_times_with_measured_attributes(data):
    assert data.images.shape == (1797 * 3, 16, 16)
    assert 0 <= data.images.min() and data.images.max() <= 1
    digits_ = np.array([int(a["digit"]) for a in data.attributes])
    assert np.bincount(digits_).min() >= 3 * 170
    for key, names in (("weight", ("light", "regular", "bold")), ("slant", ("left", "upright", "right"))):
        counts = {n: sum(a[key] == n for a in data.attributes) for n in names}
        assert min(counts.values()) > 0.3 * len(data.attributes), counts  # thirds within each digit


def test_bold_has_more_ink_and_right_leans_right(data):
    attrs = data.attributes
    for d in ("1", "7"):
        def of(key, v, d=d):
            return np.array([a["digit"] == d and a[key] == v for a in attrs])

        assert ink(data.images[of("weight", "bold")]).min() > ink(data.images[of("weight", "light")]).max()
        assert slant(data.images[of("slant", "right")]).min() > slant(data.images[of("slant", "left")]).max()


def test_a_positive_shear_leans_the_top_right():
    bar = np.zeros((1, 16, 16), dtype=np.float32)
    bar[0, 2:14, 7:9] = 1.0  # an upright stroke
    assert abs(slant(bar)[0]) < 1e-6
    leaning = shear(bar, 0.25)
    assert slant(leaning)[0] > 0.2
    top, bottom = leaning[0, 3].argmax(), leaning[0, 12].argmax()
    assert top > bottom, "the top of the stroke moved right of its bottom"


def test_the_held_out_split_never_holds_a_variant_of_a_training_scan(data):
    train, held = data.split()
    assert len(held.images) == 3 * 180 and not set(train.groups) & set(held.groups)


def test_a_plugin_brings_its_own_data_or_gets_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "mydata.py").write_text(
        "import numpy as np\n"
        "from plugstack.plugins.diffusion.data import CaptionedImages\n"
        "def load():\n"
        "    return CaptionedImages(np.zeros((2, 16, 16), np.float32), [{'digit': '1', 'weight': 'bold', "
        "'slant': 'left'}] * 2)\n"
        "def wrong():\n"
        "    return [1, 2]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert len(load_data("mydata:load", 16).images) == 2
    with pytest.raises(ConfigError, match="returned list, not CaptionedImages"):
        load_data("mydata:wrong", 16)
    with pytest.raises(ConfigError, match=r"model\.size=16"):
        load_data("mydata:load", 32)
    with pytest.raises(ConfigError, match="cannot be loaded"):
        load_data("mydata:missing", 16)
    with pytest.raises(ConfigError, match="neither 'digits'"):
        load_data("cifar", 16)
    with pytest.raises(ConfigError, match="N attribute dicts"):
        CaptionedImages(np.zeros((2, 16, 16)), [])
