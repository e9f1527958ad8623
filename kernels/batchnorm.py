"""Batch normalisation kernels: a fused forward and a fused backward over (N, D) arrays.

Columns are features. ``x`` and ``dout`` are C-contiguous (N, D) arrays of one float dtype; the
per-feature arrays (``gamma``, ``beta``, the statistics) are C-contiguous (D,) rows. The caller
(:class:`fastbp.layers.BatchNormalization`) validates and converts every argument first; nothing
here checks shapes.

Precision: every sum, mean, variance and per-element value is computed in float64, also for
float32 data, and rounded once when it is stored. A float32 result is therefore the float64
result rounded, never worse than NumPy's float32 arithmetic, which accumulates in float32.

Order: each column is summed over rows ``0, 1, ..., N-1`` in that order (as ``numpy.sum(axis=0)``
does on a C-contiguous array), and the variance is the mean of squared deviations from that mean
(two passes, as the book's ``np.mean(xc**2, axis=0)``). A column is always reduced by one thread,
whole, so results are bit-identical at every thread count.

Blocking: the threaded builds hand blocks of columns to threads. Each pass sweeps the rows of a
block, and its inner loop runs over the block's contiguous part of one row, which LLVM
vectorises. The caller picks the width (:func:`column_block`): wide, because every row of a
block costs a fixed setup, and a block is re-read from cache by the next pass. The width never
changes a result.

Neither kernel stores ``xc`` or ``xn``: the backward pass recomputes ``xn = (x - mean) * inv_std``
from ``x``, with the same code as the forward pass, which saves two (N, D) writes per step.
"""

import functools

import numba
import numpy as np
from numba import prange

from .jit import kernel
from .parallel import sized

BLOCK_BYTES = 1 << 20
"""Bytes of one column block of one (N, D) array (1 MiB). Each pass sweeps a block row by row,
and every row costs a fixed setup (slices, LLVM's alias checks) before its vectorised loop: the
wider the block, the less that weighs. A block this size is re-read from L2 or L3 by the next
pass, never from memory."""

MIN_COLUMNS = 256
"""The narrowest block (a 2 KiB run per float64 row), however many rows there are."""


def column_block(n_rows, itemsize, n_cols):
    """The width of a column block: about :data:`BLOCK_BYTES` per array, at least
    :data:`MIN_COLUMNS`, and no wider than a fair share per thread, so that every thread gets a
    block. Any width gives the same results."""
    return _column_block(n_rows, itemsize, n_cols, numba.get_num_threads(), BLOCK_BYTES,
                         MIN_COLUMNS)


