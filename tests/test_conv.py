"""Convolution: kernel layer against the NumPy reference, finite differences, bad input,
threads, and the book's attributes."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from layouts import LAYOUTS

from fastbp import layers, reference, threads
from fastbp.kernels import parallel
from fastbp.testing import assert_finite_differences, assert_layers_agree

BACKENDS = {"kernel": layers, "reference": reference.layers}

# (x shape, W shape, stride, pad): batch 1, odd and non-square images and filters, C > 1,
# filter sizes 1-7, stride 1-3, pad 0-2, and sizes the stride does not divide.
GEOMETRIES = [
    ((2, 3, 7, 6), (4, 3, 3, 3), 1, 0),
    ((1, 1, 8, 8), (3, 1, 5, 5), 1, 0),
    ((3, 2, 9, 8), (5, 2, 1, 1), 1, 0),
    ((2, 3, 9, 7), (2, 3, 4, 2), 2, 1),
    ((1, 2, 11, 10), (3, 2, 7, 6), 3, 2),
    ((2, 1, 5, 6), (4, 1, 3, 5), 2, 2),
    ((1, 4, 6, 5), (2, 4, 2, 3), 3, 0),
    ((2, 2, 4, 4), (3, 2, 6, 6), 1, 1),
]


def data(geometry, seed=0):
    x_shape, w_shape, stride, pad = geometry
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(x_shape), rng.standard_normal(w_shape),
            rng.standard_normal(w_shape[0]), stride, pad)


def agree(x, W, b, stride, pad, dtype, x_layout="C", w_layout="C"):
    return assert_layers_agree(
        lambda c: layers.Convolution(LAYOUTS[w_layout](c(W)), c(b), stride, pad),
        lambda c: reference.layers.Convolution(c(W), c(b), stride, pad),
        (LAYOUTS[x_layout](np.asarray(x, dtype=dtype)),), dtype=dtype, grads=("dW", "db"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_agrees_with_reference(geometry, dtype, build):
    x, W, b, stride, pad = data(geometry)
    agree(x, W, b, stride, pad, dtype)


@pytest.mark.parametrize("layout", [k for k in LAYOUTS if k != "C"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layouts(layout, dtype):
    x, W, b, stride, pad = data(GEOMETRIES[3])
    agree(x, W, b, stride, pad, dtype, x_layout=layout)
    agree(x, W, b, stride, pad, dtype, w_layout=layout)


@pytest.mark.parametrize("geometry", GEOMETRIES[:6])
def test_finite_differences(geometry):
    x, W, b, stride, pad = data(geometry, seed=1)
    for module in BACKENDS.values():
        assert_finite_differences(lambda m=module: m.Convolution(W.copy(), b.copy(), stride, pad),
                                  (x,), params={"W": "dW", "b": "db"})


@pytest.mark.parametrize("bias", ["row", "(1, FN)", "python zero", "numpy scalar", "(1,)"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_forms(bias, dtype):
    """b is (FN,), or what the book's scripts pass (ch07/apply_filter.py passes 0)."""
    x, W, b, stride, pad = data(GEOMETRIES[0])
    b = {"row": b, "(1, FN)": b.reshape(1, -1), "python zero": 0,
         "numpy scalar": np.float64(0.5), "(1,)": np.array([0.25])}[bias]

    def cast_b(cast):
        return b if isinstance(b, int) else cast(np.asarray(b))

    ref = reference.layers
    result = assert_layers_agree(lambda c: layers.Convolution(c(W), cast_b(c), stride, pad),
                                 lambda c: ref.Convolution(c(W), cast_b(c), stride, pad),
                                 (x,), dtype=dtype, grads=("dW", "db"))
    assert result.passed
    layer = layers.Convolution(W, b, stride, pad)
    layer.backward(np.ones_like(layer.forward(x)))
    assert layer.db.shape == (W.shape[0],)


