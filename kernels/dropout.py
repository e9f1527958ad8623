"""Dropout kernels: the mask compare fused with the multiply, and the backward multiply.

The uniform random numbers come from NumPy (the caller draws them as the book does, so a seeded
script gets the book's masks); these kernels do the rest in one pass. Arrays are flat (1-D),
C-contiguous, and validated by the caller (:class:`fastbp.layers.Dropout`). Kept elements are
multiplied by 1 and dropped ones by 0, as the book's ``x * mask`` does, so a dropped inf or NaN
gives NaN and a dropped negative number gives -0.0.

As in :mod:`.activations`, the work is cut into blocks of ``BLOCK`` elements whose loops LLVM
vectorises, and the threaded builds hand whole blocks to threads: every element is computed by
the same code at any thread count.
"""

from numba import prange

from .jit import kernel, sized

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
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        _scale_block(x[lo:hi], s, out[lo:hi])
