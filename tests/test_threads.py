"""fastbp.threads: setting, restoring, and results that never depend on the thread count."""

import os
import threading

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
    monkeypatch.setattr(jit, "idle_cores", lambda ours=0: 0)
    assert jit.threads_for(1 << 30) == 1
    monkeypatch.setattr(jit, "idle_cores", lambda ours=0: 64)
    assert jit.threads_for(1 << 30) == numba.get_num_threads()
    jit.ADAPT_TO_LOAD = False
    monkeypatch.setattr(jit, "idle_cores", lambda ours=0: 0)
    assert jit.threads_for(1 << 30) == numba.get_num_threads()


def test_idle_cores_is_a_count_or_none():
    n = jit.idle_cores()
    assert n is None or 0 <= n <= (os.cpu_count() or 1) - 1
    credited = jit.idle_cores(ours=1000)  # never more than the cores beside the caller's
    assert credited is None or credited == (os.cpu_count() or 1) - 1


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


def test_products_at_a_fixed_blas_count_give_the_same_bits_every_call():
    """With your BLAS count at 1 (or the load check off), a product's bits never vary."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((100, 784))
    layer = layers.Affine(rng.standard_normal((784, 50)), np.zeros(50))
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        first = layer.forward(x).tobytes()
        dx = layer.backward(np.ones((100, 50))).tobytes()
        for _ in range(20):
            assert layer.forward(x).tobytes() == first
            assert layer.backward(np.ones((100, 50))).tobytes() == dx


class FakeBlas:
    """A BLAS library controller that records what fastbp asks of it."""

    def __init__(self, count):
        self.count = count
        self.sets = []
        self.lock = threading.Lock()

    def get_num_threads(self):
        return self.count

    def set_num_threads(self, n):
        with self.lock:
            self.sets.append(n)
            self.count = n


@pytest.fixture
def fake_blas(monkeypatch):
    """Install a fake BLAS with a count of 4 and no spinning workers; return it."""
    lib = FakeBlas(4)
    blas = threads._BlasLibrary.__new__(threads._BlasLibrary)
    blas.lib, blas.clear_control = lib, None
    blas.spin_seconds, blas.spin_until, blas.spinning = 0.0, 0.0, 0
    monkeypatch.setattr(threads, "_blas", blas)
    monkeypatch.setattr(threads, "_blas_changed", False)
    return lib


BIG = threads.PRODUCT_THREADS_MIN_FLOPS


@pytest.mark.parametrize(("idle", "inside"), [(0, 1), (1, 2), (2, 3), (3, 4), (64, 4)])
def test_product_threads_use_the_idle_cores_up_to_your_count(fake_blas, monkeypatch, idle,
                                                            inside):
    monkeypatch.setattr(jit, "idle_cores", lambda ours=0: idle)
    with threads.ProductThreads(BIG):
        assert fake_blas.count == inside  # never more than 1 + idle, never more than yours
    assert fake_blas.count == 4
    assert fake_blas.sets == ([] if inside == 4 else [inside, 4])  # untouched when it fits


def test_product_threads_never_raise_your_count(fake_blas, monkeypatch):
    fake_blas.count = 1  # e.g. OPENBLAS_NUM_THREADS=1, or threadpoolctl's limit
    monkeypatch.setattr(jit, "idle_cores", lambda ours=0: 64)
    with threads.ProductThreads(BIG):
        assert fake_blas.count == 1
    fake_blas.count = 3  # a limit changed between products is read at the next one
    monkeypatch.setattr(jit, "idle_cores", lambda ours=0: 1)
    with threads.ProductThreads(BIG):
        assert fake_blas.count == 2
    assert fake_blas.count == 3
    assert fake_blas.sets == [2, 3]


def test_product_threads_restore_on_error(fake_blas, monkeypatch):
    monkeypatch.setattr(jit, "idle_cores", lambda ours=0: 0)
    with pytest.raises(ValueError, match="inside"), threads.ProductThreads(BIG):
        assert fake_blas.count == 1
        raise ValueError("inside")
    assert fake_blas.count == 4 and not threads._blas_changed


@pytest.mark.parametrize("case", ["small", "no load check", "no loadavg"])
def test_product_threads_leave_blas_alone(fake_blas, monkeypatch, case):
    flops = BIG - 1 if case == "small" else BIG
    if case == "no load check":
        jit.ADAPT_TO_LOAD = False  # set_num_threads(n): BLAS runs on its own count
    monkeypatch.setattr(jit, "idle_cores", lambda ours=0: None if case == "no loadavg" else 0)
    with threads.ProductThreads(flops):
        assert fake_blas.count == 4
    assert fake_blas.sets == []


def test_spinning_workers_of_our_last_product_count_as_idle(fake_blas, monkeypatch):
    asked = []

    def idle_cores(ours=0):
        asked.append(ours)
        return 2
    monkeypatch.setattr(jit, "idle_cores", idle_cores)
    threads._blas.spin_seconds = 60.0
    with threads.ProductThreads(BIG):  # 3 threads: 2 workers spin after it
        pass
    with threads.ProductThreads(BIG):
        pass
    threads._blas.spin_until = 0.0  # the workers have gone to sleep
    with threads.ProductThreads(BIG):
        pass
    assert asked == [0, 2, 0]


def test_product_threads_from_many_python_threads(fake_blas, monkeypatch):
    """Concurrent blocks never leave the count changed, and never run above anyone's ask."""
    monkeypatch.setattr(jit, "idle_cores", lambda ours=0: 0)
    seen, errors = [], []

    def work():
        try:
            for _ in range(300):
                with threads.ProductThreads(BIG):
                    seen.append(fake_blas.count)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    workers = [threading.Thread(target=work) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    assert fake_blas.count == 4 and not threads._blas_changed
    assert set(seen) <= {1, 4} and 1 in seen
    # Every lowering was undone before the next one: the sets alternate 1, 4, 1, 4, ...
    assert fake_blas.sets == [1, 4] * (len(fake_blas.sets) // 2)


def _real_blas():
    blas = threads._find_blas()
    if blas.lib is None:
        pytest.skip("no BLAS library that threadpoolctl can control")
    return blas.lib


def test_real_blas_count_lowered_inside_and_restored(monkeypatch):
    lib = _real_blas()
    before = lib.get_num_threads()
    if before < 2:
        pytest.skip("BLAS runs on one thread here")
    monkeypatch.setattr(jit, "idle_cores", lambda ours=0: 0)
    for _ in range(20):
        with threads.ProductThreads(BIG):
            assert lib.get_num_threads() == 1
        assert lib.get_num_threads() == before
    monkeypatch.setattr(jit, "idle_cores", lambda ours=0: 64)
    with threads.ProductThreads(BIG):
        assert lib.get_num_threads() == before


def test_real_blas_from_python_threads_then_threadpoolctl_still_works(monkeypatch):
    """Affine from several Python threads at once, with every product lowering the count:
    results are right, the count is restored, and threadpoolctl keeps control of BLAS."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    lib = _real_blas()
    before = lib.get_num_threads()
    monkeypatch.setattr(jit, "idle_cores", lambda ours=0: 0)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 300))
    W = rng.standard_normal((300, 40))
    expected = x @ W
    errors, finished, release = [], threading.Barrier(5), threading.Event()

    def work():
        try:
            layer = layers.Affine(W, np.zeros(40))
            for _ in range(30):
                np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-12, atol=1e-12)
                layer.backward(np.ones((64, 40)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finished.wait()
        release.wait()  # stay alive: threadpoolctl >= 3.8 lets a live thread keep control
    workers = [threading.Thread(target=work) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        finished.wait()
        assert not errors
        assert lib.get_num_threads() == before
        with threadpoolctl.threadpool_limits(1, user_api="blas"):
            assert lib.get_num_threads() == 1
        assert lib.get_num_threads() == before
    finally:
        release.set()
        for w in workers:
            w.join()


def test_kernel_below_threshold_never_reads_load(monkeypatch):
    def fail():
        raise AssertionError("load read for a small array")
    monkeypatch.setattr(jit, "idle_cores", fail)
    x = np.ones(100)
    activations.relu_forward(x, np.empty_like(x), np.empty(100, dtype=bool))


@pytest.mark.parametrize(("value", "timeout"), [(None, 28), ("", 28), ("junk", 28), ("0", 28),
                                                ("-3", 28), ("1", 4), ("20", 20), ("99", 30)])
def test_openblas_spin_window_follows_its_timeout(monkeypatch, value, timeout):
    if value is None:
        monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", value)
    assert threads._openblas_spin_seconds() == (1 << timeout) / 5e9 / 2
