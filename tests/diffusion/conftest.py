"""Fixtures of the diffusion tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def digits_onnx_cache(tmp_path_factory) -> str:
    """One ONNX cache for every diffusion test: the shipped model is exported once."""
    path = tmp_path_factory.getbasetemp() / "digits-onnx-cache"
    path.mkdir(exist_ok=True)
    return str(path)
