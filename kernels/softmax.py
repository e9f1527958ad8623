"""Softmax over rows, and softmax fused with cross-entropy, forward and backward.

Arrays are C-contiguous (N, C) of one float dtype; labels are ``intp`` and already checked to lie
in ``[0, C)``. Rows are independent, so the threaded builds split rows between threads and every
row is computed by the same code at any thread count. Per-row losses are written in float64; the
caller reduces them in a fixed order.

NaN or +inf anywhere in a row makes every output of that row NaN: the row maximum skips NaN, but
``exp(NaN - m)`` then puts NaN into the row sum, whatever the NaN's position.
"""

import math

import numpy as np
from numba import prange

from .jit import kernel, sized


@kernel
def _exp_row(x, i, y):
    """Write ``exp(x[i] - max(x[i]))`` into ``y[i]``; return the max and the sum (float64)."""
    c = x.shape[1]
    m = x.dtype.type(-np.inf)
    for j in range(c):
        v = x[i, j]
        if v > m:
            m = v
    s = 0.0
    for j in range(c):
        e = math.exp(x[i, j] - m)
        y[i, j] = e
        s += e
    return m, s


@sized
def softmax_rows(x, y):
    """``y = softmax(x)`` along the last axis."""
    for i in prange(x.shape[0]):
        _, s = _exp_row(x, i, y)
        inv = y.dtype.type(1.0 / s)
        for j in range(x.shape[1]):
            y[i, j] *= inv


@sized
def softmax_cross_entropy_labels_forward(x, t, y, losses):
    """``y = softmax(x)`` and ``losses[i] = logsumexp(x[i]) - x[i, t[i]]``."""
    for i in prange(x.shape[0]):
        m, s = _exp_row(x, i, y)
        inv = y.dtype.type(1.0 / s)
        for j in range(x.shape[1]):
            y[i, j] *= inv
        losses[i] = (np.float64(m) - np.float64(x[i, t[i]])) + math.log(s)


@sized
def softmax_cross_entropy_probs_forward(x, t, y, losses):
    """``y = softmax(x)`` and ``losses[i] = -sum_j t[i, j] * log_softmax(x)[i, j]``.

    Classes with ``t[i, j] == 0`` are skipped, so a ``-inf`` logit on a class with no target
    mass gives a finite loss instead of ``0 * inf = NaN``.
    """
    for i in prange(x.shape[0]):
        m, s = _exp_row(x, i, y)
        inv = y.dtype.type(1.0 / s)
        lse = np.float64(m) + math.log(s)
        acc = 0.0
        for j in range(x.shape[1]):
            y[i, j] *= inv
            tij = t[i, j]
            if tij != 0:
                acc += np.float64(tij) * (lse - np.float64(x[i, j]))
        losses[i] = acc


@sized
def softmax_cross_entropy_labels_backward(y, t, scale, dx):
    """``dx = (y - onehot(t)) * scale``."""
    one = y.dtype.type(1)
    for i in prange(y.shape[0]):
        for j in range(y.shape[1]):
            dx[i, j] = y[i, j] * scale
        dx[i, t[i]] = (y[i, t[i]] - one) * scale


@sized
def softmax_cross_entropy_probs_backward(y, t, scale, dx):
    """``dx = (y * t.sum(1, keepdims=True) - t) * scale``."""
    for i in prange(y.shape[0]):
        tsum = y.dtype.type(0)
        for j in range(y.shape[1]):
            tsum += t[i, j]
        for j in range(y.shape[1]):
            dx[i, j] = (y[i, j] * tsum - t[i, j]) * scale
