"""Dropout kernels: the mask compare fused with the multiply, and the backward multiply.

The uniform numbers ``u`` are the book's, ``np.random.rand(*x.shape)`` from NumPy's global
state, so a seeded script gets the book's masks. :func:`dropout_forward_mt19937` draws them
itself, in the same pass as the compare and the multiply (``u`` is never stored): MT19937 run
on the global generator's own state (which :mod:`fastbp._globalrandom` finds and checks), giving
``rand``'s doubles bit for bit and advancing the state exactly as ``rand`` does. It is serial
(the stream is), about 2 ns an element against ``rand``'s 9 here: the twist and the tempering
are loops LLVM vectorises. :func:`mt19937_uniforms` writes the same doubles out (tests check
them against ``rand``). Where the global state is not reachable that way, or ``u`` comes from a
``Generator``, the caller draws ``u`` and :func:`dropout_forward` uses it. Arrays are C-contiguous,
of one shape (any number of dimensions: the kernels work on flat views of them), and validated
by the caller (:class:`fastbp.layers.Dropout`). Kept elements are
multiplied by 1 and dropped ones by 0, as the book's ``x * mask`` does, so a dropped inf or NaN
gives NaN and a dropped negative number gives -0.0.

As in :mod:`.activations`, the work is cut into blocks of ``BLOCK`` elements whose loops LLVM
vectorises, and the threaded builds hand whole blocks to threads: every element is computed by
the same code at any thread count.
"""

import numpy as np
from numba import prange

from .jit import kernel
from .parallel import sized

BLOCK = 16384


@kernel
def _forward_block(x, u, ratio, mask, out):
    zero = x.dtype.type(0)
    one = x.dtype.type(1)
    for i in range(x.size):
        m = u[i] > ratio
        mask[i] = m
        out[i] = x[i] * (one if m else zero)


@sized
def dropout_forward(x, u, ratio, mask, out):
    """``mask = u > ratio`` and ``out = x * mask``.

    ``x`` (its size picks the serial or the threaded build) and ``out`` have one float dtype;
    ``u`` is float64 (NumPy's uniform numbers) and ``ratio`` a float. ``mask`` (bool) and
    ``out`` are **written**. The caller validates every argument (same sizes, dtypes, C order).
    """
    n = x.size
    x, u, mask, out = x.reshape(n), u.reshape(n), mask.reshape(n), out.reshape(n)
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        _forward_block(x[lo:hi], u[lo:hi], ratio, mask[lo:hi], out[lo:hi])


@kernel
def _backward_block(dout, mask, dx):
    zero = dout.dtype.type(0)
    one = dout.dtype.type(1)
    for i in range(dout.size):
        dx[i] = dout[i] * (one if mask[i] else zero)


@sized
def dropout_backward(dout, mask, dx):
    """``dx = dout * mask``. ``dout`` (its size picks the build) and ``dx`` have one float
    dtype, ``mask`` is bool; ``dx`` is **written**. The caller validates every argument."""
    n = dout.size
    dout, mask, dx = dout.reshape(n), mask.reshape(n), dx.reshape(n)
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        _backward_block(dout[lo:hi], mask[lo:hi], dx[lo:hi])


@kernel
def _scale_block(x, s, out):
    for i in range(x.size):
        out[i] = x[i] * s


@sized
def dropout_scale(x, s, out):
    """``out = x * s``: test mode, ``s = 1 - dropout_ratio`` in ``x``'s dtype. ``x`` (its size
    picks the build) and ``out`` have one float dtype; ``out`` is **written**. The caller
    validates every argument."""
    n = x.size
    x, out = x.reshape(n), out.reshape(n)
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        _scale_block(x[lo:hi], s, out[lo:hi])


# --- NumPy's legacy global stream, drawn here ------------------------------------------------

MT_N = 624
"""Words in an MT19937 state (NumPy's ``RK_STATE_LEN``); the state array is these words, then
``pos``."""

_MT_M = 397
_MT_BLOCK = MT_N // 2  # elements per pass: one state's worth of words


@kernel
def _mt_twist(key):
    """Regenerate the 624 words of ``key`` (uint32) in place, as NumPy's ``mt19937_gen``.

    No loop below has a dependency that stops LLVM's vectoriser: word ``i`` reads the old words
    ``i + 1`` and ``i + 397`` (first loop) or the old ``i + 1`` and the new ``i - 227`` (second
    loop: a dependency at distance 227, so vectors shorter than that are safe); the last word
    wraps round to word 0.
    """
    upper = key.dtype.type(0x80000000)
    lower = key.dtype.type(0x7FFFFFFF)
    matrix_a = key.dtype.type(0x9908B0DF)
    one = key.dtype.type(1)
    shift = MT_N - _MT_M
    for i in range(shift):
        y = (key[i] & upper) | (key[i + 1] & lower)
        key[i] = key[i + _MT_M] ^ (y >> one) ^ ((y & one) * matrix_a)
    for i in range(shift, MT_N - 1):
        y = (key[i] & upper) | (key[i + 1] & lower)
        key[i] = key[i - shift] ^ (y >> one) ^ ((y & one) * matrix_a)
    y = (key[MT_N - 1] & upper) | (key[0] & lower)
    key[MT_N - 1] = key[_MT_M - 1] ^ (y >> one) ^ ((y & one) * matrix_a)


