"""Elementwise kernels: ReLU and the logistic sigmoid, forward and backward.

Every kernel works on flat (1-D), C-contiguous arrays of one float dtype and writes into the
outputs it is given. The work is cut into blocks of ``BLOCK`` elements; the parallel builds hand
whole blocks to threads, so each element is computed by the same code at any thread count.
"""

import math

from numba import prange

from .jit import sized

BLOCK = 16384


@sized
def relu_forward(x, out, mask):
    zero = x.dtype.type(0)
    n = x.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        for i in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            v = x[i]
            m = v <= zero  # NaN compares False, so NaN passes through, as in the book
            mask[i] = m
            out[i] = zero if m else v


@sized
def relu_backward(dout, mask, dx):
    zero = dout.dtype.type(0)
    n = dout.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        for i in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            dx[i] = zero if mask[i] else dout[i]


@sized
def sigmoid_forward(x, out):
    one = x.dtype.type(1)
    n = x.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        for i in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            v = x[i]
            # exp of a non-positive number never overflows: the stable two-branch form.
            e = math.exp(-abs(v))
            r = one / (one + e)
            out[i] = r if v >= 0 else e * r


@sized
def sigmoid_backward(dout, out, dx):
    one = out.dtype.type(1)
    n = out.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        for i in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            y = out[i]
            dx[i] = dout[i] * (one - y) * y
