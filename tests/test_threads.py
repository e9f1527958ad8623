"""fastbp.threads and fastbp.kernels.parallel: setting, restoring, per-thread counts, and results
that never depend on the thread count. (conftest.py restores the defaults after every test.)"""

import contextlib
import os
import subprocess
import sys
import textwrap
import threading

import numba
import numpy as np
import pytest

from fastbp import layers, threads
from fastbp.kernels import activations, jit, parallel

BIG = 1 << 30


def test_set_and_get():
    threads.set_num_threads(1)
    assert threads.get_num_threads() == 1 and parallel.count_fixed()
    threads.set_num_threads(None)
    assert threads.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    assert not parallel.count_fixed()


@pytest.mark.parametrize("bad", [0, -1, numba.config.NUMBA_NUM_THREADS + 1])
def test_out_of_range_count_raises(bad):
    with pytest.raises(ValueError, match="thread count"):
        threads.set_num_threads(bad)


@pytest.mark.parametrize("bad", [1.7, 2.0, "2", True, float("nan")])
def test_a_count_that_is_not_an_integer_raises(bad):
    """1.7 was truncated to 1, and "2" and True were taken."""
    before = threads.get_num_threads()
    with pytest.raises(TypeError, match="thread count must be an integer or None"):
        threads.set_num_threads(bad)
    assert threads.get_num_threads() == before


def test_context_manager_restores_even_on_error():
    before = (threads.get_num_threads(), parallel.count_fixed())
    with pytest.raises(RuntimeError), threads.threads(1):
        assert threads.get_num_threads() == 1 and parallel.count_fixed()
        raise RuntimeError("inside")
    assert (threads.get_num_threads(), parallel.count_fixed()) == before


def test_serial_below_threshold_and_forced_threads_at_zero():
    assert parallel.threads_for(parallel.PARALLEL_MIN_ELEMENTS - 1) == 1
    with parallel.settings(parallel_min_elements=0):
        assert parallel.threads_for(10) == numba.get_num_threads()


def test_load_check_never_exceeds_the_count(monkeypatch):
    monkeypatch.setattr(parallel, "idle_cores", lambda ours=0: 0)
    assert parallel.threads_for(BIG) == 1
    monkeypatch.setattr(parallel, "idle_cores", lambda ours=0: 64)
    assert parallel.threads_for(BIG) == numba.get_num_threads()
    monkeypatch.setattr(parallel, "idle_cores", lambda ours=0: 0)
    with parallel.settings(adapt_to_load=False):
        assert parallel.threads_for(BIG) == numba.get_num_threads()
    assert parallel.threads_for(BIG) == 1


def test_settings_set_and_restore_even_on_error():
    default = (parallel.PARALLEL_MIN_ELEMENTS, parallel.ADAPT_TO_LOAD)
    assert default == (1 << 18, True)
    with pytest.raises(RuntimeError), parallel.settings(parallel_min_elements=5):
        assert (parallel.PARALLEL_MIN_ELEMENTS, parallel.ADAPT_TO_LOAD) == (5, True)
        with parallel.settings(adapt_to_load=False):
            assert (parallel.PARALLEL_MIN_ELEMENTS, parallel.ADAPT_TO_LOAD) == (5, False)
        assert parallel.ADAPT_TO_LOAD
        raise RuntimeError("inside")
    assert (parallel.PARALLEL_MIN_ELEMENTS, parallel.ADAPT_TO_LOAD) == default
    with pytest.raises(ValueError, match=">= 0"), parallel.settings(parallel_min_elements=-1):
        pass
    for bad in (2.5, "5", True):
        with pytest.raises(TypeError, match="parallel_min_elements must be an integer"), \
                parallel.settings(parallel_min_elements=bad):
            pass
    for bad in ("no", 0, None.__class__):  # "no" was read as true
        with pytest.raises(TypeError, match="adapt_to_load must be True or False"), \
                parallel.settings(adapt_to_load=bad):
            pass
    with parallel.settings(parallel_min_elements=np.int64(7), adapt_to_load=np.False_):
        assert (parallel.PARALLEL_MIN_ELEMENTS, parallel.ADAPT_TO_LOAD) == (7, False)
    assert (parallel.PARALLEL_MIN_ELEMENTS, parallel.ADAPT_TO_LOAD) == default


