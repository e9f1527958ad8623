"""NumPy's legacy global random state, for kernels that draw ``np.random.rand``'s stream.

``np.random.rand`` is a method of one ``RandomState`` whose bit generator is an ``MT19937``.
:func:`global_mt19937` hands a kernel that generator's state *in place*: a uint32 array of 625
words over NumPy's own ``mt19937_state`` struct (the 624 key words, then ``pos``), found through
the bit generator's public ``ctypes.state_address``. A kernel that draws from it bit for bit as
``rand`` does, and moves ``pos`` as ``rand`` would, leaves the global state exactly as ``rand``
leaves it. The Gaussian cache of ``np.random.randn`` lives outside that struct and is untouched,
as ``rand`` leaves it.

Why in place: ``np.random.get_state()`` and ``set_state`` copy the key word by word in Python
(about 50 and 90 us here): more than ``rand(100, 100)`` itself.

The struct's layout is NumPy's, not a documented interface, so it is checked before it is used:
once on a private ``MT19937`` (the array must show that generator's key and ``pos``, and follow
it when it draws), then once on the global generator. Where anything differs, or
``np.random.rand`` is not a ``RandomState``'s method over an ``MT19937`` (replaced by the user,
another NumPy), :func:`global_mt19937` returns ``None`` and the caller draws with
``np.random.rand`` itself.

Threads: the caller holds the bit generator's ``lock`` (the lock ``RandomState`` takes around
every draw) while the kernel reads and advances the state, so a draw here and draws by
``np.random`` in other threads are serialised as two ``rand`` calls are.
"""

import ctypes
import threading

import numpy as np

_STATE_WORDS = 625  # uint32 key[624]; int pos

_cache = None
"""``(bit_generator, (lock, state) or None)`` for the generator behind ``np.random.rand``, once
checked. It keeps the generator alive, so the array's memory stays valid while it is used."""

_checked = None
"""Whether the layout check on a private generator passed (``None``: not run yet)."""

_build_lock = threading.Lock()


def _state_view(bit_generator):
    """The uint32[625] array over ``bit_generator``'s state struct (no copy)."""
    words = (ctypes.c_uint32 * _STATE_WORDS).from_address(bit_generator.ctypes.state_address)
    return np.ctypeslib.as_array(words)


def _matches(view, bit_generator):
    state = bit_generator.state["state"]  # a copy, made by NumPy
    key = np.asarray(state["key"])
    return (key.shape == (_STATE_WORDS - 1,) and np.array_equal(view[:-1], key)
            and int(view[-1]) == int(state["pos"]))


def _layout_is_numpys():
    """Check, on a private generator, that :func:`_state_view` shows its live key and ``pos``."""
    bit_generator = np.random.MT19937(12345)
    draws = np.random.RandomState(bit_generator)
    view = _state_view(bit_generator)
    if not _matches(view, bit_generator):
        return False
    pos = int(view[-1])
    draws.random_sample(313)  # 626 words: the key is regenerated and pos moves on by 2
    return _matches(view, bit_generator) and int(view[-1]) != pos


def global_mt19937():
    """``(lock, state)`` for the generator ``np.random.rand`` draws from, or ``None``.

    ``state`` is the live uint32[625] array described in the module docstring: hold ``lock``
    while a kernel reads and advances it. ``None`` when the global stream is not reachable this
    way; the caller then draws with ``np.random.rand``.
    """
    global _cache, _checked
    owner = getattr(np.random.rand, "__self__", None)
    bit_generator = getattr(owner, "_bit_generator", None)
    cached = _cache
    if cached is not None and cached[0] is bit_generator:
        return cached[1]
    if type(owner) is not np.random.RandomState or type(bit_generator) is not np.random.MT19937:
        return None
    with _build_lock:
        found = None
        try:
            if _checked is None:
                _checked = _layout_is_numpys()
            lock = bit_generator.lock
            if _checked:
                with lock:
                    view = _state_view(bit_generator)
                    if _matches(view, bit_generator):
                        found = (lock, view)
        except (AttributeError, TypeError, ValueError, KeyError):
            found = None
        _cache = (bit_generator, found)  # a failed check is not repeated for this generator
    return found
