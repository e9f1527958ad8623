"""Pooling: kernel layer against the NumPy reference and a naive loop, ties, padding, NaN,
finite differences, bad input and threads."""

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

# (x shape, pool_h, pool_w, stride, pad): the book's 2x2/2, overlapping windows, padding, odd
# and non-square sizes, batch 1, sizes the stride does not divide.
GEOMETRIES = [
    ((2, 3, 8, 8), 2, 2, 2, 0),
    ((1, 2, 7, 9), 2, 2, 2, 0),
    ((2, 2, 7, 6), 3, 3, 1, 1),
    ((1, 3, 9, 8), 3, 2, 2, 1),
    ((2, 1, 6, 7), 2, 3, 1, 0),
    ((1, 2, 11, 10), 4, 4, 3, 2),
    ((3, 1, 5, 5), 1, 1, 1, 0),
    ((1, 1, 3, 4), 2, 2, 1, 1),
]


def naive_pool(x, ph, pw, stride, pad, dout):
    """From the definition: first maximum in row-major window order over the real elements
    (NaN wins); the gradient of overlapping windows adds up."""
    n, c, h, w = x.shape
    oh = (h + 2 * pad - ph) // stride + 1
    ow = (w + 2 * pad - pw) // stride + 1
    out = np.empty((n, c, oh, ow))
    dx = np.zeros(x.shape)
    for a in range(n):
        for ch in range(c):
            for y in range(oh):
                for z in range(ow):
                    best, at = None, None
                    for i in range(ph):
                        for j in range(pw):
                            r, s = y * stride + i - pad, z * stride + j - pad
                            if not (0 <= r < h and 0 <= s < w):
                                continue
                            v = x[a, ch, r, s]
                            if best is None or v > best or (np.isnan(v) and not np.isnan(best)):
                                best, at = v, (r, s)
                    out[a, ch, y, z] = best
                    dx[a, ch, at[0], at[1]] += dout[a, ch, y, z]
    return out, dx


def make(geometry, seed=0):
    shape, ph, pw, stride, pad = geometry
    x = np.random.default_rng(seed).standard_normal(shape)
    return x, ph, pw, stride, pad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_agrees_with_reference_and_naive_loop(geometry, dtype, build):
    x, ph, pw, stride, pad = make(geometry)
    result = assert_layers_agree(lambda c: layers.Pooling(ph, pw, stride, pad),
                                 lambda c: reference.layers.Pooling(ph, pw, stride, pad), (x,),
                                 dtype=dtype)
    assert result.passed
    xd = x.astype(dtype)
    layer = layers.Pooling(ph, pw, stride, pad)
    out = layer.forward(xd)
    dout = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
    dx = layer.backward(dout)
    want_out, want_dx = naive_pool(xd.astype(np.float64), ph, pw, stride, pad,
                                   dout.astype(np.float64))
    np.testing.assert_array_equal(out, want_out.astype(dtype))  # a selection: exact
    tol = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(dx, want_dx, rtol=tol, atol=tol)


