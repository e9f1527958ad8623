"""The one place that holds fastbp's numba options: how a kernel is compiled and cached.

Every kernel is compiled through :func:`kernel` (directly, or twice by
:func:`fastbp.kernels.parallel.sized`), so the options below apply to all of them:

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
with, on first call. Which build runs, on how many threads, is :mod:`.parallel`'s business.

numba internals used here (``FunctionCache._index_key``, ``_cache_file._source_stamp``,
``dispatcher._cache``) are guarded by ``tests/test_numba_internals.py``, and ``pyproject.toml``
pins the numba versions that test passes on.
"""

import hashlib
import pathlib
import sys
import types
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


# --- names that moved to .parallel ----------------------------------------------------------

_MOVED_SETTINGS = frozenset({"PARALLEL_MIN_ELEMENTS", "ADAPT_TO_LOAD"})
_MOVED = _MOVED_SETTINGS | {"sized", "threads_for", "idle_cores"}


class _Module(types.ModuleType):
    """``from .jit import sized`` and reads of the thread settings still work (they live in
    :mod:`.parallel` now); a write to a moved setting here raises instead of doing nothing."""

    def __getattr__(self, name):
        if name in _MOVED:
            from . import parallel

            return getattr(parallel, name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name in _MOVED:
            how = (f"set it with fastbp.kernels.parallel.settings({name.lower()}=...)"
                   if name in _MOVED_SETTINGS else "patch it there")
            raise AttributeError(f"{name} lives in fastbp.kernels.parallel now: {how}")
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Module
