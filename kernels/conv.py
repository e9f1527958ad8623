"""Convolution kernels: ``im2col`` and ``col2im`` in two layouts, and the passes around the
matrix products of the ``Convolution`` layer (which run in BLAS, called from the layer).

Two column layouts:

* the book's (``im2col``/``col2im``, behind :mod:`fastbp.util`): one (N * OH * OW, C * FH * FW)
  matrix, a row per output position (n, oh, ow), a column per window element (c, fh, fw);
* the layer's (``unfold``/``fold``): per image a (C * FH * FW, OH * OW) matrix, stacked to
  (N, K, P). Copying a window row of the input is then a run of OW elements (a contiguous one at
  stride 1), and the products ``W (FN, K) @ col[n] (K, P)`` give the output in (N, FN, OH, OW)
  order directly, with no transpose.

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
