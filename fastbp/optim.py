"""The book's optimizers (``common/optimizer.py``), with fused kernels behind them.

``SGD``, ``Momentum``, ``Nesterov``, ``AdaGrad``, ``RMSprop`` and ``Adam`` keep the book's
constructors, state attributes (``v``, ``h``, ``m``, ``iter``) and ``update(params, grads)``.
``update`` changes the arrays in ``params`` in place and never rebinds ``params[key]``, so layers
that hold those arrays see the new values.

With ``backend="kernel"`` (the default) each parameter is updated by one fused kernel pass
(:mod:`fastbp.kernels.optim`) when the parameter, its gradient and its state are C-contiguous
arrays of one float dtype (float32 or float64) and the parameter is writeable; anything else
takes the book's NumPy formula. ``backend="reference"`` always takes the NumPy formula. Both
paths do the same arithmetic in the same order and the same dtype: float32 parameters are updated
in float32.
"""

import numpy as np

from fastbp.backends import check_backend
from fastbp.kernels import optim as kernels
from fastbp.validation import COMPUTE_DTYPES

__all__ = ["OPTIMIZERS", "SGD", "AdaGrad", "Adam", "Momentum", "Nesterov", "RMSprop"]

EPS = 1e-7
"""Added to the root in AdaGrad, RMSprop and Adam, as in the book."""


def _flat(*arrays):
    """Flat views for a kernel, or None where the NumPy formula must run instead."""
    p = arrays[0]
    if type(p) is not np.ndarray:
        return None
    dtype, shape = p.dtype, p.shape
    if dtype not in COMPUTE_DTYPES or not p.flags.writeable:
        return None
    flat = []
    for a in arrays:
        if (type(a) is not np.ndarray or a.dtype != dtype or a.shape != shape
                or not a.flags.c_contiguous):
            return None
        flat.append(a.ravel())  # a view: the array is C-contiguous
    return flat


def _zeros_like(params):
    return {key: np.zeros_like(val) for key, val in params.items()}


class _Optimizer:
    # Below this many elements per parameter the NumPy formula runs even on the kernel backend:
    # where NumPy needs only two or three operations, a kernel call and its checks cost more
    # than they save on small arrays. Both paths give the same bits, so the choice never
    # changes a result.
    fuse_min_elements = 0

    def __init__(self, backend):
        self.backend = check_backend(backend)

    def _fused(self, *arrays):
        if self.backend != "kernel" or np.size(arrays[0]) < self.fuse_min_elements:
            return None
        return _flat(*arrays)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items()
                         if isinstance(v, (int, float, str)) and k != "iter")
        return f"{type(self).__name__}({args})"


class SGD(_Optimizer):
    """Stochastic gradient descent: ``param -= lr * grad``."""

    fuse_min_elements = 8192  # measured break-even here: 4096 (float64) to 16384 (float32)

    def __init__(self, lr=0.01, *, backend="kernel"):
        super().__init__(backend)
        self.lr = lr

    def update(self, params, grads):
        """Update every array in ``params`` in place from ``grads`` (same keys)."""
        for key in params.keys():
            flat = self._fused(params[key], grads[key])
            if flat is None:
                params[key] -= self.lr * grads[key]
            else:
                p, g = flat
                kernels.sgd_update(p, g, p.dtype.type(self.lr))


class Momentum(_Optimizer):
    """SGD with momentum: ``v = momentum * v - lr * grad``; ``param += v``."""

    fuse_min_elements = 4096  # measured break-even here: 2048 to 8192

    def __init__(self, lr=0.01, momentum=0.9, *, backend="kernel"):
        super().__init__(backend)
        self.lr = lr
        self.momentum = momentum
        self.v = None

    def update(self, params, grads):
        """Update every array in ``params`` in place from ``grads`` (same keys)."""
        if self.v is None:
            self.v = _zeros_like(params)
        for key in params.keys():
            v = self.v[key]
            flat = self._fused(params[key], grads[key], v)
            if flat is None:
                v *= self.momentum
                v -= self.lr * grads[key]
                params[key] += v
            else:
                p, g, vf = flat
                t = p.dtype.type
                kernels.momentum_update(p, g, vf, t(self.momentum), t(self.lr))


