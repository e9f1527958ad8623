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
"""

from numba import prange

from .jit import kernel, sized


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
    ``[0, size)``."""
    lo = 0 if offset >= 0 else (-offset + stride - 1) // stride
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
                    for o in range(lo, hi):
                        dst[o * stride + off] += row[o]


@sized
def fold(col, fh, fw, stride, pad, dx):
    """The adjoint of :func:`unfold`: ``dx`` (N, C, H, W) from ``col`` (N, C * FH * FW, OH * OW)."""
    oh = (dx.shape[2] + 2 * pad - fh) // stride + 1
    ow = (dx.shape[3] + 2 * pad - fw) // stride + 1
    for image in prange(dx.shape[0]):
        _fold_image(col[image], fh, fw, stride, pad, oh, ow, dx[image])
