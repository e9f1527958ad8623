"""Affine kernels. The matrix products run in BLAS (called from the layer); these are the passes
around them: the bias added in place into the product, and ``db``, the column sums of ``dout``.
"""

from numba import prange

from .jit import kernel
from .parallel import sized

COLUMN_BLOCK = 256


@sized
def bias_add(out, b):
    """``out[i, :] += b`` for every row, in place. ``out`` is (N, H), ``b`` is (H,).

    Writes ``out``. The caller has validated the inputs: C-contiguous, of one float dtype, of
    those shapes. ``out.size`` picks the serial or the threaded build.
    """
    n, h = out.shape
    for i in prange(n):
        for j in range(h):
            out[i, j] += b[j]


@kernel
def _column_sum_block(dout, lo, db):
    """``db = dout[:, lo:lo + db.size].sum(axis=0)``, rows added in order."""
    zero = db.dtype.type(0)
    w = db.size
    for j in range(w):
        db[j] = zero
    for i in range(dout.shape[0]):
        row = dout[i, lo:lo + w]  # a unit-stride slice of a C row: typed contiguous
        for j in range(w):  # a plain range over slices: LLVM vectorises it
            db[j] += row[j]


@sized
def column_sum(dout, db):
    """``db[j] = sum_i dout[i, j]``, rows added in order, as ``numpy.sum(axis=0)`` does.

    Threads own blocks of columns, never a shared accumulator, so the result does not depend
    on the thread count.

    Writes ``db``. The caller has validated the inputs: ``dout`` (N, H) and ``db`` (H,),
    C-contiguous, of one float dtype. ``dout.size`` picks the serial or the threaded build.
    """
    h = dout.shape[1]
    for cb in prange((h + COLUMN_BLOCK - 1) // COLUMN_BLOCK):
        lo = cb * COLUMN_BLOCK
        hi = min(h, lo + COLUMN_BLOCK)
        _column_sum_block(dout, lo, db[lo:hi])
