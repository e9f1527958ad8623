"""The chapter-5 layers, backed by Numba kernels.

A drop-in for the book's ``common/layers.py`` and ``ch05/layer_naive.py``: replace
``from common.layers import *`` (or ``from layer_naive import *``) with
``from fastbp.layers import *``. Each ``forward`` validates and converts its input
(:mod:`fastbp.validation`), calls one kernel, and keeps what ``backward`` needs, under the book's
attribute names. :mod:`fastbp.reference.layers` holds the same classes in plain NumPy.
"""

import numpy as np

from fastbp import validation as v
from fastbp.kernels import activations, affine, softmax
from fastbp.reference.layers import AddLayer, Convolution, MulLayer, Pooling
from fastbp.threads import product_threads

__all__ = ["AddLayer", "Affine", "Convolution", "MulLayer", "Pooling", "Relu", "Sigmoid",
           "SoftmaxWithLoss"]


class Relu:
    """``out = max(x, 0)``; ``mask`` is True where ``x <= 0`` (NaN is not masked).

    ``backward`` returns a new array: unlike the book's, it never writes into ``dout``.
    """

    def __init__(self):
        self.mask = None

    def forward(self, x):
        x = v._as_array(x, "x")
        if x.dtype not in v.COMPUTE_DTYPES:  # integers, bool, float16: a selection, exact in NumPy
            self.mask = x <= 0
            return np.where(self.mask, x.dtype.type(0), x)
        x = np.asarray(x, order="C")
        out = np.empty_like(x)
        self.mask = np.empty(x.shape, dtype=bool)
        activations.relu_forward(x.reshape(-1), out.reshape(-1), self.mask.reshape(-1))
        return out

    def backward(self, dout):
        v.require_forward(self.mask, "Relu")
        dout = v.gradient_for(dout, self.mask.shape, "Relu")
        if dout.dtype not in v.COMPUTE_DTYPES:
            return np.where(self.mask, dout.dtype.type(0), dout)
        dout = np.asarray(dout, order="C")
        dx = np.empty_like(dout)
        activations.relu_backward(dout.reshape(-1), self.mask.reshape(-1), dx.reshape(-1))
        return dx


class Sigmoid:
    """``out = 1 / (1 + exp(-x))`` in the stable form; ``out`` is kept for ``backward``.

    ``backward`` is ``dout * (1 - out) * out``, evaluated as ``dout * t * (1 - t)`` with
    ``t = min(out, 1 - out)`` written by the same forward pass: the same value, without the
    cancellation of ``1 - out`` where ``out`` rounds to nearly 1.
    """

    def __init__(self):
        self.out = None

    def forward(self, x):
        xc, out_dtype = v.float_input(x, contiguous=True)
        out = np.empty_like(xc)
        self._tail = np.empty_like(xc)
        activations.sigmoid_forward(xc.reshape(-1), out.reshape(-1), self._tail.reshape(-1))
        self.out = v.as_result(out, out_dtype)
        return self.out

    def backward(self, dout):
        v.require_forward(self.out, "Sigmoid")
        dout = v.gradient_for(dout, self.out.shape, "Sigmoid")
        (d, t), out_dtype = v.float_inputs(("dout", "out"), dout, self._tail, contiguous=True)
        dx = np.empty_like(t)
        activations.sigmoid_backward(d.reshape(-1), t.reshape(-1), dx.reshape(-1))
        return v.as_result(dx, out_dtype)


def _bias_row(bc, h):
    """``b`` as a contiguous (H,) row when it is one row broadcast over the batch, else None."""
    if bc.shape == (h,):
        return bc if bc.flags.c_contiguous else np.ascontiguousarray(bc)
    if bc.ndim == 0 or all(s == 1 for s in bc.shape[:-1]):
        row = np.empty(h, dtype=bc.dtype)
        row[...] = bc.reshape(-1)  # a scalar or a (1, ..., H) row
        return row
    return None


