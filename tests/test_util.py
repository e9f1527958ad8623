"""fastbp.util: im2col/col2im kernels against the reference and a naive loop, and the book's
helpers (conv_output_size, smooth_curve, shuffle_dataset)."""

import numpy as np
import pytest
from layouts import LAYOUTS

from fastbp import util
from fastbp.reference import util as reference_util

# (input shape, filter_h, filter_w, stride, pad): odd, non-square, C > 1, batch 1, filters 1-7,
# stride 1-3, pad 0-2, sizes where the stride does not divide (the floor is taken).
GEOMETRIES = [
    ((2, 3, 7, 6), 3, 3, 1, 0),
    ((1, 2, 9, 8), 5, 4, 2, 1),
    ((3, 1, 5, 5), 1, 1, 1, 0),
    ((2, 2, 11, 7), 7, 3, 3, 2),
    ((1, 3, 6, 10), 2, 6, 2, 2),
    ((2, 1, 4, 4), 6, 6, 1, 1),
    ((1, 1, 3, 3), 3, 3, 3, 0),
]


def naive_im2col(x, fh, fw, stride, pad):
    """Element by element, from the definition: row (n, oh, ow), column (c, i, j)."""
    n, c, h, w = x.shape
    oh = (h + 2 * pad - fh) // stride + 1
    ow = (w + 2 * pad - fw) // stride + 1
    col = np.zeros((n * oh * ow, c * fh * fw), dtype=x.dtype)
    for a in range(n):
        for y in range(oh):
            for z in range(ow):
                for ch in range(c):
                    for i in range(fh):
                        for j in range(fw):
                            r, s = y * stride + i - pad, z * stride + j - pad
                            if 0 <= r < h and 0 <= s < w:
                                col[(a * oh + y) * ow + z, (ch * fh + i) * fw + j] = x[a, ch, r, s]
    return col


def naive_col2im(col, shape, fh, fw, stride, pad):
    n, c, h, w = shape
    oh = (h + 2 * pad - fh) // stride + 1
    ow = (w + 2 * pad - fw) // stride + 1
    x = np.zeros(shape, dtype=col.dtype)
    for a in range(n):
        for y in range(oh):
            for z in range(ow):
                for ch in range(c):
                    for i in range(fh):
                        for j in range(fw):
                            r, s = y * stride + i - pad, z * stride + j - pad
                            if 0 <= r < h and 0 <= s < w:
                                x[a, ch, r, s] += col[(a * oh + y) * ow + z,
                                                      (ch * fh + i) * fw + j]
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_im2col_matches_reference_and_naive_loop(geometry, dtype, build):
    shape, fh, fw, stride, pad = geometry
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    got = util.im2col(x, fh, fw, stride, pad)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, reference_util.im2col(x, fh, fw, stride, pad))
    np.testing.assert_array_equal(got, naive_im2col(x, fh, fw, stride, pad))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_col2im_matches_reference_and_naive_loop(geometry, dtype, build):
    shape, fh, fw, stride, pad = geometry
    rows = naive_im2col(np.zeros(shape), fh, fw, stride, pad).shape
    col = np.random.default_rng(1).standard_normal(rows).astype(dtype)
    got = util.col2im(col, shape, fh, fw, stride, pad)
    assert got.dtype == dtype and got.shape == shape and got.flags.c_contiguous
    # Same order of additions as the reference: the same bits.
    np.testing.assert_array_equal(got, reference_util.col2im(col, shape, fh, fw, stride, pad))
    want = naive_col2im(col.astype(np.float64), shape, fh, fw, stride, pad)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_col2im_is_the_adjoint_of_im2col(geometry):
    shape, fh, fw, stride, pad = geometry
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape)
    col = util.im2col(x, fh, fw, stride, pad)
    c = rng.standard_normal(col.shape)
    lhs = np.sum(col * c)
    rhs = np.sum(x * util.col2im(c, shape, fh, fw, stride, pad))
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12 * float(np.sum(np.abs(col * c))))


def test_book_layout_on_a_small_example():
    x = np.arange(2 * 4 * 4, dtype=np.float64).reshape(1, 2, 4, 4)
    col = util.im2col(x, 2, 2, stride=2)
    assert col.shape == (4, 8)
    # Row 1 is output (0, 1): channel 0's window at columns 2-3, then channel 1's.
    np.testing.assert_array_equal(col[1], [2, 3, 6, 7, 18, 19, 22, 23])


@pytest.mark.parametrize("layout", [k for k in LAYOUTS if k != "C"])
def test_layouts_give_the_same_result(layout):
    x = np.random.default_rng(3).standard_normal((2, 3, 7, 6))
    want = util.im2col(x, 3, 2, 2, 1)
    np.testing.assert_array_equal(util.im2col(LAYOUTS[layout](x), 3, 2, 2, 1), want)
    c = np.random.default_rng(4).standard_normal(want.shape)
    np.testing.assert_array_equal(util.col2im(LAYOUTS[layout](c), x.shape, 3, 2, 2, 1),
                                  util.col2im(c, x.shape, 3, 2, 2, 1))


