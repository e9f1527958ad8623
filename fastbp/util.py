"""The book's ``common/util.py``: ``im2col``/``col2im`` as Numba kernels, and its helpers.

``from fastbp.util import *`` replaces ``from common.util import *``. ``im2col`` and ``col2im``
keep the book's layout (rows (n, oh, ow), columns (c, fh, fw)) and results, with one deliberate
difference: float32 stays float32 (the book's compute in float64 whatever the input). Other
dtypes follow :mod:`fastbp.validation`'s policy. Where ``H + 2 * pad - FH`` is not a multiple of
``stride``, the output size is the floor, as in the book's ``im2col``. The plain NumPy versions
are :mod:`fastbp.reference.util`.
"""

import numpy as np

from fastbp import validation as v
from fastbp.kernels import conv

__all__ = ["col2im", "conv_output_size", "im2col", "shuffle_dataset", "smooth_curve"]


def smooth_curve(x):
    """Smooth a loss curve for plotting, as the book does: a Kaiser window (11 points,
    beta 2) slid over ``x`` mirrored at both ends. Returns the book's result: an array as long
    as ``x`` for 11 points or more; for fewer, the book's mirrored ends are short and so is the
    result (``3 * (len(x) - 7)`` points from 8 to 10, none below 8; empty ``x`` raises NumPy's
    ``ValueError``)."""
    window = 11
    half = window // 2
    x = np.asarray(x)
    mirrored = np.concatenate([x[window - 1:0:-1], x, x[-1:-window:-1]])
    weights = np.kaiser(window, 2)
    smoothed = np.convolve(weights / weights.sum(), mirrored, mode="valid")
    return smoothed[half:len(smoothed) - half]


def shuffle_dataset(x, t):
    """Shuffle ``x`` and ``t`` along their first axis with one permutation drawn from NumPy's
    global random state (``np.random.permutation``, as the book), so ``np.random.seed`` repeats
    it. ``x`` may be 2-d (N, D) or 4-d (N, C, H, W) (any N-d works). Returns new arrays.
    """
    x = np.asarray(x)
    t = np.asarray(t)
    if x.ndim == 0 or t.ndim == 0 or x.shape[0] != t.shape[0]:
        raise ValueError(f"shuffle_dataset: x of shape {x.shape} and t of shape {t.shape} "
                         f"need the same number of samples along their first axis")
    permutation = np.random.permutation(x.shape[0])  # noqa: NPY002 (the book's global state)
    return x[permutation], t[permutation]


def conv_output_size(input_size, filter_size, stride=1, pad=0):
    """The book's ``(input_size + 2 * pad - filter_size) / stride + 1`` (a float, as in the book;
    the layers and ``im2col`` use its floor)."""
    return (input_size + 2 * pad - filter_size) / stride + 1


def im2col(input_data, filter_h, filter_w, stride=1, pad=0):
    """Every ``filter_h`` x ``filter_w`` window of a (N, C, H, W) input, one per row.

    Parameters
    ----------
    input_data : array_like, shape (N, C, H, W)
    filter_h, filter_w : int
    stride : int, default 1
    pad : int, default 0
        Zero padding on each side.

    Returns
    -------
    col : ndarray, shape (N * OH * OW, C * filter_h * filter_w)
        Rows in (n, oh, ow) order, columns in (c, fh, fw) order, in the input's float dtype.
    """
    x = v._as_array(input_data, "input_data")
    fh, fw, stride, pad, oh, ow = v.window_geometry(x.shape, filter_h, filter_w, stride, pad)
    xc, out_dtype = v.float_input(x, "input_data", contiguous=True)
    n, c = xc.shape[:2]
    col = np.empty((n * oh * ow, c * fh * fw), dtype=xc.dtype)
    conv.im2col(xc, fh, fw, stride, pad, col)
    return v.as_result(col, out_dtype)


def col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    """Add the windows of ``col`` back into an image of ``input_shape``: the adjoint of
    :func:`im2col` (overlapping windows add up; values on the padding are dropped).

    Parameters
    ----------
    col : array_like, shape (N * OH * OW, C * filter_h * filter_w)
    input_shape : tuple of 4 ints (N, C, H, W)
    filter_h, filter_w, stride, pad : int

    Returns
    -------
    ndarray, shape ``input_shape``, C-contiguous, in ``col``'s float dtype
    """
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise TypeError(f"col2im: input_shape must be a sequence (N, C, H, W); got "
                        f"{input_shape!r}") from None
    fh, fw, stride, pad, oh, ow = v.window_geometry(shape, filter_h, filter_w, stride, pad,
                                                    "col2im")
    n, c = shape[:2]
    col = v._as_array(col, "col")
    want = (n * oh * ow, c * fh * fw)
    if col.shape != want:
        raise ValueError(f"col2im: col of shape {col.shape} does not fit input_shape {shape} "
                         f"with a {fh}x{fw} filter, stride {stride}, pad {pad}: it needs "
                         f"shape {want}")
    colc, out_dtype = v.float_input(col, "col", contiguous=True)
    dx = np.empty(shape, dtype=colc.dtype)
    conv.col2im(colc, fh, fw, stride, pad, dx)
    return v.as_result(dx, out_dtype)
