"""How many threads fastbp's kernels use, and how they share the cores with BLAS.

Two thread pools work for fastbp: numba's, which runs the threaded builds of the kernels, and
BLAS's (OpenBLAS with NumPy's wheels), which runs the matrix products of ``Affine``. On a small
machine they spin on the same cores, and a parallel region waits for its slowest thread: a
thread that has no core (because another process, or the other pool's spinning thread, holds it)
turns a 0.1 ms kernel into a 10 ms one.

The default (``set_num_threads(None)``)
---------------------------------------
* **Kernels** run threaded only for arrays of at least
  :data:`fastbp.kernels.parallel.PARALLEL_MIN_ELEMENTS` elements (2**18: below that, starting
  threads costs more than it saves on 2 cores), on numba's thread count (``NUMBA_NUM_THREADS``,
  all cores), and only on cores that are idle at that moment
  (:data:`~fastbp.kernels.parallel.ADAPT_TO_LOAD`: the running-task count of ``/proc/loadavg`` is
  read, 2 us). Both settings are changed for a block with
  :func:`fastbp.kernels.parallel.settings`. numba's own worker threads that are still running
  (leaving the previous parallel region) count as idle: they are ours, and without that every
  kernel that followed a threaded one ran serial (BatchNormalization's backward after its
  forward: 2x slower). A BLAS worker still spinning after a product counts as busy, so a kernel
  that follows a threaded product runs serial (hence the next rule's exception).
* numba's OpenMP threads **sleep** when they wait (``OMP_WAIT_POLICY=PASSIVE``, set only while
  numba starts its pool, unless you set it yourself), so they never hold a core that a BLAS
  thread or the other kernel thread needs.
* **Matrix products** (``Affine``'s, in BLAS) of at least :data:`PRODUCT_THREADS_MIN_FLOPS`
  run on one BLAS thread plus one per idle core at the moment of the call, never more than
  your BLAS count (:class:`ProductThreads`). On an idle machine a product gets every core BLAS
  may use: the book's 100x784x50 product took 270 us on one thread and 159 us on two. On a busy
  machine it gets only the cores nobody else holds: with another process on one of 2 cores,
  NumPy's default two threads waited for each other and the book's step took 14-42 ms instead
  of 1 ms. BLAS workers that still spin after fastbp's previous product count as idle (they
  are ours). One exception: a product of fewer than :data:`KERNELS_BUSY_MAX_FLOPS` that starts
  within :data:`KERNELS_BUSY_SECONDS` (0.25 s) of the end of a kernel call on an input large
  enough for the kernels' threads that lasted 1 ms or more
  (:data:`fastbp.kernels.parallel.LONG_CALL_SECONDS`) runs on one BLAS thread. Where threaded
  kernels follow products (a convolutional net's step), a BLAS worker spinning 50-100 ms after a
  threaded product kept them serial: DeepConvNet's float32 step took 108-125 ms instead of
  67-76 ms, and the book's SimpleConvNet code on fastbp's layers 27 ms instead of 22 ms in
  float64 (the fastest of 6 blocks each). The book's MNIST nets make no long call at their
  batch, so they keep the rule above; MultiLayerNet (784, 4 x 100, 10) at batches of 3,000 and
  10,000, whose kernels pass 1 ms, measured the same with the exception and without it.
  Within that window, ``Affine``'s products of at least :data:`SPLIT_MIN_FLOPS` (:func:`product`)
  are split instead (by rows, or by columns for a wide output), one block per idle core, each
  on one BLAS thread, on fastbp's helper threads, which sleep as soon as their block is done:
  SimpleConvNet's 100x4320 @ 4320x100
  products took a 13-15 ms float64 step to 10-11 ms, and 141 ms to 92 ms at batch 1,000 (where
  BLAS's own two threads had run them and spun after).
  The count is lowered only around fastbp's own products and restored after each.
  BLAS's last bits depend on its thread count, so a product's may depend on the load, within
  the product's rounding error (the book's 100x784 @ 784x50 on one and on two OpenBLAS threads
  differed by up to 3.6e-14 in float64 on standard-normal data, 3e-5 in float32); fastbp's
  own kernels never do.

Kernel results never depend on the thread count: every kernel computes each element with the
same code at any count (tests/test_threads.py and tests/test_determinism.py check it).

Setting a count by hand
-----------------------
``set_num_threads(n)`` fixes the kernel thread count at ``n`` (1 turns threading off) and turns
off the load check; ``threads(n)`` does the same for a ``with`` block and then restores what was
there before, as pynndescent does with numba's count. Both act on the calling Python thread only,
as numba's own count does: other Python threads keep their count and the load check. With the
load check off, products run on BLAS's own count. Your BLAS count is the ceiling fastbp works
under: set ``OPENBLAS_NUM_THREADS=n`` before starting Python, or use threadpoolctl
(``with threadpoolctl.threadpool_limits(n, user_api="blas"):``), which fastbp reads at each
product; ``1`` makes every product single-threaded and its bits independent of the load.
"""