class Nesterov(_Optimizer):
    """Nesterov's accelerated gradient, in the book's form (Sutskever et al.'s rewrite)."""

    def __init__(self, lr=0.01, momentum=0.9, *, backend="kernel"):
        super().__init__(backend)
        self.lr = lr
        self.momentum = momentum
        self.v = None

    def update(self, params, grads):
        """Update every array in ``params`` in place from ``grads`` (same keys)."""
        if self.v is None:
            self.v = _zeros_like(params)
        mu, lr = self.momentum, self.lr
        for key in params.keys():
            v = self.v[key]
            flat = self._fused(params[key], grads[key], v)
            if flat is None:
                v *= mu
                v -= lr * grads[key]
                params[key] += mu * mu * v
                params[key] -= (1 + mu) * lr * grads[key]
            else:
                p, g, vf = flat
                t = p.dtype.type
                kernels.nesterov_update(p, g, vf, t(mu), t(lr), t(mu * mu), t((1 + mu) * lr))


class AdaGrad(_Optimizer):
    """AdaGrad: ``h += grad**2``; ``param -= lr * grad / (sqrt(h) + 1e-7)``."""

    def __init__(self, lr=0.01, *, backend="kernel"):
        super().__init__(backend)
        self.lr = lr
        self.h = None

    def update(self, params, grads):
        """Update every array in ``params`` in place from ``grads`` (same keys)."""
        if self.h is None:
            self.h = _zeros_like(params)
        for key in params.keys():
            h = self.h[key]
            flat = self._fused(params[key], grads[key], h)
            if flat is None:
                h += grads[key] * grads[key]
                params[key] -= self.lr * grads[key] / (np.sqrt(h) + EPS)
            else:
                p, g, hf = flat
                t = p.dtype.type
                kernels.adagrad_update(p, g, hf, t(self.lr), t(EPS))


class RMSprop(_Optimizer):
    """RMSprop: ``h = decay_rate * h + (1 - decay_rate) * grad**2``, then as AdaGrad."""

    def __init__(self, lr=0.01, decay_rate=0.99, *, backend="kernel"):
        super().__init__(backend)
        self.lr = lr
        self.decay_rate = decay_rate
        self.h = None

    def update(self, params, grads):
        """Update every array in ``params`` in place from ``grads`` (same keys)."""
        if self.h is None:
            self.h = _zeros_like(params)
        for key in params.keys():
            h = self.h[key]
            flat = self._fused(params[key], grads[key], h)
            if flat is None:
                h *= self.decay_rate
                h += (1 - self.decay_rate) * grads[key] * grads[key]
                params[key] -= self.lr * grads[key] / (np.sqrt(h) + EPS)
            else:
                p, g, hf = flat
                t = p.dtype.type
                kernels.rmsprop_update(p, g, hf, t(self.decay_rate), t(1 - self.decay_rate),
                                       t(self.lr), t(EPS))


class Adam(_Optimizer):
    """Adam (Kingma and Ba), in the book's form: the bias correction folded into the step size.

    ``lr_t = lr * sqrt(1 - beta2**iter) / (1 - beta1**iter)``;
    ``m += (1 - beta1) * (grad - m)``; ``v += (1 - beta2) * (grad**2 - v)``;
    ``param -= lr_t * m / (sqrt(v) + 1e-7)``.
    """

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, *, backend="kernel"):
        super().__init__(backend)
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.iter = 0
        self.m = None
        self.v = None

    def update(self, params, grads):
        """Update every array in ``params`` in place from ``grads`` (same keys)."""
        if self.m is None:
            self.m, self.v = _zeros_like(params), _zeros_like(params)
        self.iter += 1
        # A Python float, so that a float32 step stays float32 (the book's np.float64 would
        # promote the step to float64 before the cast back).
        lr_t = float(self.lr * np.sqrt(1.0 - self.beta2 ** self.iter)
                     / (1.0 - self.beta1 ** self.iter))
        for key in params.keys():
            m, v = self.m[key], self.v[key]
            flat = self._fused(params[key], grads[key], m, v)
            if flat is None:
                g = grads[key]
                m += (1 - self.beta1) * (g - m)
                v += (1 - self.beta2) * (g ** 2 - v)
                params[key] -= lr_t * m / (np.sqrt(v) + EPS)
            else:
                p, gf, mf, vf = flat
                t = p.dtype.type
                kernels.adam_update(p, gf, mf, vf, t(1 - self.beta1), t(1 - self.beta2),
                                    t(lr_t), t(EPS))


OPTIMIZERS = {
    "sgd": SGD,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "adagrad": AdaGrad,
    "rmsprop": RMSprop,
    "adam": Adam,
}
"""Optimizer classes by lower-case name, as the book's ``common/trainer.py`` keys them."""
