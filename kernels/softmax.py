"""Softmax over rows, and softmax fused with cross-entropy, forward and backward.

Arrays are C-contiguous (N, C) of one float dtype; labels are ``intp`` and already checked to lie in
``[0, C)``: the caller (:mod:`fastbp.validation`) checks all of it, and the size of the first
argument picks the serial or the threaded build. Rows are independent, so the threaded builds split
rows between threads and every row is computed by the same code at any thread count. Per-row losses
are written in float64; the caller reduces them in a fixed order.

NaN or +inf anywhere in a row makes every output of that row NaN: the row maximum skips NaN, but
``exp(NaN - m)`` then puts NaN into the row sum, whatever the NaN's position.

No reassociation (the serial and threaded builds must agree bit for bit): the row max and the row
sum keep eight partial results in a fixed order, written out in the code, which vectorises
without letting LLVM choose an order. The exponentials are :func:`.fastexp.fast_exp`.
"""

import math

import numpy as np
from numba import prange

from .fastexp import fast_exp
from .jit import kernel
from .parallel import sized


@kernel
def _row_max(r):
    """The largest element of the row ``r`` (``-inf`` when empty).

    Eight running maxima, combined at the end: one loop-carried compare-and-select runs at one
    element per compare latency. NaN is skipped here (it compares False), and the callers then
    turn the row into NaN through ``exp(NaN - m)``, so the result never depends on the order.
    """
    c = r.size
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = r.dtype.type(-np.inf)
    j = 0
    while j + 8 <= c:
        v0, v1, v2, v3 = r[j], r[j + 1], r[j + 2], r[j + 3]
        v4, v5, v6, v7 = r[j + 4], r[j + 5], r[j + 6], r[j + 7]
        m0 = v0 if v0 > m0 else m0
        m1 = v1 if v1 > m1 else m1
        m2 = v2 if v2 > m2 else m2
        m3 = v3 if v3 > m3 else m3
        m4 = v4 if v4 > m4 else m4
        m5 = v5 if v5 > m5 else m5
        m6 = v6 if v6 > m6 else m6
        m7 = v7 if v7 > m7 else m7
        j += 8
    while j < c:
        v0 = r[j]
        m0 = v0 if v0 > m0 else m0
        j += 1
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    m4 = m5 if m5 > m4 else m4
    m6 = m7 if m7 > m6 else m6
    m0 = m2 if m2 > m0 else m0
    m4 = m6 if m6 > m4 else m4
    return m4 if m4 > m0 else m0


@kernel
def _row_sum(r):
    """The sum of the row ``r`` in float64, in a fixed order written out here.

    Eight partial sums over the stride-8 subsequences, then a fixed tree: vectorisable without
    reassociation (which would let each build pick its own order).
    """
    c = r.size
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    j = 0
    while j + 8 <= c:
        s0 += np.float64(r[j])
        s1 += np.float64(r[j + 1])
        s2 += np.float64(r[j + 2])
        s3 += np.float64(r[j + 3])
        s4 += np.float64(r[j + 4])
        s5 += np.float64(r[j + 5])
        s6 += np.float64(r[j + 6])
        s7 += np.float64(r[j + 7])
        j += 8
    while j < c:
        s0 += np.float64(r[j])
        j += 1
    return ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7))


@kernel
def _exp_shifted(xr, m, buf):
    """``buf = exp(xr - m)`` in ``xr``'s dtype (:func:`.fastexp.fast_exp`, vectorised, within
    2 ulp). The row sum is then taken in float64 (:func:`_row_sum`)."""
    for j in range(xr.size):
        buf[j] = fast_exp(xr[j] - m)


@kernel
def _normalise_row(buf, inv, yr):
    """``yr = buf * inv``, rounded once to ``yr``'s dtype."""
    for j in range(yr.size):
        yr[j] = buf[j] * inv


@kernel
def _index_of(r, value):
    """The first ``j`` with ``r[j] == value``, or -1."""
    for j in range(r.size):
        if r[j] == value:
            return j
    return -1


@kernel
def _softmax_row(xr, buf, yr):
    """``yr = softmax(xr)``, with ``buf`` (``xr``'s dtype, at least as long as the row) as
    scratch.

    Returns the row max (in ``xr``'s dtype) and ``log(sum(exp(xr - max)))`` (float64), so that
    ``logsumexp(xr) = max + that``. The maximum's own term is exactly 1 and is left out of the
    sum, which is then taken with ``log1p``: where one class holds nearly all the probability,
    ``log(1 + tiny)`` would round the loss away. For an infinite maximum, ``xr[top] - max`` is
    NaN, and it is added in so that the row becomes NaN.
    """
    c = xr.size
    m = _row_max(xr)
    e = buf[:c]
    _exp_shifted(xr, m, e)
    top = _index_of(xr, m)
    shift = 0.0
    if top >= 0:
        keep = e[top]
        e[top] = 0.0
        rest = _row_sum(e)
        e[top] = keep
        shift = np.float64(xr[top]) - np.float64(m)  # 0, or NaN for an infinite maximum
    else:  # all NaN, or an empty row: NaN (or nothing) follows from the sum
        rest = _row_sum(e)
    _normalise_row(e, 1.0 / ((1.0 + rest) + shift), yr)
    return m, math.log1p(rest) + shift


ROW_BLOCK = 32
"""Rows per task of the threaded builds; each task owns its scratch row."""


