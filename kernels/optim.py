"""Fused optimizer updates: one pass over a parameter, its gradient and its state.

NumPy runs the book's update rules one operation at a time, each a pass over memory with a new
temporary (Adam: about ten). These kernels read each element once and write the parameter and the
state in place, with the book's operations in the book's order, so results match NumPy's to the
last bit. No fastmath: contracting into fused multiply-adds would change the rounding.

Every kernel updates ``param`` and its state arrays in place, and writes nothing else. The caller
(:mod:`fastbp.optim`) has checked the inputs: flat (1-D), C-contiguous arrays of one size and one
float dtype, ``param`` writeable; scalars already cast to that dtype, so float32 stays float32. The
size of ``param`` (argument 0) picks the serial or the threaded build. Work is cut into blocks of
``BLOCK`` elements; the threaded builds hand whole blocks to threads, and every element is
independent. Each block is sliced and then indexed from 0: LLVM vectorises that loop, but not one
indexed from a computed start (about 4x slower here).
"""

import math

from numba import prange

from .parallel import sized

BLOCK = 16384


@sized
def sgd_update(param, grad, lr):
    """``param -= lr * grad``. Writes ``param``."""
    n = param.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        p, g = param[lo:hi], grad[lo:hi]
        for i in range(hi - lo):
            p[i] -= lr * g[i]


@sized
def momentum_update(param, grad, v, momentum, lr):
    """``v = momentum * v - lr * grad``; ``param += v``. Writes ``param`` and ``v``."""
    n = param.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        p, g, vb = param[lo:hi], grad[lo:hi], v[lo:hi]
        for i in range(hi - lo):
            vi = momentum * vb[i] - lr * g[i]
            vb[i] = vi
            p[i] += vi


@sized
def nesterov_update(param, grad, v, momentum, lr, momentum_sq, lr_ahead):
    """The book's Nesterov step, ``momentum_sq = momentum**2``, ``lr_ahead = (1 + momentum) * lr``.

    ``v = momentum * v - lr * grad``; ``param += momentum_sq * v``; ``param -= lr_ahead * grad``.
    Writes ``param`` and ``v``.
    """
    n = param.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        p, g, vb = param[lo:hi], grad[lo:hi], v[lo:hi]
        for i in range(hi - lo):
            gi = g[i]
            vi = vb[i] * momentum - lr * gi
            vb[i] = vi
            p[i] = (p[i] + momentum_sq * vi) - lr_ahead * gi


@sized
def adagrad_update(param, grad, h, lr, eps):
    """``h += grad**2``; ``param -= lr * grad / (sqrt(h) + eps)``. Writes ``param`` and ``h``."""
    n = param.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        p, g, hb = param[lo:hi], grad[lo:hi], h[lo:hi]
        for i in range(hi - lo):
            gi = g[i]
            s = hb[i] + gi * gi
            hb[i] = s
            p[i] -= lr * gi / (math.sqrt(s) + eps)


@sized
def rmsprop_update(param, grad, h, decay_rate, one_minus_decay, lr, eps):
    """``h = decay * h + (1 - decay) * grad**2``; ``param -= lr * grad / (sqrt(h) + eps)``.
    Writes ``param`` and ``h``."""
    n = param.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        p, g, hb = param[lo:hi], grad[lo:hi], h[lo:hi]
        for i in range(hi - lo):
            gi = g[i]
            s = hb[i] * decay_rate + one_minus_decay * gi * gi
            hb[i] = s
            p[i] -= lr * gi / (math.sqrt(s) + eps)


@sized
def adam_update(param, grad, m, v, one_minus_beta1, one_minus_beta2, lr_t, eps):
    """The book's Adam step, with the bias correction folded into ``lr_t``.

    ``m += (1 - beta1) * (grad - m)``; ``v += (1 - beta2) * (grad**2 - v)``;
    ``param -= lr_t * m / (sqrt(v) + eps)``. Writes ``param``, ``m`` and ``v``.
    """
    n = param.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        p, g, mb, vb = param[lo:hi], grad[lo:hi], m[lo:hi], v[lo:hi]
        for i in range(hi - lo):
            gi = g[i]
            mi = mb[i] + one_minus_beta1 * (gi - mb[i])
            vi = vb[i] + one_minus_beta2 * (gi * gi - vb[i])
            mb[i] = mi
            vb[i] = vi
            p[i] -= lr_t * mi / (math.sqrt(vi) + eps)
