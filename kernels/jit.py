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
import pathlib
import warnings

import numba
from numba.core.caching import FunctionCache

FASTMATH = frozenset({"nsz", "arcp", "contract", "reassoc"})
"""fastmath flags used by kernels that opt in. No ``nnan``/``ninf``: NaN and inf must survive."""

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


def _compile(fn, parallel, fastmath):
    options = dict(_OPTIONS, parallel=parallel, fastmath=set(FASTMATH) if fastmath else False)
    dispatcher = numba.njit(cache=False, **options)(fn)
    if hasattr(dispatcher, "_cache"):  # not there under NUMBA_DISABLE_JIT=1
        try:
            dispatcher._cache = _TolerantCache(fn, (parallel, fastmath))
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
    fastmath : bool
        Use :data:`FASTMATH` (reassociation, contraction), never ``nnan``/``ninf``.
    """
    if fn is None:
        return lambda f: _compile(f, parallel, fastmath)
    return _compile(fn, parallel, fastmath)


PARALLEL_MIN_ELEMENTS = 1 << 18
"""Inputs with fewer elements run the serial build: below this, starting threads costs more than
they save on a small machine. Read at every call, so it can be changed at run time (tests set it
to 0 to drive the threaded builds with small arrays)."""


def sized(fn=None, *, fastmath=False):
    """Compile ``fn`` serial and threaded, and call whichever suits the size of the first argument.

    The returned Python function calls ``.parallel`` when its first argument has at least
    :data:`PARALLEL_MIN_ELEMENTS` elements, else ``.serial`` (where ``prange`` runs as ``range``).
    Both builds compute each output element with the same code, so the choice never changes a
    result.
    """
    if fn is None:
        return lambda f: sized(f, fastmath=fastmath)
    serial = kernel(fn, fastmath=fastmath)
    parallel = kernel(fn, parallel=True, fastmath=fastmath)

    def call(*args):
        build = parallel if args[0].size >= PARALLEL_MIN_ELEMENTS else serial
        return build(*args)

    functools.update_wrapper(call, fn)
    call.serial = serial
    call.parallel = parallel
    return call