def test_reset_restores_the_defaults():
    parallel.PARALLEL_MIN_ELEMENTS, parallel.ADAPT_TO_LOAD = 3, False
    parallel._reset()
    assert (parallel.PARALLEL_MIN_ELEMENTS, parallel.ADAPT_TO_LOAD) == (1 << 18, True)


def test_old_jit_names_read_through_and_refuse_writes():
    """``from .jit import kernel, sized`` still works; a write to a moved setting would do
    nothing, so it raises."""
    from fastbp.kernels.jit import kernel, sized  # noqa: F401

    assert sized is parallel.sized
    assert jit.PARALLEL_MIN_ELEMENTS == parallel.PARALLEL_MIN_ELEMENTS
    with pytest.raises(AttributeError, match="settings"):
        jit.PARALLEL_MIN_ELEMENTS = 0
    with pytest.raises(AttributeError, match="parallel"):
        jit.ADAPT_TO_LOAD = False
    with pytest.raises(AttributeError):
        jit.no_such_name  # noqa: B018
    assert parallel.PARALLEL_MIN_ELEMENTS == 1 << 18


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two numba threads")
def test_a_count_set_in_one_thread_leaves_the_others_alone(monkeypatch):
    """``threads(n)`` in one Python thread changes neither the count nor the load check that
    another Python thread gets."""
    monkeypatch.setattr(parallel, "idle_cores", lambda ours=0: 0)  # busy: adaptive gives 1
    n = numba.config.NUMBA_NUM_THREADS
    inside, other = threading.Event(), threading.Event()
    seen = {}

    def elsewhere():
        inside.wait(timeout=60)
        seen["count"] = threads.get_num_threads()
        seen["threads"] = parallel.threads_for(BIG)
        seen["fixed"] = parallel.count_fixed()
        other.set()

    worker = threading.Thread(target=elsewhere)
    worker.start()
    with threads.threads(n):
        assert parallel.threads_for(BIG) == n  # set by hand: no load check here
        inside.set()
        assert other.wait(timeout=60)
    worker.join()
    assert seen == {"count": n, "threads": 1, "fixed": False}
    with threads.threads(1):
        done = []
        t = threading.Thread(target=lambda: done.append(threads.get_num_threads()))
        t.start()
        t.join()
        assert threads.get_num_threads() == 1 and done == [n]


def test_thread_pool_starts_once_when_threads_race():
    """Eight Python threads reach ``_start_thread_pool`` at once: numba's pool is launched once,
    and ``OMP_WAIT_POLICY`` is set for that launch only."""
    code = textwrap.dedent("""
        import os, threading, time
        from numba.np.ufunc import parallel as numba_parallel
        from fastbp.kernels import parallel
        launch, calls, inside, peak = numba_parallel._launch_threads, [], [0], [0]
        def slow_launch():
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
            calls.append(os.environ.get("OMP_WAIT_POLICY"))
            time.sleep(0.2)
            try:
                launch()
            finally:
                inside[0] -= 1
        numba_parallel._launch_threads = slow_launch
        barrier = threading.Barrier(8)
        def start():
            barrier.wait()
            parallel._start_thread_pool()
        ts = [threading.Thread(target=start) for _ in range(8)]
        [t.start() for t in ts]; [t.join() for t in ts]
        print(peak[0], calls, "OMP_WAIT_POLICY" in os.environ, parallel._POOL_READY)
    """)
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1", "['PASSIVE']", "False", "True"], proc.stdout


def test_idle_cores_is_a_count_or_none():
    n = parallel.idle_cores()
    assert n is None or 0 <= n <= (os.cpu_count() or 1) - 1
    credited = parallel.idle_cores(ours=1000)  # never more than the cores beside the caller's
    assert credited is None or credited == (os.cpu_count() or 1) - 1


