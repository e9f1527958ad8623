"""The chapter-5 layers in plain NumPy: the oracle the kernels are tested against.

Same classes, constructors, attributes and ``forward``/``backward`` signatures as the book's
``common/layers.py`` and ``ch05/layer_naive.py``, with the three deliberate differences that
fastbp documents: the loss is exact log-sum-exp, sigmoid is the stable two-branch form, and
``dout`` is never mutated. Inputs go through :mod:`fastbp.validation`, as the kernel layers' do,
so both backends accept and reject the same inputs.
"""

import numpy as np

from fastbp import validation as v
from fastbp.reference.functions import log_softmax, sigmoid_parts
from fastbp.reference.util import col2im, im2col


class MulLayer:
    """``out = x * y``; works on Python scalars (as in the book's buy-apple example) and arrays."""

    def __init__(self):
        self.x = None
        self.y = None

    def forward(self, x, y):
        self.x = x
        self.y = y
        return x * y

    def backward(self, dout):
        dx = dout * self.y
        dy = dout * self.x
        return dx, dy


class AddLayer:
    """``out = x + y``; the gradient passes to both inputs unchanged."""

    def __init__(self):
        pass

    def forward(self, x, y):
        return x + y

    def backward(self, dout):
        dx = dout * 1
        dy = dout * 1
        return dx, dy


class Relu:
    """``out = max(x, 0)``; ``mask`` is True where ``x <= 0`` (NaN is not masked)."""

    def __init__(self):
        self.mask = None

    def forward(self, x):
        x = v._as_array(x, "x")
        self.mask = x <= 0
        return np.where(self.mask, x.dtype.type(0), x)

    def backward(self, dout):
        v.require_forward(self.mask, "Relu")
        dout = v.gradient_for(dout, self.mask.shape, "Relu")
        return np.where(self.mask, dout.dtype.type(0), dout)


class Sigmoid:
    """``out = 1 / (1 + exp(-x))``, in the stable form; ``out`` is kept for ``backward``.

    ``backward`` is ``dout * (1 - out) * out``, evaluated as ``dout * t * (1 - t)`` with
    ``t = min(out, 1 - out)`` kept from ``forward``: the same value, without the cancellation of
    ``1 - out`` where ``out`` rounds to nearly 1.
    """

    def __init__(self):
        self.out = None

    def forward(self, x):
        s, self._tail, out_dtype = sigmoid_parts(x)
        self.out = v.as_result(s, out_dtype)
        return self.out

    def backward(self, dout):
        v.require_forward(self.out, "Sigmoid")
        dout = v.gradient_for(dout, self.out.shape, "Sigmoid")
        (d, t), out_dtype = v.float_inputs(("dout", "out"), dout, self._tail)
        return v.as_result(d * t * (1 - t), out_dtype)