import itertools
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numba
import numpy as np

from fastbp.kernels import parallel
from fastbp.validation import is_integer

__all__ = [
    "PRODUCT_THREADS_MIN_FLOPS",
    "SPLIT_MIN_FLOPS",
    "ProductThreads",
    "get_num_threads",
    "product",
    "set_num_threads",
    "threads",
]


def get_num_threads():
    """The number of threads a threaded kernel called from this Python thread may use (numba's
    count for this thread; 1 where no numba threading layer loads)."""
    if not parallel.pool_available():
        return 1
    return numba.get_num_threads()


def set_num_threads(n):
    """Set the kernel thread count of the calling Python thread.

    Parameters
    ----------
    n : int or None
        A count from 1 to ``numba.config.NUMBA_NUM_THREADS``: the threaded kernels called from
        this Python thread use exactly that many threads (1 runs every kernel serial), with no
        load check. ``None`` restores the default: numba's full count, threads only on idle
        cores. Other Python threads are not affected.
    """
    if n is None:
        if parallel.pool_available():
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        parallel.set_count_fixed(False)
        return
    if not is_integer(n):
        raise TypeError(f"thread count must be an integer or None; got {n!r}")
    n = int(n)
    if not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(
            f"thread count must be between 1 and {numba.config.NUMBA_NUM_THREADS} "
            f"(NUMBA_NUM_THREADS); got {n}"
        )
    if parallel.pool_available():  # else every kernel runs serial whatever the count
        numba.set_num_threads(n)
    parallel.set_count_fixed(True)


@contextmanager
def threads(n):
    """Run a ``with`` block with ``set_num_threads(n)``, then restore the previous setting.

    Like :func:`set_num_threads`, it applies to the calling Python thread only.

    Examples
    --------
    >>> from fastbp import threads, layers
    >>> with threads.threads(1):          # doctest: +SKIP
    ...     out = layers.Relu().forward(x)
    """
    saved = (get_num_threads(), parallel.count_fixed())
    set_num_threads(n)
    try:
        yield
    finally:
        if parallel.pool_available():
            numba.set_num_threads(saved[0])
        parallel.set_count_fixed(saved[1])


# --- BLAS --------------------------------------------------------------------------------------

PRODUCT_THREADS_MIN_FLOPS = 1 << 19
"""Products of fewer floating-point operations (``2 m n k``) leave BLAS alone: OpenBLAS runs
products of ``m n k <= 2**18`` on one thread by itself. Larger products get one BLAS thread
plus one per idle core, up to your count. ``python -m benchmarks.step_targets --blas`` measures
where a second thread starts to pay on a machine (run it on an idle one)."""