WORKERS = r"""
import os, numba, numpy as np
from fastbp import layers
from fastbp.kernels import parallel
before = set(os.listdir("/proc/self/task"))
x = np.zeros(parallel.PARALLEL_MIN_ELEMENTS * 4)
with parallel.settings(adapt_to_load=False):  # a team of every thread, whatever the load
    layers.Relu().forward(x)
new = set(os.listdir("/proc/self/task")) - before
print(numba.get_num_threads(), len(new), len(parallel._workers), parallel.running_workers())
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
def test_numbas_workers_are_found_and_counted_as_ours(monkeypatch):
    """The first threaded kernel finds numba's new worker threads; threads_for counts the
    running ones as the caller's own (a worker still leaving the last region shows as a running
    task in /proc/loadavg, and without this every kernel after a threaded one ran serial)."""
    proc = subprocess.run([sys.executable, "-c", WORKERS], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    threads_count, new, found, running = map(int, proc.stdout.split())
    if threads_count < 2:
        pytest.skip("numba has one thread here")
    assert threads_count - 1 <= found <= new
    assert 0 <= running <= found
    seen = []
    monkeypatch.setattr(parallel, "running_workers", lambda: 3)
    monkeypatch.setattr(parallel, "idle_cores", lambda ours=0: seen.append(ours) or 0)
    parallel.threads_for(BIG)
    assert seen == [3]


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
def test_bit_identical_for_1_2_and_n_threads(dtype):
    with parallel.settings(parallel_min_elements=0):  # threaded builds at this size
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


PRODUCT_FLOPS = threads.PRODUCT_THREADS_MIN_FLOPS


@pytest.mark.parametrize(("idle", "inside"), [(0, 1), (1, 2), (2, 3), (3, 4), (64, 4)])
def test_product_threads_use_the_idle_cores_up_to_your_count(fake_blas, monkeypatch, idle,
                                                            inside):
    monkeypatch.setattr(parallel, "idle_cores", lambda ours=0: idle)
    with threads.ProductThreads(PRODUCT_FLOPS):
        assert fake_blas.count == inside  # never more than 1 + idle, never more than yours
    assert fake_blas.count == 4
    assert fake_blas.sets == ([] if inside == 4 else [inside, 4])  # untouched when it fits


def test_product_threads_never_raise_your_count(fake_blas, monkeypatch):
    fake_blas.count = 1  # e.g. OPENBLAS_NUM_THREADS=1, or threadpoolctl's limit
    monkeypatch.setattr(parallel, "idle_cores", lambda ours=0: 64)
    with threads.ProductThreads(PRODUCT_FLOPS):
        assert fake_blas.count == 1
    fake_blas.count = 3  # a limit changed between products is read at the next one
    monkeypatch.setattr(parallel, "idle_cores", lambda ours=0: 1)
    with threads.ProductThreads(PRODUCT_FLOPS):
        assert fake_blas.count == 2
    assert fake_blas.count == 3
    assert fake_blas.sets == [2, 3]


def test_product_threads_restore_on_error(fake_blas, monkeypatch):
    monkeypatch.setattr(parallel, "idle_cores", lambda ours=0: 0)
    with pytest.raises(ValueError, match="inside"), threads.ProductThreads(PRODUCT_FLOPS):
        assert fake_blas.count == 1
        raise ValueError("inside")
    assert fake_blas.count == 4 and not threads._blas_changed


@pytest.mark.parametrize("case", ["small", "no load check", "no loadavg"])
def test_product_threads_leave_blas_alone(fake_blas, monkeypatch, case):
    flops = PRODUCT_FLOPS - 1 if case == "small" else PRODUCT_FLOPS
    if case == "no load check":
        monkeypatch.setattr(parallel, "ADAPT_TO_LOAD", False)  # BLAS runs on its own count
    monkeypatch.setattr(parallel, "idle_cores", lambda ours=0: None if case == "no loadavg" else 0)
    with threads.ProductThreads(flops):
        assert fake_blas.count == 4
    assert fake_blas.sets == []


def test_spinning_workers_of_our_last_product_count_as_idle(fake_blas, monkeypatch):
    asked = []

    def idle_cores(ours=0):
        asked.append(ours)
        return 2
    monkeypatch.setattr(parallel, "idle_cores", idle_cores)
    threads._blas.spin_seconds = 60.0
    with threads.ProductThreads(PRODUCT_FLOPS):  # 3 threads: 2 workers spin after it
        pass
    with threads.ProductThreads(PRODUCT_FLOPS):
        pass
    threads._blas.spin_until = 0.0  # the workers have gone to sleep
    with threads.ProductThreads(PRODUCT_FLOPS):
        pass
    assert asked == [0, 2, 0]


def _kernel_call(size=None):
    """A kernel call, on an input large enough for the threaded builds by default."""
    x = np.ones(parallel.PARALLEL_MIN_ELEMENTS if size is None else size)
    activations.relu_forward(x, np.empty_like(x), np.empty(x.size, dtype=bool))


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="kernels run on one thread here")
def test_products_after_long_kernel_calls_leave_them_the_cores(fake_blas, monkeypatch):
    """A BLAS worker spins on its core after a threaded product, so threaded kernels that follow
    would find no idle core: right after a long kernel call, a product that is not large runs
    on one BLAS thread, whatever the idle cores."""
    monkeypatch.setattr(parallel, "idle_cores", lambda ours=0: 64)
    assert parallel.seconds_since_long_call() == float("inf")
    with threads.ProductThreads(PRODUCT_FLOPS):
        assert fake_blas.count == 4  # no kernel has asked for the cores yet
    monkeypatch.setattr(parallel, "LONG_CALL_SECONDS", 10.0)
    _kernel_call()  # large, but short: an element-wise kernel, not kernels at work
    assert parallel.seconds_since_long_call() == float("inf")
    monkeypatch.setattr(parallel, "LONG_CALL_SECONDS", 0.0)
    _kernel_call(parallel.PARALLEL_MIN_ELEMENTS - 1)  # serial whatever the cores: not one
    assert parallel.seconds_since_long_call() == float("inf")
    _kernel_call()
    assert parallel.seconds_since_long_call() < threads.KERNELS_BUSY_SECONDS
    with threads.ProductThreads(threads.KERNELS_BUSY_MAX_FLOPS - 1):
        assert fake_blas.count == 1
    with threads.ProductThreads(threads.KERNELS_BUSY_MAX_FLOPS):
        assert fake_blas.count == 4  # a large product still gets the idle cores
    monkeypatch.setattr(threads, "KERNELS_BUSY_SECONDS", 0.0)  # the kernels have gone quiet
    with threads.ProductThreads(PRODUCT_FLOPS):
        assert fake_blas.count == 4
    assert fake_blas.count == 4 and fake_blas.sets == [1, 4]


@pytest.mark.parametrize("case", ["fixed count", "no load check", "one kernel thread"])
def test_long_kernel_calls_leave_products_alone_where_the_load_rule_is_off(fake_blas,
                                                                          monkeypatch, case):
    monkeypatch.setattr(parallel, "idle_cores", lambda ours=0: 64)
    monkeypatch.setattr(parallel, "LONG_CALL_SECONDS", 0.0)
    with threads.threads(1) if case == "one kernel thread" else contextlib.nullcontext():
        _kernel_call()  # the kernels can't use a second core: no reason to leave it
    if case == "fixed count":
        threads.set_num_threads(2)
    elif case == "no load check":
        monkeypatch.setattr(parallel, "ADAPT_TO_LOAD", False)
    with threads.ProductThreads(PRODUCT_FLOPS):
        assert fake_blas.count == 4
    assert fake_blas.sets == []


class SplitSpy:
    """Records the blocks of the output (their shapes) that :func:`fastbp.threads.product`
    hands to the helper threads, and the BLAS count each block runs under. Other tasks (a
    convolution's ranges of images) pass through."""

    def __init__(self, monkeypatch, fake_blas):
        self.blocks, self.counts = [], []
        pool = threads.helper_pool()
        submit = pool.submit

        def spy(fn, a, *args):
            if not isinstance(a, np.ndarray):
                return submit(fn, a, *args)
            b, out = args
            self.blocks.append(out.shape)

            def part():
                self.counts.append(fake_blas.count)
                return fn(a, b, out)
            return submit(part)
        monkeypatch.setattr(pool, "submit", spy)


def _busy_kernels(monkeypatch):
    """Make the kernels look busy: a long kernel call has just ended."""
    monkeypatch.setattr(parallel, "LONG_CALL_SECONDS", 0.0)
    _kernel_call()
    assert parallel.seconds_since_long_call() < threads.KERNELS_BUSY_SECONDS


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="kernels run on one thread here")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("idle", "shape", "blocks"),
                         [(1, (10, 5), [(5, 5)]), (2, (10, 5), [(3, 5), (4, 5)]),
                          (64, (10, 5), [(3, 5), (2, 5), (3, 5)]), (64, (2, 1), [(1, 1)]),
                          (1, (5, 10), [(5, 5)]), (2, (3, 10), [(3, 3), (3, 4)]),
                          (64, (1, 2), [(1, 1)])])
