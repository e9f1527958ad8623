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

__all__ = ["AddLayer", "Affine", "BatchNormalization", "Convolution", "Dropout", "MulLayer",
           "Pooling", "Relu", "Sigmoid", "SoftmaxWithLoss"]


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
        self._tail = None  # sigmoid(-|x|), for backward

    def forward(self, x):
        s, self._tail, out_dtype = sigmoid_parts(x)
        self.out = v.scalar_if_0d(v.as_result(s, out_dtype))
        return self.out

    def backward(self, dout):
        v.require_forward(self.out, "Sigmoid")
        dout = v.gradient_for(dout, self.out.shape, "Sigmoid")
        # float16 runs in float32: the result takes the dtype of dout * out, not of the tail
        (d, t), _ = v.float_inputs(("dout", "out"), dout, self._tail)
        return v.as_result(d * t * (1 - t), v.result_dtype(dout, self.out.dtype))


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
        self._x_dtype = None
        self.dW = None
        self.db = None

    def forward(self, x):
        x, self.x, W, b, out_dtype = v.affine_inputs(x, self.W, self.b)
        self.original_x_shape = x.shape
        self._x_dtype = x.dtype  # self.x may be float32 for float16 x: backward casts back to this
        return v.as_result(np.dot(self.x, W) + b, out_dtype)

    def backward(self, dout):
        v.require_forward(self.x, "Affine")
        W = v._as_array(self.W, "W")
        dout = v.gradient_for(dout, (self.x.shape[0], W.shape[1]), "Affine")
        out_dtype = v.result_dtype(dout, W, self._x_dtype)
        (d, Wc, xc), _ = v.float_inputs(("dout", "W", "x"), dout, W, self.x)
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
        # for backward: the targets' form and converted values, the float64-or-float32 softmax
        # and log-softmax as (N, C), the input's shape and the result dtype
        self._kind = self._target = self._y = self._logp = None
        self._x_shape = self._out_dtype = None

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
    ``db`` (FN,) and returns ``dx``, or ``None`` when ``need_dx`` is False (a fastbp extension,
    for a network's first layer). ``col`` and ``col_W`` are the book's intermediates.
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
        self.need_dx = True

    def forward(self, x):
        x = v._as_array(x, "x")
        W = v._as_array(self.W, "W")
        stride, pad, oh, ow = v.conv_geometry(x, W, self.b, self.stride, self.pad)
        (xc, Wc, bc), out_dtype = v.float_inputs(("x", "W", "b"), x, W, self.b)
        n = x.shape[0]
        fn, c, fh, fw = W.shape
        self.col = im2col(xc, fh, fw, stride, pad)
        self.col_W = Wc.reshape(fn, c * fh * fw).T  # (not -1: FN may be 0)
        out = np.dot(self.col, self.col_W) + v.bias_vector(bc, fn)
        self.x, self._geometry, self._out_dtype = xc, (W.shape, stride, pad, oh, ow), out_dtype
        return v.as_result(out.reshape(n, oh, ow, fn).transpose(0, 3, 1, 2), out_dtype)

    def backward(self, dout):
        v.require_forward(self.x, "Convolution")
        w_shape, stride, pad, oh, ow = self._geometry
        W = v.filters_for_backward(self.W, w_shape)
        fn, c, fh, fw = w_shape
        dout = v.gradient_for(dout, (self.x.shape[0], fn, oh, ow), "Convolution")
        out_dtype, work = v.backward_dtypes(self._out_dtype, dout, W)
        n = self.x.shape[0]
        d = np.asarray(dout, dtype=work).transpose(0, 2, 3, 1).reshape(n * oh * ow, fn)
        col = self.col.astype(work, copy=False)
        self.db = v.as_result(np.sum(d, axis=0), out_dtype)
        self.dW = v.as_result(np.dot(col.T, d).T.reshape(fn, c, fh, fw), out_dtype)
        if not self.need_dx:
            return None
        dcol = np.dot(d, np.asarray(W, dtype=work).reshape(fn, c * fh * fw))
        dx = col2im(dcol, self.x.shape, fh, fw, stride, pad)
        return v.as_result(dx, out_dtype)


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
        dwindows = dwindows.reshape(n * oh * ow, c * ph * pw)
        dx = col2im(dwindows, self.x.shape, ph, pw, stride, pad)
        return v.as_result(dx, out_dtype)


BATCHNORM_EPS = 10e-7
"""Added to the variance under the square root, as in the book (``10e-7``, i.e. 1e-6)."""


def dropout_uniforms(rng, shape):
    """The uniform numbers that Dropout's mask compares with ``dropout_ratio``.

    ``np.random.rand(*shape)`` from NumPy's global state, as the book draws them (so
    ``np.random.seed`` gives the book's masks on both backends), or ``rng.random(shape)``.
    """
    if rng is None:
        u = np.random.rand(*shape)  # noqa: NPY002 (the book's draw, on purpose)
        return u if shape else np.asarray(u)  # rand() of no shape is a Python float
    u = np.asarray(rng.random(shape), dtype=np.float64, order="C")
    if u.shape != tuple(shape):
        raise ValueError(f"Dropout: rng.random({tuple(shape)}) returned shape {u.shape}")
    return u


def dropout_attributes(layer, dropout_ratio, rng):
    """Check the ratio and give a new Dropout (either backend) its attributes."""
    v.dropout_ratio(dropout_ratio)
    layer.dropout_ratio = dropout_ratio
    layer.rng = v.random_source(rng)
    layer.mask = None
    layer._saved = None


class Dropout:
    """Dropout as in the book: ``x * mask`` in training, ``x * (1 - dropout_ratio)`` in test mode.

    ``mask = u > dropout_ratio`` with ``u = np.random.rand(*x.shape)`` from NumPy's global state
    (the book's draw: ``np.random.seed`` reproduces the book's masks), or ``rng.random(x.shape)``
    when ``rng`` (a ``numpy.random.Generator`` or a seed for one) is given. Kept elements are not
    rescaled. ``backward`` is the derivative of the latest ``forward``: ``dout * mask`` after a
    training pass, ``dout * (1 - dropout_ratio)`` after a test pass (the book reuses the last
    training mask there).
    """

    def __init__(self, dropout_ratio=0.5, *, rng=None):
        dropout_attributes(self, dropout_ratio, rng)

    def forward(self, x, train_flg=True):
        ratio = v.dropout_ratio(self.dropout_ratio)
        xc, out_dtype = v.float_input(x)
        with np.errstate(invalid="ignore"):  # a dropped inf is inf * 0: NaN, without a warning
            if train_flg:
                self.mask = dropout_uniforms(self.rng, xc.shape) > ratio
                out = xc * self.mask
                self._saved = (xc.shape, self.mask)
            else:
                out = xc * xc.dtype.type(1.0 - ratio)
                self._saved = (xc.shape, 1.0 - ratio)
        return v.as_result(out, out_dtype)

    def backward(self, dout):
        v.require_forward(self._saved, "Dropout")
        shape, factor = self._saved
        dout = v.gradient_for(dout, shape, "Dropout")
        d, out_dtype = v.float_input(dout, "dout")
        with np.errstate(invalid="ignore"):
            dx = d * d.dtype.type(factor) if isinstance(factor, float) else d * factor
        return v.as_result(dx, out_dtype)


def running_statistics(layer, d, dtype, x_shape, train):
    """A BatchNormalization layer's running mean and variance for a pass over ``d`` features.

    Missing statistics start as zeros in ``dtype`` (the book's start). In train mode they are
    updated in place, so they must be arrays the layer owns, in ``dtype``: any other array (one
    given to the constructor, or assigned) is copied first and the copy becomes the attribute,
    so that no array the caller gave is ever written. In test mode they are only read.
    """
    owned = layer._owned
    mean, var = layer.running_mean, layer.running_var
    if (mean is not None and mean is owned.get("running_mean") and var is owned.get("running_var")
            and mean.shape == (d,) and mean.dtype == dtype and var.shape == (d,)
            and var.dtype == dtype):
        return mean, var  # the layer's own arrays, as the last pass left them: nothing to check
    names = ("running_mean", "running_var")
    checked = [v.running_statistic(getattr(layer, name), name, x_shape, d) for name in names]
    stats = []
    for name, value in zip(names, checked, strict=True):
        owned = layer._owned.get(name)
        if value is None or (train and (value is not owned or value.dtype != dtype)):
            value = np.zeros(d, dtype) if value is None else np.array(value, dtype=dtype)
            setattr(layer, name, value)
            layer._owned[name] = value
        stats.append(value)
    return stats


def batchnorm_attributes(layer, gamma, beta, momentum, running_mean, running_var):
    """Give a new BatchNormalization (either backend) the book's attributes."""
    layer.gamma = gamma
    layer.beta = beta
    layer.momentum = momentum
    layer.input_shape = None
    layer.running_mean = running_mean
    layer.running_var = running_var
    layer.batch_size = None
    layer.xc = None
    layer.xn = None
    layer.std = None
    layer.dgamma = None
    layer.dbeta = None
    layer._owned = {}
    layer._saved = None


class BatchNormalization:
    """Batch normalisation, as the book's ``common/layers.py`` computes it.

    Each feature of ``x.reshape(N, -1)`` (4-d input too: per feature, not per channel) is
    normalised by the batch mean and biased variance in train mode, ``xn = (x - mean) /
    sqrt(var + 10e-7)``, then ``out = gamma * xn + beta``. The running statistics follow
    ``momentum * running + (1 - momentum) * batch``; test mode (``train_flg=False``) normalises
    by them instead. Before any training pass they are the book's zeros.

    Parameters
    ----------
    gamma, beta : ndarray
        Scale and shift, shape (D,); kept by reference and read on every call.
    momentum : float
    running_mean, running_var : ndarray, optional
        Shape (D,). Missing ones start as zeros (in the compute dtype) at the first forward.

    Notes
    -----
    * The running statistics are updated in place, in arrays the layer owns: a running array
      given to the constructor is copied at the first training pass, never written.
    * A batch of one row in train mode has variance 0: ``xn`` is 0 and the output is ``beta``,
      with no warning (the book's ``ch06/batch_norm_gradient_check.py`` runs on such a batch).
    * An empty batch (N = 0) gives an output of shape (0, ...), NaN batch statistics (the mean
      of nothing) and leaves the running statistics unchanged; ``dgamma`` and ``dbeta`` are 0.
    * NaN or inf in a feature makes that feature's outputs NaN; other features are unaffected.
    * ``backward`` is the derivative of the latest ``forward``. After a test pass that is the
      derivative of the fixed affine map, ``dx = dout * gamma / sqrt(running_var + 10e-7)``
      (the book would reuse the last training batch's statistics).
    * float32 stays float32: the running statistics are created in the compute dtype.
    """

    def __init__(self, gamma, beta, momentum=0.9, running_mean=None, running_var=None):
        batchnorm_attributes(self, gamma, beta, momentum, running_mean, running_var)

    def forward(self, x, train_flg=True):
        x = v._as_array(x, "x")
        x2 = v.batchnorm_input(x)
        n, d = x2.shape
        v.feature_parameter(self.gamma, "gamma", x.shape, d)
        v.feature_parameter(self.beta, "beta", x.shape, d)
        (xc, gamma, beta), out_dtype = v.float_inputs(("x", "gamma", "beta"), x2, self.gamma,
                                                      self.beta)
        dtype = xc.dtype
        running_mean, running_var = running_statistics(self, d, dtype, x.shape, train_flg)
        self.input_shape = x.shape
        # No warnings, as the kernels give none: an empty batch's mean is NaN (0 / 0, without
        # numpy.mean's warning), and inf in a feature gives NaN (inf - inf, 0 * inf).
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            if train_flg:
                mu = np.sum(xc, axis=0) / n
                xc = xc - mu
                var = np.sum(xc ** 2, axis=0) / n
                std = np.sqrt(var + BATCHNORM_EPS)
                xn = xc / std
                self.batch_size = n
                self.xc, self.xn, self.std = xc, xn, std
                if n:
                    m = float(self.momentum)
                    running_mean[...] = m * running_mean + (1 - m) * mu
                    running_var[...] = m * running_var + (1 - m) * var
            else:
                xc = xc - np.asarray(running_mean, dtype=dtype)
                std = np.sqrt(np.asarray(running_var, dtype=dtype) + BATCHNORM_EPS)
                xn = xc / std
            out = gamma * xn + beta
        self._saved = (train_flg, x.shape, xc, xn, std, out_dtype)
        return v.as_result(out, out_dtype).reshape(x.shape)

    def backward(self, dout):
        v.require_forward(self._saved, "BatchNormalization")
        train, shape, xc, xn, std, fwd_dtype = self._saved
        dout = v.gradient_for(dout, shape, "BatchNormalization")
        n, d = xc.shape
        v.feature_parameter(self.gamma, "gamma", shape, d)
        (dout, gamma), out_dtype = v.float_inputs(("dout", "gamma"), dout.reshape(n, d),
                                                  self.gamma)
        out_dtype = np.promote_types(out_dtype, fwd_dtype)
        work = v.compute_dtype(out_dtype)
        dout, gamma, xc, xn, std = (np.asarray(a, dtype=work) for a in (dout, gamma, xc, xn, std))
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            dbeta = dout.sum(axis=0)
            dgamma = np.sum(xn * dout, axis=0)
            dxn = gamma * dout
            dxc = dxn / std
            if train:
                dstd = -np.sum((dxn * xc) / (std * std), axis=0)
                dvar = 0.5 * dstd / std
                dxc += (2.0 / max(n, 1)) * xc * dvar  # n = 0: dxc is empty, the factor unused
                dmu = np.sum(dxc, axis=0)
                dxc = dxc - dmu / max(n, 1)
        self.dgamma = v.as_result(dgamma, out_dtype)
        self.dbeta = v.as_result(dbeta, out_dtype)
        return v.as_result(dxc, out_dtype).reshape(shape)