KERNELS_BUSY_SECONDS = 0.25
"""A product of fewer than :data:`KERNELS_BUSY_MAX_FLOPS` that starts within this many seconds of
the end of a long kernel call (an input large enough for the kernels' threads, 1 ms or more:
:data:`fastbp.kernels.parallel.LONG_CALL_SECONDS`) runs on one BLAS thread. A BLAS
worker spins on its core for 50-100 ms after a threaded product, and threaded kernels that
follow then find no idle core and run serial; where they follow products (a convolutional net's
step), they gain more from the second core than the products do. ``python -m
benchmarks.chapter78_targets`` measures it (README, Threads)."""

KERNELS_BUSY_MAX_FLOPS = 1 << 27
"""Products of at least this many floating-point operations (134 MFLOP, about 4 ms on one core)
get BLAS threads for the idle cores even while the kernels are busy (see
:data:`KERNELS_BUSY_SECONDS`). :func:`product` (``Affine``'s products) splits such products
over helper threads instead where a core is idle (:data:`SPLIT_MIN_FLOPS`)."""

SPLIT_MIN_FLOPS = 1 << 26
""":func:`product` splits a product of at least this many floating-point operations (67 MFLOP,
1.5-2 ms on one core in float64) that starts while the kernels are busy
(:data:`KERNELS_BUSY_SECONDS`) into blocks over helper threads, one per idle core, each part on one
BLAS thread. Unlike BLAS's own workers, the helpers sleep as soon as their part is done, so the
kernels that follow find the cores idle. Below it, handing a part to a helper cost more than
it saved here (a 100x2048 @ 2048x100 product: 0.91-0.96 ms on one thread, 0.65-0.93 ms split
in two)."""

_blas = None
"""The :class:`_BlasLibrary` of NumPy's BLAS, looked for at the first product that needs it."""

_blas_lock = threading.Lock()
_blas_changed = False
"""True while one thread's lowered BLAS count is in effect (it restores it, under the lock)."""
_blas_saved = 0


def _openblas_spin_seconds():
    """A lower bound on how long OpenBLAS's pthreads workers spin after their last job.

    They spin ``2**t`` cycles of the time-stamp counter before they sleep: ``t`` is
    ``OPENBLAS_THREAD_TIMEOUT`` clamped to 4..30 where it is set, else 28 (about 0.1 s; the spin
    was seen to last 50-100 ms here). Half of it at a 5 GHz counter is short of it anywhere.
    """
    try:
        timeout = int(os.environ.get("OPENBLAS_THREAD_TIMEOUT", ""))
    except ValueError:
        timeout = 0
    timeout = min(max(timeout, 4), 30) if timeout > 0 else 28
    return (1 << timeout) / 5e9 / 2


class _BlasLibrary:
    """NumPy's BLAS library, as threadpoolctl's controller for it (``lib`` is None where
    there is none to control: no threadpoolctl, no known BLAS, or several and none NumPy's).

    ``spin_until``/``spinning``: until when, and how many, of its worker threads are still
    spinning after fastbp's last threaded product. They show as running tasks in
    ``/proc/loadavg``, but they are ours and take the next product's work at once.
    """

    def __init__(self):
        self.lib = None
        self.clear_control = None
        self.spin_seconds = 0.0
        self.spin_until = 0.0
        self.spinning = 0
        try:
            self._find()
        except Exception:  # threadpoolctl missing or failing: leave BLAS alone
            self.lib = None

    def _find(self):
        from threadpoolctl import ThreadpoolController

        libs = ThreadpoolController().select(user_api="blas").lib_controllers
        # NumPy's own: in numpy.libs/ (Linux wheels) or numpy/.dylibs/ (macOS wheels)
        chosen = [c for c in libs if {"numpy", "numpy.libs"}
                  & set(os.path.normpath(c.filepath or "").split(os.sep))] or libs
        if len(chosen) != 1:
            return
        lib = chosen[0]
        # threadpoolctl >= 3.8 lets one Python thread at a time set a process-wide pool's size
        # and ignores the others; we hand that control back after every change.
        self.clear_control = getattr(type(lib), "clear_controlling_thread", None)
        if lib.internal_api == "openblas" and getattr(lib, "threading_layer", "") == "pthreads":
            self.spin_seconds = _openblas_spin_seconds()
        self.lib = lib

    def spinning_now(self):
        """How many of BLAS's workers still spin after fastbp's last threaded product."""
        return self.spinning if time.perf_counter() < self.spin_until else 0