def test_output_size_floors_and_unreached_rows_get_no_gradient():
    """H + 2 pad - FH = 6 is not a multiple of 4: OH = 6 // 4 + 1 = 2, as in the book's layer;
    the input's last rows and columns are in no window, so their gradient is 0."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 1, 9, 9))
    W, b = rng.standard_normal((2, 1, 3, 3)), np.zeros(2)
    for module in BACKENDS.values():
        layer = module.Convolution(W, b, stride=4)
        out = layer.forward(x)
        assert out.shape == (1, 2, 2, 2)
        dx = layer.backward(np.ones_like(out))
        assert np.all(dx[..., 7:, :] == 0) and np.all(dx[..., :, 7:] == 0)
        assert np.any(dx[..., :7, :7] != 0)


def test_known_values():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    W = np.zeros((2, 1, 2, 2))
    W[0, 0, 0, 0] = 1  # picks the top-left of each window
    W[1] = 1  # sums each window
    for module in BACKENDS.values():
        out = module.Convolution(W, np.array([0.0, 10.0]), stride=2).forward(x)
        np.testing.assert_array_equal(out[0, 0], [[0, 2], [8, 10]])
        np.testing.assert_array_equal(out[0, 1], [[10 + 10, 10 + 18], [10 + 42, 10 + 50]])
        padded = module.Convolution(np.ones((1, 1, 3, 3)), 0, pad=1).forward(x)
        assert padded.shape == (1, 1, 4, 4)
        assert padded[0, 0, 0, 0] == 0 + 1 + 4 + 5  # zero padding


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_need_dx_false_skips_dx_and_keeps_the_parameter_gradients(dtype):
    x, W, b, stride, pad = data(GEOMETRIES[4])
    x, W, b = (a.astype(dtype) for a in (x, W, b))
    for module in BACKENDS.values():
        full = module.Convolution(W, b, stride, pad)
        dout = np.ones_like(full.forward(x))
        assert full.backward(dout) is not None
        lean = module.Convolution(W, b, stride, pad)
        lean.need_dx = False
        lean.forward(x)
        assert lean.backward(dout) is None
        np.testing.assert_array_equal(lean.dW, full.dW)
        np.testing.assert_array_equal(lean.db, full.db)


def test_parameters_are_read_on_every_call():
    x, W, b, stride, pad = data(GEOMETRIES[0])
    for module in BACKENDS.values():
        W1, b1 = W.copy(), b.copy()
        layer = module.Convolution(W1, b1, stride, pad)
        first = layer.forward(x)
        W1 *= 2  # in place, as the optimizers update
        b1 *= 2
        np.testing.assert_allclose(layer.forward(x), 2 * first, rtol=1e-12)
        layer.W, layer.b = W, b  # rebinding, as load_params does
        np.testing.assert_allclose(layer.forward(x), first, rtol=1e-12)
        assert layer.W is W and layer.b is b


def test_book_attributes_match_the_reference():
    x, W, b, stride, pad = data(GEOMETRIES[3])
    kernel, ref = layers.Convolution(W, b, stride, pad), reference.layers.Convolution(W, b, stride,
                                                                                      pad)
    for layer in (kernel, ref):
        assert layer.x is None and layer.dW is None and layer.db is None
        assert layer.col is None and layer.col_W is None
        assert (layer.stride, layer.pad) == (stride, pad)
        layer.forward(x)
    np.testing.assert_array_equal(kernel.col, ref.col)
    np.testing.assert_array_equal(kernel.col_W, ref.col_W)
    np.testing.assert_array_equal(kernel.x, x)


def test_dtypes():
    x, W, b, stride, pad = data(GEOMETRIES[0])
    f32 = [a.astype(np.float32) for a in (x, W, b)]
    for module in BACKENDS.values():
        layer = module.Convolution(f32[1], f32[2], stride, pad)
        out = layer.forward(f32[0])
        assert out.dtype == np.float32
        assert layer.backward(np.ones_like(out)).dtype == np.float32
        assert layer.dW.dtype == np.float32 and layer.db.dtype == np.float32
        mixed = module.Convolution(W, f32[2], stride, pad)  # float64 W: NumPy's promotion
        out = mixed.forward(f32[0])
        assert out.dtype == np.float64
        assert mixed.backward(np.ones_like(out)).dtype == np.float64
        half = module.Convolution(W.astype(np.float16), b.astype(np.float16), stride, pad)
        assert half.forward(x.astype(np.float16)).dtype == np.float16


def test_float16_agrees():
    x, W, b, stride, pad = data(GEOMETRIES[0])
    agree(x, W, b, stride, pad, np.float16)


def test_empty_batch():
    for module in BACKENDS.values():
        layer = module.Convolution(np.ones((2, 1, 3, 3)), np.zeros(2))
        out = layer.forward(np.zeros((0, 1, 5, 5)))
        assert out.shape == (0, 2, 3, 3)
        assert layer.backward(out).shape == (0, 1, 5, 5)
        np.testing.assert_array_equal(layer.dW, 0)
        np.testing.assert_array_equal(layer.db, 0)


# Degenerate but valid geometries: no filters, no channels, no images, and padding on the left
# that covers every output column (each window column but the last reads only padding).
EDGES = {
    "no filters": ((2, 3, 5, 6), (0, 3, 3, 2), 1, 0),
    "no channels": ((2, 0, 5, 6), (4, 0, 3, 2), 1, 0),
    "no images": ((0, 2, 5, 5), (3, 2, 3, 3), 1, 1),
    "no images, columns": ((0, 2, 5, 5), (3, 2, 3, 3), 2, 1),
    "pad covers the row": ((1, 1, 4, 1), (1, 1, 1, 7), 2, 3),
    "pad covers the row, C > 1": ((2, 2, 5, 2), (3, 2, 2, 7), 3, 3),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", list(EDGES.values()), ids=list(EDGES))
def test_edge_geometries_agree_and_stay_in_bounds(geometry, dtype):
    """Both backends give the same shapes and values (the bias alone with no channels, zero
    gradients with no images). Under ``NUMBA_BOUNDSCHECK=1`` (CI) the kernels indexed past
    their arrays here: ``xp[0]`` of an empty batch, the last of no taps, and the row that
    ``unfold`` zeroes left of the image when the padding covers it (the writes landed in the next
    rows of ``col``, which were then overwritten)."""
    x, W, b, stride, pad = data(geometry)
    results = []
    for module in BACKENDS.values():
        layer = module.Convolution(W.astype(dtype), b.astype(dtype), stride, pad)
        out = layer.forward(x.astype(dtype))
        dx = layer.backward(np.ones_like(out))
        results.append((out, dx, layer.dW, layer.db))
    for got, want in zip(*results, strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if geometry[1][1] == 0:  # no channels: every output is its filter's bias
        np.testing.assert_array_equal(results[0][0], np.broadcast_to(
            b.astype(dtype)[:, None, None], results[0][0].shape[1:])[None].repeat(x.shape[0], 0))


def test_nan_and_inf_propagate_alike():
    x, W, b, stride, pad = data(GEOMETRIES[0])
    x[0, 1, 2, 3] = np.nan
    x[1, 0, 0, 0] = np.inf
    result = agree(x, W, b, stride, pad, np.float64)
    out = layers.Convolution(W, b, stride, pad).forward(x)
    assert np.isnan(out[0, :, 0:3, 1:4]).all()
    assert np.isfinite(out[0, :, 3:, :]).all()
    assert result.passed


def test_no_argument_is_modified():
    x, W, b, stride, pad = data(GEOMETRIES[3])
    keep = [a.copy() for a in (x, W, b)]
    for module in BACKENDS.values():
        layer = module.Convolution(W, b, stride, pad)
        out = layer.forward(x)
        dout = np.ones_like(out)
        layer.backward(dout)
        for a, k in zip((x, W, b), keep, strict=True):
            np.testing.assert_array_equal(a, k)
        np.testing.assert_array_equal(dout, 1)


def test_an_inf_in_one_block_of_filters_stays_out_of_the_next(path):
    """The direct path's dx adds the filters four at a time; with 5 filters the last block
    holds one, and the planes the previous block left behind (an inf among them) must not be
    multiplied into it (0 * inf would make NaN where the reference has inf)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 7, 6))
    W = rng.standard_normal((5, 2, 3, 2))
    b = np.zeros(5)
    dout = rng.standard_normal((2, 5, 5, 5))
    dout[0, 1, 2, 2] = np.inf
    results = []
    for module in BACKENDS.values():
        layer = module.Convolution(W, b)
        layer.forward(x)
        with np.errstate(invalid="ignore"):
            results.append(layer.backward(dout))
    assert np.isinf(results[1]).any()
    _nan_pattern_agrees(*results)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("stride", "channels"), [(2, 3), (1, 3), (1, 1)],
                         ids=["columns", "direct", "direct-one-channel"])
