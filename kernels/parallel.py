"""Which build of a kernel runs, and on how many threads: the thread-pool, load and fork policy.

:func:`sized` compiles a kernel twice through :func:`.jit.kernel`, serial and threaded, and picks
one at every call from the size of its first argument, the settings below, the cores that are
idle at that moment, and whether this process may run threads at all (no threading layer, or a
child forked after numba's pool started). Both builds compute each element with the same code,
so the choice never changes a result.

Settings
--------
:data:`PARALLEL_MIN_ELEMENTS` and :data:`ADAPT_TO_LOAD` are process-wide and read at every call.
Change them with :func:`settings`, which restores them when its ``with`` block ends (tests and
``fastbp verify`` do so), rather than by assignment; :func:`_reset` puts back the defaults.

The thread *count* is per Python thread: numba's own count is (``numba.set_num_threads``), and so
is the switch that :func:`fastbp.threads.set_num_threads` and :func:`fastbp.threads.threads` turn
off, :func:`set_count_fixed`: a count set by hand in one thread leaves the others on the default.

numba internals used here (``numba.np.ufunc.parallel._is_initialized`` and ``_launch_threads``)
are guarded by ``tests/test_numba_internals.py``.
"""

import contextlib
import functools
import operator
import os
import sys
import threading
import time
import warnings

import numba
import numpy as np

from .jit import kernel

_DEFAULTS = {"PARALLEL_MIN_ELEMENTS": 1 << 18, "ADAPT_TO_LOAD": True}

PARALLEL_MIN_ELEMENTS = _DEFAULTS["PARALLEL_MIN_ELEMENTS"]
"""Inputs with fewer elements run the serial build: below this, starting threads costs more than
they save on a small machine. ``0`` forces the threaded builds at every size, whatever the load
(the tests drive them with small arrays that way). Set it with :func:`settings`."""

_long_call_at = [-float("inf")]
"""When (``time.perf_counter()``) the last long kernel call ended (see
:func:`seconds_since_long_call`)."""

ADAPT_TO_LOAD = _DEFAULTS["ADAPT_TO_LOAD"]
"""Run a threaded build only on as many threads as there are idle cores (plus the caller's).

A parallel region ends when its slowest thread ends. On a machine where other processes (or
BLAS's own worker threads, which spin for a while after every matrix product) hold the other
cores, a kernel thread waits a scheduler time slice (milliseconds) for a core, and a 100 us
kernel takes 10 ms. Before each threaded call above :data:`PARALLEL_MIN_ELEMENTS`, the count of
running tasks is read from ``/proc/loadavg`` (2 us; elsewhere the check is skipped), and the
kernel runs on ``min(numba.get_num_threads(), 1 + idle cores)`` threads, or serial. Both builds
compute every element with the same code, so this never changes a result. A thread whose count
was set by hand (:func:`fastbp.threads.set_num_threads`) skips the check: see
:func:`set_count_fixed`. Set it with :func:`settings`."""

BUILDS = {"serial": sys.maxsize, "threaded": 0}
""":data:`PARALLEL_MIN_ELEMENTS` values that force one build at every size:
``settings(parallel_min_elements=BUILDS["threaded"])`` runs the threaded builds even on tiny
arrays, whatever the load. The tests and ``fastbp verify`` drive both builds this way."""


@contextlib.contextmanager
def settings(*, parallel_min_elements=None, adapt_to_load=None):
    """Set :data:`PARALLEL_MIN_ELEMENTS` and :data:`ADAPT_TO_LOAD` for a ``with`` block.

    Parameters
    ----------
    parallel_min_elements : int, optional
        The smallest first argument (in elements) that may run a threaded build; ``None`` leaves
        it as it is. :data:`BUILDS` names the two values that force one build.
    adapt_to_load : bool, optional
        Whether threaded builds run only on idle cores; ``None`` leaves it as it is.

    Raises
    ------
    TypeError
        ``parallel_min_elements`` is not an integer, or ``adapt_to_load`` not a bool.
    ValueError
        ``parallel_min_elements`` is negative.

    Notes
    -----
    The values before the block are restored when it ends, also on an exception. The settings
    are process-wide: every Python thread sees them while the block runs, so use this in tests,
    benchmarks and scripts, not around a library's own work. A thread count for one Python thread
    alone is :func:`fastbp.threads.threads`.

    Examples
    --------
    >>> from fastbp.kernels import parallel
    >>> with parallel.settings(parallel_min_elements=parallel.BUILDS["threaded"]):
    ...     pass  # every sized kernel runs its threaded build here
    """
    global PARALLEL_MIN_ELEMENTS, ADAPT_TO_LOAD
    threshold = PARALLEL_MIN_ELEMENTS
    if parallel_min_elements is not None:
        if isinstance(parallel_min_elements, bool):
            raise TypeError("parallel_min_elements must be an integer; got a bool")
        try:
            threshold = operator.index(parallel_min_elements)
        except TypeError:
            raise TypeError(f"parallel_min_elements must be an integer; got "
                            f"{parallel_min_elements!r}") from None
        if threshold < 0:
            raise ValueError(f"parallel_min_elements must be >= 0; got {threshold}")
    adapt = ADAPT_TO_LOAD
    if adapt_to_load is not None:
        if not isinstance(adapt_to_load, (bool, np.bool_)):
            raise TypeError(f"adapt_to_load must be True or False; got {adapt_to_load!r}")
        adapt = bool(adapt_to_load)
    saved = (PARALLEL_MIN_ELEMENTS, ADAPT_TO_LOAD)
    PARALLEL_MIN_ELEMENTS, ADAPT_TO_LOAD = threshold, adapt
    try:
        yield
    finally:
        PARALLEL_MIN_ELEMENTS, ADAPT_TO_LOAD = saved


