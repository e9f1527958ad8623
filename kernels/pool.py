"""Max-pooling kernels: the forward pass writes the output and the position of each window's
maximum in one pass; the backward pass sends each gradient to that position.

Arrays are viewed as planes: ``x`` (N * C, H, W), ``out`` and ``arg`` (N * C, OH, OW). ``arg``
holds the flat index ``row * W + column`` of the winning element in its plane. Padding is never
read: each window is clipped to the input, so padding never wins a maximum. Within a window the
first maximum in row-major order wins, and the first NaN wins over any number (as in PyTorch).

Both kernels are parallel over planes: a thread owns whole planes of its output, so the
accumulation of overlapping windows in ``backward`` never races, and it adds each element's
terms in the reference's order (windows from the last to the first), at any thread count.
"""

from numba import prange

from .jit import kernel, sized


@kernel
def _max_plane(x, ph, pw, stride, pad, out, arg):
    h, w = x.shape
    oh, ow = out.shape
    for y in range(oh):
        top = y * stride - pad
        i0 = max(0, top)
        i1 = min(h, top + ph)
        for o in range(ow):
            left = o * stride - pad
            j0 = max(0, left)
            j1 = min(w, left + pw)
            best = x[i0, j0]
            at = i0 * w + j0
            for i in range(i0, i1):
                row = x[i]
                for j in range(j0, j1):
                    v = row[j]
                    # a larger value, or the first NaN: after a NaN nothing compares larger
                    if v > best or (v != v and best == best):
                        best = v
                        at = i * w + j
            out[y, o] = best
            arg[y, o] = at


@kernel
def _max_plane_2x2(x, stride, out, arg):
    """:func:`_max_plane` for 2x2 windows without padding (the book's pooling): the four
    candidates compared in row-major order, with no loop over the window."""
    w = x.shape[1]
    oh, ow = out.shape
    for y in range(oh):
        top = y * stride
        upper = x[top]
        lower = x[top + 1]
        for o in range(ow):
            left = o * stride
            best = upper[left]
            at = 0
            v = upper[left + 1]
            if v > best or (v != v and best == best):
                best = v
                at = 1
            v = lower[left]
            if v > best or (v != v and best == best):
                best = v
                at = w
            v = lower[left + 1]
            if v > best or (v != v and best == best):
                best = v
                at = w + 1
            out[y, o] = best
            arg[y, o] = top * w + left + at


@sized
def max_pool_forward(x, ph, pw, stride, pad, out, arg):
    """``out`` = the maximum of each window of ``x`` (planes (P, H, W)); ``arg`` its index."""
    for plane in prange(x.shape[0]):
        if ph == 2 and pw == 2 and pad == 0:
            _max_plane_2x2(x[plane], stride, out[plane], arg[plane])
        else:
            _max_plane(x[plane], ph, pw, stride, pad, out[plane], arg[plane])


@kernel
def _unpool_plane(dout, arg, dx):
    zero = dx.dtype.type(0)
    flat = dx.reshape(-1)
    for k in range(flat.size):
        flat[k] = zero
    oh, ow = dout.shape
    for y in range(oh - 1, -1, -1):
        for o in range(ow - 1, -1, -1):
            flat[arg[y, o]] += dout[y, o]


@sized
def max_pool_backward(dout, arg, dx):
    """``dx`` (P, H, W) = each ``dout`` (P, OH, OW) added at its window's maximum ``arg``."""
    for plane in prange(dout.shape[0]):
        _unpool_plane(dout[plane], arg[plane], dx[plane])