def _kernels_busy():
    """Whether a long kernel call ended in the last :data:`KERNELS_BUSY_SECONDS`."""
    return parallel.seconds_since_long_call() < KERNELS_BUSY_SECONDS


def _find_blas():
    global _blas
    with _blas_lock:
        if _blas is None:
            _blas = _BlasLibrary()
    return _blas


_helpers = None
_helpers_lock = threading.Lock()


def helper_pool():
    """fastbp's helper threads (a ``ThreadPoolExecutor`` of ``os.cpu_count()`` threads, started
    at the first use): Convolution's image ranges and :func:`product`'s blocks run on them.
    They wait without spinning. Only fastbp's own short tasks run there, and none of them waits
    for another, so a full pool only delays a task, and never deadlocks."""
    global _helpers
    if _helpers is None:
        with _helpers_lock:
            if _helpers is None:
                _helpers = ThreadPoolExecutor(max_workers=os.cpu_count() or 2,
                                              thread_name_prefix="fastbp-helper")
    return _helpers


def _forget_helpers():
    """In a forked child the pool's threads do not exist: start a new pool when needed."""
    global _helpers, _helpers_lock
    _helpers, _helpers_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helpers)


def _split_parts(flops, rows):
    """How many blocks :func:`product` splits a product into (1: not split); ``rows``: the
    length of the axis it splits."""
    if (flops < SPLIT_MIN_FLOPS or rows < 2 or not parallel.ADAPT_TO_LOAD
            or parallel.count_fixed() or not _kernels_busy()):
        return 1
    blas = _blas if _blas is not None else _find_blas()
    lib = blas.lib
    if lib is None:  # no count to lower: the parts could run on every BLAS thread each
        return 1
    yours = lib.get_num_threads()
    if yours < 2:
        return 1
    idle = parallel.idle_cores(blas.spinning_now() + parallel.running_workers())
    if idle is None:
        return 1
    return min(yours, 1 + idle, rows)


def product(a, b, out):
    """``np.dot(a, b, out=out)`` for 2-d ``a`` (m, k) and ``b`` (k, n) of one float dtype and
    a C-contiguous ``out`` (m, n) of that dtype, on the threads the rules below pick; returns
    ``out``.

    Mostly it is the product under :class:`ProductThreads`. The exception: a product of at least
    :data:`SPLIT_MIN_FLOPS` that starts within :data:`KERNELS_BUSY_SECONDS` of the end of a long
    kernel call, while a core is idle, is split into blocks, one per idle core plus the
    caller's (never more than your BLAS count), each computed by one BLAS thread, the caller
    taking the first block and :func:`helper_pool` the others. Blocks of rows, or of columns
    where ``out`` is wider than it is tall (SimpleConvNet's ``dx = dout @ W.T``, 100 x 4320:
    0.97-1.06 ms in two column blocks against 1.18-1.21 ms in two row blocks in float64,
    0.57 against 0.70 ms in float32). OpenBLAS's own workers would spin for 50-100 ms after
    the product and keep the threaded kernels that follow serial; the helpers do not. Each
    element is still one BLAS call's dot product over all of ``k``; its last bits may depend
    on the block it falls in, as they may on BLAS's thread count.
    """
    m, n = a.shape[0], b.shape[1]
    flops = 2 * m * a.shape[1] * n
    parts = _split_parts(flops, max(m, n))
    if parts < 2:
        with ProductThreads(flops):
            np.dot(a, b, out=out)
        return out
    if m >= n:
        blocks = [(a[lo:hi], b, out[lo:hi]) for lo, hi in _bounds(m, parts)]
    else:  # column blocks: views of ``out`` with its row stride, which matmul writes in place
        blocks = [(a, b[:, lo:hi], out[:, lo:hi]) for lo, hi in _bounds(n, parts)]
    with ProductThreads(flops, most=1):
        pool = helper_pool()
        futures = [pool.submit(_block_product, *block) for block in blocks[1:]]
        try:
            _block_product(*blocks[0])
        finally:
            for f in futures:
                f.result()
    return out