def _reset():
    """Put :data:`PARALLEL_MIN_ELEMENTS` and :data:`ADAPT_TO_LOAD` back to their defaults, and
    forget the last long kernel call (:func:`seconds_since_long_call`)."""
    global PARALLEL_MIN_ELEMENTS, ADAPT_TO_LOAD
    PARALLEL_MIN_ELEMENTS = _DEFAULTS["PARALLEL_MIN_ELEMENTS"]
    ADAPT_TO_LOAD = _DEFAULTS["ADAPT_TO_LOAD"]
    _long_call_at[0] = -float("inf")


_this_thread = threading.local()


def count_fixed():
    """Whether the calling Python thread's kernel thread count was set by hand."""
    return getattr(_this_thread, "fixed", False)


def set_count_fixed(fixed):
    """Mark the calling Python thread's kernel thread count as set by hand (``True``: its threaded
    builds use ``numba.get_num_threads()`` as it is, with no load check) or not. Other Python
    threads are not affected. :func:`fastbp.threads.set_num_threads` calls this."""
    _this_thread.fixed = bool(fixed)


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


_workers = ()
"""Open ``/proc/self/task/<tid>/stat`` files of numba's worker threads (found by
:func:`_note_workers`). A worker that is still running when the next kernel asks for threads
(GNU OpenMP's thread leaving the last parallel region, going to sleep) shows as a running task
in ``/proc/loadavg``, but it is ours and takes the next region's work at once."""

_workers_team = 1
"""The largest team whose new worker threads were looked for."""

_workers_lock = threading.Lock()


def _task_ids():
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _note_workers(before):
    """After the first threaded call of a larger team than any before: the tasks that are new
    since ``before`` (:func:`_task_ids`) are numba's worker threads."""
    global _workers
    after = _task_ids()
    if before is None or after is None:
        return
    fds = list(_workers)
    for tid in sorted(after - before):
        try:
            fds.append(os.open(f"/proc/self/task/{tid}/stat", os.O_RDONLY))
        except OSError:
            continue
    _workers = tuple(fds)


def running_workers():
    """How many of numba's worker threads are running now (state ``R``): tasks that
    :func:`idle_cores` should count as the caller's own. 0 where none are known."""
    count = 0
    for fd in _workers:
        try:
            stat = os.pread(fd, 512, 0)
        except OSError:  # the thread has exited
            continue
        end = stat.rfind(b")")
        if stat[end + 2:end + 3] == b"R":
            count += 1
    return count


_POOL_READY = False
_POOL_LOCK = threading.Lock()
"""Held while numba's pool starts: two Python threads starting it at once would both set and
delete ``OMP_WAIT_POLICY``."""

_PARALLEL_UNAVAILABLE = False
"""True where numba could load no threading layer: every kernel then runs its serial build."""

_LAYER_LOCK = None
"""A lock around fastbp's threaded calls when numba's layer is ``workqueue``, which is not
thread-safe: two Python threads in parallel regions at once abort the process ("Concurrent
access"). With ``omp`` (GNU OpenMP, here) or ``tbb`` it stays ``None``: both are thread-safe."""

_FORKED_FROM_POOL = False
"""True in a child forked from a process whose numba thread pool had started: GNU OpenMP is not
fork-safe (numba kills such a child on its first parallel call), so it runs the serial builds."""


