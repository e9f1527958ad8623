import os

import numpy as np
import pytest
from hypothesis import settings

from fastbp.kernels import jit

# JIT compiles on first call; a deadline would fail the first example of every test.
settings.register_profile("fastbp", deadline=None, max_examples=60, print_blob=True)
settings.register_profile("ci", deadline=None, max_examples=60, derandomize=True,
                          print_blob=True)
settings.register_profile("thorough", deadline=None, max_examples=3000, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

BUILDS = {"serial": np.iinfo(np.int64).max, "threaded": 0}


@pytest.fixture(params=list(BUILDS))
def build(request, monkeypatch):
    """Run the test once with the serial kernels and once with the threaded ones."""
    monkeypatch.setattr(jit, "PARALLEL_MIN_ELEMENTS", BUILDS[request.param])
    return request.param