def _bounds(size, parts):
    """``parts`` contiguous (lo, hi) ranges covering ``range(size)``."""
    return itertools.pairwise([size * i // parts for i in range(parts + 1)])


def _block_product(a, b, out):
    """``out[...] = a @ b`` in one BLAS call (``out`` may be a strided block of a larger
    array: ``np.matmul`` writes it in place)."""
    np.matmul(a, b, out=out)


class ProductThreads:
    """``with ProductThreads(flops):`` around fastbp's matrix products: BLAS threads for the
    cores that are idle now.

    A product of at least :data:`PRODUCT_THREADS_MIN_FLOPS` gets ``min(yours, 1 + idle cores)``
    BLAS threads. ``yours`` is BLAS's count when the block starts (``OPENBLAS_NUM_THREADS``, or
    what threadpoolctl set), so the count is never raised; idle cores are read from
    ``/proc/loadavg`` (:func:`fastbp.kernels.parallel.idle_cores`), counting BLAS workers that still
    spin after fastbp's previous product as ours; one thread where a long kernel call ended in
    the last :data:`KERNELS_BUSY_SECONDS` and the product is below
    :data:`KERNELS_BUSY_MAX_FLOPS`. The count is lowered only for the block and restored on
    exit. Where the load cannot be read,
    where no BLAS is found, or with the load check off (:func:`set_num_threads` with a count),
    BLAS runs on its own count.

    Several Python threads may run products at once: the first to lower the count restores
    it, and the others run on whatever count is in effect meanwhile (a counter of one under a
    lock), so the process-wide setting is always put back. A product's last bits depend on
    BLAS's thread count, so they may depend on the load and on the kernels that ran before.

    ``most``: a fixed ceiling instead of the load rule, at any size and with the load check off
    too (``ProductThreads(flops, most=1)`` runs the block's products on one BLAS thread).
    """

    __slots__ = ("changed", "count", "flops", "most")

    def __init__(self, flops, most=None):
        self.flops = flops
        self.most = most
        self.changed = False
        self.count = 0

    def __enter__(self):
        global _blas_changed, _blas_saved
        if self.most is None and (self.flops < PRODUCT_THREADS_MIN_FLOPS
                                  or not parallel.ADAPT_TO_LOAD or parallel.count_fixed()):
            return self
        blas = _blas if _blas is not None else _find_blas()
        lib = blas.lib
        if lib is None or lib.get_num_threads() == 1:  # one thread (yours, or a concurrent
            return self  # block's lowered count): nothing to choose, no load to read
        if self.most is None:
            if self.flops < KERNELS_BUSY_MAX_FLOPS and _kernels_busy():
                want = 1  # threaded kernels are at work: leave them the cores
            else:
                idle = parallel.idle_cores(blas.spinning_now())
                if idle is None:
                    return self
                want = 1 + idle
        else:  # a fixed ceiling (Convolution's per-image products on image threads)
            want = self.most
        with _blas_lock:
            if _blas_changed:  # another thread's lowered count is in effect: run on it
                return self
            yours = lib.get_num_threads()
            if not yours:
                return self
            count = min(yours, want)
            if count < yours:
                lib.set_num_threads(count)
                _blas_changed, _blas_saved = True, yours
                self.changed = True
        self.count = count
        return self

    def __exit__(self, *exc):
        global _blas_changed
        blas = _blas
        if self.changed:
            with _blas_lock:
                blas.lib.set_num_threads(_blas_saved)
                _blas_changed = False
                if blas.clear_control is not None:
                    blas.clear_control()
        if self.count > 1 and blas.spin_seconds:
            blas.spin_until = time.perf_counter() + blas.spin_seconds
            blas.spinning = self.count - 1
        return False