def _forget_workers():
    global _workers, _workers_team, _workers_lock
    for fd in _workers:  # the parent's threads: not this process's
        try:
            os.close(fd)
        except OSError:
            pass
    _workers, _workers_team, _workers_lock = (), 1, threading.Lock()


def _after_fork_in_child():
    global _FORKED_FROM_POOL, _POOL_LOCK
    from numba.np.ufunc import parallel as numba_parallel

    _POOL_LOCK = threading.Lock()  # another thread of the parent may have held it at the fork
    _forget_workers()
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
    only and then put back. A library loaded later that links GNU OpenMP under the same name
    (``libgomp.so.1``: PyTorch's wheels) shares that runtime and its passive policy (PyTorch's
    DeepConvNet step took 57-66 ms instead of 46-52 in float32 here); one loaded earlier gives
    numba its runtime with the default policy, whose spinning workers slowed fastbp's
    DeepConvNet step from 48-53 to 77-84 ms (README, Threads). Where numba's pool was already
    started, or the layer is not OpenMP, nothing changes. Python threads that get here at once
    start the pool once, one after the other.
    """
    global _POOL_READY, _PARALLEL_UNAVAILABLE, _LAYER_LOCK
    from numba.np.ufunc import parallel as numba_parallel

    with _POOL_LOCK:
        if _POOL_READY:
            return
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
        _POOL_READY = True  # last: a thread that sees it also sees the two flags above


def pool_available():
    """Start numba's thread pool if it has not started (:func:`_start_thread_pool`); False
    where no threading layer loads (the kernels then run serial). numba's own
    ``get_num_threads`` starts the pool too, and raises there."""
    if not _POOL_READY:
        _start_thread_pool()
    return not _PARALLEL_UNAVAILABLE


def threads_for(size):
    """The thread count a :func:`sized` kernel uses for a first argument of ``size`` elements
    (1: the serial build)."""
    threshold = PARALLEL_MIN_ELEMENTS
    if size < threshold or _FORKED_FROM_POOL or not pool_available():
        return 1
    n = numba.get_num_threads()
    if ADAPT_TO_LOAD and threshold > 0 and n > 1 and not count_fixed():
        idle = idle_cores(running_workers())
        if idle is not None:
            n = min(n, 1 + idle)
    return n


LONG_CALL_SECONDS = 1e-3
"""A :func:`sized` kernel call on an input large enough for the threaded builds that lasts at
least this long (serial or threaded) is a *long call*: kernels that want the cores are at work
(:func:`seconds_since_long_call`). So is a convolution's run of kernels over images on fastbp's
helper threads that lasts as long (``fastbp.layers._over_images``: the Winograd and column
paths). A convolution's kernels at the book's batch take 1-10 ms; an element-wise kernel on a
million elements well under 1 ms."""


def seconds_since_long_call():
    """Seconds since the last long call (:data:`LONG_CALL_SECONDS`) ended, in a process whose
    kernels can run threads on a count above 1, whatever the load then let them use; inf where
    there has been none. :class:`fastbp.threads.ProductThreads` reads it."""
    return time.perf_counter() - _long_call_at[0]


def _note_long_call(started):
    """Record the call that started at ``started`` (``time.perf_counter()``) if it was long."""
    end = time.perf_counter()
    if end - started >= LONG_CALL_SECONDS and not _FORKED_FROM_POOL \
            and not _PARALLEL_UNAVAILABLE and numba.get_num_threads() > 1:
        _long_call_at[0] = end


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
        started = time.perf_counter()
        try:
            if n < 2:  # (threads_for started numba's pool, or found that it can't start)
                return serial(*args)
            if _LAYER_LOCK is not None:
                with _LAYER_LOCK:
                    return _run_threaded(parallel, n, args)
            return _run_threaded(parallel, n, args)
        finally:
            _note_long_call(started)

    functools.update_wrapper(call, fn)
    call.serial = serial
    call.parallel = parallel
    return call


def _run_threaded(parallel, n, args):
    """Call the threaded build on ``n`` threads (numba's count is per calling thread)."""
    global _workers_team
    if n > _workers_team:  # a larger team than before: its new threads are numba's workers
        with _workers_lock:
            if n > _workers_team:
                before = _task_ids()
                try:
                    return _run_threads(parallel, n, args)
                finally:
                    _note_workers(before)
                    _workers_team = n
    return _run_threads(parallel, n, args)


def _run_threads(parallel, n, args):
    saved = numba.get_num_threads()
    if n == saved:
        return parallel(*args)
    numba.set_num_threads(n)
    try:
        return parallel(*args)
    finally:
        numba.set_num_threads(saved)
