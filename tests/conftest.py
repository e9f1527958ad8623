import os

import numba
import pytest
from hypothesis import settings

from fastbp.kernels import parallel

# JIT compiles on first call; a deadline would fail the first example of every test.
settings.register_profile("fastbp", deadline=None, max_examples=60, print_blob=True)
settings.register_profile("ci", deadline=None, max_examples=60, derandomize=True,
                          print_blob=True)
settings.register_profile("thorough", deadline=None, max_examples=3000, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def default_thread_settings():
    """Every test starts from, and leaves, fastbp's default thread settings."""
    parallel._reset()
    yield
    parallel._reset()
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    parallel.set_count_fixed(False)


@pytest.fixture(params=list(parallel.BUILDS))
def build(request):
    """Run the test once with the serial kernels and once with the threaded ones."""
    with parallel.settings(parallel_min_elements=parallel.BUILDS[request.param]):
        yield request.param
