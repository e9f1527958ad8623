"""The chapter-5 layers, backed by Numba kernels.

A drop-in for the book's ``common/layers.py`` and ``ch05/layer_naive.py``: replace
``from common.layers import *`` (or ``from layer_naive import *``) with
``from fastbp.layers import *``. Each ``forward`` validates and converts its input
(:mod:`fastbp.validation`), calls one kernel, and keeps what ``backward`` needs, under the book's
attribute names. :mod:`fastbp.reference.layers` holds the same classes in plain NumPy.
"""

import numbers
import time

import numpy as np

from fastbp import validation as v
from fastbp._globalrandom import global_mt19937
from fastbp.functions import sigmoid_parts
from fastbp.kernels import (
    activations,
    affine,
    batchnorm,
    conv,
    dropout,
    parallel,
    pool,
    softmax,
    winograd,
)
from fastbp.reference.layers import (
    BATCHNORM_EPS,
    AddLayer,
    MulLayer,
    batchnorm_attributes,
    dropout_attributes,
    dropout_uniforms,
    running_statistics,
)
from fastbp.threads import ProductThreads, helper_pool, product

__all__ = ["AddLayer", "Affine", "BatchNormalization", "Convolution", "Dropout", "MulLayer",
           "Pooling", "Relu", "Sigmoid", "SoftmaxWithLoss"]


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
        self._tail = None  # sigmoid(-|x|), for backward

    def forward(self, x):
        out, self._tail, out_dtype = sigmoid_parts(x)
        self.out = v.scalar_if_0d(v.as_result(out, out_dtype))
        return self.out

    def backward(self, dout):
        v.require_forward(self.out, "Sigmoid")
        dout = v.gradient_for(dout, self.out.shape, "Sigmoid")
        # float16 runs in float32: the result takes the dtype of dout * out, not of the tail
        (d, t), _ = v.float_inputs(("dout", "out"), dout, self._tail, contiguous=True)
        dx = np.empty_like(t)
        activations.sigmoid_backward(d.reshape(-1), t.reshape(-1), dx.reshape(-1))
        return v.scalar_if_0d(v.as_result(dx, v.result_dtype(dout, self.out.dtype)))


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
    count :class:`fastbp.threads.ProductThreads` picks (split over helper threads while the
    kernels are busy: :func:`fastbp.threads.product`); the bias add and ``db`` are kernels.
    ``backward`` returns ``dx`` in the input's shape and sets ``dW`` and ``db``. A call whose
    arrays have the shapes and dtype of the previous call, and are C-contiguous ``ndarray`` s,
    skips the checks, which it would pass unchanged (:func:`fastbp.validation.same_call`).
    """

    def __init__(self, W, b):
        self.W = W
        self.b = b
        self.x = None
        self.original_x_shape = None
        self._x_dtype = None
        self.dW = None
        self.db = None
        self._forward_key = None
        self._backward_key = None

    def forward(self, x):
        if self._forward_key is not None and v.same_call(self._forward_key, x, self.W, self.b):
            xc, Wc, bc, out_dtype = x, self.W, self.b, x.dtype
            if xc.ndim != 2:
                xc = xc.reshape(xc.shape[0], Wc.shape[0])
        else:
            x, xc, Wc, bc, out_dtype = v.affine_inputs(x, self.W, self.b)
            self._forward_key = v.call_key(x, self.W, self.b)
        self.original_x_shape, self.x = x.shape, xc
        self._x_dtype = x.dtype  # xc may be float32 for float16 x: backward casts back to this
        out = product(xc, Wc, np.empty((xc.shape[0], Wc.shape[1]), dtype=xc.dtype))
        row = _bias_row(bc, out.shape[1])
        if row is None:  # a bias with a batch axis: plain broadcasting
            out += bc
        else:
            affine.bias_add(out, row)
        return v.as_result(out, out_dtype)

    def backward(self, dout):
        dx, out_dtype = self._backward(dout, need_dx=True)
        return v.as_result(dx, out_dtype).reshape(self.original_x_shape)

    def _backward_params(self, dout):
        """``backward`` without ``dx``: sets ``dW`` and ``db`` only, and returns None.

        For networks, which never read their first layer's ``dx`` (a third of the products
        of a two-layer step); a drop-in caller uses ``backward``.
        """
        self._backward(dout, need_dx=False)

    def _backward(self, dout, need_dx):
        v.require_forward(self.x, "Affine")
        W = self.W
        if (self._backward_key is not None and self._x_dtype == self.x.dtype
                and v.same_call(self._backward_key, dout, W, self.x)):
            d, Wc, xc, out_dtype = dout, W, self.x, dout.dtype
        else:
            W = v._as_array(W, "W")
            dout = v.gradient_for(dout, (self.x.shape[0], W.shape[1]), "Affine")
            out_dtype = v.result_dtype(dout, W, self._x_dtype)
            (d, Wc, xc), _ = v.float_inputs(("dout", "W", "x"), dout, W, self.x,
                                            contiguous=True)
            self._backward_key = v.call_key(dout, self.W, self.x)
        db = np.empty(d.shape[1], dtype=d.dtype)
        affine.column_sum(d, db)  # before the products: BLAS's threads spin for a while after
        dx = product(d, Wc.T, np.empty((d.shape[0], Wc.shape[0]), dtype=d.dtype)) \
            if need_dx else None
        dW = product(xc.T, d, np.empty((xc.shape[1], d.shape[1]), dtype=d.dtype))
        self.dW = v.as_result(dW, out_dtype)
        self.db = v.as_result(db, out_dtype)
        return dx, out_dtype


class SoftmaxWithLoss:
    """Softmax and cross-entropy, fused: one pass per row forward, one backward.

    The loss is exact (log-sum-exp), not the book's ``-log(y + 1e-7)``. ``forward(x, t)`` takes
    logits (N, C) or (C,), and integer labels (N,) or (N, 1) in any integer dtype, or
    probability/one-hot targets (N, C). It returns the mean loss. ``y`` holds the softmax
    probabilities, ``t`` the targets as given, ``loss`` the loss. ``backward(dout=1)`` scales
    the gradient by ``dout``. Logits of the previous call's shape and dtype, C-contiguous, with
    ``intp`` labels (N,) skip the checks they would pass unchanged; the labels' range is
    checked on every call.
    """

    def __init__(self):
        self.loss = None
        self.y = None
        self.t = None
        # for backward: the targets' form and converted values, the softmax as a contiguous
        # (N, C) array in the compute dtype, the input's shape and the result dtype
        self._kind = self._target = self._y = None
        self._x_shape = self._out_dtype = None
        self._key = None  # the last checked call, for the fast path (validation.same_call)

    def forward(self, x, t):
        target = None
        if self._key is not None and v.same_call(self._key, x):
            target = v.labels_in_range(t, x.shape)
        if target is not None:
            x2, x_shape, out_dtype, kind = x, x.shape, x.dtype, "labels"
        else:
            xc, out_dtype = v.logits(x, contiguous=True)
            x2, x_shape = v.logits_2d(xc)
            if xc.ndim == 1:
                t = np.reshape(t, (1, -1))
            kind, target = v.targets(t, x2.shape)
            self._key = v.call_key(x) if np.ndim(x) == 2 else None
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
        one = type(dout) is int and dout == 1  # the book's call, checked without NumPy
        scale = y.dtype.type((1 if one else v.loss_gradient_scale(dout)) / max(y.shape[0], 1))
        dx = np.empty_like(y)
        if self._kind == "labels":
            softmax.softmax_cross_entropy_labels_backward(y, self._target, scale, dx)
        else:
            softmax.softmax_cross_entropy_probs_backward(y, self._target, scale, dx)
        return v.as_result(dx, self._out_dtype).reshape(self._x_shape)


class Convolution:
    """2-d convolution (cross-correlation, as in the book) of (N, C, H, W) input with
    (FN, C, FH, FW) filters ``W``, plus one bias per filter ``b`` (shape (FN,), or a scalar).

    ``W`` and ``b`` are kept by reference and read on every call. The output is
    (N, FN, OH, OW), ``OH = (H + 2 * pad - FH) // stride + 1`` (likewise OW), as in the book.
    ``backward`` sets ``dW`` and ``db`` and returns ``dx``; with ``need_dx = False`` (a fastbp
    extension, for a network's first layer, whose input needs no gradient) it returns ``None``
    and skips that work.

    3x3 filters at stride 1 with at least :data:`WINOGRAD_MIN_CHANNELS` channels and filters
    (DeepConvNet's layers after the first) run Winograd's F(2x2, 3x3) algorithm: kernels
    transform a chunk of images (:mod:`fastbp.kernels.winograd`), 16 BLAS products sum over the
    channels, and a kernel transforms back; a pass whose results are not all finite runs again
    without it (docs/numerics.md, Convolution). Other filters at stride 1 with at most
    :data:`DIRECT_MAX_TAPS` taps per filter (``C * FH * FW``; SimpleConvNet's): kernels
    correlate the padded images directly, with no column matrix
    (:func:`fastbp.kernels.conv.correlate` and its backward passes; ``dx`` on one channel
    comes from per-image products and :func:`fastbp.kernels.conv.fold`, as below).
    Otherwise a kernel copies
    the windows of each image into a (C * FH * FW + 1, OH * OW) matrix with a row of ones, a
    few images at a time, and BLAS multiplies ``[W | b]`` by them while they are in cache: the
    output comes in (N, FN, OH, OW) order with the bias added; ``backward``: one product per
    image gives ``[dW | db]``, another the windows' gradient, which a kernel adds back into
    ``dx``. Large batches are split over threads by images. ``col`` (the book's layout, built
    when read) and ``col_W`` give the book's intermediates.
    """

    def __init__(self, W, b, stride=1, pad=0):
        self.W = W
        self.b = b
        self.stride = stride
        self.pad = pad
        self.x = None
        self.dW = None
        self.db = None
        self.need_dx = True
        self._col = None
        self._W2 = None
        self._direct = None
        self._winograd = False

    @property
    def col(self):
        """The book's ``col`` of the last forward pass: (N * OH * OW, C * FH * FW), a copy in
        the book's layout (on the direct path, which keeps no columns, built from ``x``)."""
        if self._col is None:
            if (self._direct is None and not self._winograd) or self.x is None:
                return None
            (_, _, fh, fw), stride, pad, oh, ow = self._geometry
            x = self.x
            col = np.empty((x.shape[0] * oh * ow, x.shape[1] * fh * fw), dtype=x.dtype)
            conv.im2col(x, fh, fw, stride, pad, col)
            return col
        n, rows, p = self._col.shape
        return self._col[:, :rows - 1].transpose(0, 2, 1).reshape(n * p, rows - 1)

    @property
    def col_W(self):
        """The book's ``col_W``: the filters of the last forward pass as (C * FH * FW, FN)."""
        return None if self._W2 is None else self._W2.T

    def _checked(self, x):
        """Check ``x``, ``W`` and ``b`` and convert them to one compute dtype: ``(xc, W2, bias,
        w_shape, stride, pad, oh, ow, out_dtype)``, ``W2`` the filters as (FN, C * FH * FW)."""
        x = v._as_array(x, "x")
        W = v._as_array(self.W, "W")
        stride, pad, oh, ow = v.conv_geometry(x, W, self.b, self.stride, self.pad)
        (xc, Wc, bc), out_dtype = v.float_inputs(("x", "W", "b"), x, W, self.b, contiguous=True)
        fn, c, fh, fw = W.shape
        return (xc, Wc.reshape(fn, c * fh * fw), v.bias_vector(bc, fn), W.shape, stride, pad,
                oh, ow, out_dtype)

    def _enter_direct(self, xc, W2, w_shape, pad, oh, ow, out_dtype):
        """The direct path's forward state (what ``backward`` and ``col`` read): the padded
        images and the taps' offsets, returned for the kernels."""
        xp = _padded(xc, pad)
        _, c, fh, fw = w_shape
        taps = np.empty(c * fh * fw, dtype=np.intp)
        conv.tap_offsets(c, fh, fw, xp.shape[2], xp.shape[3], taps)
        self.x, self._col, self._W2, self._direct = xc, None, W2, (xp, taps)
        self._winograd = False
        self._geometry, self._out_dtype = (w_shape, 1, pad, oh, ow), out_dtype
        return xp, taps

    def forward(self, x):
        xc, W2, bias, w_shape, stride, pad, oh, ow, out_dtype = self._checked(x)
        n = xc.shape[0]
        fn, c, fh, fw = w_shape
        k, p = c * fh * fw, oh * ow
        self._col = None  # the last pass's columns: freed before the new ones are made
        self._direct = None
        self._winograd = False
        out = np.empty((n, fn, oh, ow), dtype=xc.dtype)
        if (n and _winograd_fits(w_shape, stride)
                and _winograd_forward(xc, W2.reshape(w_shape), bias, pad, out)):
            self.x, self._col, self._W2, self._winograd = xc, None, W2, True
            self._geometry, self._out_dtype = (w_shape, 1, pad, oh, ow), out_dtype
            return v.as_result(out, out_dtype)
        if stride == 1 and k <= DIRECT_MAX_TAPS:
            xp, taps = self._enter_direct(xc, W2, w_shape, pad, oh, ow, out_dtype)
            conv.correlate(out, xp, W2, bias, taps)
            return v.as_result(out, out_dtype)
        Wb = np.empty((fn, k + 1), dtype=xc.dtype)
        Wb[:, :k] = W2
        Wb[:, k] = bias
        out3 = out.reshape(n, fn, p)
        chunk = _images_per_chunk(k + 1, p, xc.dtype)

        col = np.empty((n, k + 1, p), dtype=xc.dtype)

        def images(lo, hi, serial):
            unfold = conv.unfold.serial if serial else conv.unfold
            for s in range(lo, hi, chunk):
                e = min(hi, s + chunk)
                unfold(xc[s:e], fh, fw, stride, pad, col[s:e])
                np.matmul(Wb, col[s:e], out=out3[s:e])  # while the chunk is in cache

        _over_images(images, n, col.size, 2 * fn * (k + 1) * p)
        self.x, self._col, self._W2 = xc, col, W2
        self._geometry, self._out_dtype = (w_shape, stride, pad, oh, ow), out_dtype
        return v.as_result(out, out_dtype)

    def backward(self, dout):
        v.require_forward(self.x, "Convolution")
        w_shape, stride, pad, oh, ow = self._geometry
        W = v.filters_for_backward(self.W, w_shape)
        fn, c, fh, fw = w_shape
        n, k, p = self.x.shape[0], c * fh * fw, oh * ow
        dout = v.gradient_for(dout, (n, fn, oh, ow), "Convolution")
        out_dtype, work = v.backward_dtypes(self._out_dtype, dout, W)
        d = np.asarray(dout, dtype=work, order="C")
        W2 = np.asarray(W, dtype=work, order="C").reshape(fn, k)
        if self._winograd:
            grads = _winograd_backward(self.x.astype(work, copy=False), W2.reshape(w_shape), d,
                                       pad, self.need_dx)
            if grads is not None:
                dW, db, dx = grads
                self.dW = v.as_result(dW, out_dtype)
                self.db = v.as_result(db, out_dtype)
                return None if dx is None else v.as_result(dx, out_dtype)
            # an inf or a NaN in dout or W (or an overflow): the direct kernels' semantics (at
            # any tap count; the forward pass fell back to the columns above DIRECT_MAX_TAPS)
            self._enter_direct(self.x, self._W2, w_shape, pad, oh, ow, self._out_dtype)
        if self._direct is not None:
            return self._backward_direct(d, W2, out_dtype)
        d3 = d.reshape(n, fn, p)
        col = self._col.astype(work, copy=False)
        parts = np.empty((n, fn, k + 1), dtype=work)  # [dW | db] of each image

        def images(lo, hi, serial):
            np.matmul(d3[lo:hi], col[lo:hi].transpose(0, 2, 1), out=parts[lo:hi])

        _over_images(images, n, col.size, 2 * fn * (k + 1) * p)
        grads = np.empty(fn * (k + 1), dtype=work)
        affine.column_sum(parts.reshape(n, fn * (k + 1)), grads)  # images added in order
        grads = grads.reshape(fn, k + 1)
        self.dW = v.as_result(grads[:, :k].reshape(w_shape), out_dtype)
        self.db = v.as_result(grads[:, k].copy(), out_dtype)
        if not self.need_dx:
            return None
        dx = np.empty(self.x.shape, dtype=work)
        _fold_products(d, W2, fh, fw, stride, pad, dx)
        return v.as_result(dx, out_dtype)

    def _backward_direct(self, d, W2, out_dtype):
        """``backward`` on the direct path (see :data:`DIRECT_MAX_TAPS`): ``d`` and the filters
        ``W2`` (FN, C * FH * FW) C-contiguous in the compute dtype."""
        xp, taps = self._direct
        w_shape, _, pad, oh, ow = self._geometry
        work = d.dtype
        xp = self._direct_grads(d, d, _NO_CODE, False, oh, ow, xp, taps, w_shape, out_dtype)
        if not self.need_dx:
            return None
        if w_shape[1] == 1:  # one channel: the windows' gradients from products, then fold
            dx = np.empty(self.x.shape, dtype=work)
            _fold_products(d, W2, w_shape[2], w_shape[3], 1, pad, dx)
            return v.as_result(dx, out_dtype)
        dxp = np.empty(xp.shape, dtype=work)
        conv.correlate_dx(d, W2, taps, bool(np.isfinite(W2).all()), dxp)
        h, w = self.x.shape[2:]
        dx = dxp if not pad else np.ascontiguousarray(dxp[:, :, pad:pad + h, pad:pad + w])
        return v.as_result(dx, out_dtype)

    def _direct_grads(self, d, out, code, pooled, rows, cols, xp, taps, w_shape, out_dtype):
        """Set ``dW`` and ``db`` from ``d`` (in the compute dtype) with
        :func:`fastbp.kernels.conv.filter_grads`; returns ``xp`` in ``d``'s dtype."""
        work = d.dtype
        xp = xp.astype(work, copy=False)
        dW = np.empty((w_shape[0], taps.size), dtype=work)
        db = np.empty(w_shape[0], dtype=work)
        conv.filter_grads(d, out, code, pooled, xp, taps, rows, cols,
                          bool(np.isfinite(xp).all()), dW, db)
        self.dW = v.as_result(dW.reshape(w_shape), out_dtype)
        self.db = v.as_result(db, out_dtype)
        return xp


def _fold_products(d, W2, fh, fw, stride, pad, dx):
    """``dx`` (N, C, H, W) from ``d`` (N, FN, OH, OW) and the filters ``W2``
    (FN, C * FH * FW): per image, the windows' gradients ``W2.T @ d[n]`` (one BLAS thread),
    added back by :func:`fastbp.kernels.conv.fold`, a few images at a time while they are in
    cache. The column path's ``dx``, and the direct path's for one channel, where
    :func:`fastbp.kernels.conv.correlate_dx`'s passes have no second channel to pair and ran
    1.35-1.8x slower (SimpleConvNet's layer and DeepConvNet's first, batch 100)."""
    n, fn, oh, ow = d.shape
    k, p = W2.shape[1], oh * ow
    d3 = d.reshape(n, fn, p)
    W2T = W2.T
    chunk = _images_per_chunk(k, p, dx.dtype)

    def images(lo, hi, serial):
        fold = conv.fold.serial if serial else conv.fold
        dcol = np.empty((min(chunk, hi - lo), k, p), dtype=dx.dtype)
        for s in range(lo, hi, chunk):
            e = min(hi, s + chunk)
            np.matmul(W2T, d3[s:e], out=dcol[:e - s])
            fold(dcol[:e - s], fh, fw, stride, pad, dx[s:e])

    _over_images(images, n, n * k * p, 2 * fn * k * p)


_NO_CODE = np.empty((0, 0, 0, 0), dtype=np.uint8)
"""``filter_grads``'s ``code`` where it is not read (the layer's direct path)."""

DIRECT_MAX_TAPS = 600
"""``Convolution`` at stride 1 with at most this many taps per filter (``C * FH * FW``:
SimpleConvNet's 5x5 filters on one channel have 25) correlates the image directly
(:func:`fastbp.kernels.conv.correlate`); with more, it multiplies column matrices in BLAS."""


def _padded(x, pad):
    """``x`` (N, C, H, W) with ``pad`` rows and columns of zeros around each map (``x`` itself
    when ``pad`` is 0)."""
    if not pad:
        return x
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    xp[:, :, pad:pad + h, pad:pad + w] = x
    return xp


CONV_CHUNK_BYTES = 1 << 18
"""``Convolution`` unfolds this many bytes of images at a time (at least one image): a buffer
that stays in a core's cache between the kernel that writes it and the product that reads it."""


def _images_per_chunk(rows, p, dtype):
    return max(1, CONV_CHUNK_BYTES // (rows * p * np.dtype(dtype).itemsize))


IMAGE_PRODUCT_FLOPS = 1 << 27
"""Convolution's per-image products of at least this many floating-point operations (134 MFLOP,
about 4 ms on one core) run one image at a time on BLAS's threads; smaller ones run on one BLAS
thread each, with the images spread over the kernel threads."""


def _over_images(images, n, size, flops_per_image):
    """Run ``images(lo, hi, serial)`` over the images ``[0, n)``: at once, or split into
    contiguous ranges on threads (the kernels' rule, :func:`fastbp.kernels.parallel.threads_for`).

    Each image is computed by the same code, with single-threaded products, whichever thread
    runs it, so the results do not depend on the thread count. Products of at least
    :data:`IMAGE_PRODUCT_FLOPS` run one image at a time instead, on BLAS threads for the idle
    cores (:class:`fastbp.threads.ProductThreads`).

    Like a threaded kernel's, a run of 1 ms or more is a long call
    (:data:`fastbp.kernels.parallel.LONG_CALL_SECONDS`): the products that follow it within
    :data:`fastbp.threads.KERNELS_BUSY_SECONDS` leave the cores to the next kernels. (Without
    it, DeepConvNet's Winograd layers, whose kernels run here, let its Affine products wake
    BLAS's worker, which then spun on the next step's kernels' core: every other step ran
    1.5x slower.)
    """
    started = time.perf_counter()
    try:
        _run_over_images(images, n, size, flops_per_image)
    finally:
        parallel._note_long_call(started)


def _run_over_images(images, n, size, flops_per_image):
    big = flops_per_image >= IMAGE_PRODUCT_FLOPS
    count = 1 if big else min(n, parallel.threads_for(size))
    with ProductThreads(flops_per_image, most=None if big else 1):
        if count < 2:
            images(0, n, False)
            return
        bounds = [n * t // count for t in range(count + 1)]
        futures = [helper_pool().submit(images, bounds[t], bounds[t + 1], True)
                   for t in range(1, count)]
        try:
            images(bounds[0], bounds[1], True)
        finally:
            for f in futures:
                f.result()


WINOGRAD_MIN_CHANNELS = 8
"""``Convolution`` with 3x3 filters at stride 1 and at least this many channels and filters
(DeepConvNet's layers after the first) runs Winograd's F(2x2, 3x3) algorithm
(:mod:`fastbp.kernels.winograd`): 16 BLAS products with 2.25 times fewer multiplications than
the direct kernels."""

WINOGRAD_CHUNK_BYTES = 1 << 19
"""``Convolution``'s Winograd path transforms this many bytes of tiles at a time (at least one
image): a buffer that stays in a core's cache between the transform and the products."""


def _winograd_fits(w_shape, stride):
    fn, c, fh, fw = w_shape
    return stride == 1 and fh == 3 and fw == 3 and min(fn, c) >= WINOGRAD_MIN_CHANNELS


class _WinogradPlan:
    """The tiling of a batch (N, C, H, W) for 3x3 filters ``w_shape`` with ``pad``: TH x TW
    tiles per image, chunks of ``per_chunk`` images, and the chunks' tile buffers."""

    def __init__(self, x_shape, w_shape, pad, dtype):
        n, self.c, h, w = x_shape
        self.fn = w_shape[0]
        self.dtype = np.dtype(dtype)
        self.th, self.tw = (h + 2 * pad - 1) // 2, (w + 2 * pad - 1) // 2
        self.tiles = self.th * self.tw
        rows = 16 * max(self.c, self.fn) * self.tiles * self.dtype.itemsize
        self.per_chunk = max(1, WINOGRAD_CHUNK_BYTES // rows)
        self.n, self.chunks = n, -(-n // self.per_chunk)

    def images(self, j):
        """Chunk ``j``'s images ``[s, e)`` and its tile count."""
        s = j * self.per_chunk
        e = min(self.n, s + self.per_chunk)
        return s, e, (e - s) * self.tiles

    def buffer(self, rows):
        """A (16, S) buffer for ``rows`` channels or filters of a chunk's tiles. Each of its
        16 rows starts 256 bytes further into a 4 KiB page than the one before."""
        need = rows * self.per_chunk * self.tiles * self.dtype.itemsize
        row_bytes = -(-need // 4096) * 4096 + 256
        return np.empty((16, row_bytes // self.dtype.itemsize), dtype=self.dtype)

    @staticmethod
    def view(buf, rows, cols):
        """``buf``'s tiles as 16 matrices (rows, cols), for BLAS."""
        return buf[:, :rows * cols].reshape(16, rows, cols)

    def run(self, chunks):
        """``chunks(lo, hi, serial)`` over the chunks, split over threads by whole chunks (the
        chunks themselves do not depend on the thread count)."""
        flops = 2 * 16 * self.fn * self.c * self.per_chunk * self.tiles
        _over_images(chunks, self.chunks, self.n * self.c * self.tiles * 16, flops)


def _winograd_weights(W4):
    """``U`` (16, FN, C): ``G g G^T`` of each 3x3 filter ``g`` of ``W4`` (FN, C, 3, 3)."""
    U = np.empty((16, *W4.shape[:2]), dtype=W4.dtype)
    winograd.filter_transform(W4, U)
    return U


def _all_finite(totals):
    return bool(np.all(totals - totals == 0))


def _winograd_forward(xc, W4, bias, pad, out):
    """``out`` = the convolution of ``xc`` (N, C, H, W) with ``W4`` (FN, C, 3, 3) plus ``bias``
    at stride 1. Returns False (``out`` then unusable) where an output is not finite: the
    caller then runs the direct kernels, whose special values are the reference's."""
    plan = _WinogradPlan(xc.shape, W4.shape, pad, xc.dtype)
    U = _winograd_weights(W4)
    totals = np.zeros(plan.chunks, dtype=xc.dtype)

    def chunks(lo, hi, serial):
        V, M = plan.buffer(plan.c), plan.buffer(plan.fn)
        with np.errstate(over="ignore", invalid="ignore"):  # (then the direct kernels run)
            for j in range(lo, hi):
                s, e, cols = plan.images(j)
                winograd.transform_input(xc[s:e], pad, plan.th, plan.tw, cols, V)
                np.matmul(U, plan.view(V, plan.c, cols), out=plan.view(M, plan.fn, cols))
                totals[j] = winograd.transform_output(M, cols, plan.th, plan.tw, bias, out[s:e])

    plan.run(chunks)
    return _all_finite(totals)


def _winograd_backward(xc, W4, d, pad, need_dx):
    """``(dW, db, dx)`` of the convolution (``dx`` None without ``need_dx``) for the gradient
    ``d`` (N, FN, OH, OW), or None where a result is not finite (the caller then runs the direct
    kernels). ``dW`` and ``db`` are summed per chunk, then over the chunks in order."""
    plan = _WinogradPlan(xc.shape, W4.shape, pad, xc.dtype)
    fn, c = plan.fn, plan.c
    U = _winograd_weights(W4)
    UT = np.ascontiguousarray(U.transpose(0, 2, 1))
    parts = np.empty((plan.chunks, 16 * fn * c), dtype=xc.dtype)
    bias_parts = np.zeros((plan.chunks, fn), dtype=xc.dtype)
    dx = np.empty(xc.shape, dtype=xc.dtype) if need_dx else None
    totals = np.zeros(plan.chunks, dtype=xc.dtype)

    def chunks(lo, hi, serial):
        V, dM = plan.buffer(c), plan.buffer(fn)
        dV = plan.buffer(c) if need_dx else None
        with np.errstate(over="ignore", invalid="ignore"):  # (then the direct kernels run)
            for j in range(lo, hi):
                s, e, cols = plan.images(j)
                winograd.transform_input(xc[s:e], pad, plan.th, plan.tw, cols, V)
                winograd.transform_output_grad(d[s:e], plan.th, plan.tw, cols, dM,
                                               bias_parts[j])
                dMv = plan.view(dM, fn, cols)
                np.matmul(dMv, plan.view(V, c, cols).transpose(0, 2, 1),
                          out=parts[j].reshape(16, fn, c))
                if need_dx:
                    np.matmul(UT, dMv, out=plan.view(dV, c, cols))
                    totals[j] = winograd.transform_input_grad(dV, cols, plan.th, plan.tw, pad,
                                                              dx[s:e])

    plan.run(chunks)
    dU = np.empty(16 * fn * c, dtype=xc.dtype)
    affine.column_sum(parts, dU)  # the chunks added in order
    db = np.empty(fn, dtype=xc.dtype)
    affine.column_sum(bias_parts, db)
    dW = np.empty(W4.shape, dtype=xc.dtype)
    winograd.filter_transform_grad(dU.reshape(16, fn, c), dW)
    if not (_all_finite(totals) and _all_finite(dW) and _all_finite(db)):
        return None
    return dW, db, dx


class _ConvReluPool:
    """The book's ``Convolution -> Relu -> Pooling(2, 2, stride=2)`` block, forward and the
    parameters' backward, in two fused kernels (:func:`fastbp.kernels.conv.conv_relu_pool` and
    :func:`~fastbp.kernels.conv.filter_grads`):
    the first block of ``SimpleConvNet``, whose input needs no gradient.

    It works through the three layers it is given and reads their settings at every call; use
    :meth:`fits` first. ``forward`` validates as ``Convolution.forward`` does and leaves the
    Convolution as its own forward pass would (``x``, ``col``, and a ``backward`` that works);
    ``backward_params`` sets its ``dW`` and ``db``. The Relu's and the Pooling's own state
    (``mask``, ``x``) is not touched: the block never makes their inputs.
    """

    def __init__(self, conv, relu, pool_layer):
        self.conv, self.relu, self.pool = conv, relu, pool_layer
        self._state = None

    def fits(self):
        """Whether the layers are (still) the block the kernels compute: fastbp's own
        Convolution at stride 1, Relu, and a 2x2 Pooling at stride 2 without padding."""
        conv, relu, p = self.conv, self.relu, self.pool
        return (type(conv) is Convolution and type(relu) is Relu and type(p) is Pooling
                and _is_int(conv.stride, 1) and _is_int(p.pool_h, 2) and _is_int(p.pool_w, 2)
                and _is_int(p.stride, 2) and _is_int(p.pad, 0))

    def forward(self, x):
        """The Pooling's output for images ``x`` (N, C, H, W)."""
        xc, W2, bias, w_shape, _, pad, oh, ow, out_dtype = self.conv._checked(x)
        if oh < 2 or ow < 2:
            raise ValueError(f"Pooling: a 2x2 window does not fit the convolution's {oh}x{ow} "
                             "output")
        # the Convolution's state as its own forward pass (direct path) leaves it
        xp, taps = self.conv._enter_direct(xc, W2, w_shape, pad, oh, ow, out_dtype)
        out = np.empty((xc.shape[0], w_shape[0], oh // 2, ow // 2), dtype=xc.dtype)
        code = np.empty(out.shape, dtype=np.uint8)
        conv.conv_relu_pool(out, code, xp, W2, bias, taps)
        self._state = (xp, taps, out, code, w_shape, out_dtype)
        return v.as_result(out, out_dtype)

    def backward_params(self, dout):
        """Set the Convolution's ``dW`` and ``db`` from ``dout``, the gradient at the Pooling's
        output. Returns nothing: the images' gradient is not computed."""
        v.require_forward(self._state, "the Convolution-Relu-Pooling block")
        xp, taps, out, code, w_shape, forward_dtype = self._state
        dout = v.gradient_for(dout, out.shape, "Pooling")
        out_dtype, work = v.backward_dtypes(forward_dtype, dout)
        d = np.asarray(dout, dtype=work, order="C")
        self.conv._direct_grads(d, out.astype(work, copy=False), code, True, 2 * out.shape[2],
                                2 * out.shape[3], xp, taps, w_shape, out_dtype)


def _is_int(value, want):
    return isinstance(value, numbers.Integral) and value == want


class Pooling:
    """Max pooling over ``pool_h`` x ``pool_w`` windows of (N, C, H, W) input, moved by ``stride``.

    Each output is the largest element of its window; among equal largest elements the first in
    row-major window order wins, and a NaN wins over any number (the first NaN, as in PyTorch).
    ``pad`` rows and columns are added around the input but never win: the output has
    ``OH = (H + 2 * pad - pool_h) // stride + 1`` rows, padding counted (PyTorch's rule; the book
    leaves pad out of the output size and pads with zeros). ``pad`` may be at most half the pool
    size. Where windows overlap (``stride`` smaller than the pool), their gradients add up.

    One kernel writes the output and each window's winner in one pass; ``backward`` sends each
    gradient to its winner. ``arg_max`` gives the book's intermediate (built when read).
    """

    def __init__(self, pool_h, pool_w, stride=1, pad=0):
        self.pool_h = pool_h
        self.pool_w = pool_w
        self.stride = stride
        self.pad = pad
        self.x = None
        self._arg = None

    @property
    def arg_max(self):
        """The book's ``arg_max``: the winner's offset in its window, rows in (n, oh, ow, c)
        order."""
        if self._arg is None:
            return None
        _, pw, stride, pad, oh, ow = self._geometry
        row, column = np.divmod(self._arg.astype(np.intp), self.x.shape[3])
        i = row - (np.arange(oh)[:, None] * stride - pad)
        j = column - (np.arange(ow) * stride - pad)
        return (i * pw + j).transpose(0, 2, 3, 1).reshape(-1)

    def forward(self, x):
        x = v._as_array(x, "x")
        ph, pw, stride, pad, oh, ow = v.pool_geometry(x, self.pool_h, self.pool_w, self.stride,
                                                      self.pad)
        xc, out_dtype = v.float_input(x, contiguous=True)
        n, c, h, w = xc.shape
        out = np.empty((n, c, oh, ow), dtype=xc.dtype)
        arg = np.empty((n, c, oh, ow), dtype=np.int32 if h * w < 2**31 else np.intp)
        pool.max_pool_forward(xc.reshape(n * c, h, w), ph, pw, stride, pad,
                              out.reshape(n * c, oh, ow), arg.reshape(n * c, oh, ow))
        self.x, self._arg = xc, arg
        self._geometry, self._out_dtype = (ph, pw, stride, pad, oh, ow), out_dtype
        return v.as_result(out, out_dtype)

    def backward(self, dout):
        v.require_forward(self.x, "Pooling")
        n, c, h, w = self.x.shape
        oh, ow = self._geometry[4:]
        dout = v.gradient_for(dout, (n, c, oh, ow), "Pooling")
        out_dtype, work = v.backward_dtypes(self._out_dtype, dout)
        d = np.asarray(dout, dtype=work, order="C")
        dx = np.empty(self.x.shape, dtype=work)
        ph, pw, stride = self._geometry[:3]
        pool.max_pool_backward(d.reshape(n * c, oh, ow), self._arg.reshape(n * c, oh, ow),
                               stride >= ph and stride >= pw, dx.reshape(n * c, h, w))
        return v.as_result(dx, out_dtype)


class Dropout:
    """Dropout as in the book: ``x * mask`` in training, ``x * (1 - dropout_ratio)`` in test mode.

    ``mask = u > dropout_ratio`` with ``u = np.random.rand(*x.shape)`` from NumPy's global state
    (the book's draw: ``np.random.seed`` gives the book's masks, on both backends), or
    ``rng.random(x.shape)`` when ``rng`` (a ``numpy.random.Generator`` or a seed for one) is
    given. Kept elements are not rescaled. ``backward`` is the derivative of the latest
    ``forward``: ``dout * mask`` after a training pass, ``dout * (1 - dropout_ratio)`` after a
    test pass (the book reuses the last training mask there).

    Without ``rng``, one serial kernel pass draws ``u``, compares and multiplies: it runs
    MT19937 on the global generator's own state, giving ``np.random.rand``'s doubles bit for
    bit and leaving the state as ``rand`` leaves it (the ``randn`` cache untouched), under the
    generator's lock. Where that state cannot be reached safely (``np.random.rand`` replaced,
    not over an ``MT19937``, an unexpected NumPy layout: :mod:`fastbp._globalrandom`), it calls
    ``np.random.rand`` as the reference does. With ``rng``, ``u`` is drawn first and the
    compare and the multiply run in one kernel pass.
    """

    def __init__(self, dropout_ratio=0.5, *, rng=None):
        dropout_attributes(self, dropout_ratio, rng)

    def forward(self, x, train_flg=True):
        ratio = v.dropout_ratio(self.dropout_ratio)
        if v.call_key(x) is not None:
            xc, out_dtype = x, x.dtype  # the usual case: nothing to convert
        else:
            xc, out_dtype = v.float_input(x, contiguous=True)
        out = np.empty_like(xc)
        if train_flg:
            mask = np.empty(xc.shape, dtype=bool)
            stream = global_mt19937() if self.rng is None else None
            drawn = False
            if stream is not None:  # np.random.rand's own stream, drawn in the kernel's pass
                lock, state = stream
                with lock:
                    # set_state accepts any pos; rand's behaviour outside [0, 624] is NumPy's
                    drawn = state[-1] <= dropout.MT_N
                    if drawn:
                        dropout.dropout_forward_mt19937(xc, ratio, state, mask, out)
            if not drawn:
                u = dropout_uniforms(self.rng, xc.shape)
                dropout.dropout_forward(xc, u, ratio, mask, out)
            self.mask = mask
            self._saved = (xc.shape, mask)
        else:
            factor = 1.0 - ratio
            dropout.dropout_scale(xc, xc.dtype.type(factor), out)
            self._saved = (xc.shape, factor)
        return v.as_result(out, out_dtype)

    def backward(self, dout):
        v.require_forward(self._saved, "Dropout")
        shape, factor = self._saved
        dout = v.gradient_for(dout, shape, "Dropout")
        if v.call_key(dout) is not None:
            d, out_dtype = dout, dout.dtype
        else:
            d, out_dtype = v.float_input(dout, "dout", contiguous=True)
        dx = np.empty_like(d)
        if isinstance(factor, float):
            dropout.dropout_scale(d, d.dtype.type(factor), dx)
        else:
            dropout.dropout_backward(d, factor, dx)
        return v.as_result(dx, out_dtype)


def _feature_row(a, d):
    """``gamma`` or ``beta`` (checked to broadcast to (1, d)) as a C-contiguous (d,) row."""
    if a.shape == (d,) and a.flags.c_contiguous:
        return a
    return np.broadcast_to(a, (1, d))[0].copy()  # a writeable row: one kernel signature


class BatchNormalization:
    """Batch normalisation, as the book's ``common/layers.py`` computes it, in two fused kernels.

    The same class as :class:`fastbp.reference.layers.BatchNormalization` (its docstring gives
    the mathematics, the parameters and the edge cases; ``docs/numerics.md`` the contract).
    What differs is how it is computed:

    * Sums and statistics are computed in float64, also for float32 data, in a fixed order
      (:mod:`fastbp.kernels.batchnorm`): results are the same at every thread count.
    * ``xc`` and ``xn`` (the book's attributes, from the latest training pass) are computed
      when first read, from the input, which the layer keeps by reference as ``Affine`` keeps
      ``x``. The kernels never store them: ``backward`` recomputes ``xn`` on the fly.
    """

    def __init__(self, gamma, beta, momentum=0.9, running_mean=None, running_var=None):
        self._train_saved = None
        batchnorm_attributes(self, gamma, beta, momentum, running_mean, running_var)

    def forward(self, x, train_flg=True):
        x = v._as_array(x, "x")
        x2 = x if x.ndim == 2 else v.batchnorm_input(x)
        n, d = x2.shape
        gamma, beta = self.gamma, self.beta
        if v.call_key(x2, gamma, beta) is not None and gamma.shape == beta.shape == (d,):
            xc, out_dtype = x2, x2.dtype  # the usual case: nothing to convert
        else:
            v.feature_parameter(gamma, "gamma", x.shape, d)
            v.feature_parameter(beta, "beta", x.shape, d)
            (xc, gamma, beta), out_dtype = v.float_inputs(("x", "gamma", "beta"), x2, gamma,
                                                          beta, contiguous=True)
            gamma, beta = _feature_row(gamma, d), _feature_row(beta, d)
        running_mean, running_var = running_statistics(self, d, xc.dtype, x.shape, train_flg)
        block = batchnorm.column_block(n, xc.itemsize, d)
        out = np.empty_like(xc)
        self.input_shape = x.shape
        if train_flg:
            mean, inv_std = np.empty(d), np.empty(d)
            std = np.empty(d, dtype=xc.dtype)
            batchnorm.batchnorm_train_forward(xc, gamma, beta, float(self.momentum),
                                              BATCHNORM_EPS, block, running_mean, running_var,
                                              mean, inv_std, std, out)
            self.batch_size = n
            self.std = std
            self._xc = self._xn = None
        else:
            mean = np.array(running_mean, dtype=np.float64)
            inv_std = 1.0 / np.sqrt(np.asarray(running_var, dtype=np.float64) + BATCHNORM_EPS)
            batchnorm.batchnorm_apply(xc, mean, inv_std, gamma, beta, block, out)
        self._saved = (bool(train_flg), x.shape, xc, mean, inv_std, out_dtype)
        if train_flg:
            self._train_saved = self._saved
        return v.as_result(out, out_dtype).reshape(x.shape)

    def backward(self, dout):
        v.require_forward(self._saved, "BatchNormalization")
        train, shape, xc, mean, inv_std, fwd_dtype = self._saved
        dout = v.gradient_for(dout, shape, "BatchNormalization")
        n, d = xc.shape
        gamma = self.gamma
        if (v.call_key(xc, dout, gamma) is not None and fwd_dtype == xc.dtype
                and gamma.shape == (d,)):
            dout, work, out_dtype = dout.reshape(n, d), xc.dtype, fwd_dtype  # the usual case
        else:
            v.feature_parameter(gamma, "gamma", shape, d)
            (dout, gamma), out_dtype = v.float_inputs(("dout", "gamma"), dout.reshape(n, d),
                                                      gamma, contiguous=True)
            out_dtype = np.promote_types(out_dtype, fwd_dtype)
            work = v.compute_dtype(out_dtype)
            dout, gamma, xc = (np.asarray(a, dtype=work, order="C") for a in (dout, gamma, xc))
            gamma = _feature_row(gamma, d)
        dx = np.empty((n, d), dtype=work)
        dgamma, dbeta = np.empty(d, dtype=work), np.empty(d, dtype=work)
        block = batchnorm.column_block(n, xc.itemsize, d)
        batchnorm.batchnorm_backward(dout, xc, mean, inv_std, gamma, train, block, dx, dgamma,
                                     dbeta)
        self.dgamma = v.as_result(dgamma, out_dtype)
        self.dbeta = v.as_result(dbeta, out_dtype)
        return v.as_result(dx, out_dtype).reshape(shape)

    def _recompute(self, normalised):
        if self._train_saved is None:
            return None
        _, _, xc, mean, inv_std, _ = self._train_saved
        with np.errstate(invalid="ignore"):  # inf - inf in a feature with inf: NaN, as forward
            centred = np.asarray(xc, dtype=np.float64) - mean  # the kernels' float64 arithmetic
            return (centred * inv_std if normalised else centred).astype(xc.dtype, copy=False)

    @property
    def xc(self):
        """``x - mean`` of the latest training pass, (N, D) (computed when first read)."""
        if self._xc is None:
            self._xc = self._recompute(normalised=False)
        return self._xc

    @xc.setter
    def xc(self, value):
        self._xc = value

    @property
    def xn(self):
        """``(x - mean) / std`` of the latest training pass, (N, D) (computed when first read)."""
        if self._xn is None:
            self._xn = self._recompute(normalised=True)
        return self._xn

    @xn.setter
    def xn(self, value):
        self._xn = value
