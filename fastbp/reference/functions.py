"""The book's ``common/functions.py`` in plain NumPy, plus ``log_softmax``.

These are also the implementations :mod:`fastbp.functions` uses where NumPy is already as fast
as a kernel would be (``relu``, ``step_function``, ``cross_entropy_error``, ...).
"""

import numpy as np

from fastbp import validation as v

__all__ = [
    "CROSS_ENTROPY_GUARD",
    "cross_entropy_error",
    "identity_function",
    "relu",
    "relu_grad",
    "sigmoid",
    "sigmoid_grad",
    "softmax",
    "softmax_loss",
    "step_function",
    "sum_squared_error",
]
"""The book's names, as in :mod:`fastbp.functions`. :func:`log_softmax` and
:func:`sigmoid_parts` are public helpers of this module, outside ``import *``."""

CROSS_ENTROPY_GUARD = 1e-7
"""Added to the probability before the log in :func:`cross_entropy_error`, as in the book, so that
a zero probability gives a large finite loss (``-log(1e-7) = 16.118``) instead of inf."""


def identity_function(x):
    """Return ``x`` unchanged (the book's output activation for regression)."""
    return x


def step_function(x):
    """1 where ``x > 0``, else 0, as integers."""
    return np.array(np.asarray(x) > 0, dtype=int)


def sigmoid_parts(x):
    """``(sigmoid(x), sigmoid(-|x|))`` in the stable form, in the compute dtype of ``x``.

    The second array, the smaller of ``s`` and ``1 - s``, is exact where ``1 - s`` computed from
    a rounded ``s`` is not (``s`` near 1). ``s * (1 - s)`` equals ``tail * (1 - tail)``, so the
    gradient is computed from it to full relative precision.
    """
    xc, out_dtype = v.float_input(x)
    with np.errstate(invalid="ignore"):
        e = np.exp(-np.abs(xc))  # never overflows
        r = 1 / (1 + e)
        tail = e * r
        return np.where(xc >= 0, r, tail), tail, out_dtype


def sigmoid(x):
    """The logistic function in the stable two-branch form: ``exp`` never sees a positive number.

    Unlike the book's ``1 / (1 + exp(-x))`` it gives no overflow warning at ``x = -1000``.
    """
    s, _, out_dtype = sigmoid_parts(x)
    return v.scalar_if_0d(v.as_result(s, out_dtype))


def sigmoid_grad(x):
    """Derivative of :func:`sigmoid` at ``x``: ``s * (1 - s)``, computed as ``t * (1 - t)`` with
    ``t = sigmoid(-|x|)`` so that it keeps full relative precision where ``s`` is near 1."""
    _, tail, out_dtype = sigmoid_parts(x)
    return v.as_result(tail * (1 - tail), out_dtype)


def relu(x):
    """``max(0, x)`` elementwise (NaN passes through)."""
    return np.maximum(0, x)


def relu_grad(x):
    """The book's ``relu_grad``: 1 where ``x >= 0``, else 0 (the layer ``Relu`` passes 0 at 0)."""
    x = np.asarray(x)
    grad = np.zeros_like(x)
    grad[x >= 0] = 1
    return grad


def log_softmax(x):
    """``x - logsumexp(x)`` along the last axis, exact for any finite logits.

    ``logsumexp(x) = m + log1p(sum of exp(x_j - m) over all j but the maximum's)``: the maximum's
    own term is exactly 1, and leaving it out of the sum keeps full relative precision where
    one class holds nearly all the probability (``log(1 + tiny)`` would round it away).
    """
    xc, out_dtype = v.float_input(x)
    if xc.ndim == 0 or xc.size == 0:
        return v.as_result(np.zeros_like(xc), out_dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        top = np.argmax(xc, axis=-1)[..., None]
        m = np.take_along_axis(xc, top, axis=-1)
        shifted = xc - m
        e = np.exp(shifted)
        np.put_along_axis(e, top, 0, axis=-1)
        # + shifted[top]: 0 for a finite maximum, NaN for +inf, so that +inf poisons the row
        lse = np.log1p(np.sum(e, axis=-1, keepdims=True)) + np.take_along_axis(
            shifted, top, axis=-1)
    return v.as_result(shifted - lse, out_dtype)


def softmax(x):
    """Softmax along the last axis (1-D, 2-D or N-D), with the row maximum subtracted first."""
    xc, out_dtype = v.float_input(x)
    if xc.ndim == 0:
        return v.scalar_if_0d(v.as_result(np.ones_like(xc), out_dtype))
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.max(xc, axis=-1, keepdims=True) if xc.size else 0
        e = np.exp(xc - m)
        return v.as_result(e / np.sum(e, axis=-1, keepdims=True), out_dtype)


def sum_squared_error(y, t):
    """``0.5 * sum((y - t)**2)``."""
    return 0.5 * np.sum((np.asarray(y) - np.asarray(t)) ** 2)


def cross_entropy_error(y, t):
    """The book's cross-entropy of probabilities ``y`` against labels or one-hot ``t``.

    ``y`` holds probabilities (a softmax output), not logits. As in the book, a one-hot ``t`` (as
    many elements as ``y``) is turned into labels by ``argmax``, and :data:`CROSS_ENTROPY_GUARD`
    is added inside the log so that a zero probability gives 16.118 instead of inf. Labels are
    checked: one out of range raises ``IndexError``. For an exact loss from logits use
    :class:`~fastbp.layers.SoftmaxWithLoss`.
    """
    y = v._as_array(y, "y")
    t = np.asarray(t)
    if y.ndim == 1:
        t = t.reshape(1, t.size)
        y = y.reshape(1, y.size)
    if t.size == y.size:
        t = t.argmax(axis=1)
    _, labels = v.targets(t, y.shape)
    batch_size = y.shape[0]
    return -np.sum(np.log(y[np.arange(batch_size), labels] + CROSS_ENTROPY_GUARD)) / batch_size


def softmax_loss(X, t):
    """The book's ``softmax_loss``: :func:`cross_entropy_error` of :func:`softmax` of ``X``."""
    return cross_entropy_error(softmax(X), t)