def test_bit_identical_at_every_thread_count(stride, channels, dtype, monkeypatch):
    """Columns (stride 2): images are split over threads; each image's products are
    single-threaded and dW, db are summed image by image in order. Direct (stride 1): images,
    or blocks of filters, are split over threads, each thread owning whole outputs (with one
    channel, dx's per-image products run on one BLAS thread, as the columns path's). Either
    way the split never changes a bit."""
    monkeypatch.setattr(parallel, "PARALLEL_MIN_ELEMENTS", 0)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((13, channels, 12, 11)).astype(dtype)
    W = rng.standard_normal((6, channels, 3, 4)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    dout = rng.standard_normal((13, 6, 12 // stride, 10 // stride)).astype(dtype)

    def run():
        layer = layers.Convolution(W, b, stride=stride, pad=1)
        out = layer.forward(x)
        assert (layer._direct is not None) == (stride == 1)
        return [a.tobytes() for a in (out, layer.backward(dout), layer.dW, layer.db)]

    _same_bits_at_every_thread_count(run)


def _same_bits_at_every_thread_count(run):
    """``run()`` (a list of bytes) gives the same at 1, 2, 3 and numba's full thread count."""
    with threads.threads(1):
        expected = run()
    for n in sorted({2, 3, threads.numba.config.NUMBA_NUM_THREADS}):
        if n <= threads.numba.config.NUMBA_NUM_THREADS:
            with threads.threads(n):
                assert run() == expected


# --- the paths: direct correlation (stride 1, few taps), column matrices, Winograd (3x3) ---------

STRIDE_ONE = [g for g in GEOMETRIES if g[2] == 1] + [((3, 16, 9, 8), (5, 16, 3, 3), 1, 2)]


@pytest.fixture(params=["direct", "columns", "winograd"])
def path(request, monkeypatch):
    """Run the test on each of the Convolution layer's three paths ("winograd": any 3x3
    filters at stride 1 take it, whatever their channel counts; other filters the direct
    path)."""
    monkeypatch.setattr(layers, "DIRECT_MAX_TAPS", 0 if request.param == "columns" else 10**9)
    monkeypatch.setattr(layers, "WINOGRAD_MIN_CHANNELS", 1 if request.param == "winograd"
                        else 10**9)
    return request.param


def _path_taken(layer):
    return "winograd" if layer._winograd else "direct" if layer._direct is not None else "columns"


def _path_expected(path, w_shape, stride):
    if path == "winograd" and (stride != 1 or w_shape[2:] != (3, 3)):
        return "direct" if stride == 1 else "columns"
    return path


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", STRIDE_ONE)
def test_the_paths_agree_with_reference(geometry, dtype, path, build):
    x, W, b, stride, pad = data(geometry)
    layer = layers.Convolution(W, b, stride, pad)
    layer.forward(x)
    assert _path_taken(layer) == _path_expected(path, W.shape, stride)
    agree(x, W, b, stride, pad, dtype)


def _special_values_agree(x, W, b, pad, dout):
    """Forward and backward at stride 1 on both backends: the same NaN and inf everywhere."""
    results = []
    for module in BACKENDS.values():
        layer = module.Convolution(W, b, 1, pad)
        with np.errstate(invalid="ignore"):
            out = layer.forward(x)
            dx = layer.backward(dout)
        results.append((out, dx, layer.dW, layer.db))
    for got, want in zip(*results, strict=True):
        _nan_pattern_agrees(got, want)


def _nan_pattern_agrees(got, want):
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels", [2, 1])
@pytest.mark.parametrize("where", ["x", "W", "dout"])
@pytest.mark.parametrize("pad", [0, 1])
def test_non_finite_values_at_the_borders_spread_as_in_the_reference(where, pad, channels,
                                                                      path):
    """The direct path computes whole flat rows, the columns between them included: an inf or
    NaN in a first or last column must reach exactly the sums it reaches in the reference.
    (With one channel the direct path's dx comes from products and ``fold``.)"""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, channels, 7, 6))
    W = rng.standard_normal((3, channels, 3, 2))
    b = rng.standard_normal(3)
    oh, ow = 7 + 2 * pad - 2, 6 + 2 * pad - 1
    dout = rng.standard_normal((2, 3, oh, ow))
    if where == "x":
        x[0, channels - 1, 2, 0] = np.inf
        x[1, 0, 6, 5] = np.nan
    elif where == "W":
        W[1, 0, 0, 1] = np.inf
        W[2, channels - 1, 2, 0] = np.nan
    else:
        dout[0, 1, 3, 0] = np.inf
        dout[1, 2, oh - 1, ow - 1] = np.nan
    _special_values_agree(x, W, b, pad, dout)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_nan_image_stays_out_of_its_neighbours(dtype):
    """The direct kernels round each run up to a multiple of SPAN_ROUND elements, so the
    forward pass of one image reads the start of the next (into positions it drops), and dx
    runs past an image's end (into a buffer of its own). A NaN image between two finite ones,
    at a small map where the rounding is most of the run, must leave them as the reference
    computes them."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 2, 7, 7)).astype(dtype)
    x[1] = np.nan
    W = rng.standard_normal((5, 2, 3, 3)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    dout = rng.standard_normal((3, 5, 7, 7)).astype(dtype)
    dout[1] = np.nan
    results = []
    for module in BACKENDS.values():
        layer = module.Convolution(W, b, 1, 1)
        out = layer.forward(x)
        dx = layer.backward(dout)
        results.append((out, dx))
    assert results[0][0].shape == (3, 5, 7, 7)
    for got, want in zip(*results, strict=True):
        assert np.isnan(got[1]).all() and np.isfinite(got[[0, 2]]).all()
        np.testing.assert_allclose(got[[0, 2]], want[[0, 2]], rtol=1e-5, atol=1e-5)


# Images smaller than SPAN_ROUND elements: a rounded run from one image reaches past the next
# one, and for the last few images past the batch's end.
TINY = [((3, 1, 2, 2), (1, 1, 1, 1), 0), ((4, 2, 2, 3), (3, 2, 1, 2), 0),
        ((5, 1, 1, 1), (3, 1, 1, 1), 1), ((6, 1, 3, 3), (2, 1, 2, 2), 0)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", TINY, ids=str)
def test_the_direct_kernels_never_read_past_the_batch(geometry, dtype):
    """``x`` is the start of a larger array whose remaining images are NaN (pad 0: the kernels
    read ``x`` itself). A run rounded up past the batch's end would read them: ``dW`` turned NaN
    (the NaNs times the planes' zeros), and without bounds checks nothing else tells. The
    results must be the reference's, finite. Run under NUMBA_BOUNDSCHECK=1 in CI too."""
    x_shape, w_shape, pad = geometry
    rng = np.random.default_rng(7)
    n = x_shape[0]
    whole = np.full((n + 2, *x_shape[1:]), np.nan, dtype=dtype)
    whole[:n] = rng.standard_normal(x_shape)
    x = whole[:n]
    assert x.flags.c_contiguous
    W = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    kernel, ref = layers.Convolution(W, b, 1, pad), reference.layers.Convolution(W, b, 1, pad)
    out = kernel.forward(x)
    assert kernel._direct is not None and (pad or kernel._direct[0] is x)
    dout = rng.standard_normal(out.shape).astype(dtype)
    got = (out, kernel.backward(dout), kernel.dW, kernel.db)
    want = (ref.forward(x), ref.backward(dout), ref.dW, ref.db)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype and np.isfinite(g).all()
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


@st.composite
def tiny_direct_convolutions(draw):
    """Stride-1 convolutions (the direct kernels) of 2-5 images of at most 3x6x6 elements,
    as the start of an array whose next two images are NaN."""
    fh, fw, pad = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, fh - 2 * pad), 6))
    w = draw(st.integers(max(1, fw - 2 * pad), 6))
    n, c, fn = draw(st.integers(2, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    whole = np.full((n + 2, c, h, w), np.nan)
    whole[:n] = rng.standard_normal((n, c, h, w))
    return (whole, n, rng.standard_normal((fn, c, fh, fw)), rng.standard_normal(fn), pad,
            rng.standard_normal((n, fn, h + 2 * pad - fh + 1, w + 2 * pad - fw + 1)))


@given(case=tiny_direct_convolutions(), dtype=st.sampled_from([np.float32, np.float64]))
def test_hypothesis_direct_kernels_never_read_past_the_batch(case, dtype):
    """As test_the_direct_kernels_never_read_past_the_batch, over drawn geometries."""
    whole, n, W, b, pad, dout = case
    whole, W, b, dout = (a.astype(dtype) for a in (whole, W, b, dout))
    x = whole[:n]  # C-contiguous, followed in memory by the NaN images
    kernel = layers.Convolution(W, b, 1, pad)
    ref = reference.layers.Convolution(W, b, 1, pad)
    got = (kernel.forward(x), kernel.backward(dout), kernel.dW, kernel.db)
    want = (ref.forward(x), ref.backward(dout), ref.dW, ref.db)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for g, w_ in zip(got, want, strict=True):
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, w_, rtol=tol, atol=tol)


def test_the_direct_path_builds_the_books_col():
    x, W, b, stride, pad = data(((2, 3, 7, 6), (4, 3, 3, 3), 1, 1))
    kernel, ref = layers.Convolution(W, b, stride, pad), reference.layers.Convolution(W, b,
                                                                                      stride, pad)
    kernel.forward(x)
    ref.forward(x)
    assert kernel._direct is not None
    np.testing.assert_array_equal(kernel.col, ref.col)
    np.testing.assert_array_equal(kernel.col_W, ref.col_W)


def test_chunks_of_images_give_the_same_bits(monkeypatch):
    x, W, b, stride, pad = data(GEOMETRIES[0])
    x = np.concatenate([x] * 5)
    layer = layers.Convolution(W, b, stride, pad)
    expected = [layer.forward(x), layer.backward(np.ones((10, 4, 5, 4)))]
    monkeypatch.setattr(layers, "CONV_CHUNK_BYTES", 1)  # one image at a time
    got = [layer.forward(x), layer.backward(np.ones((10, 4, 5, 4)))]
    for a, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, e)