def test_product_splits_over_helpers_while_kernels_are_busy(fake_blas, monkeypatch, dtype,
                                                           idle, shape, blocks):
    """One block per idle core plus the caller's, never more than your BLAS count (4) or the
    rows (the columns, where ``out`` is wider than it is tall: strided blocks of ``out``);
    every block on one BLAS thread; the count restored after; the product's values."""
    rows, cols = shape
    rng = np.random.default_rng(rows + idle)
    a = rng.standard_normal((rows, 7)).astype(dtype)
    b = rng.standard_normal((7, cols)).astype(dtype)
    monkeypatch.setattr(threads, "SPLIT_MIN_FLOPS", 2 * rows * 7 * cols)
    monkeypatch.setattr(parallel, "idle_cores", lambda ours=0: idle)
    spy = SplitSpy(monkeypatch, fake_blas)
    _busy_kernels(monkeypatch)
    out = np.full((rows, cols), np.nan, dtype=dtype)
    assert threads.product(a, b, out) is out
    assert spy.blocks == blocks and spy.counts == [1] * len(blocks)
    assert fake_blas.sets == [1, 4] and fake_blas.count == 4
    np.testing.assert_allclose(out, a @ b, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="kernels run on one thread here")
def test_product_split_of_transposed_views_matches_numpy(fake_blas, monkeypatch):
    """Affine's backward products read transposed views (``x.T @ d``, ``d @ W.T``)."""
    rng = np.random.default_rng(1)
    x, W = rng.standard_normal((9, 13)), rng.standard_normal((13, 6))
    d = rng.standard_normal((9, 6))
    monkeypatch.setattr(threads, "SPLIT_MIN_FLOPS", 1)
    monkeypatch.setattr(parallel, "idle_cores", lambda ours=0: 1)
    spy = SplitSpy(monkeypatch, fake_blas)
    _busy_kernels(monkeypatch)
    dW = threads.product(x.T, d, np.empty((13, 6)))
    dx = threads.product(d, W.T, np.empty((9, 13)))
    assert spy.blocks == [(7, 6), (9, 7)]  # dW: rows 6..12; dx (9 x 13): columns 6..12
    np.testing.assert_allclose(dW, x.T @ d, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, d @ W.T, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="kernels run on one thread here")
