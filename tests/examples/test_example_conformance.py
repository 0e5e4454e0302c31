"""The example third-party backend passes the same conformance kit as the built-ins."""

from __future__ import annotations

from typing import ClassVar

import pytest

from plugstack.testing import BackendConformance
from plugstack_example.backend import PinnedCpuBackend
from plugstack_example.plugin import PinnedCpuConfig


def make_pinned(**overrides) -> PinnedCpuBackend:
    return PinnedCpuBackend(PinnedCpuConfig(**overrides))


class TestPinnedCpu(BackendConformance):
    reduced_precision_atol: ClassVar[dict[str, float]] = {"bf16": 3e-2}

    @pytest.fixture
    def backend(self):
        return make_pinned()

    @pytest.fixture
    def make_backend(self):
        return make_pinned

    @pytest.fixture
    def unsupported_options(self):
        return [{"dtype": "fp16"}, {"cores": [4096]}]