# --- bad input: a clear error, the same from both backends --------------------------------

BAD_FORWARD = {
    "x 3-d": (np.zeros((1, 5, 5)), np.zeros((2, 1, 3, 3)), np.zeros(2), 1, 0, ValueError,
              r"x must be 4-d \(N, C, H, W\); got shape \(1, 5, 5\)"),
    "W 3-d": (np.zeros((1, 1, 5, 5)), np.zeros((2, 3, 3)), np.zeros(2), 1, 0, ValueError,
              r"W must be 4-d \(FN, C, FH, FW\); got shape \(2, 3, 3\)"),
    "channels": (np.zeros((1, 3, 5, 5)), np.zeros((2, 1, 3, 3)), np.zeros(2), 1, 0, ValueError,
                 "has 3 channels but W of shape .* expects 1"),
    "bias length": (np.zeros((1, 1, 5, 5)), np.zeros((2, 1, 3, 3)), np.zeros(3), 1, 0,
                    ValueError, r"b of shape \(3,\) does not fit 2 filters"),
    "bias column": (np.zeros((1, 1, 5, 5)), np.zeros((2, 1, 3, 3)), np.zeros((2, 1)), 1, 0,
                    ValueError, r"b of shape \(2, 1\) does not fit 2 filters"),
    "filter too large": (np.zeros((1, 1, 4, 4)), np.zeros((2, 1, 5, 3)), np.zeros(2), 1, 0,
                         ValueError, "filter of 5x3 is larger than the padded input of 4x4"),
    "stride 0": (np.zeros((1, 1, 5, 5)), np.zeros((2, 1, 3, 3)), np.zeros(2), 0, 0, ValueError,
                 "stride must be positive; got 0"),
    "stride -1": (np.zeros((1, 1, 5, 5)), np.zeros((2, 1, 3, 3)), np.zeros(2), -1, 0,
                  ValueError, "stride must be positive; got -1"),
    "pad -1": (np.zeros((1, 1, 5, 5)), np.zeros((2, 1, 3, 3)), np.zeros(2), 1, -1, ValueError,
               "pad must be at least 0; got -1"),
    "stride 1.5": (np.zeros((1, 1, 5, 5)), np.zeros((2, 1, 3, 3)), np.zeros(2), 1.5, 0,
                   TypeError, "stride must be an integer"),
    "complex x": (np.zeros((1, 1, 5, 5), complex), np.zeros((2, 1, 3, 3)), np.zeros(2), 1, 0,
                  TypeError, "real numeric array"),
}


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("case", list(BAD_FORWARD))
def test_bad_input_raises(case, backend):
    x, W, b, stride, pad, error, message = BAD_FORWARD[case]
    with pytest.raises(error, match=message):
        BACKENDS[backend].Convolution(W, b, stride, pad).forward(x)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_bad_backward_raises(backend):
    module = BACKENDS[backend]
    layer = module.Convolution(np.zeros((2, 1, 3, 3)), np.zeros(2))
    with pytest.raises(RuntimeError, match=r"backward called before Convolution\.forward"):
        layer.backward(np.zeros((1, 2, 3, 3)))
    layer.forward(np.zeros((1, 1, 5, 5)))
    with pytest.raises(ValueError, match=r"dout of shape \(1, 2, 3, 2\) does not match"):
        layer.backward(np.zeros((1, 2, 3, 2)))
    layer.W = np.zeros((2, 1, 2, 2))
    with pytest.raises(ValueError, match="but forward ran with"):
        layer.backward(np.zeros((1, 2, 3, 3)))