@pytest.mark.parametrize("case", ["small", "kernels quiet", "your count 1", "fixed count",
                                  "no load check", "no idle core", "no loadavg", "one element",
                                  "no blas"])
def test_product_is_not_split(fake_blas, monkeypatch, case):
    monkeypatch.setattr(threads, "SPLIT_MIN_FLOPS", 2 * 4 * 3 * 2)
    monkeypatch.setattr(parallel, "idle_cores",
                        lambda ours=0: {"no idle core": 0, "no loadavg": None}.get(case, 64))
    spy = SplitSpy(monkeypatch, fake_blas)
    _busy_kernels(monkeypatch)
    rows = 1 if case == "one element" else 4
    a, b = np.ones((rows, 3)), np.ones((3, 2))
    if case == "one element":  # as many flops as the others, in a 1 x 1 output
        a, b = np.ones((1, 24)), np.ones((24, 1))
    elif case == "small":
        a = np.ones((rows, 2))
        b = np.ones((2, 2))
    elif case == "kernels quiet":
        monkeypatch.setattr(threads, "KERNELS_BUSY_SECONDS", 0.0)
    elif case == "your count 1":
        fake_blas.count = 1
    elif case == "fixed count":
        threads.set_num_threads(2)
    elif case == "no load check":
        monkeypatch.setattr(parallel, "ADAPT_TO_LOAD", False)
    elif case == "no blas":
        threads._blas.lib = None
    out = threads.product(a, b, np.empty((rows, b.shape[1])))
    assert spy.blocks == []
    np.testing.assert_array_equal(out, a @ b)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="kernels run on one thread here")
