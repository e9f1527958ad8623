"""The one place that holds fastbp's numba options.

Every kernel is compiled through :func:`kernel`, so the options below apply to all of them:

* ``nogil=True``: kernels release the GIL, so Python threads can run them side by side.
* ``error_model="numpy"``: division by zero gives inf/NaN instead of raising, which is what the
  NumPy reference does, and it lets LLVM vectorise loops that divide.
* ``fastmath``: only flags that keep IEEE special values. ``nnan`` and ``ninf`` are left out
  because they let LLVM delete NaN/inf handling that the numerical contract depends on.
* ``cache=True`` with a fallback. Where no cache directory can be written (a read-only install
  and an unwritable HOME), numba raises ``RuntimeError`` at decoration time; we then compile
  without a cache. ``NUMBA_CACHE_DIR`` is honoured by numba itself. A cache file that cannot be
  read (truncated, corrupted) is treated as a miss and the kernel is recompiled.
* The cache is keyed on a hash of *all* kernel sources, not only the file that defines the kernel.
  numba's own key is the defining file's mtime, so a helper changed in another module would
  leave a stale cached kernel behind.

Compilation is lazy: nothing compiles at import, each kernel compiles for the dtypes it is called
with, on first call.
"""

import functools
import hashlib
import os
import pathlib
import threading
import warnings

import numba
from numba.core.caching import FunctionCache

FASTMATH = frozenset({"nsz", "arcp", "contract", "reassoc"})
"""fastmath flags used by kernels that opt in. No ``nnan``/``ninf``: NaN and inf must survive."""

CONTRACT = frozenset({"contract"})
"""Only fused multiply-add: for code whose operation order matters (a Cody-Waite reduction) but
that gains from FMA. The fusion is decided per instruction, so every element gets the same."""

_OPTIONS = dict(nogil=True, error_model="numpy")