def test_inputs_are_not_modified_and_other_dtypes_promote():
    x = np.arange(2 * 3 * 5 * 5).reshape(2, 3, 5, 5)
    keep = x.copy()
    col = util.im2col(x, 3, 3)
    np.testing.assert_array_equal(x, keep)
    assert col.dtype == np.float64  # int64 is promoted as numpy.exp promotes it
    np.testing.assert_array_equal(col, naive_im2col(x.astype(np.float64), 3, 3, 1, 0))
    col32 = util.im2col(x.astype(np.float32), 3, 3)
    assert col32.dtype == np.float32
    assert util.col2im(col32, x.shape, 3, 3).dtype == np.float32


@pytest.mark.parametrize("call, message", [
    (lambda: util.im2col(np.zeros((2, 5, 5)), 3, 3), "4-d"),
    (lambda: util.im2col(np.zeros((1, 1, 4, 4)), 5, 3), "larger than the padded input"),
    (lambda: util.im2col(np.zeros((1, 1, 4, 4)), 3, 3, stride=0), "stride must be positive"),
    (lambda: util.im2col(np.zeros((1, 1, 4, 4)), 3, 3, pad=-1), "pad must be at least 0"),
    (lambda: util.im2col(np.zeros((1, 1, 4, 4)), 0, 3), "filter_h must be positive"),
    (lambda: util.col2im(np.zeros((4, 8)), (1, 1, 4, 4), 3, 3), r"needs shape \(4, 9\)"),
    (lambda: util.col2im(np.zeros((5, 9)), (1, 1, 4, 4), 3, 3), r"needs shape \(4, 9\)"),
    (lambda: util.col2im(np.zeros((4, 9)), (1, 4, 4), 3, 3), "4-d"),
])
def test_bad_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_float_stride_is_a_type_error():
    with pytest.raises(TypeError, match="stride must be an integer"):
        util.im2col(np.zeros((1, 1, 4, 4)), 3, 3, stride=1.5)


@pytest.mark.parametrize("shape", [5, None])
def test_col2im_input_shape_that_is_not_a_sequence_is_named(shape):
    with pytest.raises(TypeError, match="col2im: input_shape must be a sequence"):
        util.col2im(np.zeros((4, 9)), shape, 3, 3)


def test_conv_output_size_is_the_books_formula():
    assert util.conv_output_size(28, 5) == 24.0
    assert isinstance(util.conv_output_size(28, 5), float)
    assert util.conv_output_size(28, 3, stride=1, pad=1) == 28.0
    assert util.conv_output_size(7, 2, stride=2) == 3.5  # the book's float, not a floor


def test_smooth_curve_is_a_normalised_kaiser_window_over_mirrored_ends():
    x = np.random.default_rng(5).standard_normal(40).cumsum()
    got = util.smooth_curve(x)
    assert got.shape == x.shape
    weights = np.kaiser(11, 2)
    weights /= weights.sum()
    padded = np.concatenate([x[10:0:-1], x, x[-1:-11:-1]])
    want = np.array([np.dot(weights[::-1], padded[k + 5:k + 16]) for k in range(x.size)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(util.smooth_curve(np.full(30, 2.5)), 2.5, rtol=1e-14)
    # Short curves: the book's mirrored ends are short, and so is its result (as documented).
    assert [util.smooth_curve(np.arange(n, dtype=float)).size for n in (5, 7, 8, 9, 10, 11)] == [
        0, 0, 3, 6, 9, 11]


@pytest.mark.parametrize("x_shape", [(10, 4), (10, 1, 3, 3)])
def test_shuffle_dataset_uses_the_global_permutation(x_shape):
    x = np.arange(np.prod(x_shape), dtype=float).reshape(x_shape)
    t = np.arange(10)
    keep_x, keep_t = x.copy(), t.copy()
    np.random.seed(7)  # noqa: NPY002 (the book's global state is the behaviour tested)
    xs, ts = util.shuffle_dataset(x, t)
    np.random.seed(7)  # noqa: NPY002
    order = np.random.permutation(10)  # noqa: NPY002
    np.testing.assert_array_equal(ts, order)
    np.testing.assert_array_equal(xs, x[order])
    np.testing.assert_array_equal(x, keep_x)
    np.testing.assert_array_equal(t, keep_t)


def test_shuffle_dataset_rejects_different_lengths():
    with pytest.raises(ValueError, match="same number of samples"):
        util.shuffle_dataset(np.zeros((5, 2)), np.zeros(4))