@pytest.mark.parametrize("net", ["simpleconv", "deepconv", "book's SimpleConvNet"])
def test_a_conv_net_step_runs_its_products_on_one_blas_thread(fake_blas, monkeypatch, net):
    """At the book's batch the convolutions' kernels want both cores, and the Affine products
    between them run on one BLAS thread, even on an idle machine. (Their kernels take 1-10 ms
    each here; ``LONG_CALL_SECONDS`` is set to 0 so that a faster machine tests the same.)"""
    from fastbp.backends import layer_module
    from fastbp.bench import book_simple_convnet_step, convnet_step

    monkeypatch.setattr(parallel, "idle_cores", lambda ours=0: 64)
    monkeypatch.setattr(parallel, "LONG_CALL_SECONDS", 0.0)
    counts = []
    enter = threads.ProductThreads.__enter__

    def spy(self):
        result = enter(self)
        if self.flops >= PRODUCT_FLOPS:
            counts.append(fake_blas.count)
        return result
    monkeypatch.setattr(threads.ProductThreads, "__enter__", spy)
    split = SplitSpy(monkeypatch, fake_blas)
    if net == "book's SimpleConvNet":
        step = book_simple_convnet_step(layer_module("kernel"), (100, 1, 28, 28), "float64")
    else:
        step = convnet_step("kernel", net, (100, 1, 28, 28), "float64")
    step()  # compiles: a compile between a kernel and a product can outlast the window
    counts.clear()
    split.blocks.clear()
    step()
    assert len(counts) >= 2 and set(counts) == {1}, counts  # forward, backward at least
    # The Affine after the convolution multiplies 100x4320 by 4320x100 (86 MFLOP): forward,
    # dW and dx split over helpers (3 blocks besides the caller's: BLAS count 4): x @ W by
    # rows, dx (100 x 4320) by columns, dW (4320 x 100) by rows. DeepConvNet's products (at
    # most 100x1024 @ 1024x50) are too small to split.
    expected = [] if net == "deepconv" else [(25, 100)] * 3 + [(100, 1080)] * 3 + [(1080, 100)] * 3
    assert sorted(split.blocks) == sorted(expected), split.blocks


def _in_threads(body, count):
    """Run ``body()`` on ``count`` Python threads at once; return the exceptions they raised."""
    errors = []

    def work():
        try:
            body()
        except Exception as exc:  # pragma: no cover - returned to the test
            errors.append(exc)
    workers = [threading.Thread(target=work) for _ in range(count)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return errors


def test_product_threads_from_many_python_threads(fake_blas, monkeypatch):
    """Concurrent blocks never leave the count changed, and never run above anyone's ask."""
    monkeypatch.setattr(parallel, "idle_cores", lambda ours=0: 0)
    seen = []

    def work():
        for _ in range(300):
            with threads.ProductThreads(PRODUCT_FLOPS):
                seen.append(fake_blas.count)
    assert _in_threads(work, 8) == []
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
    monkeypatch.setattr(parallel, "idle_cores", lambda ours=0: 0)
    for _ in range(20):
        with threads.ProductThreads(PRODUCT_FLOPS):
            assert lib.get_num_threads() == 1
        assert lib.get_num_threads() == before
    monkeypatch.setattr(parallel, "idle_cores", lambda ours=0: 64)
    with threads.ProductThreads(PRODUCT_FLOPS):
        assert lib.get_num_threads() == before


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="kernels run on one thread here")
def test_real_blas_split_products_from_python_threads(monkeypatch):
    """Split products (real BLAS, its count lowered to 1 around the blocks) from four Python
    threads at once: right values, and BLAS's count restored."""
    lib = _real_blas()
    before = lib.get_num_threads()
    if before < 2:
        pytest.skip("BLAS runs on one thread here")
    monkeypatch.setattr(parallel, "idle_cores", lambda ours=0: 64)
    monkeypatch.setattr(threads, "SPLIT_MIN_FLOPS", 1)
    _busy_kernels(monkeypatch)
    monkeypatch.setattr(threads, "KERNELS_BUSY_SECONDS", float("inf"))
    rng = np.random.default_rng(6)
    x, W = rng.standard_normal((64, 300)), rng.standard_normal((300, 40))
    expected = x @ W
    submit, blocks = threads.helper_pool().submit, []
    monkeypatch.setattr(threads.helper_pool(), "submit",
                        lambda *args: blocks.append(1) or submit(*args))

    def work():
        for _ in range(30):
            out = threads.product(x, W, np.empty((64, 40)))
            np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    assert _in_threads(work, 4) == []
    assert blocks  # at least the products that found the count unlowered were split
    assert lib.get_num_threads() == before and not threads._blas_changed


def test_real_blas_from_python_threads_then_threadpoolctl_still_works(monkeypatch):
    """Affine from several Python threads at once, with every product lowering the count:
    results are right, the count is restored, and threadpoolctl keeps control of BLAS."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    lib = _real_blas()
    before = lib.get_num_threads()
    monkeypatch.setattr(parallel, "idle_cores", lambda ours=0: 0)
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
    monkeypatch.setattr(parallel, "idle_cores", fail)
    x = np.ones(100)
    activations.relu_forward(x, np.empty_like(x), np.empty(100, dtype=bool))
