"""The book's ``common/functions.py``, fast where it pays.

A drop-in: replace ``from common.functions import *`` with ``from fastbp.functions import *``.
``softmax``, ``sigmoid`` and ``sigmoid_grad`` run Numba kernels; the rest are NumPy one-liners
that a kernel would not speed up, shared with :mod:`fastbp.reference.functions`.
"""

import numpy as np

from fastbp import validation as v
from fastbp.kernels import activations
from fastbp.kernels import softmax as softmax_kernels
from fastbp.reference.functions import (
    CROSS_ENTROPY_GUARD,
    cross_entropy_error,
    identity_function,
    relu,
    relu_grad,
    step_function,
    sum_squared_error,
)

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


def sigmoid_parts(x):
    """``(sigmoid(x), sigmoid(-|x|), out_dtype)``: the first two in the compute dtype of ``x``,
    from one kernel pass. As :func:`fastbp.reference.functions.sigmoid_parts`; the second array
    (``min(s, 1 - s)``, exact) is what :class:`fastbp.layers.Sigmoid` keeps for ``backward``."""
    xc, out_dtype = v.float_input(x, contiguous=True)
    out = np.empty_like(xc)
    tail = np.empty_like(xc)
    activations.sigmoid_forward(xc.reshape(-1), out.reshape(-1), tail.reshape(-1))
    return out, tail, out_dtype


def sigmoid(x):
    """The logistic function, in the stable two-branch form (no overflow warning at -1000)."""
    out, _, out_dtype = sigmoid_parts(x)
    return v.scalar_if_0d(v.as_result(out, out_dtype))


def sigmoid_grad(x):
    """Derivative of :func:`sigmoid` at ``x``: ``s * (1 - s)``, computed as ``t * (1 - t)`` with
    ``t = sigmoid(-|x|)``, to full relative precision also where ``s`` is near 1."""
    _, tail, out_dtype = sigmoid_parts(x)
    return v.as_result(tail * (1 - tail), out_dtype)


def softmax(x):
    """Softmax along the last axis of 1-D, 2-D or N-D ``x``, with the row maximum subtracted."""
    xc, out_dtype = v.float_input(x, contiguous=True)
    if xc.ndim == 0:
        rows = xc.reshape(1, 1)
    else:  # explicit row count: reshape(-1, 0) is ambiguous for an empty last axis
        rows = xc.reshape(xc.size // max(xc.shape[-1], 1), xc.shape[-1])
    y = np.empty_like(rows)
    softmax_kernels.softmax_rows(rows, y)
    return v.scalar_if_0d(v.as_result(y.reshape(xc.shape), out_dtype))


def softmax_loss(X, t):
    """The book's ``softmax_loss``: :func:`cross_entropy_error` of :func:`softmax` of ``X``."""
    return cross_entropy_error(softmax(X), t)
