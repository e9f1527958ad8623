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
  :func:`fastbp.kernels.parallel.settings`. A BLAS worker still spinning after
  a product counts as busy, so a kernel that follows a product runs serial.
* numba's OpenMP threads **sleep** when they wait (``OMP_WAIT_POLICY=PASSIVE``, set only while
  numba starts its pool, unless you set it yourself), so they never hold a core that a BLAS
  thread or the other kernel thread needs.
* **Small matrix products** (under :data:`SMALL_PRODUCT_FLOPS`, 134 MFLOP: the book's
  100x784x50 products are 8 MFLOP) run on one BLAS thread, larger ones on BLAS's own count.
  A small product is over before a second thread pays for its start, and on a busy machine a
  second BLAS thread waits for a core: the book's products took 3 to 30 times longer on two
  threads than on one while other processes ran. On an idle machine two threads would be about
  1.6 times faster for them; we give that up for a time that does not collapse under load, and
  for results that do not depend on the load (BLAS's last bits depend on its thread count, so
  the rule is by size only). The BLAS count is changed only around fastbp's own products and
  restored after them.

Kernel results never depend on the thread count: every kernel computes each element with the
same code at any count (tests/test_threads.py and tests/test_determinism.py check it).

Setting a count by hand
-----------------------
``set_num_threads(n)`` fixes the kernel thread count at ``n`` (1 turns threading off) and turns
off the load check; ``threads(n)`` does the same for a ``with`` block and then restores what was
there before, as pynndescent does with numba's count. Both act on the calling Python thread only,
as numba's own count does: other Python threads keep their count and the load check. The BLAS
thread count is BLAS's own: set ``OPENBLAS_NUM_THREADS`` (or use threadpoolctl) to change it.
"""

import os
import threading
from contextlib import contextmanager

import numba

from fastbp.kernels import parallel

__all__ = [
    "SMALL_PRODUCT_FLOPS",
    "get_num_threads",
    "product_threads",
    "set_num_threads",
    "threads",
]

SMALL_PRODUCT_FLOPS = 1 << 27
"""Products of fewer floating-point operations (``2 m n k``; 134 MFLOP, about 4 ms on one core
here) run on one BLAS thread; larger ones on BLAS's own count. Set it to 0 to leave BLAS alone.
"""

_BLAS_OWN_THRESHOLD = 1 << 19
"""OpenBLAS runs products under ``m n k = 2**18`` on one thread by itself: nothing to choose."""


def get_num_threads():
    """The number of threads a threaded kernel called from this Python thread may use (numba's
    count for this thread)."""
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
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        parallel.set_count_fixed(False)
        return
    n = int(n)
    if not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(
            f"thread count must be between 1 and {numba.config.NUMBA_NUM_THREADS} "
            f"(NUMBA_NUM_THREADS); got {n}"
        )
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
    saved = (numba.get_num_threads(), parallel.count_fixed())
    set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(saved[0])
        parallel.set_count_fixed(saved[1])


# --- BLAS --------------------------------------------------------------------------------------


class _OpenBLAS:
    """``openblas_get_num_threads``/``openblas_set_num_threads`` of the OpenBLAS NumPy loaded,
    found once (through threadpoolctl where it is installed, else ``/proc/self/maps``)."""

    def __init__(self):
        self.get = self.set = None
        try:
            self._find()
        except Exception:  # no OpenBLAS, an unknown build, no ctypes: leave BLAS alone
            self.get = self.set = None

    def _paths(self):
        try:  # Linux: the libraries this process has mapped (fast)
            with open("/proc/self/maps") as maps:
                return sorted({line.split()[-1] for line in maps
                               if "openblas" in line.lower() and ".so" in line})
        except OSError:
            pass
        from threadpoolctl import threadpool_info  # elsewhere, where it is installed

        return [i["filepath"] for i in threadpool_info() if i.get("internal_api") == "openblas"]

    def _find(self):
        import ctypes

        for path in self._paths():
            if "openblas" not in os.path.basename(path).lower():
                continue
            lib = ctypes.CDLL(path)
            for prefix in ("scipy_", ""):
                for suffix in ("64_", "", "_64"):
                    get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
                    put = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
                    if get is not None and put is not None:
                        get.restype, get.argtypes = ctypes.c_int, []
                        put.restype, put.argtypes = None, [ctypes.c_int]
                        self.get, self.set = get, put
                        return


_openblas = None
_blas_lock = threading.Lock()
_blas_depth = 0
_blas_saved = None


def _blas_handle():
    global _openblas
    if _openblas is None:
        _openblas = _OpenBLAS()
    return _openblas


class product_threads:
    """``with product_threads(flops):`` around fastbp's matrix products.

    A small product (``2**19 <= flops <`` :data:`SMALL_PRODUCT_FLOPS`) runs on one BLAS thread;
    others run on BLAS's own count. The rule depends on the size only, never on the load or on
    timing, because BLAS's result does depend on its thread count (OpenBLAS splits the work
    differently, and the last bits change): a product of a given shape always gives the same
    bits. The BLAS thread count is restored on exit; concurrent blocks from several Python
    threads share one limit (a counter under a lock).
    """

    __slots__ = ("limited",)

    def __init__(self, flops):
        self.limited = _BLAS_OWN_THRESHOLD <= flops < SMALL_PRODUCT_FLOPS

    def __enter__(self):
        global _blas_depth, _blas_saved
        if not self.limited:
            return self
        blas = _openblas if _openblas is not None else _blas_handle()
        if blas.set is None:
            self.limited = False
            return self
        with _blas_lock:
            if _blas_depth == 0:
                _blas_saved = blas.get()
                if _blas_saved > 1:
                    blas.set(1)
            _blas_depth += 1
        return self

    def __exit__(self, *exc):
        global _blas_depth
        if self.limited:
            with _blas_lock:
                _blas_depth -= 1
                if _blas_depth == 0 and _blas_saved > 1:
                    _openblas.set(_blas_saved)
        return False