@sized
def softmax_rows(x, y):
    """``y = softmax(x)`` along the last axis.

    Writes ``y``. The caller has validated the inputs: ``x`` and ``y`` (N, C), C-contiguous, of
    one float dtype. ``x.size`` picks the serial or the threaded build.
    """
    n, c = x.shape
    for b in prange((n + ROW_BLOCK - 1) // ROW_BLOCK):
        buf = np.empty(c, x.dtype)
        for i in range(b * ROW_BLOCK, min(n, (b + 1) * ROW_BLOCK)):
            _softmax_row(x[i], buf, y[i])


@sized
def softmax_cross_entropy_labels_forward(x, t, y, losses):
    """``y = softmax(x)`` and ``losses[i] = logsumexp(x[i]) - x[i, t[i]]``.

    Writes ``y`` and ``losses``. The caller has validated the inputs: ``x`` and ``y`` (N, C),
    C-contiguous, of one float dtype; ``t`` (N,) ``intp`` labels in ``[0, C)``; ``losses`` (N,)
    float64. ``x.size`` picks the serial or the threaded build.
    """
    n, c = x.shape
    for b in prange((n + ROW_BLOCK - 1) // ROW_BLOCK):
        buf = np.empty(c, x.dtype)
        for i in range(b * ROW_BLOCK, min(n, (b + 1) * ROW_BLOCK)):
            m, log_s = _softmax_row(x[i], buf, y[i])
            losses[i] = (np.float64(m) - np.float64(x[i, t[i]])) + log_s


@sized
def softmax_cross_entropy_probs_forward(x, t, y, losses):
    """``y = softmax(x)`` and ``losses[i] = -sum_j t[i, j] * log_softmax(x)[i, j]``.

    Classes with ``t[i, j] == 0`` are skipped, so a ``-inf`` logit on a class with no target
    mass gives a finite loss instead of ``0 * inf = NaN``.

    Writes ``y`` and ``losses``. The caller has validated the inputs: ``x``, ``t`` and ``y``
    (N, C), C-contiguous, of one float dtype; ``losses`` (N,) float64. ``x.size`` picks the
    serial or the threaded build.
    """
    n, c = x.shape
    for b in prange((n + ROW_BLOCK - 1) // ROW_BLOCK):
        buf = np.empty(c, x.dtype)
        for i in range(b * ROW_BLOCK, min(n, (b + 1) * ROW_BLOCK)):
            m, log_s = _softmax_row(x[i], buf, y[i])
            mf = np.float64(m)
            acc = 0.0
            for j in range(c):
                tij = t[i, j]
                if tij != 0:  # -log_softmax = (max - x) + log_s: no cancellation near the max
                    acc += np.float64(tij) * ((mf - np.float64(x[i, j])) + log_s)
            losses[i] = acc


@kernel
def _scaled_row(yr, scale, dxr):
    for j in range(yr.size):
        dxr[j] = yr[j] * scale


@sized
def softmax_cross_entropy_labels_backward(y, t, scale, dx):
    """``dx = (y - onehot(t)) * scale``.

    Where ``y[i, t[i]] > 1/2``, ``y - 1`` would cancel (``y`` near 1 holds few of the gradient's
    digits), so the target's gradient is minus the sum of the other probabilities instead.

    Writes ``dx``. The caller has validated the inputs: ``y`` (from the forward kernel) and
    ``dx`` (N, C), C-contiguous, of one float dtype; ``t`` (N,) ``intp`` labels in ``[0, C)``;
    ``scale`` a scalar of that dtype. ``y.size`` picks the serial or the threaded build.
    """
    one = y.dtype.type(1)
    half = y.dtype.type(0.5)
    for i in prange(y.shape[0]):
        _scaled_row(y[i], scale, dx[i])
        ti = t[i]
        if y[i, ti] > half:
            rest = _row_sum(y[i, :ti]) + _row_sum(y[i, ti + 1:])
            dx[i, ti] = y.dtype.type(-rest * np.float64(scale))
        else:
            dx[i, ti] = (y[i, ti] - one) * scale


@sized
def softmax_cross_entropy_probs_backward(y, t, scale, dx):
    """``dx = (y * t.sum(1, keepdims=True) - t) * scale``.

    The most probable class, where its probability is above 1/2, gets
    ``(sum of the other targets) - (sum of the other probabilities) * t.sum()`` instead: the same
    value, without the cancellation of ``y - 1`` near ``y = 1`` (a one-hot target).

    Writes ``dx``. The caller has validated the inputs: ``y`` (from the forward kernel), ``t`` and
    ``dx`` (N, C), C-contiguous, of one float dtype; ``scale`` a scalar of that dtype. ``y.size``
    picks the serial or the threaded build.
    """
    half = y.dtype.type(0.5)
    c = y.shape[1]
    for i in prange(y.shape[0]):
        total = _row_sum(t[i])
        tsum = y.dtype.type(total)
        for j in range(c):
            dx[i, j] = (y[i, j] * tsum - t[i, j]) * scale
        if c:
            top = _index_of(y[i], _row_max(y[i]))
            if top >= 0 and y[i, top] > half:
                rest_t = _row_sum(t[i, :top]) + _row_sum(t[i, top + 1:])
                rest_y = _row_sum(y[i, :top]) + _row_sum(y[i, top + 1:])
                dx[i, top] = y.dtype.type((rest_t - rest_y * total) * np.float64(scale))
