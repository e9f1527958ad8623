"""Elementwise kernels: ReLU and the logistic sigmoid, forward and backward.

Every kernel works on flat (1-D), C-contiguous arrays of one size and one float dtype (``mask``:
bool), validated by the caller, and writes into the outputs it is given. The work is cut into blocks
of ``BLOCK`` elements, and each block is handed to a ``_*_block`` helper whose loop is a plain
``range(n)`` over its slices (LLVM vectorises that form; an index computed from a block number keeps
numba's negative-index check in the loop and stays scalar). The parallel builds hand whole blocks to
threads, so each element is computed by the same code, at the same position in its block, at any
thread count.

``mask`` arrays are ``bool``. The sigmoid uses :func:`.fastexp.fast_exp`, a vectorisable ``exp``
within 2 ulp.
"""

from numba import prange

from .fastexp import fast_exp
from .jit import kernel
from .parallel import sized

BLOCK = 16384


@kernel
def _relu_forward_block(x, out, mask):
    zero = x.dtype.type(0)
    for i in range(x.size):
        v = x[i]
        m = v <= zero  # NaN compares False, so NaN passes through, as in the book
        mask[i] = m
        out[i] = zero if m else v


@sized
def relu_forward(x, out, mask):
    """``out = max(x, 0)`` and ``mask = x <= 0`` (NaN is not masked: it passes through).

    Writes ``out`` and ``mask``. The caller has validated the inputs: flat, C-contiguous, of one
    size, ``x`` and ``out`` of one float dtype, ``mask`` bool. ``x.size`` picks the serial or the
    threaded build.
    """
    n = x.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        _relu_forward_block(x[lo:hi], out[lo:hi], mask[lo:hi])


@kernel
def _relu_backward_block(dout, mask, dx):
    zero = dout.dtype.type(0)
    for i in range(dout.size):
        dx[i] = zero if mask[i] else dout[i]


@sized
def relu_backward(dout, mask, dx):
    """``dx = 0 where mask else dout``: the gradient passes where ``x > 0`` or ``x`` is NaN.

    Writes ``dx``. The caller has validated the inputs: flat, C-contiguous, of one size, ``dout``
    and ``dx`` of one float dtype, ``mask`` bool (from :func:`relu_forward`). ``dout.size`` picks
    the serial or the threaded build.
    """
    n = dout.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        _relu_backward_block(dout[lo:hi], mask[lo:hi], dx[lo:hi])


@kernel
def _sigmoid_forward_block(x, out, tail):
    zero = x.dtype.type(0)
    one = x.dtype.type(1)
    for i in range(x.size):
        v = x[i]
        # exp of a non-positive number never overflows: the stable two-branch form.
        e = fast_exp(-abs(v))
        r = one / (one + e)
        t = e * r
        out[i] = r if v >= zero else t
        tail[i] = t


@sized
def sigmoid_forward(x, out, tail):
    """``out = sigmoid(x)`` and ``tail = sigmoid(-|x|) = min(out, 1 - out)``.

    ``tail`` is exact where ``1 - out`` computed from a rounded ``out`` is not (``out`` near 1);
    :func:`sigmoid_backward` uses it, since ``out * (1 - out) == tail * (1 - tail)``.

    Writes ``out`` and ``tail``. The caller has validated the inputs: flat, C-contiguous, of one
    size and one float dtype. ``x.size`` picks the serial or the threaded build.
    """
    n = x.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        _sigmoid_forward_block(x[lo:hi], out[lo:hi], tail[lo:hi])


@kernel
def _sigmoid_backward_block(dout, tail, dx):
    one = tail.dtype.type(1)
    for i in range(tail.size):
        t = tail[i]
        dx[i] = dout[i] * t * (one - t)


@sized
def sigmoid_backward(dout, tail, dx):
    """``dx = dout * out * (1 - out)``, computed as ``dout * tail * (1 - tail)``: the same value,
    to full relative precision also where ``out`` is near 1.

    Writes ``dx``. The caller has validated the inputs: flat, C-contiguous, of one size and one
    float dtype, ``tail`` from :func:`sigmoid_forward`. ``dout.size`` picks the serial or the
    threaded build.
    """
    n = tail.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        _sigmoid_backward_block(dout[lo:hi], tail[lo:hi], dx[lo:hi])
