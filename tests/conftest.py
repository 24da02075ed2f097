"""Shared test settings: a small, deadline-free hypothesis profile so property tests stay fast on CI."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

# ci: a fixed seed (derandomize), so every CI run tries the same cases; thorough: 20 times as many, random
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The test models are tiny: intra-op threads only add overhead, and on a busy 2-core machine they thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
