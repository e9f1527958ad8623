"""The numba internals fastbp relies on: these fail loudly when a numba release renames one.

``kernels/jit.py`` replaces each compiled kernel's cache (``dispatcher._cache``) with a subclass
of ``numba.core.caching.FunctionCache`` that extends ``_index_key`` (the build variant joins the
key) and sets ``_cache_file._source_stamp`` (a hash of all kernel sources decides freshness).
``kernels/parallel.py`` reads ``numba.np.ufunc.parallel._is_initialized`` and calls
``_launch_threads``. A rename would silently switch off the source hash or the variant key (a
stale or wrong kernel loaded from the cache), or break ``import fastbp``. ``pyproject.toml`` pins
the numba range these pass on, and CI runs them on both ends of it.
"""

import inspect
import os
import pickle
import subprocess
import sys
import textwrap

import numba
import pytest
from numba.core import caching, dispatcher
from numba.np.ufunc import parallel as numba_parallel

from fastbp.kernels import activations, jit


def source(obj):
    return inspect.getsource(obj)


def test_function_cache_index_key_is_there_and_used():
    assert list(inspect.signature(caching.FunctionCache._index_key).parameters) == [
        "self", "sig", "codegen"]
    # numba's Cache must still build its key through the method fastbp overrides
    assert "self._index_key(" in source(caching.Cache)


def test_cache_file_source_stamp_is_there_and_used():
    cache = jit._TolerantCache(activations.relu_forward.__wrapped__, ("variant",))
    assert isinstance(cache._cache_file, caching.IndexDataCacheFile)
    assert cache._cache_file._source_stamp == jit._SOURCES_DIGEST
    # the stamp fastbp sets is the one numba writes into, and checks against, the index
    assert "self._source_stamp" in source(caching.IndexDataCacheFile)


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="no dispatchers under NUMBA_DISABLE_JIT")
def test_dispatcher_cache_is_there_and_used():
    for build in (activations.relu_forward.serial, activations.relu_forward.parallel):
        assert isinstance(build, dispatcher.Dispatcher)
        assert isinstance(build._cache, jit._TolerantCache), "fastbp's cache is not installed"
    assert (activations.relu_forward.serial._cache._variant
            != activations.relu_forward.parallel._cache._variant)
    dispatcher_source = source(dispatcher.Dispatcher)
    assert "self._cache.load_overload(" in dispatcher_source
    assert "self._cache.save_overload(" in dispatcher_source


def test_thread_pool_hooks_are_there():
    assert isinstance(numba_parallel._is_initialized, bool)
    assert callable(numba_parallel._launch_threads)


FILL_CACHE = """
import numpy as np
from fastbp.kernels import activations, parallel
x = np.linspace(-1, 1, 64)
activations.relu_forward(x, np.empty_like(x), np.empty(64, dtype=bool))
with parallel.settings(parallel_min_elements=0, adapt_to_load=False):
    activations.relu_forward(x, np.empty_like(x), np.empty(64, dtype=bool))
print(activations.relu_forward.serial.stats.cache_hits.get(
    activations.relu_forward.serial.signatures[0], 0))
"""


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="no cache under NUMBA_DISABLE_JIT")
def test_cache_index_holds_the_source_hash_and_the_build_variant(tmp_path):
    """End to end: the index numba writes carries fastbp's stamp and one entry per build, and
    a second process loads the kernel from it instead of compiling it again."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    hits = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(FILL_CACHE)], env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        hits.append(int(proc.stdout.split()[-1]))
    assert hits == [0, 1], hits
    indexes = [p for p in tmp_path.rglob("*.nbi") if "relu_forward" in p.name]
    assert indexes, sorted(p.name for p in tmp_path.rglob("*"))
    variants = set()
    for path in indexes:
        with open(path, "rb") as f:
            pickle.load(f)  # numba's version
            stamp, overloads = pickle.loads(f.read())
        assert stamp == jit._SOURCES_DIGEST, path.name
        variants |= {key[-1] for key in overloads}
    boundscheck = bool(numba.config.BOUNDSCHECK)
    assert {(False, (), boundscheck), (True, (), boundscheck)} <= variants, variants
