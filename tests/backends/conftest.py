"""Fixtures for backend tests. Heavy imports happen inside fixtures only."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """``backend.threads`` sets torch's process-wide thread count: undo it after each test
    so one test's setting does not leak into the next."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None and before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core runner OpenMP's spinning
    threads make each step ~5x slower; run on one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