@pytest.mark.parametrize("layout", [k for k in LAYOUTS if k != "C"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layouts(layout, dtype):
    x, ph, pw, stride, pad = make(GEOMETRIES[3])
    assert_layers_agree(lambda c: layers.Pooling(ph, pw, stride, pad),
                        lambda c: reference.layers.Pooling(ph, pw, stride, pad),
                        (LAYOUTS[layout](x.astype(dtype)),), dtype=dtype)


@pytest.mark.parametrize("geometry", GEOMETRIES[:6])
def test_finite_differences(geometry):
    x, ph, pw, stride, pad = make(geometry, seed=2)  # distinct values: no ties
    for module in BACKENDS.values():
        assert_finite_differences(lambda m=module: m.Pooling(ph, pw, stride, pad), (x,))


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_ties_go_to_the_first_maximum_in_row_major_order(backend):
    x = np.array([[[[1.0, 3.0], [3.0, 2.0]]]])
    layer = BACKENDS[backend].Pooling(2, 2, stride=2)
    assert layer.forward(x)[0, 0, 0, 0] == 3.0
    np.testing.assert_array_equal(layer.backward(np.ones((1, 1, 1, 1)))[0, 0], [[0, 1], [0, 0]])
    x = np.full((1, 1, 3, 3), 5.0)  # all equal, overlapping windows: each takes its first
    layer = BACKENDS[backend].Pooling(2, 2, stride=1)
    layer.forward(x)
    dx = layer.backward(np.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(dx[0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_overlapping_windows_add_their_gradients(backend):
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 1.0  # the maximum of all four 2x2 windows
    layer = BACKENDS[backend].Pooling(2, 2, stride=1)
    np.testing.assert_array_equal(layer.forward(x), np.ones((1, 1, 2, 2)))
    dx = layer.backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    assert dx[0, 0, 1, 1] == 10.0 and np.count_nonzero(dx) == 1


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_padding_never_wins(backend):
    """Padding counts in the output size but never wins a maximum: negative inputs give
    negative outputs (the book pads with zeros, which would win), and a -inf input still wins
    its window, so its gradient is not lost on the padding."""
    x = -1.0 - np.arange(9.0).reshape(1, 1, 3, 3)
    layer = BACKENDS[backend].Pooling(2, 2, stride=2, pad=1)
    out = layer.forward(x)
    assert out.shape == (1, 1, 2, 2)  # (3 + 2 - 2) // 2 + 1
    np.testing.assert_array_equal(out[0, 0], [[-1, -2], [-4, -5]])
    x = np.full((1, 1, 3, 3), -np.inf)
    out = layer.forward(x)
    np.testing.assert_array_equal(out, -np.inf)
    dx = layer.backward(np.ones((1, 1, 2, 2)))
    assert dx.sum() == 4.0
    np.testing.assert_array_equal(dx[0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_wins_its_window(backend, dtype):
    """As in PyTorch: a window with a NaN gives NaN, and its gradient goes to the first NaN."""
    x = np.array([[[[1.0, 5.0, 2.0, 2.0],
                    [np.nan, np.nan, 1.0, np.inf]]]], dtype=dtype)
    layer = BACKENDS[backend].Pooling(2, 2, stride=2)
    out = layer.forward(x)
    assert np.isnan(out[0, 0, 0, 0]) and out[0, 0, 0, 1] == np.inf
    dx = layer.backward(np.array([[[[3.0, 4.0]]]], dtype=dtype))
    np.testing.assert_array_equal(dx[0, 0], [[0, 0, 0, 0], [3, 0, 0, 4]])


def test_nan_and_inf_agree_between_backends():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 2, 7, 6))
    x[rng.random(x.shape) < 0.1] = np.nan
    x[rng.random(x.shape) < 0.1] = -np.inf
    x[rng.random(x.shape) < 0.05] = np.inf
    for ph, pw, stride, pad in [(2, 2, 2, 0), (3, 3, 1, 1), (3, 2, 2, 1)]:
        assert_layers_agree(lambda c, a=(ph, pw, stride, pad): layers.Pooling(*a),
                            lambda c, a=(ph, pw, stride, pad): reference.layers.Pooling(*a),
                            (x,), dtype=np.float64)


def test_book_attributes():
    x, ph, pw, stride, pad = make(GEOMETRIES[3])
    kernel = layers.Pooling(ph, pw, stride, pad)
    ref = reference.layers.Pooling(ph, pw, stride, pad)
    for layer in (kernel, ref):
        assert layer.x is None and layer.arg_max is None
        assert (layer.pool_h, layer.pool_w, layer.stride, layer.pad) == (ph, pw, stride, pad)
        layer.forward(x)
    np.testing.assert_array_equal(kernel.arg_max, ref.arg_max)
    np.testing.assert_array_equal(kernel.x, x)


def test_default_stride_is_the_books():
    assert layers.Pooling(2, 2).stride == reference.layers.Pooling(2, 2).stride == 1


def test_dtypes_and_no_mutation():
    x, ph, pw, stride, pad = make(GEOMETRIES[2])
    for module in BACKENDS.values():
        for dtype in (np.float32, np.float64, np.float16):
            xd = x.astype(dtype)
            keep = xd.copy()
            layer = module.Pooling(ph, pw, stride, pad)
            out = layer.forward(xd)
            dout = np.ones_like(out)
            assert out.dtype == dtype and layer.backward(dout).dtype == dtype
            np.testing.assert_array_equal(xd, keep)
            np.testing.assert_array_equal(dout, 1)
        ints = module.Pooling(2, 2, 2).forward(np.arange(16).reshape(1, 1, 4, 4))
        np.testing.assert_array_equal(ints, [[[[5, 7], [13, 15]]]])


def test_empty_batch():
    for module in BACKENDS.values():
        layer = module.Pooling(2, 2, 2)
        out = layer.forward(np.zeros((0, 3, 4, 4)))
        assert out.shape == (0, 3, 2, 2)
        assert layer.backward(out).shape == (0, 3, 4, 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bit_identical_at_every_thread_count(dtype, monkeypatch):
    monkeypatch.setattr(parallel, "PARALLEL_MIN_ELEMENTS", 0)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 7, 9, 8)).astype(dtype)
    results = []
    for n in sorted({1, 2, threads.numba.config.NUMBA_NUM_THREADS}):
        if n > threads.numba.config.NUMBA_NUM_THREADS:
            continue
        with threads.threads(n):
            got = []
            for ph, pw, stride, pad in [(2, 2, 2, 0), (3, 3, 1, 1)]:
                layer = layers.Pooling(ph, pw, stride, pad)
                out = layer.forward(x)
                got += [out.tobytes(), layer.backward(np.cos(out)).tobytes()]
            results.append(got)
    assert all(r == results[0] for r in results)


# --- bad input -------------------------------------------------------------------------------

BAD = {
    "x 3-d": ((1, 4, 4), (2, 2, 2, 0), ValueError, r"x must be 4-d \(N, C, H, W\)"),
    "pool 0": ((1, 1, 4, 4), (0, 2, 2, 0), ValueError, "pool_h must be positive; got 0"),
    "stride 0": ((1, 1, 4, 4), (2, 2, 0, 0), ValueError, "stride must be positive; got 0"),
    "stride -2": ((1, 1, 4, 4), (2, 2, -2, 0), ValueError, "stride must be positive; got -2"),
    "pad -1": ((1, 1, 4, 4), (2, 2, 2, -1), ValueError, "pad must be at least 0; got -1"),
    "pad over half": ((1, 1, 4, 4), (2, 2, 2, 2), ValueError, "more than half of the pool size"),
    "window too large": ((1, 1, 2, 3), (4, 4, 1, 0), ValueError,
                         "pool window of 4x4 is larger than the padded input of 2x3"),
    "no pixels": ((1, 1, 0, 0), (2, 2, 2, 1), ValueError, "no pixels to pool"),
    "float pool": ((1, 1, 4, 4), (2.0, 2, 2, 0), TypeError, "pool_h must be an integer"),
}


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises(case, backend):
    shape, args, error, message = BAD[case]
    with pytest.raises(error, match=message):
        BACKENDS[backend].Pooling(*args).forward(np.zeros(shape))


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_bad_backward_raises(backend):
    layer = BACKENDS[backend].Pooling(2, 2, 2)
    with pytest.raises(RuntimeError, match=r"backward called before Pooling\.forward"):
        layer.backward(np.zeros((1, 1, 2, 2)))
    layer.forward(np.zeros((1, 1, 4, 4)))
    with pytest.raises(ValueError, match=r"dout of shape \(1, 1, 3, 2\) does not match"):
        layer.backward(np.zeros((1, 1, 3, 2)))


def test_bad_input_never_crashes_the_kernel_process():
    code = textwrap.dedent("""
        import numpy as np
        from fastbp import layers
        from fastbp.kernels import parallel
        for threshold in (2**62, 0):
            parallel.PARALLEL_MIN_ELEMENTS = threshold
            for shape, args in [((1, 4, 4), (2, 2, 2, 0)), ((1, 1, 4, 4), (2, 2, 0, 0)),
                                ((1, 1, 4, 4), (2, 2, 2, 2)), ((1, 1, 2, 3), (4, 4, 1, 0)),
                                ((1, 1, 0, 0), (2, 2, 2, 1)), ((1, 1, 4, 4), (2, 2, 2, -1))]:
                try:
                    layers.Pooling(*args).forward(np.ones(shape))
                except ValueError:
                    print("ValueError")
                else:
                    print("NO ERROR", shape, args)
            layer = layers.Pooling(2, 2, 2)
            layer.forward(np.ones((3, 2, 6, 6)))
            for d in (np.ones(5), np.ones((3, 2, 3, 2)), np.ones((300, 2, 3, 3))):
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
    assert proc.stdout.split() == ["ValueError"] * 18, proc.stdout


# --- hypothesis ------------------------------------------------------------------------------


@st.composite
def poolings(draw):
    ph, pw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.integers(1, 3))
    pad = draw(st.integers(0, min(ph, pw) // 2))
    h = draw(st.integers(max(1, ph - 2 * pad), 9))
    w = draw(st.integers(max(1, pw - 2 * pad), 9))
    n, c = draw(st.integers(0, 3)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # Rounded values: ties are common, and both backends must pick the same winner.
    x = np.round(rng.standard_normal((n, c, h, w)), draw(st.sampled_from([0, 1, 6])))
    if draw(st.booleans()):
        x[rng.random(x.shape) < 0.1] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return x, ph, pw, stride, pad


@given(case=poolings(), dtype=st.sampled_from([np.float32, np.float64]),
       layout=st.sampled_from(list(LAYOUTS)))
def test_hypothesis_agreement(case, dtype, layout):
    x, ph, pw, stride, pad = case
    assert_layers_agree(lambda c: layers.Pooling(ph, pw, stride, pad),
                        lambda c: reference.layers.Pooling(ph, pw, stride, pad),
                        (LAYOUTS[layout](x.astype(dtype)),), dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ph, pw, stride, pad", [(2, 2, 2, 0), (2, 2, 1, 0), (3, 3, 1, 0),
                                                 (3, 3, 2, 1), (4, 3, 1, 1)])
def test_backends_give_the_same_bits(ph, pw, stride, pad, dtype):
    """docs/numerics.md: forward selects, backward adds each element's terms in the
    reference's order, so the backends agree bit for bit, overlapping windows included."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 3, 11, 10)).astype(dtype)
    results = []
    for module in BACKENDS.values():
        layer = module.Pooling(ph, pw, stride, pad)
        out = layer.forward(x)
        dout = np.random.default_rng(8).standard_normal(out.shape).astype(dtype)
        results.append([out.tobytes(), layer.backward(dout).tobytes()])
    assert results[0] == results[1]
