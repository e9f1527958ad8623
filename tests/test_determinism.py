"""Bit-identical results on every call, in both builds, at every thread count.

The matrix products are BLAS's, whose last bits depend on BLAS's thread count, which fastbp
picks by the load: BLAS runs on one thread here, as a user who wants repeatable bits sets it.
"""

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from fastbp import layers
from fastbp.kernels import parallel


@pytest.fixture(autouse=True)
def one_blas_thread():
    with threadpool_limits(1, user_api="blas"):
        yield


def run_all(dtype, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    x = rng.standard_normal((300, 700)).astype(dtype)
    W = rng.standard_normal((700, 300)).astype(dtype)
    b = rng.standard_normal(300).astype(dtype)
    t = rng.integers(0, 300, 300)
    out = []
    for layer, args in ((layers.Relu(), (x,)), (layers.Sigmoid(), (x,))):
        y = layer.forward(*args)
        out += [y, layer.backward(np.ones_like(y))]
    affine = layers.Affine(W, b)
    y = affine.forward(x)
    out += [y, affine.backward(y), affine.dW, affine.db]
    for target in (t, np.eye(300, dtype=dtype)[t]):
        loss_layer = layers.SoftmaxWithLoss()
        out += [np.asarray(loss_layer.forward(y, target)), loss_layer.y, loss_layer.backward()]
    return out


def assert_identical(a, b):
    for k, (p, q) in enumerate(zip(a, b, strict=True)):
        assert p.dtype == q.dtype and p.shape == q.shape, k
        assert p.tobytes() == q.tobytes(), f"output {k} differs"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_repeated_calls_and_builds_and_thread_counts(dtype):
    with parallel.settings(parallel_min_elements=parallel.BUILDS["serial"]):
        serial = run_all(dtype)
        assert_identical(serial, run_all(dtype))
    saved = numba.get_num_threads()
    try:
        with parallel.settings(parallel_min_elements=parallel.BUILDS["threaded"]):
            for n in sorted({1, 2, numba.config.NUMBA_NUM_THREADS}):
                numba.set_num_threads(n)
                assert_identical(serial, run_all(dtype))
    finally:
        numba.set_num_threads(saved)
