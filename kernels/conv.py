"""Convolution kernels: ``im2col`` and ``col2im`` in two layouts, and the passes around the
matrix products of the ``Convolution`` layer (which run in BLAS, called from the layer).

Two column layouts:

* the book's (``im2col``/``col2im``, behind :mod:`fastbp.util`): one (N * OH * OW, C * FH * FW)
  matrix, a row per output position (n, oh, ow), a column per window element (c, fh, fw);
* the layer's (``unfold``/``fold``): per image a (C * FH * FW, OH * OW) matrix, stacked to
  (N, K, P). Copying a window row of the input is then a run of OW elements (a contiguous one at
  stride 1), and the products ``W (FN, K) @ col[n] (K, P)`` give the output in (N, FN, OH, OW)
  order directly, with no transpose. The layer unfolds a few images at a time, into a buffer
  that stays in cache, and multiplies them at once.

Every kernel is parallel over images (``prange``): a thread owns whole images of its outputs, so
the accumulations of ``col2im``/``fold`` never race, and each element is summed in the same
order at any thread count: the book's order (window offsets (fh, fw) ascending), so the results
are bit-identical to the NumPy reference's ``col2im``.

The fused block ``conv_relu_pool`` / ``filter_grads(pooled=True)`` is the first block of the book's
``SimpleConvNet`` (Convolution at stride 1, Relu, 2x2 max Pooling at stride 2) in one pass, with
no column matrix: see :func:`conv_relu_pool`.
"""

import numpy as np
from numba import prange

from .jit import kernel
from .parallel import sized


@kernel
def _im2col_image(x, fh, fw, stride, pad, oh, ow, col):
    """One image: ``x`` (C, H, W) into its rows ``col`` (OH * OW, C * FH * FW)."""
    c_count, h, w = x.shape
    zero = col.dtype.type(0)
    for y in range(oh):
        for xo in range(ow):
            row = col[y * ow + xo]
            left = xo * stride - pad
            j0 = max(0, -left)  # window columns [j0, j1) fall inside the image
            j1 = min(fw, w - left)
            for c in range(c_count):
                for i in range(fh):
                    k = (c * fh + i) * fw
                    yy = y * stride + i - pad
                    if yy < 0 or yy >= h or j1 <= j0:
                        for j in range(fw):
                            row[k + j] = zero
                        continue
                    for j in range(j0):
                        row[k + j] = zero
                    src = x[c, yy]
                    for j in range(j0, j1):
                        row[k + j] = src[left + j]
                    for j in range(j1, fw):
                        row[k + j] = zero


@sized
def im2col(x, fh, fw, stride, pad, col):
    """``col`` (N * OH * OW, C * FH * FW) = every window of ``x`` (N, C, H, W), zero-padded."""
    n = x.shape[0]
    oh = (x.shape[2] + 2 * pad - fh) // stride + 1
    ow = (x.shape[3] + 2 * pad - fw) // stride + 1
    p = oh * ow
    for image in prange(n):
        _im2col_image(x[image], fh, fw, stride, pad, oh, ow, col[image * p:(image + 1) * p])


@kernel
def _col2im_image(col, fh, fw, stride, pad, oh, ow, dx):
    """One image: add the rows ``col`` (OH * OW, C * FH * FW) into ``dx`` (C, H, W), zeroed here.

    Windows are visited from the last to the first, so that each element receives its terms in
    the order of the book's ``col2im`` (window offsets ascending).
    """
    c_count, h, w = dx.shape
    zero = dx.dtype.type(0)
    for c in range(c_count):
        for yy in range(h):
            for xx in range(w):
                dx[c, yy, xx] = zero
    for y in range(oh - 1, -1, -1):
        for xo in range(ow - 1, -1, -1):
            row = col[y * ow + xo]
            left = xo * stride - pad
            j0 = max(0, -left)
            j1 = min(fw, w - left)
            for c in range(c_count):
                for i in range(fh):
                    yy = y * stride + i - pad
                    if yy < 0 or yy >= h:
                        continue
                    k = (c * fh + i) * fw
                    dst = dx[c, yy]
                    for j in range(j0, j1):
                        dst[left + j] += row[k + j]


