"""``im2col`` and ``col2im`` in plain NumPy: the oracle the kernels in :mod:`fastbp.util` are
tested against, and the algorithm of the reference ``Convolution`` and ``Pooling``.

The layout is the book's (``common/util.py``): a (N, C, H, W) input becomes a column matrix of
shape (N * OH * OW, C * FH * FW), one row per output position in (n, oh, ow) order, one column
per window element in (c, fh, fw) order. The input's dtype is kept (the book's computes in
float64). Arguments are not checked here: the callers check them (:mod:`fastbp.validation`).
"""

import numpy as np

from fastbp.validation import window_output_size


def im2col(x, filter_h, filter_w, stride=1, pad=0, fill=0):
    """Copy every ``filter_h`` x ``filter_w`` window of ``x`` into one row of a matrix.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    filter_h, filter_w, stride, pad : int
    fill : scalar
        The value of the padding (0 for convolution; Pooling pads with ``-inf``).

    Returns
    -------
    ndarray, shape (N * OH * OW, C * filter_h * filter_w), in ``x``'s dtype
    """
    n, c, h, w = x.shape
    oh = window_output_size(h, filter_h, stride, pad)
    ow = window_output_size(w, filter_w, stride, pad)
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
    # windows[n, c, i, j, y, x] is the element at offset (i, j) of the window at output (y, x):
    # one strided slice of the padded image per offset.
    windows = np.empty((n, c, filter_h, filter_w, oh, ow), dtype=x.dtype)
    for i in range(filter_h):
        for j in range(filter_w):
            windows[:, :, i, j] = padded[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
    return windows.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow, c * filter_h * filter_w)


def col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    """The adjoint of :func:`im2col`: add each row's window back at its place in the image.

    Where windows overlap, their values add up; values that fall on the padding are dropped.

    Returns
    -------
    ndarray, shape ``input_shape``, in ``col``'s dtype
    """
    n, c, h, w = input_shape
    oh = window_output_size(h, filter_h, stride, pad)
    ow = window_output_size(w, filter_w, stride, pad)
    windows = col.reshape(n, oh, ow, c, filter_h, filter_w).transpose(0, 3, 4, 5, 1, 2)
    padded = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=col.dtype)
    for i in range(filter_h):
        for j in range(filter_w):
            padded[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride] += windows[:, :, i, j]
    return padded[:, :, pad:h + pad, pad:w + pad]
