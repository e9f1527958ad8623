"""Max-pooling kernels: the forward pass writes the output and the position of each window's
maximum in one pass; the backward pass sends each gradient to that position.

Arrays are viewed as planes: ``x`` (N * C, H, W), ``out`` and ``arg`` (N * C, OH, OW). ``arg``
holds the flat index ``row * W + column`` of the winning element in its plane. Padding is never
read: each window is clipped to the input, so padding never wins a maximum. Within a window the
first maximum in row-major order wins, and the first NaN wins over any number (as in PyTorch).

Both kernels are parallel over planes: a thread owns whole planes of its output, so the
accumulation of overlapping windows in ``backward`` never races, and it adds each element's
terms in the reference's order (windows from the last to the first), at any thread count.
Where windows do not overlap, an element gets at most one term, and they are visited forward.
"""

from numba import prange

from .jit import kernel
from .parallel import sized


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
    """:func:`_max_plane` for 2x2 windows without padding (the book's pooling), with no loop over
    the window. A row of windows is first done by selects, not branches (the comparisons of
    random data would mispredict): the larger of each row's pair (the first on a tie), then the
    larger of the two (the upper on a tie): the first maximum in row-major order. A row that
    holds a NaN is then done again by :func:`_max_plane`'s steps."""
    w = x.shape[1]
    oh, ow = out.shape
    for y in range(oh):
        top = y * stride
        upper = x[top]
        lower = x[top + 1]
        out_row = out[y]
        arg_row = arg[y]
        base = top * w
        nan = False
        for o in range(ow):
            left = o * stride
            a = upper[left]
            b = upper[left + 1]
            c = lower[left]
            d = lower[left + 1]
            nan |= (a != a) | (b != b) | (c != c) | (d != d)
            first = b > a
            m1 = b if first else a
            at1 = 1 if first else 0
            second = d > c
            m2 = d if second else c
            at2 = w + 1 if second else w
            last = m2 > m1
            out_row[o] = m2 if last else m1
            arg_row[o] = base + left + (at2 if last else at1)
        if nan:
            for o in range(ow):
                left = o * stride
                best = upper[left]
                at = 0
                for step in range(1, 4):
                    v = upper[left + 1] if step == 1 else lower[left + step - 2]
                    if v > best or (v != v and best == best):
                        best = v
                        at = 1 if step == 1 else w + step - 2
                out_row[o] = best
                arg_row[o] = base + left + at


@sized
def max_pool_forward(x, ph, pw, stride, pad, out, arg):
    """``out`` = the maximum of each window of ``x`` (planes (P, H, W)); ``arg`` its index."""
    for plane in prange(x.shape[0]):
        if ph == 2 and pw == 2 and pad == 0:
            _max_plane_2x2(x[plane], stride, out[plane], arg[plane])
        else:
            _max_plane(x[plane], ph, pw, stride, pad, out[plane], arg[plane])


@kernel
def _unpool_plane(dout, arg, disjoint, dx):
    zero = dx.dtype.type(0)
    flat = dx.reshape(-1)
    for k in range(flat.size):
        flat[k] = zero
    oh, ow = dout.shape
    if disjoint:  # an element gets at most one term: the order is free, and forward is faster
        for y in range(oh):
            for o in range(ow):
                flat[arg[y, o]] += dout[y, o]
        return
    for y in range(oh - 1, -1, -1):
        for o in range(ow - 1, -1, -1):
            flat[arg[y, o]] += dout[y, o]


@sized
def max_pool_backward(dout, arg, disjoint, dx):
    """``dx`` (P, H, W) = each ``dout`` (P, OH, OW) added at its window's maximum ``arg``.

    ``disjoint``: the windows do not overlap (stride at least the pool size), so each element
    of ``dx`` receives at most one term, and the windows are visited in their order (the
    backward visit, which overlapping windows need for the reference's order, is 2x slower).
    """
    for plane in prange(dout.shape[0]):
        _unpool_plane(dout[plane], arg[plane], disjoint, dx[plane])
