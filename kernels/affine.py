"""Affine kernels. The matrix products run in BLAS (called from the layer); these are the passes
around them: the bias added in place into the product, and ``db``, the column sums of ``dout``.
"""

from numba import prange

from .jit import sized

COLUMN_BLOCK = 256


@sized
def bias_add(out, b):
    """``out[i, :] += b`` for every row, in place. ``out`` is (N, H), ``b`` is (H,)."""
    n, h = out.shape
    for i in prange(n):
        for j in range(h):
            out[i, j] += b[j]


@sized
def column_sum(dout, db):
    """``db[j] = sum_i dout[i, j]``, rows added in order, as ``numpy.sum(axis=0)`` does.

    Threads own blocks of columns, never a shared accumulator, so the result does not depend
    on the thread count.
    """
    n, h = dout.shape
    zero = db.dtype.type(0)
    for cb in prange((h + COLUMN_BLOCK - 1) // COLUMN_BLOCK):
        lo = cb * COLUMN_BLOCK
        hi = min(h, lo + COLUMN_BLOCK)
        for j in range(lo, hi):
            db[j] = zero
        for i in range(n):
            for j in range(lo, hi):
                db[j] += dout[i, j]