class Affine:
    """``out = x @ W + b``, with N-d ``x`` flattened to (N, -1).

    ``W`` and ``b`` are kept by reference and read on every call, so in-place optimizer updates
    and reassignment (``layer.W = ...``) are both seen. The products run in BLAS, on the thread
    count :class:`fastbp.threads.product_threads` picks; the bias add and ``db`` are kernels.
    ``backward`` returns ``dx`` in the input's shape and sets ``dW`` and ``db``.
    """

    def __init__(self, W, b):
        self.W = W
        self.b = b
        self.x = None
        self.original_x_shape = None
        self.dW = None
        self.db = None

    def forward(self, x):
        x = v._as_array(x, "x")
        W = v._as_array(self.W, "W")
        x2 = v.affine_shapes(x, W, self.b)
        (xc, Wc, bc), out_dtype = v.float_inputs(("x", "W", "b"), x2, W, self.b)
        self.original_x_shape = x.shape
        self.x = xc
        out = np.empty((xc.shape[0], Wc.shape[1]), dtype=xc.dtype)
        with product_threads(2 * xc.shape[0] * xc.shape[1] * Wc.shape[1]):
            np.dot(xc, Wc, out=out)
        row = _bias_row(bc, out.shape[1])
        if row is None:  # a bias with a batch axis: plain broadcasting
            out += bc
        else:
            affine.bias_add(out, row)
        return v.as_result(out, out_dtype)

    def backward(self, dout):
        v.require_forward(self.x, "Affine")
        W = v._as_array(self.W, "W")
        dout = v.gradient_for(dout, (self.x.shape[0], W.shape[1]), "Affine")
        (d, Wc, xc), out_dtype = v.float_inputs(("dout", "W", "x"), dout, W, self.x,
                                                contiguous=True)
        db = np.empty(d.shape[1], dtype=d.dtype)
        affine.column_sum(d, db)  # before the products: BLAS's threads spin for a while after
        with product_threads(4 * xc.shape[0] * xc.shape[1] * Wc.shape[1]):
            dx = np.dot(d, Wc.T)
            dW = np.dot(xc.T, d)
        self.dW = v.as_result(dW, out_dtype)
        self.db = v.as_result(db, out_dtype)
        return v.as_result(dx, out_dtype).reshape(self.original_x_shape)


class SoftmaxWithLoss:
    """Softmax and cross-entropy, fused: one pass per row forward, one backward.

    The loss is exact (log-sum-exp), not the book's ``-log(y + 1e-7)``. ``forward(x, t)`` takes
    logits (N, C) or (C,), and integer labels (N,) or (N, 1) in any integer dtype, or
    probability/one-hot targets (N, C). It returns the mean loss. ``y`` holds the softmax
    probabilities, ``t`` the targets as given, ``loss`` the loss. ``backward(dout=1)`` scales
    the gradient by ``dout``.
    """

    def __init__(self):
        self.loss = None
        self.y = None
        self.t = None

    def forward(self, x, t):
        xc, out_dtype = v.logits(x, contiguous=True)
        x2, x_shape = v.logits_2d(xc)
        if xc.ndim == 1:
            t = np.reshape(t, (1, -1))
        kind, target = v.targets(t, x2.shape)
        self.t, self._x_shape = t, x_shape
        n = x2.shape[0]
        y = np.empty_like(x2)
        losses = np.empty(n, dtype=np.float64)
        if kind == "labels":
            softmax.softmax_cross_entropy_labels_forward(x2, target, y, losses)
        else:
            target = np.asarray(target, dtype=x2.dtype, order="C")
            softmax.softmax_cross_entropy_probs_forward(x2, target, y, losses)
        self._kind, self._target, self._y, self._out_dtype = kind, target, y, out_dtype
        self.loss = out_dtype.type(losses.sum() / n if n else np.nan)
        self.y = v.as_result(y, out_dtype).reshape(self._x_shape)
        return self.loss

    def backward(self, dout=1):
        v.require_forward(self.y, "SoftmaxWithLoss")
        y = self._y
        scale = y.dtype.type(v.loss_gradient_scale(dout) / max(y.shape[0], 1))
        dx = np.empty_like(y)
        if self._kind == "labels":
            softmax.softmax_cross_entropy_labels_backward(y, self._target, scale, dx)
        else:
            softmax.softmax_cross_entropy_probs_backward(y, self._target, scale, dx)
        return v.as_result(dx, self._out_dtype).reshape(self._x_shape)