def test_bad_input_never_crashes_the_kernel_process():
    """Every bad case, in a fresh process, serial and threaded builds: exceptions, no crash."""
    code = textwrap.dedent("""
        import numpy as np
        from fastbp import layers
        from fastbp.kernels import parallel
        for threshold in (2**62, 0):
            parallel.PARALLEL_MIN_ELEMENTS = threshold
            cases = [
                ((1, 5, 5), (2, 1, 3, 3), 2, 1, 0), ((1, 1, 5, 5), (2, 3, 3), 2, 1, 0),
                ((1, 3, 5, 5), (2, 1, 3, 3), 2, 1, 0), ((1, 1, 5, 5), (2, 1, 3, 3), 3, 1, 0),
                ((1, 1, 4, 4), (2, 1, 5, 3), 2, 1, 0), ((1, 1, 5, 5), (2, 1, 3, 3), 2, 0, 0),
                ((1, 1, 5, 5), (2, 1, 3, 3), 2, -2, 0), ((1, 1, 5, 5), (2, 1, 3, 3), 2, 1, -1),
                ((1, 1, 2, 2), (2, 1, 9, 9), 2, 1, 3),
            ]
            for xs, ws, nb, stride, pad in cases:
                try:
                    layers.Convolution(np.ones(ws), np.ones(nb), stride, pad).forward(np.ones(xs))
                except ValueError as exc:
                    print("ValueError")
                else:
                    print("NO ERROR", xs, ws, nb, stride, pad)
            layer = layers.Convolution(np.ones((2, 1, 3, 3)), np.ones(2))
            layer.forward(np.ones((4, 1, 6, 6)))
            for d in (np.ones(3), np.ones((4, 2, 4, 3)), np.ones((400, 2, 4, 4))):
                try:
                    layer.backward(d)
                except ValueError:
                    print("ValueError")
                else:
                    print("NO ERROR dout", d.shape)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ValueError"] * 24, proc.stdout


# --- hypothesis ------------------------------------------------------------------------------


@st.composite
def convolutions(draw):
    fh, fw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride, pad = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, fh - 2 * pad), 9))
    w = draw(st.integers(max(1, fw - 2 * pad), 9))
    n, c, fn = draw(st.integers(0, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    return (scale * rng.standard_normal((n, c, h, w)), rng.standard_normal((fn, c, fh, fw)),
            rng.standard_normal(fn), stride, pad)


@given(case=convolutions(), dtype=st.sampled_from([np.float32, np.float64]),
       layout=st.sampled_from(list(LAYOUTS)))
def test_hypothesis_agreement(case, dtype, layout):
    x, W, b, stride, pad = case
    agree(x, W, b, stride, pad, dtype, x_layout=layout)


def test_a_forked_child_runs_threaded_convolutions():
    """The image threads do not survive fork: the child starts its own instead of waiting on
    the parent's forever."""
    code = textwrap.dedent("""
        import os, signal, numpy as np
        from fastbp import layers, threads
        from fastbp.kernels import parallel
        parallel.PARALLEL_MIN_ELEMENTS = 0
        layers.DIRECT_MAX_TAPS = 0  # the column path, whose images run on Python threads
        threads.set_num_threads(2)
        x = np.random.default_rng(0).standard_normal((8, 2, 9, 9))
        layer = layers.Convolution(np.ones((3, 2, 3, 3)), np.zeros(3))
        want = layer.forward(x)
        pid = os.fork()
        if pid == 0:
            signal.alarm(60)
            # The child would run serial (numba's pool started in the parent): force the image
            # threads, whose kernels are the serial builds, to test their pool.
            parallel._FORKED_FROM_POOL = False
            ok = np.array_equal(layers.Convolution(np.ones((3, 2, 3, 3)), np.zeros(3)).forward(x),
                                want)
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["0"], proc.stdout


# --- the Winograd path (3x3 filters at stride 1, with channels and filters to spare) ----------

# (x shape, W shape, pad): DeepConvNet's kinds of layers, small; batch 1, odd and non-square
# images (a last tile with one output row or column), a 1x1 output, pad 0-2.
WINOGRAD = [
    ((2, 8, 7, 7), (8, 8, 3, 3), 1),
    ((1, 9, 6, 9), (10, 9, 3, 3), 0),
    ((3, 8, 5, 8), (12, 8, 3, 3), 2),
    ((2, 16, 3, 3), (8, 16, 3, 3), 0),
    ((4, 8, 10, 11), (9, 8, 3, 3), 1),
]


def _winograd_data(geometry, dtype, seed=0):
    x_shape, w_shape, pad = geometry
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype),
            rng.standard_normal(w_shape[0]).astype(dtype), pad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", WINOGRAD, ids=str)
def test_winograd_agrees_with_reference(geometry, dtype, build):
    x, W, b, pad = _winograd_data(geometry, dtype)
    layer = layers.Convolution(W, b, 1, pad)
    out = layer.forward(x)
    assert layer._winograd and out.dtype == dtype
    agree(x, W, b, 1, pad, dtype)


@pytest.mark.parametrize("layout", [k for k in LAYOUTS if k != "C"])
def test_winograd_layouts(layout):
    x, W, b, pad = _winograd_data(WINOGRAD[0], np.float64)
    agree(x, W, b, 1, pad, np.float64, x_layout=layout)
    agree(x, W, b, 1, pad, np.float64, w_layout=layout)


def test_winograd_finite_differences():
    x, W, b, pad = _winograd_data(((2, 8, 5, 4), (8, 8, 3, 3), 1), np.float64, seed=1)
    assert_finite_differences(lambda: layers.Convolution(W.copy(), b.copy(), 1, pad), (x,),
                              params={"W": "dW", "b": "db"})


def test_winograd_need_dx_false_and_the_books_col():
    x, W, b, pad = _winograd_data(WINOGRAD[2], np.float64)
    layer, ref = layers.Convolution(W, b, 1, pad), reference.layers.Convolution(W, b, 1, pad)
    dout = np.ones_like(ref.forward(x))
    layer.forward(x)
    assert layer._winograd
    np.testing.assert_array_equal(layer.col, ref.col)
    np.testing.assert_array_equal(layer.col_W, ref.col_W)
    dx = layer.backward(dout)
    dW, db = layer.dW, layer.db
    layer.need_dx = False
    assert layer.backward(dout) is None
    np.testing.assert_array_equal(layer.dW, dW)
    np.testing.assert_array_equal(layer.db, db)
    ref.backward(dout)
    np.testing.assert_allclose(dx, ref.backward(dout), rtol=1e-12, atol=1e-12)


def test_only_wide_3x3_stride_one_layers_take_winograd():
    rng = np.random.default_rng(0)
    for w_shape, stride, want in [((8, 8, 3, 3), 1, True), ((7, 8, 3, 3), 1, False),
                                  ((8, 7, 3, 3), 1, False), ((8, 8, 3, 3), 2, False),
                                  ((8, 8, 3, 2), 1, False), ((8, 8, 5, 5), 1, False)]:
        layer = layers.Convolution(rng.standard_normal(w_shape), np.zeros(w_shape[0]), stride, 1)
        layer.forward(rng.standard_normal((2, w_shape[1], 9, 9)))
        assert layer._winograd == want, (w_shape, stride)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_winograd_bit_identical_at_every_thread_count(dtype, monkeypatch):
    """Images are transformed a chunk at a time (the chunks do not depend on the thread count)
    with single-threaded products; threads own whole chunks, and dW, db are summed chunk by
    chunk in order."""
    monkeypatch.setattr(parallel, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(layers, "WINOGRAD_CHUNK_BYTES", 1)  # one image per chunk
    x, W, b, pad = _winograd_data(((13, 8, 9, 8), (10, 8, 3, 3), 1), dtype, seed=3)
    dout = np.random.default_rng(4).standard_normal((13, 10, 9, 8)).astype(dtype)

    def run():
        layer = layers.Convolution(W, b, 1, pad)
        out = layer.forward(x)
        assert layer._winograd
        return [a.tobytes() for a in (out, layer.backward(dout), layer.dW, layer.db)]

    _same_bits_at_every_thread_count(run)


def test_winograd_chunk_sizes_agree(monkeypatch):
    x, W, b, pad = _winograd_data(((7, 8, 6, 6), (8, 8, 3, 3), 1), np.float64)
    for chunk in (1, 1 << 14, 1 << 30):  # one image per chunk, a few, the whole batch
        monkeypatch.setattr(layers, "WINOGRAD_CHUNK_BYTES", chunk)
        agree(x, W, b, 1, pad, np.float64)


@pytest.mark.parametrize("channels", [8, 67], ids=["direct", "columns"])
@pytest.mark.parametrize("where", ["x", "W", "dout"])
def test_winograd_leaves_non_finite_values_to_the_other_paths(where, channels):
    """Winograd's transforms mix a tile's elements: an inf would reach outputs whose windows do
    not hold it. A result that is not finite is computed again without Winograd (forward: the
    direct path, or the columns above 600 taps; backward: the direct kernels), so special
    values reach exactly the sums they reach in the reference."""
    x, W, b, pad = _winograd_data(((2, channels, 7, 6), (8, channels, 3, 3), 1), np.float64,
                                  seed=5)
    dout = np.random.default_rng(6).standard_normal((2, 8, 7, 6))
    if where == "x":
        x[0, 1, 2, 0] = np.inf
        x[1, 0, 6, 5] = np.nan
    elif where == "W":
        W[1, 0, 0, 1] = np.inf
    else:
        dout[0, 1, 3, 0] = np.inf
        dout[1, 2, 6, 5] = np.nan
    _special_values_agree(x, W, b, pad, dout)


def test_winograd_overflow_falls_back_to_the_direct_kernels():
    """Finite inputs whose transforms overflow (``d0 - d2`` of two values near the largest
    float) give the direct kernels' finite results."""
    rng = np.random.default_rng(7)
    big = np.finfo(np.float64).max / 2
    x = big * np.sign(rng.standard_normal((2, 8, 8, 8)))
    W = 1e-6 * rng.standard_normal((8, 8, 3, 3))
    b = np.zeros(8)
    # 2x2 blocks of one sign, alternating: each tile's sums overflow, the planes' do not
    i = np.arange(8) // 2
    dout = np.broadcast_to(0.8 * big * (-1.0) ** (i[:, None] + i[None, :]), (2, 8, 8, 8))
    layer, ref = layers.Convolution(W, b, 1, 1), reference.layers.Convolution(W, b, 1, 1)
    out = layer.forward(x)
    want = ref.forward(x)
    assert np.isfinite(want).all() and not layer._winograd
    np.testing.assert_allclose(out, want, rtol=1e-12)
    x2 = 1e-10 * np.sign(x)  # a finite Winograd forward pass, then dout's transform overflows
    layer2, ref2 = layers.Convolution(W, b, 1, 1), reference.layers.Convolution(W, b, 1, 1)
    layer2.forward(x2)
    ref2.forward(x2)
    assert layer2._winograd
    got_dx, want_dx = layer2.backward(dout), ref2.backward(dout)
    for got, want in [(got_dx, want_dx), (layer2.dW, ref2.dW), (layer2.db, ref2.db)]:
        assert np.isfinite(want).all()
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
    assert not layer2._winograd  # backward fell back: the direct path's state is kept


@st.composite
def winograd_convolutions(draw):
    pad = draw(st.integers(0, 2))
    h = draw(st.integers(max(1, 3 - 2 * pad), 9))
    w = draw(st.integers(max(1, 3 - 2 * pad), 9))
    n, c, fn = draw(st.integers(0, 3)), draw(st.integers(8, 12)), draw(st.integers(8, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    return (scale * rng.standard_normal((n, c, h, w)), rng.standard_normal((fn, c, 3, 3)),
            rng.standard_normal(fn), 1, pad)


@given(case=winograd_convolutions(), dtype=st.sampled_from([np.float32, np.float64]))
def test_hypothesis_winograd_agreement(case, dtype):
    x, W, b, stride, pad = case
    agree(x, W, b, stride, pad, dtype)


def test_fastbp_verify_covers_the_winograd_path():
    from fastbp.testing import layer_cases

    (case,) = [c for c in layer_cases(0) if "Winograd" in c.name]
    layer = case.candidate(lambda a: np.array(a, dtype=np.float64))
    layer.forward(*case.inputs)
    assert layer._winograd


@pytest.mark.skipif(threads.numba.config.NUMBA_NUM_THREADS < 2, reason="one thread: no long calls")
@pytest.mark.parametrize("stride", [1, 2], ids=["winograd", "columns"])
def test_a_convolution_on_helper_threads_is_a_long_kernel_call(stride, monkeypatch):
    """Winograd's and the columns' kernels run from Python threads, not as threaded kernels:
    their runs count as long calls too, so that the products after them leave the cores to the
    next kernels (BLAS's worker spinning on them made every other DeepConvNet step 1.5x slower)."""
    monkeypatch.setattr(parallel, "LONG_CALL_SECONDS", 0.0)
    x, W, b, pad = _winograd_data(((2, 8, 6, 6), (8, 8, 3, 3), 1), np.float64)
    layer = layers.Convolution(W, b, stride, pad)
    assert parallel.seconds_since_long_call() == float("inf")
    out = layer.forward(x)
    assert _path_taken(layer) == ("winograd" if stride == 1 else "columns")
    assert parallel.seconds_since_long_call() < 60
    parallel._reset()
    layer.backward(np.ones_like(out))
    assert parallel.seconds_since_long_call() < 60