@functools.lru_cache(maxsize=256)
def _column_block(n_rows, itemsize, n_cols, threads, budget, narrowest):
    width = max(narrowest, budget // max(1, n_rows * itemsize))
    width = min(width, max(narrowest, -(-n_cols // threads)))
    width = max(16, width - width % 16)
    return max(1, min(n_cols, width))


@kernel
def _block_statistics(x, lo, hi, eps, mean, inv_std, std, var):
    """Mean, variance, ``std = sqrt(var + eps)`` and ``1 / std`` of columns ``lo:hi``."""
    n = x.shape[0]
    w = hi - lo
    acc = np.zeros(w)
    for i in range(n):
        row = x[i, lo:hi]
        for j in range(w):
            acc[j] += np.float64(row[j])
    m = mean[lo:hi]
    for j in range(w):
        m[j] = acc[j] / n  # 0 / 0 is NaN for an empty batch, as numpy.mean gives
        acc[j] = 0.0
    for i in range(n):
        row = x[i, lo:hi]
        for j in range(w):
            d = np.float64(row[j]) - m[j]
            acc[j] += d * d
    for j in range(w):
        v = acc[j] / n
        s = np.sqrt(v + eps)
        var[lo + j] = v
        std[lo + j] = s
        inv_std[lo + j] = 1.0 / s


@kernel
def _block_normalise(x, lo, hi, mean, inv_std, gamma, beta, out):
    """``out = gamma * ((x - mean) * inv_std) + beta`` on columns ``lo:hi``."""
    w = hi - lo
    m = mean[lo:hi]
    s = inv_std[lo:hi]
    g = gamma[lo:hi]
    b = beta[lo:hi]
    for i in range(x.shape[0]):
        row = x[i, lo:hi]
        o = out[i, lo:hi]
        for j in range(w):
            xn = (np.float64(row[j]) - m[j]) * s[j]
            o[j] = np.float64(g[j]) * xn + np.float64(b[j])


@sized
def batchnorm_train_forward(x, gamma, beta, momentum, eps, block, running_mean, running_var,
                            mean, inv_std, std, out):
    """Batch statistics, normalisation, scale and shift, and the running statistics, fused.

    Every argument is validated and converted by the caller (shapes, dtypes, C order).

    Parameters
    ----------
    x : (N, D) array
        The input; its size picks the serial or the threaded build.
    gamma, beta : (D,) arrays, ``x``'s dtype
    momentum, eps : float
        ``running = momentum * running + (1 - momentum) * batch``; ``std = sqrt(var + eps)``.
    block : int
        The column block width (:func:`column_block`).
    running_mean, running_var : (D,) arrays, ``x``'s dtype
        **Written** (in place) with the updated running statistics, from the biased variance.
        Left unchanged when N is 0: an empty batch carries no statistics.
    mean, inv_std : (D,) float64 arrays
        **Written**: the batch mean and ``1 / std``, which the backward pass takes.
    std : (D,) array, ``x``'s dtype
        **Written**: ``sqrt(var + eps)``, the book's ``std``.
    out : (N, D) array, ``x``'s dtype
        **Written**: ``gamma * (x - mean) / std + beta``.
    """
    n, d = x.shape
    var = np.empty(d)
    keep = 1.0 - momentum
    for cb in prange((d + block - 1) // block):
        lo = cb * block
        hi = min(d, lo + block)
        _block_statistics(x, lo, hi, eps, mean, inv_std, std, var)
        _block_normalise(x, lo, hi, mean, inv_std, gamma, beta, out)
        if n > 0:
            for j in range(lo, hi):
                running_mean[j] = momentum * np.float64(running_mean[j]) + keep * mean[j]
                running_var[j] = momentum * np.float64(running_var[j]) + keep * var[j]


@sized
def batchnorm_apply(x, mean, inv_std, gamma, beta, block, out):
    """``out = gamma * ((x - mean) * inv_std) + beta``: the forward pass with given statistics
    (the running ones, in test mode).

    ``x`` is (N, D) and its size picks the serial or the threaded build; ``mean`` and
    ``inv_std`` are (D,) float64; ``gamma``, ``beta`` are (D,) in ``x``'s dtype. ``out`` (N, D)
    is **written**. The caller validates every argument.
    """
    d = x.shape[1]
    for cb in prange((d + block - 1) // block):
        lo = cb * block
        hi = min(d, lo + block)
        _block_normalise(x, lo, hi, mean, inv_std, gamma, beta, out)


@kernel
def _block_backward(dout, x, lo, hi, mean, inv_std, gamma, batch_statistics, dx, dgamma,
                    dbeta):
    n = x.shape[0]
    w = hi - lo
    m = mean[lo:hi]
    s = inv_std[lo:hi]
    sum_d = np.zeros(w)
    sum_dxn = np.zeros(w)
    for i in range(n):
        row = x[i, lo:hi]
        dr = dout[i, lo:hi]
        # Two loops, not one: each writes one array, so LLVM's alias checks stay few enough
        # for it to vectorise (one loop writing both sums stayed scalar).
        for j in range(w):
            sum_d[j] += np.float64(dr[j])
        for j in range(w):
            sum_dxn[j] += np.float64(dr[j]) * ((np.float64(row[j]) - m[j]) * s[j])
    scale = np.empty(w)
    for j in range(w):
        dbeta[lo + j] = sum_d[j]
        dgamma[lo + j] = sum_dxn[j]
        scale[j] = np.float64(gamma[lo + j]) * s[j]
        sum_d[j] = sum_d[j] / n  # the means that dx subtracts (0 / 0 only where n is 0)
        sum_dxn[j] = sum_dxn[j] / n
    if not batch_statistics:  # fixed statistics: dx does not depend on x (nor on an inf in it)
        for i in range(n):
            dr = dout[i, lo:hi]
            o = dx[i, lo:hi]
            for j in range(w):
                o[j] = scale[j] * np.float64(dr[j])
        return
    inf = np.inf
    for j in range(w):  # an inf or NaN in a feature's dout: all of its dx is NaN, as in the
        if not (abs(sum_d[j]) < inf and abs(sum_dxn[j]) < inf):  # book's chain (its dmu is
            scale[j] = np.nan  # NaN); the closed form would give some +-inf
    for i in range(n):
        row = x[i, lo:hi]
        dr = dout[i, lo:hi]
        o = dx[i, lo:hi]
        for j in range(w):
            xn = (np.float64(row[j]) - m[j]) * s[j]
            o[j] = scale[j] * ((np.float64(dr[j]) - sum_d[j]) - xn * sum_dxn[j])


@sized
def batchnorm_backward(dout, x, mean, inv_std, gamma, batch_statistics, block, dx, dgamma,
                       dbeta):
    """``dgamma``, ``dbeta`` and ``dx`` of batch normalisation, fused.

    With ``xn = (x - mean) * inv_std`` (recomputed, as in :func:`batchnorm_apply`),
    ``dbeta = sum(dout)`` and ``dgamma = sum(dout * xn)`` over rows, and

    * ``batch_statistics`` True (train mode, the statistics are the batch's):
      ``dx = gamma * inv_std * (dout - dbeta / N - xn * dgamma / N)``, which is the book's
      chain of ``dxn``, ``dstd``, ``dvar``, ``dxc`` and ``dmu`` in closed form (a feature whose
      ``dbeta`` or ``dgamma`` is inf or NaN gets a NaN ``dx``, as the chain gives it);
    * False (test mode, fixed running statistics): ``dx = gamma * inv_std * dout``.

    ``dout`` (N, D) picks the serial or the threaded build. ``x`` is (N, D) in ``dout``'s dtype;
    ``mean`` and ``inv_std`` are (D,) float64; ``gamma`` is (D,) in ``dout``'s dtype. ``dx``
    (N, D), ``dgamma`` and ``dbeta`` ((D,), ``dout``'s dtype) are **written**. The caller
    validates every argument.
    """
    d = x.shape[1]
    for cb in prange((d + block - 1) // block):
        lo = cb * block
        hi = min(d, lo + block)
        _block_backward(dout, x, lo, hi, mean, inv_std, gamma, batch_statistics, dx, dgamma,
                        dbeta)