def _sources_digest():
    h = hashlib.sha256(numba.__version__.encode())
    for path in sorted(pathlib.Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


_SOURCES_DIGEST = _sources_digest()


class _TolerantCache(FunctionCache):
    """numba's file cache, with three changes.

    * The stamp that decides freshness is a hash of all kernel sources (see the module docstring).
    * The index key includes the build variant. numba's key holds the signature and the bytecode
      but not the ``parallel``/``fastmath`` options, so the serial and threaded builds of one
      function would otherwise load each other's machine code.
    * A cache entry that cannot be read is a miss, and one that cannot be written is skipped.
    """

    def __init__(self, py_func, variant):
        super().__init__(py_func)
        self._variant = variant
        self._cache_file._source_stamp = _SOURCES_DIGEST

    def _index_key(self, sig, codegen):
        return (*super()._index_key(sig, codegen), self._variant)

    def load_overload(self, sig, target_context):
        try:
            return super().load_overload(sig, target_context)
        except Exception as exc:  # a corrupted or truncated cache file
            warnings.warn(
                f"fastbp: ignoring an unreadable numba cache entry for "
                f"{self._name}: {exc!r}; recompiling",
                RuntimeWarning,
                stacklevel=2,
            )
            return None

    def save_overload(self, sig, data):
        try:
            super().save_overload(sig, data)
        except Exception:  # a full disk, or a directory that became read-only: run uncached
            pass


def _fastmath_flags(fastmath):
    if fastmath is True:
        return FASTMATH
    return frozenset(fastmath) if fastmath else frozenset()


def _compile(fn, parallel, fastmath):
    flags = _fastmath_flags(fastmath)
    if flags & {"nnan", "ninf", "fast"}:
        raise ValueError("fastbp kernels never use nnan/ninf: NaN and inf must survive")
    options = dict(_OPTIONS, parallel=parallel, fastmath=set(flags) if flags else False)
    dispatcher = numba.njit(cache=False, **options)(fn)
    if hasattr(dispatcher, "_cache"):  # not there under NUMBA_DISABLE_JIT=1
        try:
            # numba's key ignores boundscheck too: a kernel cached without bounds checks must
            # not be loaded under NUMBA_BOUNDSCHECK=1 (CI runs the suite that way).
            variant = (parallel, tuple(sorted(flags)), bool(numba.config.BOUNDSCHECK))
            dispatcher._cache = _TolerantCache(fn, variant)
        except RuntimeError:  # "cannot cache function ...: no locator available": run uncached
            pass
    return dispatcher


def kernel(fn=None, *, parallel=False, fastmath=False):
    """Compile ``fn`` with fastbp's numba options.

    Parameters
    ----------
    fn : function
        The Python function to compile.
    parallel : bool
        Compile with ``parallel=True`` so that ``numba.prange`` loops run on threads.
    fastmath : bool or set of str
        ``True`` uses :data:`FASTMATH` (reassociation, contraction); a set names the flags
        (e.g. :data:`CONTRACT`). ``nnan``/``ninf`` are refused.
    """
    if fn is None:
        return lambda f: _compile(f, parallel, fastmath)
    return _compile(fn, parallel, fastmath)


PARALLEL_MIN_ELEMENTS = 1 << 18
"""Inputs with fewer elements run the serial build: below this, starting threads costs more than
they save on a small machine. Read at every call, so it can be changed at run time. ``0`` forces
the threaded builds at every size, whatever the load (tests set it to drive them with small
arrays)."""

ADAPT_TO_LOAD = True
"""Run a threaded build only on as many threads as there are idle cores (plus the caller's).

A parallel region ends when its slowest thread ends. On a machine where other processes (or
BLAS's own worker threads, which spin for a while after every matrix product) hold the other
cores, a kernel thread waits a scheduler time slice (milliseconds) for a core, and a 100 us
kernel takes 10 ms. Before each threaded call above :data:`PARALLEL_MIN_ELEMENTS`, the count of
running tasks is read from ``/proc/loadavg`` (2 us; elsewhere the check is skipped), and the
kernel runs on ``min(numba.get_num_threads(), 1 + idle cores)`` threads, or serial. Both builds
compute every element with the same code, so this never changes a result.
:func:`fastbp.threads.set_num_threads` turns it off (a count set by hand is used as it is)."""

_loadavg_fd = None
_cpus = None  # os.cpu_count(), read once: it reads /sys each time (20-50 us)


def idle_cores(ours=0):
    """Cores that no task but the caller is running on now (``os.cpu_count()`` minus the
    running tasks in ``/proc/loadavg``, the caller included). ``None`` where it can't be read.

    ``ours``: running tasks that are the caller's own helpers and would take the work (BLAS
    workers spinning after a product), counted as idle; the result is at most ``cpus - 1``.
    """
    global _loadavg_fd, _cpus
    try:
        if _loadavg_fd is None:
            _cpus = os.cpu_count() or 1  # first: another thread may read it once fd is set
            _loadavg_fd = os.open("/proc/loadavg", os.O_RDONLY)
        running = int(os.pread(_loadavg_fd, 128, 0).split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0, min(_cpus - 1, _cpus - running + ours))


_POOL_READY = False
_PARALLEL_UNAVAILABLE = False
"""True where numba could load no threading layer: every kernel then runs its serial build."""

_LAYER_LOCK = None
"""A lock around fastbp's threaded calls when numba's layer is ``workqueue``, which is not
thread-safe: two Python threads in parallel regions at once abort the process ("Concurrent
access"). With ``omp`` (GNU OpenMP, here) or ``tbb`` it stays ``None``: both are thread-safe."""

_FORKED_FROM_POOL = False
"""True in a child forked from a process whose numba thread pool had started: GNU OpenMP is not
fork-safe (numba kills such a child on its first parallel call), so it runs the serial builds."""


def _after_fork_in_child():
    global _FORKED_FROM_POOL
    from numba.np.ufunc import parallel as numba_parallel

    if numba_parallel._is_initialized:
        _FORKED_FROM_POOL = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _start_thread_pool():
    """Start numba's thread pool with a passive OpenMP wait policy, unless the user chose one.

    GNU OpenMP's default is to spin after a parallel region, and to spin in the barrier while
    another thread is still working. On two cores the spinning thread takes the core that the
    thread it waits for (or a BLAS worker) needs: a 0.3 ms kernel took 10 ms on a loaded machine.
    ``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep. libgomp reads it once, when it is
    loaded, which numba does on its first parallel call; the variable is set for that moment
    only and then put back, so other OpenMP libraries loaded later (PyTorch's) keep their
    defaults. Where numba's pool was already started, or the layer is not OpenMP, nothing
    changes.
    """
    global _POOL_READY
    from numba.np.ufunc import parallel as numba_parallel

    global _PARALLEL_UNAVAILABLE, _LAYER_LOCK
    try:
        if not numba_parallel._is_initialized and "OMP_WAIT_POLICY" not in os.environ:
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
            try:
                numba_parallel._launch_threads()
            finally:
                del os.environ["OMP_WAIT_POLICY"]
        else:
            numba_parallel._launch_threads()
        layer = numba.threading_layer()
    except (ValueError, ImportError, OSError) as exc:  # no threading layer can be loaded
        warnings.warn(f"fastbp: no numba threading layer ({exc}); kernels run serial",
                      RuntimeWarning, stacklevel=3)
        _PARALLEL_UNAVAILABLE = True
        layer = None
    if layer == "workqueue":
        _LAYER_LOCK = threading.Lock()
    _POOL_READY = True


def threads_for(size):
    """The thread count a :func:`sized` kernel uses for a first argument of ``size`` elements
    (1: the serial build)."""
    threshold = PARALLEL_MIN_ELEMENTS
    if size < threshold or _FORKED_FROM_POOL or _PARALLEL_UNAVAILABLE:
        return 1
    n = numba.get_num_threads()
    if ADAPT_TO_LOAD and threshold > 0 and n > 1:
        idle = idle_cores()
        if idle is not None:
            n = min(n, 1 + idle)
    return n


def sized(fn=None, *, fastmath=False):
    """Compile ``fn`` serial and threaded, and call whichever suits the size of the first argument.

    The returned Python function calls ``.parallel`` when its first argument has at least
    :data:`PARALLEL_MIN_ELEMENTS` elements and a second core is idle (:data:`ADAPT_TO_LOAD`),
    else ``.serial`` (where ``prange`` runs as ``range``). Both builds compute each output
    element with the same code, so the choice never changes a result.
    """
    if fn is None:
        return lambda f: sized(f, fastmath=fastmath)
    serial = kernel(fn, fastmath=fastmath)
    parallel = kernel(fn, parallel=True, fastmath=fastmath)

    def call(*args):
        if args[0].size < PARALLEL_MIN_ELEMENTS:  # the common, small case: no other check
            return serial(*args)
        n = threads_for(args[0].size)
        if n < 2:
            return serial(*args)
        if not _POOL_READY:
            _start_thread_pool()
            if _PARALLEL_UNAVAILABLE:
                return serial(*args)
        if _LAYER_LOCK is not None:
            with _LAYER_LOCK:
                return _run_threaded(parallel, n, args)
        return _run_threaded(parallel, n, args)

    functools.update_wrapper(call, fn)
    call.serial = serial
    call.parallel = parallel
    return call


def _run_threaded(parallel, n, args):
    """Call the threaded build on ``n`` threads (numba's count is per calling thread)."""
    saved = numba.get_num_threads()
    if n == saved:
        return parallel(*args)
    numba.set_num_threads(n)
    try:
        return parallel(*args)
    finally:
        numba.set_num_threads(saved)