@sized
def col2im(col, fh, fw, stride, pad, dx):
    """``dx`` (N, C, H, W) = the sum of the windows in ``col`` (N * OH * OW, C * FH * FW) at their
    places; values on the padding are dropped."""
    n = dx.shape[0]
    oh = (dx.shape[2] + 2 * pad - fh) // stride + 1
    ow = (dx.shape[3] + 2 * pad - fw) // stride + 1
    p = oh * ow
    for image in prange(n):
        _col2im_image(col[image * p:(image + 1) * p], fh, fw, stride, pad, oh, ow, dx[image])


@kernel
def _inside(n_out, offset, stride, size):
    """Output positions ``[lo, hi)`` whose input index ``o * stride + offset`` lies in
    ``[0, size)``; ``0 <= lo <= hi <= n_out`` (``lo = hi = n_out`` where the padding on the left
    covers every position)."""
    lo = 0 if offset >= 0 else min(n_out, (-offset + stride - 1) // stride)
    last = size - 1 - offset  # the largest o * stride allowed
    hi = 0 if last < 0 else min(n_out, last // stride + 1)
    return lo, max(lo, hi)


@kernel
def _unfold_image(x, fh, fw, stride, pad, oh, ow, col):
    """One image: ``x`` (C, H, W) into ``col`` (C * FH * FW [+ 1], OH * OW)."""
    c_count, h, w = x.shape
    zero = col.dtype.type(0)
    one = col.dtype.type(1)
    for k in range(c_count * fh * fw, col.shape[0]):
        ones = col[k]
        for q in range(ones.size):
            ones[q] = one
    for c in range(c_count):
        for i in range(fh):
            for j in range(fw):
                dst = col[(c * fh + i) * fw + j]
                off = j - pad
                lo, hi = _inside(ow, off, stride, w)
                for y in range(oh):
                    yy = y * stride + i - pad
                    row = dst[y * ow:(y + 1) * ow]
                    if yy < 0 or yy >= h:
                        for o in range(ow):
                            row[o] = zero
                        continue
                    src = x[c, yy]
                    for o in range(lo):
                        row[o] = zero
                    if stride == 1:
                        # slices indexed from 0: no negative-index check, so LLVM vectorises
                        part = row[lo:hi]
                        run = src[lo + off:hi + off]
                        for t in range(part.size):
                            part[t] = run[t]
                    else:
                        for o in range(lo, hi):
                            row[o] = src[o * stride + off]
                    for o in range(hi, ow):
                        row[o] = zero


@sized
def unfold(x, fh, fw, stride, pad, col):
    """``col[n]`` (C * FH * FW, OH * OW) = the windows of image ``n`` of ``x`` (N, C, H, W), one
    column per output position: the layer's layout (see the module docstring).

    ``col`` may have one more row, (N, C * FH * FW + 1, OH * OW): it is set to 1. The layer
    puts the bias beside the filters, so one product adds it (and its gradient gives ``db``).
    """
    oh = (x.shape[2] + 2 * pad - fh) // stride + 1
    ow = (x.shape[3] + 2 * pad - fw) // stride + 1
    for image in prange(x.shape[0]):
        _unfold_image(x[image], fh, fw, stride, pad, oh, ow, col[image])


@kernel
def _fold_image(col, fh, fw, stride, pad, oh, ow, dx):
    """One image: ``dx`` (C, H, W) = the columns of ``col`` (C * FH * FW, OH * OW) added at their
    places, window offsets ascending (the reference's order)."""
    c_count, h, w = dx.shape
    zero = dx.dtype.type(0)
    for c in range(c_count):
        plane = dx[c]
        for yy in range(h):
            for xx in range(w):
                plane[yy, xx] = zero
        for i in range(fh):
            for j in range(fw):
                src = col[(c * fh + i) * fw + j]
                off = j - pad
                lo, hi = _inside(ow, off, stride, w)
                for y in range(oh):
                    yy = y * stride + i - pad
                    if yy < 0 or yy >= h:
                        continue
                    dst = plane[yy]
                    row = src[y * ow:(y + 1) * ow]
                    if stride == 1:  # as in _unfold_image: slices indexed from 0
                        part = dst[lo + off:hi + off]
                        run = row[lo:hi]
                        for t in range(run.size):
                            part[t] += run[t]
                    else:
                        for o in range(lo, hi):
                            dst[o * stride + off] += row[o]


@sized
def fold(col, fh, fw, stride, pad, dx):
    """The adjoint of :func:`unfold`: ``dx`` (N, C, H, W) from ``col`` (N, C * FH * FW, OH * OW)."""
    oh = (dx.shape[2] + 2 * pad - fh) // stride + 1
    ow = (dx.shape[3] + 2 * pad - fw) // stride + 1
    for image in prange(dx.shape[0]):
        _fold_image(col[image], fh, fw, stride, pad, oh, ow, dx[image])


# --- the fused block: Convolution (stride 1) -> Relu -> 2x2 max Pooling (stride 2) -----------
#
# An image ``xp`` (C, Hp, Wp), already padded, is read as one flat vector. For stride 1 the
# convolution output at (y, o) is sum over taps (c, i, j) of W[c, i, j] * xp[c, y + i, o + j],
# and xp[c, y + i, o + j] is flat[y * Wp + o + tap] with tap = (c * Hp + i) * Wp + j. So one
# filter's output plane, laid out with row stride Wp, is a sum of shifted copies of the flat
# image: every tap is one long contiguous multiply-add of ``span`` elements (the columns from
# 2 * PW to Wp of each row are computed and not used: cheap, and the loop vectorises whole).
# Only the rows and columns that the pooling reads are computed (2 * PH and 2 * PW).
#
# The runs are rounded up to a multiple of SPAN_ROUND elements, so that LLVM's vectorised loop
# covers them whole: otherwise its scalar remainder (up to 31 elements in float32) took as long
# as the rest at DeepConvNet's 7x7 maps (a run of 61). The extra positions are computed and
# dropped: a forward pass reads them from the next image (never past the batch's end: the last
# image keeps its exact run, as do the last few where images are smaller than SPAN_ROUND
# elements, see _image_run), dW multiplies them by zeros (a finite batch: the images read into
# are checked too), and dx adds them into a buffer of its own.

SPAN_ROUND = 32
"""The direct kernels' runs are rounded up to a multiple of this many elements."""


@kernel
def _rounded(span):
    """``span`` rounded up to a multiple of :data:`SPAN_ROUND`."""
    return (span + SPAN_ROUND - 1) // SPAN_ROUND * SPAN_ROUND


@kernel
def _image_run(exact, taps, n, n_img, size):
    """The run that reads image ``n`` of ``n_img`` images of ``size`` elements each (flat, from
    its start to the array's end) at the offsets ``taps`` (ascending): ``exact`` rounded up
    where the rounded run from the last tap stays inside the array, else ``exact``. The last
    image keeps its exact run, and so do the last few where images are smaller than
    :data:`SPAN_ROUND` elements (nothing past the batch is ever read), and with no taps (no
    channels)."""
    if taps.size == 0:
        return exact
    rounded = _rounded(exact)
    return rounded if taps[taps.size - 1] + rounded <= (n_img - n) * size else exact


@kernel
def tap_offsets(c_count, fh, fw, hp, wp, taps):
    """``taps[(c * FH + i) * FW + j]`` = the flat offset ``(c * Hp + i) * Wp + j`` of tap
    (c, i, j) in an image (C, Hp, Wp)."""
    for c in range(c_count):
        for i in range(fh):
            for j in range(fw):
                taps[(c * fh + i) * fw + j] = (c * hp + i) * wp + j


@kernel(fastmath=True)
def _correlate_pair(xi, wa, wb, ba, bb, taps, acca, accb):
    """``acca`` (span,) = ``ba`` + sum over taps t of ``wa[t] * xi[taps[t]:taps[t] + span]``,
    and ``accb`` likewise from ``wb`` and ``bb``: two filters' planes at once.

    Four taps per pass, so that each accumulator is loaded and stored once per four products,
    and each load of the image's runs serves both filters (1.2-1.7x faster than one filter at
    a time at the book's shapes). The order of the terms is fixed by the code, so every build
    gives the same bits. A lone filter is passed as both (its second plane is thrown away).
    The inner loop has the shape of :func:`_scatter_taps`'s: written once in a helper that both
    call, numba compiled a call per pass, and the forward pass ran 1.3-2x slower, ``dx``
    1.1-1.7x (at DeepConvNet's layers)."""
    span = acca.size
    for q in range(span):
        acca[q] = ba
        accb[q] = bb
    k = taps.size
    t = 0
    while t + 4 <= k:
        a0 = wa[t]
        a1 = wa[t + 1]
        a2 = wa[t + 2]
        a3 = wa[t + 3]
        b0 = wb[t]
        b1 = wb[t + 1]
        b2 = wb[t + 2]
        b3 = wb[t + 3]
        s0 = xi[taps[t]:taps[t] + span]
        s1 = xi[taps[t + 1]:taps[t + 1] + span]
        s2 = xi[taps[t + 2]:taps[t + 2] + span]
        s3 = xi[taps[t + 3]:taps[t + 3] + span]
        for q in range(span):
            v0 = s0[q]
            v1 = s1[q]
            v2 = s2[q]
            v3 = s3[q]
            acca[q] += a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3
            accb[q] += b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3
        t += 4
    while t < k:
        a0 = wa[t]
        b0 = wb[t]
        s0 = xi[taps[t]:taps[t] + span]
        for q in range(span):
            acca[q] += a0 * s0[q]
            accb[q] += b0 * s0[q]
        t += 1


@kernel
def _relu_pool_plane(acc, wp, out, code):
    """Relu, then 2x2 max pooling at stride 2, of the plane ``acc`` (row stride ``wp``).

    ``code`` gets the winner's place in its window (0, 1: upper row; 2, 3: lower row). The
    maximum is taken over the convolution's values, which picks the same element as a maximum
    over their Relu (the first maximum in row-major order, as :mod:`.pool`; the first NaN wins)
    wherever the window's maximum is positive or NaN, the only windows whose gradient is
    nonzero. Selects, not branches, written out as in :func:`.pool._max_plane_2x2`: with the
    selects in a shared helper function, which numba compiles as a call, the 2x2 pooling
    forward ran 12-25% slower in float32."""
    zero = out.dtype.type(0)
    oh, ow = out.shape
    for y in range(oh):
        upper = acc[2 * y * wp:]
        lower = acc[(2 * y + 1) * wp:]
        out_row = out[y]
        code_row = code[y]
        nan = False
        for o in range(ow):
            left = 2 * o
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
            at2 = 3 if second else 2
            last = m2 > m1
            best = m2 if last else m1
            out_row[o] = zero if best <= zero else best
            code_row[o] = at2 if last else at1
        if nan:
            for o in range(ow):
                left = 2 * o
                best = upper[left]
                at = 0
                for step in range(1, 4):
                    v = upper[left + step] if step == 1 else lower[left + step - 2]
                    if v > best or (v != v and best == best):
                        best = v
                        at = step
                out_row[o] = zero if best <= zero else best
                code_row[o] = at


@sized
def conv_relu_pool(out, code, xp, W, b, taps):
    """The forward pass of Convolution (stride 1) -> Relu -> 2x2 max Pooling (stride 2).

    ``xp`` (N, C, Hp, Wp) is the padded input, ``W`` (FN, C * FH * FW) the filters, ``b`` (FN,),
    ``taps`` (C * FH * FW,) from :func:`tap_offsets`. Writes ``out`` (N, FN, PH, PW), the pooled
    output (``2 * PH <= Hp - FH + 1``, likewise PW), and ``code`` (uint8, same shape), each
    window's winner (see :func:`_relu_pool_plane`). Parallel over images.
    """
    n_img, wp = xp.shape[0], xp.shape[3]
    size = xp.shape[1] * xp.shape[2] * xp.shape[3]  # (xp[0] is out of bounds for N = 0)
    fn = W.shape[0]
    exact = (2 * out.shape[2] - 1) * wp + 2 * out.shape[3]
    for n in prange(n_img):
        span = _image_run(exact, taps, n, n_img, size)
        acc = np.empty((2, max(span, 2 * out.shape[2] * wp)), dtype=out.dtype)
        xi = xp[n:].reshape(xp[n:].size)
        for f in range(0, fn, 2):  # filters in pairs; an odd last one paired with itself
            g = min(f + 1, fn - 1)
            _correlate_pair(xi, W[f], W[g], b[f], b[g], taps, acc[0, :span], acc[1, :span])
            _relu_pool_plane(acc[0], wp, out[n, f], code[n, f])
            if g > f:
                _relu_pool_plane(acc[1], wp, out[n, g], code[n, g])


FILTER_BLOCK = 4
""":func:`filter_grads` works on this many filters at a time: a pass over an image's
taps then serves four filters' sums, and the blocks are what the threads share out."""


@kernel
def _unpool_relu_plane(dout, out, code, wp, d):
    """``d`` (span,), zeroed here = the gradient at the convolution's output (row stride
    ``wp``): each window's ``dout`` at its winner where Relu let it through (``out`` positive or
    NaN), nothing elsewhere. Returns the sum of what was placed (the plane's share of ``db``)."""
    zero = d.dtype.type(0)
    for q in range(d.size):
        d[q] = zero
    total = zero
    oh, ow = out.shape
    for y in range(oh):
        for o in range(ow):
            if not (out[y, o] <= zero):
                k = code[y, o]
                g = dout[y, o]
                total += g
                d[(2 * y + (k >> 1)) * wp + 2 * o + (k & 1)] = g
    return total


@kernel(fastmath=True)
def _correlate_grads(xi, taps, span, d0, d1, d2, d3, acc):
    """``acc[r, t] += sum over q < span of d_r[q] * xi[taps[t] + q]`` for the four planes
    ``d_r`` (row stride ``wp``, zero beyond the output's columns in each row) of an image ``xi``
    that holds no inf or NaN.

    Each tap is one dot product over the whole span, the zeros between the rows included: they
    add exact zeros. Two taps per pass, so that each load of the planes serves eight sums
    (1.2-1.6x faster than a tap at a time at the book's shapes)."""
    zero = acc.dtype.type(0)
    k = taps.size
    t = 0
    while t + 2 <= k:
        s0 = zero
        s1 = zero
        s2 = zero
        s3 = zero
        u0 = zero
        u1 = zero
        u2 = zero
        u3 = zero
        xr = xi[taps[t]:taps[t] + span]
        xs = xi[taps[t + 1]:taps[t + 1] + span]
        for q in range(span):
            v = xr[q]
            w = xs[q]
            e0 = d0[q]
            e1 = d1[q]
            e2 = d2[q]
            e3 = d3[q]
            s0 += e0 * v
            s1 += e1 * v
            s2 += e2 * v
            s3 += e3 * v
            u0 += e0 * w
            u1 += e1 * w
            u2 += e2 * w
            u3 += e3 * w
        acc[0, t] += s0
        acc[1, t] += s1
        acc[2, t] += s2
        acc[3, t] += s3
        acc[0, t + 1] += u0
        acc[1, t + 1] += u1
        acc[2, t + 1] += u2
        acc[3, t + 1] += u3
        t += 2
    if t < k:
        s0 = zero
        s1 = zero
        s2 = zero
        s3 = zero
        xr = xi[taps[t]:taps[t] + span]
        for q in range(span):
            v = xr[q]
            s0 += d0[q] * v
            s1 += d1[q] * v
            s2 += d2[q] * v
            s3 += d3[q] * v
        acc[0, t] += s0
        acc[1, t] += s1
        acc[2, t] += s2
        acc[3, t] += s3


@kernel(fastmath=True)
def _correlate_grads_rows(xi, taps, wp, rows, cols, d0, d1, d2, d3, acc):
    """:func:`_correlate_grads` row by row, a tap at a time, for an image that holds an inf or
    a NaN: an image value that no window of the tap reaches is never multiplied (0 * inf is
    NaN, which the layers would not give)."""
    zero = acc.dtype.type(0)
    for t in range(taps.size):
        s0 = zero
        s1 = zero
        s2 = zero
        s3 = zero
        for y in range(rows):
            base = y * wp
            xr = xi[taps[t] + base:taps[t] + base + cols]
            for o in range(cols):
                v = xr[o]
                s0 += d0[base + o] * v
                s1 += d1[base + o] * v
                s2 += d2[base + o] * v
                s3 += d3[base + o] * v
        acc[0, t] += s0
        acc[1, t] += s1
        acc[2, t] += s2
        acc[3, t] += s3


# --- the Convolution layer's direct path (stride 1, few taps) ---------------------------------
#
# The same flat-image correlation as the fused block, for the whole output: used by the layer
# where the filters have few taps (C * FH * FW), where BLAS's products of a column matrix are
# thin and the copies around them cost more than the arithmetic.


@sized
def correlate(out, xp, W, b, taps):
    """Convolution's forward pass at stride 1: ``out`` (N, FN, OH, OW) from the padded input
    ``xp`` (N, C, Hp, Wp), the filters ``W`` (FN, C * FH * FW), the bias ``b`` (FN,) and
    ``taps`` from :func:`tap_offsets`. Parallel over images."""
    n_img, wp = xp.shape[0], xp.shape[3]
    size = xp.shape[1] * xp.shape[2] * xp.shape[3]  # (xp[0] is out of bounds for N = 0)
    fn = W.shape[0]
    oh, ow = out.shape[2], out.shape[3]
    exact = (oh - 1) * wp + ow
    for n in prange(n_img):
        span = _image_run(exact, taps, n, n_img, size)
        acc = np.empty((2, span), dtype=out.dtype)
        xi = xp[n:].reshape(xp[n:].size)
        for f in range(0, fn, 2):  # filters in pairs; an odd last one paired with itself
            g = min(f + 1, fn - 1)
            _correlate_pair(xi, W[f], W[g], b[f], b[g], taps, acc[0], acc[1])
            for r in range(g - f + 1):
                plane = out[n, f + r]
                for y in range(oh):
                    row = acc[r, y * wp:y * wp + ow]
                    dst = plane[y]
                    for o in range(ow):
                        dst[o] = row[o]


@kernel(fastmath=True)
def _spread_plane(dout, wp, d):
    """Copy the plane ``dout`` (OH, OW) into ``d`` at row stride ``wp`` (the columns between
    its rows are left as they are: zero). Returns the plane's sum, in the order this code fixes
    (vectorised: in float32 the sum in order took a third of the block's ``dW`` time). An inf
    or a NaN in the plane makes the sum inf or NaN in any order."""
    oh, ow = dout.shape
    total = d.dtype.type(0)
    for y in range(oh):
        src = dout[y]
        dst = d[y * wp:y * wp + ow]
        for o in range(ow):
            dst[o] = src[o]
            total += src[o]
    return total


@sized
def filter_grads(dout, out, code, pooled, xp, taps, rows, cols, finite, dW, db):
    """Convolution's ``dW`` (FN, C * FH * FW) and ``db`` (FN,) at stride 1 from the padded input
    ``xp`` (N, C, Hp, Wp), over the ``rows`` x ``cols`` output positions.

    ``pooled`` False (the layer's direct path): ``dout`` (N, FN, rows, cols) is the gradient at
    the convolution's output, and ``out`` and ``code`` are not read. ``pooled`` True (the fused
    block, :func:`conv_relu_pool`): ``dout`` (N, FN, PH, PW) is the gradient at the pooled
    output, ``out`` and ``code`` the block's forward results, and ``rows``, ``cols`` are
    ``2 * PH``, ``2 * PW``. ``finite``: ``xp`` holds no inf or NaN (else
    :func:`_correlate_grads_rows` goes row by row).

    Parallel over blocks of :data:`FILTER_BLOCK` filters: a thread owns whole rows of ``dW``, and
    adds the images in order, so the sums do not depend on the thread count.
    """
    n_img, c_count, hp, wp = xp.shape
    size = c_count * hp * wp
    fn, k = dW.shape
    exact = (rows - 1) * wp + cols
    blocks = (fn + FILTER_BLOCK - 1) // FILTER_BLOCK
    for blk in prange(blocks):
        f0 = blk * FILTER_BLOCK
        count = min(fn, f0 + FILTER_BLOCK) - f0
        d = np.zeros((FILTER_BLOCK, _rounded(exact)), dtype=dW.dtype)  # zero past ``exact``
        acc = np.zeros((FILTER_BLOCK, k), dtype=dW.dtype)
        bias = np.zeros(FILTER_BLOCK, dtype=dW.dtype)
        for n in range(n_img):
            for r in range(count):
                if pooled:
                    bias[r] += _unpool_relu_plane(dout[n, f0 + r], out[n, f0 + r],
                                                  code[n, f0 + r], wp, d[r])
                else:
                    bias[r] += _spread_plane(dout[n, f0 + r], wp, d[r])
            if finite:  # the images a rounded run reads into are finite too: their values
                span = _image_run(exact, taps, n, n_img, size)  # meet zeros (see SPAN_ROUND)
                _correlate_grads(xp[n:].reshape(xp[n:].size), taps, span, d[0], d[1], d[2], d[3],
                                 acc)
            else:
                _correlate_grads_rows(xp[n].reshape(size), taps, wp, rows, cols,
                                      d[0], d[1], d[2], d[3], acc)
        for r in range(count):
            for t in range(k):
                dW[f0 + r, t] = acc[r, t]
            db[f0 + r] = bias[r]


@kernel
def _block_weights(W, f0, count, t):
    """The weights of tap ``t`` for filters ``f0 .. f0 + 3``; zero for those past ``count``."""
    zero = W.dtype.type(0)
    return (W[f0, t], W[f0 + 1, t] if count > 1 else zero, W[f0 + 2, t] if count > 2 else zero,
            W[f0 + 3, t] if count > 3 else zero)


@kernel(fastmath=True)
def _scatter_taps(W, f0, count, taps, c_count, oh, ow, wp, span, finite, d, dxi):
    """``dxi[taps[t] + q] += sum over r < 4 of W[f0 + r, t] * d[r, q]``: the windows' gradients
    of up to four filters added back into the flat padded image ``dxi`` of ``c_count`` channels.
    Rows ``r >= count`` of ``d`` must be zero (their weights are taken as zero).

    With ``finite`` (no inf or NaN in ``W`` or in ``d``) over the whole span, the zeros between
    the rows included, and two channels per pass (the same tap of channels c and c + 1 writes
    two disjoint runs, so each load of the planes serves both: 1.2-1.35x faster at
    DeepConvNet's shapes); each element still receives its terms in tap order. ``span``: the
    runs' length, at least ``(oh - 1) * wp + ow`` (``d`` is zero past that, and ``dxi`` has room
    for it). Otherwise row by row, a tap at a time (as :func:`_correlate_grads_rows`)."""
    d0 = d[0]
    d1 = d[1]
    d2 = d[2]
    d3 = d[3]
    k = taps.size
    if finite:  # one loop from 0: LLVM vectorises it (row by row it did not, 3-5x slower)
        per_channel = k // c_count if c_count else 0
        for c in range(0, c_count - 1, 2):
            for j in range(per_channel):
                ta = c * per_channel + j
                tb = ta + per_channel
                a0, a1, a2, a3 = _block_weights(W, f0, count, ta)
                b0, b1, b2, b3 = _block_weights(W, f0, count, tb)
                dst_a = dxi[taps[ta]:taps[ta] + span]
                dst_b = dxi[taps[tb]:taps[tb] + span]
                for q in range(span):
                    e0 = d0[q]
                    e1 = d1[q]
                    e2 = d2[q]
                    e3 = d3[q]
                    dst_a[q] += a0 * e0 + a1 * e1 + a2 * e2 + a3 * e3
                    dst_b[q] += b0 * e0 + b1 * e1 + b2 * e2 + b3 * e3
        for t in range((c_count - c_count % 2) * per_channel, k):  # an odd last channel
            w0, w1, w2, w3 = _block_weights(W, f0, count, t)
            dst = dxi[taps[t]:taps[t] + span]
            for q in range(span):
                dst[q] += w0 * d0[q] + w1 * d1[q] + w2 * d2[q] + w3 * d3[q]
    else:
        for t in range(k):
            w0, w1, w2, w3 = _block_weights(W, f0, count, t)
            for y in range(oh):
                base = y * wp
                dst = dxi[taps[t] + base:taps[t] + base + ow]
                for o in range(ow):
                    q = base + o
                    dst[o] += w0 * d0[q] + w1 * d1[q] + w2 * d2[q] + w3 * d3[q]


@sized
def correlate_dx(dout, W, taps, finite, dxp):
    """Convolution's ``dx`` at stride 1: ``dxp`` (N, C, Hp, Wp), the gradient of the padded
    input (zeroed here; the caller drops the padding), from ``dout`` (N, FN, OH, OW) and the
    filters ``W`` (FN, C * FH * FW). ``finite``: ``W`` holds no inf or NaN; ``dout``'s planes
    are checked here, four at a time (see :func:`_scatter_taps`). Parallel over images: a
    thread owns whole images of ``dxp``, and adds the filters in order, four at a time."""
    n_img, c_count, hp, wp = dxp.shape
    fn = W.shape[0]
    oh, ow = dout.shape[2], dout.shape[3]
    span = _rounded((oh - 1) * wp + ow)
    size = c_count * hp * wp
    zero = dxp.dtype.type(0)
    for n in prange(n_img):
        dxi = np.zeros(size + SPAN_ROUND, dtype=dxp.dtype)  # room for the rounded runs
        d = np.zeros((FILTER_BLOCK, span), dtype=dxp.dtype)  # zero past the exact run
        for f0 in range(0, fn, FILTER_BLOCK):
            count = min(fn, f0 + FILTER_BLOCK) - f0
            planes_finite = finite
            for r in range(count):
                total = _spread_plane(dout[n, f0 + r], wp, d[r])
                planes_finite &= total - total == zero  # NaN for an inf or NaN in the plane
            for r in range(count, FILTER_BLOCK):  # the last block's unused planes: not the
                d[r, :] = zero  # previous block's (0 * inf would make NaN)
            _scatter_taps(W, f0, count, taps, c_count, oh, ow, wp, span, planes_finite, d,
                          dxi)
        dst = dxp[n].reshape(size)
        for q in range(size):
            dst[q] = dxi[q]
