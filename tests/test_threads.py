"""fastbp.threads: setting, restoring, and results that never depend on the thread count."""

import numba
import numpy as np
import pytest

from fastbp import layers, threads
from fastbp.kernels import activations, jit


@pytest.fixture(autouse=True)
def restore_default():
    saved = (numba.get_num_threads(), jit.ADAPT_TO_LOAD)
    yield
    numba.set_num_threads(saved[0])
    jit.ADAPT_TO_LOAD = saved[1]


def test_set_and_get():
    threads.set_num_threads(1)
    assert threads.get_num_threads() == 1 and not jit.ADAPT_TO_LOAD
    threads.set_num_threads(None)
    assert threads.get_num_threads() == numba.config.NUMBA_NUM_THREADS and jit.ADAPT_TO_LOAD


@pytest.mark.parametrize("bad", [0, -1, numba.config.NUMBA_NUM_THREADS + 1])
def test_out_of_range_count_raises(bad):
    with pytest.raises(ValueError, match="thread count"):
        threads.set_num_threads(bad)


def test_context_manager_restores_even_on_error():
    before = (threads.get_num_threads(), jit.ADAPT_TO_LOAD)
    with pytest.raises(RuntimeError), threads.threads(1):
        assert threads.get_num_threads() == 1
        raise RuntimeError("inside")
    assert (threads.get_num_threads(), jit.ADAPT_TO_LOAD) == before


def test_serial_below_threshold_and_forced_threads_at_zero(monkeypatch):
    assert jit.threads_for(jit.PARALLEL_MIN_ELEMENTS - 1) == 1
    monkeypatch.setattr(jit, "PARALLEL_MIN_ELEMENTS", 0)
    assert jit.threads_for(10) == numba.get_num_threads()


def test_load_check_never_exceeds_the_count(monkeypatch):
    monkeypatch.setattr(jit, "idle_cores", lambda: 0)
    assert jit.threads_for(1 << 30) == 1
    monkeypatch.setattr(jit, "idle_cores", lambda: 64)
    assert jit.threads_for(1 << 30) == numba.get_num_threads()
    jit.ADAPT_TO_LOAD = False
    monkeypatch.setattr(jit, "idle_cores", lambda: 0)
    assert jit.threads_for(1 << 30) == numba.get_num_threads()


def test_idle_cores_is_a_count_or_none():
    n = jit.idle_cores()
    assert n is None or 0 <= n <= (numba.config.NUMBA_NUM_THREADS or 1) + 64


def _everything(dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 700)).astype(dtype)
    W = rng.standard_normal((700, 90)).astype(dtype)
    b = rng.standard_normal(90).astype(dtype)
    out = []
    for layer in (layers.Relu(), layers.Sigmoid()):
        y = layer.forward(x)
        out += [y, layer.backward(x)]
    affine = layers.Affine(W, b)
    y = affine.forward(x)
    out += [y, affine.backward(y), affine.dW, affine.db]
    loss = layers.SoftmaxWithLoss()
    out += [np.asarray(loss.forward(y, rng.integers(0, 90, 64))), loss.backward()]
    return [a.tobytes() for a in out]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bit_identical_for_1_2_and_n_threads(dtype, monkeypatch):
    monkeypatch.setattr(jit, "PARALLEL_MIN_ELEMENTS", 0)  # threaded builds at this size
    with threads.threads(1):
        expected = _everything(dtype)
    for n in sorted({2, numba.config.NUMBA_NUM_THREADS}):
        if n > numba.config.NUMBA_NUM_THREADS:
            continue
        with threads.threads(n):
            assert _everything(dtype) == expected


def test_small_products_give_the_same_bits_every_call():
    """The BLAS thread rule is by size only: a product's bits never depend on the load."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((100, 784))
    layer = layers.Affine(rng.standard_normal((784, 50)), np.zeros(50))
    first = layer.forward(x).tobytes()
    dx = layer.backward(np.ones((100, 50))).tobytes()
    for _ in range(20):
        assert layer.forward(x).tobytes() == first
        assert layer.backward(np.ones((100, 50))).tobytes() == dx


def test_product_threads_restores_blas_count():
    blas = threads._blas_handle()
    if blas.set is None:
        pytest.skip("no OpenBLAS found")
    before = blas.get()
    for _ in range(20):
        with threads.product_threads(1 << 22):
            assert blas.get() == 1
    assert blas.get() == before
    with threads.product_threads(1 << 30):
        assert blas.get() == before


def test_kernel_below_threshold_never_reads_load(monkeypatch):
    def fail():
        raise AssertionError("load read for a small array")
    monkeypatch.setattr(jit, "idle_cores", fail)
    x = np.ones(100)
    activations.relu_forward(x, np.empty_like(x), np.empty(100, dtype=bool))