class Affine:
    """``out = x @ W + b``, with N-d ``x`` flattened to (N, -1).

    ``W`` and ``b`` are kept by reference and read on every call, so in-place optimizer updates
    and reassignment (``layer.W = ...``) are both seen.
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
        return v.as_result(np.dot(xc, Wc) + bc, out_dtype)

    def backward(self, dout):
        v.require_forward(self.x, "Affine")
        W = v._as_array(self.W, "W")
        dout = v.gradient_for(dout, (self.x.shape[0], W.shape[1]), "Affine")
        (d, Wc, xc), out_dtype = v.float_inputs(("dout", "W", "x"), dout, W, self.x)
        dx = np.dot(d, Wc.T)
        self.dW = v.as_result(np.dot(xc.T, d), out_dtype)
        self.db = v.as_result(np.sum(d, axis=0), out_dtype)
        return v.as_result(dx, out_dtype).reshape(self.original_x_shape)


class SoftmaxWithLoss:
    """Softmax followed by the cross-entropy loss, computed exactly by log-sum-exp.

    ``forward(x, t)`` takes logits (N, C) or (C,), and integer labels (N,) or (N, 1) in any
    integer dtype, or probability/one-hot targets (N, C). It returns the mean loss. ``y`` holds
    the softmax probabilities, ``t`` the targets as given, ``loss`` the loss.
    """

    def __init__(self):
        self.loss = None
        self.y = None
        self.t = None

    def forward(self, x, t):
        xc, out_dtype = v.logits(x)
        x2, x_shape = v.logits_2d(xc)
        if xc.ndim == 1:
            t = np.reshape(t, (1, -1))
        kind, target = v.targets(t, x2.shape)
        self.t, self._x_shape = t, x_shape
        n = x2.shape[0]
        with np.errstate(invalid="ignore"):
            logp = log_softmax(x2)
            self._y = np.exp(logp)
            self._logp = logp
            if kind == "labels":
                losses = -logp[np.arange(n), target]
            else:
                target = np.asarray(target, dtype=xc.dtype)
                losses = -np.sum(np.where(target != 0, target * logp, 0), axis=1, dtype=np.float64)
        self._kind, self._target = kind, target
        loss = np.sum(losses, dtype=np.float64) / n if n else np.nan
        self.loss = out_dtype.type(loss)
        self.y = v.as_result(self._y, out_dtype).reshape(self._x_shape)
        self._out_dtype = out_dtype
        return self.loss

    def backward(self, dout=1):
        v.require_forward(self.y, "SoftmaxWithLoss")
        y, t, logp = self._y, self._target, self._logp
        n = y.shape[0]
        scale = y.dtype.type(v.loss_gradient_scale(dout) / max(n, 1))
        rows = np.arange(n)
        # The class that may hold nearly all the probability gets its gradient from the
        # complement, 1 - y = -expm1(log y), not from y - 1, which cancels when y rounds to 1.
        if self._kind == "labels":
            dx = y.copy()
            dx[rows, t] = np.expm1(logp[rows, t])
        else:
            total = t.sum(axis=1)
            dx = y * total[:, None] - t
            if n and y.shape[1]:
                top = np.argmax(logp, axis=1)
                others = np.ones(t.shape, dtype=bool)
                others[rows, top] = False
                rest_t = np.sum(t, axis=1, where=others)
                dx[rows, top] = rest_t + np.expm1(logp[rows, top]) * total
        return v.as_result(dx * scale, self._out_dtype).reshape(self._x_shape)


class Convolution:
    """2-d convolution (cross-correlation, as in the book) of (N, C, H, W) input with
    (FN, C, FH, FW) filters, by ``im2col`` and one matrix product.

    ``W`` and ``b`` are kept by reference and read on every call. ``b`` holds one bias per filter,
    shape (FN,), or is a scalar. The output is (N, FN, OH, OW) with
    ``OH = (H + 2 * pad - FH) // stride + 1`` (likewise OW); rows that no window reaches when the
    division is not exact are left out, as in the book. ``backward`` sets ``dW`` (W's shape) and
    ``db`` (FN,) and returns ``dx``. ``col`` and ``col_W`` are the book's intermediates.
    """

    def __init__(self, W, b, stride=1, pad=0):
        self.W = W
        self.b = b
        self.stride = stride
        self.pad = pad
        self.x = None
        self.col = None
        self.col_W = None
        self.dW = None
        self.db = None

    def forward(self, x):
        x = v._as_array(x, "x")
        W = v._as_array(self.W, "W")
        stride, pad, oh, ow = v.conv_geometry(x, W, self.b, self.stride, self.pad)
        (xc, Wc, bc), out_dtype = v.float_inputs(("x", "W", "b"), x, W, self.b)
        n = x.shape[0]
        fn, _, fh, fw = W.shape
        self.col = im2col(xc, fh, fw, stride, pad)
        self.col_W = Wc.reshape(fn, -1).T
        out = np.dot(self.col, self.col_W) + bc.reshape(-1)
        self.x, self._geometry, self._out_dtype = xc, (W.shape, stride, pad, oh, ow), out_dtype
        return v.as_result(out.reshape(n, oh, ow, fn).transpose(0, 3, 1, 2), out_dtype)

    def backward(self, dout):
        v.require_forward(self.x, "Convolution")
        w_shape, stride, pad, oh, ow = self._geometry
        W = _same_filters(self.W, w_shape)
        fn, c, fh, fw = w_shape
        dout = v.gradient_for(dout, (self.x.shape[0], fn, oh, ow), "Convolution")
        out_dtype, work = v.backward_dtypes(self._out_dtype, dout, W)
        d = np.asarray(dout, dtype=work).transpose(0, 2, 3, 1).reshape(-1, fn)
        col = self.col.astype(work, copy=False)
        self.db = v.as_result(np.sum(d, axis=0), out_dtype)
        self.dW = v.as_result(np.dot(col.T, d).T.reshape(fn, c, fh, fw), out_dtype)
        dcol = np.dot(d, np.asarray(W, dtype=work).reshape(fn, -1))
        dx = col2im(dcol, self.x.shape, fh, fw, stride, pad)
        return v.as_result(dx, out_dtype)


def _same_filters(W, w_shape):
    """``W`` as read by ``backward``: it must still have the shape ``forward`` saw."""
    W = v._as_array(W, "W")
    if W.shape != w_shape:
        raise ValueError(
            f"Convolution.backward: W has shape {W.shape}, but forward ran with {w_shape}"
        )
    return W


class Pooling:
    """Max pooling over ``pool_h`` x ``pool_w`` windows of (N, C, H, W) input, moved by ``stride``.

    Each output is the largest element of its window; among equal largest elements the first in
    row-major window order wins, and a NaN wins over any number (the first NaN, as in PyTorch).
    ``pad`` rows and columns are added around the input but never win: the output has
    ``OH = (H + 2 * pad - pool_h) // stride + 1`` rows, padding counted (PyTorch's rule; the book
    leaves pad out of the output size and pads with zeros). ``pad`` may be at most half the pool
    size. Where windows overlap (``stride`` smaller than the pool), their gradients add up.
    ``arg_max`` is the book's: the winning offset in each window, for rows in (n, oh, ow, c)
    order.
    """

    def __init__(self, pool_h, pool_w, stride=1, pad=0):
        self.pool_h = pool_h
        self.pool_w = pool_w
        self.stride = stride
        self.pad = pad
        self.x = None
        self.arg_max = None

    def forward(self, x):
        x = v._as_array(x, "x")
        ph, pw, stride, pad, oh, ow = v.pool_geometry(x, self.pool_h, self.pool_w, self.stride,
                                                      self.pad)
        xc, out_dtype = v.float_input(x)
        n, c, h, w = xc.shape
        windows = im2col(xc, ph, pw, stride, pad, fill=-np.inf).reshape(-1, ph * pw)
        arg_max = np.argmax(windows, axis=1)  # the first maximum; the first NaN where there is one
        if pad:
            # A -inf input ties with the -inf padding; the padding must not win the tie.
            inside = im2col(np.ones((1, 1, h, w), dtype=bool), ph, pw, stride, pad)
            inside = np.tile(np.repeat(inside, c, axis=0), (n, 1))
            rows = np.arange(arg_max.size)
            on_padding = ~inside[rows, arg_max]
            arg_max[on_padding] = np.argmax(inside[on_padding], axis=1)
        out = windows[np.arange(arg_max.size), arg_max]
        self.x, self.arg_max = xc, arg_max
        self._geometry, self._out_dtype = (ph, pw, stride, pad, oh, ow), out_dtype
        return v.as_result(out.reshape(n, oh, ow, c).transpose(0, 3, 1, 2), out_dtype)

    def backward(self, dout):
        v.require_forward(self.x, "Pooling")
        ph, pw, stride, pad, oh, ow = self._geometry
        n, c = self.x.shape[:2]
        dout = v.gradient_for(dout, (n, c, oh, ow), "Pooling")
        out_dtype, work = v.backward_dtypes(self._out_dtype, dout)
        d = np.asarray(dout, dtype=work).transpose(0, 2, 3, 1).reshape(-1)
        dwindows = np.zeros((d.size, ph * pw), dtype=work)
        dwindows[np.arange(d.size), self.arg_max] = d
        dx = col2im(dwindows.reshape(n * oh * ow, -1), self.x.shape, ph, pw, stride, pad)
        return v.as_result(dx, out_dtype)