@kernel
def _mt_temper(key, w):
    """``w = temper(key)`` word by word (``key`` and ``w`` of one size): MT19937's output."""
    s11 = key.dtype.type(11)
    s7 = key.dtype.type(7)
    s15 = key.dtype.type(15)
    s18 = key.dtype.type(18)
    b = key.dtype.type(0x9D2C5680)
    c = key.dtype.type(0xEFC60000)
    for i in range(key.size):
        y = key[i]
        y ^= y >> s11
        y ^= (y << s7) & b
        y ^= (y << s15) & c
        y ^= y >> s18
        w[i] = y


@kernel
def _mt_words(key, pos, w):
    """Fill ``w`` with the next ``w.size`` outputs of the state ``(key, pos)`` and return the new
    ``pos``, as ``w.size`` calls of NumPy's ``mt19937_next``: the words are regenerated when one
    more is needed at ``pos == 624``, not before."""
    j = 0
    while j < w.size:
        if pos == MT_N:
            _mt_twist(key)
            pos = 0
        c = min(MT_N - pos, w.size - j)
        _mt_temper(key[pos:pos + c], w[j:j + c])
        pos += c
        j += c
    return pos


@kernel
def _mt_uniform(w, i):
    """NumPy's legacy double from outputs ``w[2i]`` and ``w[2i + 1]`` (``mt19937_next_double``):
    ``((w[2i] >> 5) * 2**26 + (w[2i + 1] >> 6)) / 2**53``, exact, in [0, 1). Both halves fit an
    int32, whose conversion to float64 vectorises."""
    a = np.float64(np.int32(w[2 * i] >> w.dtype.type(5)))
    b = np.float64(np.int32(w[2 * i + 1] >> w.dtype.type(6)))
    return (a * 67108864.0 + b) / 9007199254740992.0


@kernel
def _mt_uniforms(w, u):
    for i in range(u.size):
        u[i] = _mt_uniform(w, i)


@kernel
def mt19937_uniforms(state, u):
    """``u`` (float64) **written** with the doubles NumPy's legacy ``random_sample`` (what
    ``np.random.rand`` returns) draws from the MT19937 ``state``, which is **advanced in place**
    as that call advances it.

    ``state`` is uint32, 625 words: NumPy's ``mt19937_state``, the 624 key words then ``pos``
    (``0 <= pos <= 624``). The caller validates every argument. Serial: the stream is.
    """
    n = u.size
    u = u.reshape(n)
    key = state[:MT_N]
    pos = np.intp(state[MT_N])
    w = np.empty(2 * _MT_BLOCK, dtype=state.dtype)
    for lo in range(0, n, _MT_BLOCK):
        k = min(_MT_BLOCK, n - lo)
        pos = _mt_words(key, pos, w[:2 * k])
        _mt_uniforms(w, u[lo:lo + k])
    state[MT_N] = pos


@kernel
def _mt_dropout_block(w, x, ratio, mask, out):
    zero = x.dtype.type(0)
    one = x.dtype.type(1)
    for i in range(x.size):
        m = _mt_uniform(w, i) > ratio
        mask[i] = m
        out[i] = x[i] * (one if m else zero)


@kernel
def dropout_forward_mt19937(x, ratio, state, mask, out):
    """:func:`dropout_forward` with ``u`` drawn here, in the same pass: ``u`` are the doubles of
    :func:`mt19937_uniforms` (those of ``np.random.rand(x.size)`` from the same state), never
    stored; ``state`` is advanced in place as that call advances it.

    ``x`` and ``out`` have one float dtype, ``ratio`` is a float, ``state`` is uint32[625] (see
    :func:`mt19937_uniforms`); ``mask`` (bool) and ``out`` are **written**. The caller validates
    every argument. Serial: the stream is sequential.
    """
    n = x.size
    x, mask, out = x.reshape(n), mask.reshape(n), out.reshape(n)
    key = state[:MT_N]
    pos = np.intp(state[MT_N])
    w = np.empty(2 * _MT_BLOCK, dtype=state.dtype)
    for lo in range(0, n, _MT_BLOCK):
        k = min(_MT_BLOCK, n - lo)
        pos = _mt_words(key, pos, w[:2 * k])
        hi = lo + k
        _mt_dropout_block(w, x[lo:hi], ratio, mask[lo:hi], out[lo:hi])
    state[MT_N] = pos
