"""BatchNormalization on both backends: agreement, gradients, the book's semantics, edge cases,
bad input, dtypes, layouts, no mutation and determinism."""

import hashlib
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from layouts import LAYOUTS

from fastbp import layers, reference, threads
from fastbp.kernels import batchnorm as kernels
from fastbp.kernels import parallel
from fastbp.testing import assert_finite_differences, assert_layers_agree

BACKENDS = {"kernel": layers, "reference": reference.layers}
EPS = 10e-7
TRAIN_GRADS = ("dgamma", "dbeta", "running_mean", "running_var", "xc", "xn", "std")
TEST_GRADS = ("dgamma", "dbeta", "running_mean", "running_var")


@pytest.fixture(params=list(BACKENDS))
def L(request):
    return BACKENDS[request.param]


def data(shape, seed=0, loc=0.5, scale=2.0):
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape[1:]))
    x = loc + scale * rng.standard_normal(shape)
    return x, rng.uniform(0.5, 2, d), rng.standard_normal(d), rng.standard_normal(d), \
        rng.uniform(0.5, 2, d)


def book_forward(x, gamma, beta, running_mean, running_var, momentum, train):
    """The book's arithmetic, in float64, written out for a check of the reference itself."""
    x2 = x.reshape(x.shape[0], -1)
    if train:
        mu = x2.mean(axis=0)
        xc = x2 - mu
        var = np.mean(xc ** 2, axis=0)
        xn = xc / np.sqrt(var + EPS)
        running_mean = momentum * running_mean + (1 - momentum) * mu
        running_var = momentum * running_var + (1 - momentum) * var
    else:
        xn = (x2 - running_mean) / np.sqrt(running_var + EPS)
    return (gamma * xn + beta).reshape(x.shape), running_mean, running_var


# --- agreement ----------------------------------------------------------------------------


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 3), (9, 17), (2, 1, 5, 3), (3, 2, 3, 3), (1, 7)])
def test_agreement(shape, dtype, train, build):
    x, gamma, beta, rm, rv = data(shape, seed=sum(shape))
    assert_layers_agree(
        lambda c: layers.BatchNormalization(c(gamma), c(beta), 0.7, c(rm), c(rv)),
        lambda c: reference.layers.BatchNormalization(c(gamma), c(beta), 0.7, c(rm), c(rv)),
        (x, np.bool_(train)), dtype=dtype, grads=TRAIN_GRADS if train else TEST_GRADS)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parameter_and_statistic_layouts(layout, dtype):
    """gamma, beta and the running statistics in any layout; dout too."""
    x, gamma, beta, rm, rv = data((6, 5), seed=4)
    prep = LAYOUTS[layout]
    dout = prep(np.random.default_rng(5).standard_normal((6, 5)).astype(dtype))
    for train in (True, False):
        assert_layers_agree(
            lambda c: layers.BatchNormalization(prep(c(gamma)), prep(c(beta)), 0.9,
                                                prep(c(rm)), prep(c(rv))),
            lambda c: reference.layers.BatchNormalization(c(gamma), c(beta), 0.9, c(rm), c(rv)),
            (prep(x.astype(dtype)), np.bool_(train)), dtype=dtype, dout=dout,
            grads=TEST_GRADS)


@pytest.mark.parametrize("form", ["scalar", "(1,)", "(1, D)"])
def test_gamma_and_beta_that_broadcast(form):
    x, gamma, beta, _, _ = data((4, 3), seed=6)
    shape = {"scalar": (), "(1,)": (1,), "(1, D)": (1, 3)}[form]
    g = np.full(shape, 1.5) if shape != (1, 3) else gamma.reshape(1, 3)
    b = np.full(shape, -0.5) if shape != (1, 3) else beta.reshape(1, 3)
    result = assert_layers_agree(
        lambda c: layers.BatchNormalization(c(g), c(b)),
        lambda c: reference.layers.BatchNormalization(c(g), c(b)),
        (x,), dtype=np.float64, grads=("dgamma", "dbeta"))
    assert result.passed
    layer = layers.BatchNormalization(g, b)
    layer.forward(x)
    layer.backward(np.ones_like(x))
    assert layer.dgamma.shape == (3,) and layer.dbeta.shape == (3,)  # per feature, as the book


def test_reference_is_the_books_arithmetic():
    x, gamma, beta, rm, rv = data((6, 2, 2), seed=7)
    for train in (True, False):
        layer = reference.layers.BatchNormalization(gamma, beta, 0.8, rm, rv)
        out = layer.forward(x, train)
        want, want_rm, want_rv = book_forward(x, gamma, beta, rm, rv, 0.8, train)
        np.testing.assert_allclose(out, want, rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(layer.running_mean, want_rm, rtol=1e-15)
        np.testing.assert_allclose(layer.running_var, want_rv, rtol=1e-15)


def test_by_hand():
    """Two features, two rows: mean (2, 4), biased variance (1, 4)."""
    x = np.array([[1.0, 2.0], [3.0, 6.0]])
    for L in BACKENDS.values():
        layer = L.BatchNormalization(np.array([2.0, 1.0]), np.array([0.0, 1.0]))
        out = layer.forward(x)
        s = np.sqrt(np.array([1.0, 4.0]) + EPS)
        np.testing.assert_allclose(out, [[-2 / s[0], 1 - 2 / s[1]], [2 / s[0], 1 + 2 / s[1]]],
                                   rtol=1e-15)
        np.testing.assert_allclose(layer.running_mean, [0.2, 0.4], rtol=1e-15)
        np.testing.assert_allclose(layer.running_var, [0.1, 0.4], rtol=1e-15)
        assert layer.batch_size == 2 and layer.input_shape == (2, 2)


# --- gradients ----------------------------------------------------------------------------


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(5, 3), (3, 4), (3, 2, 2, 2)])
def test_finite_differences(L, shape, train):
    # Not N = 2: there dx is eps / var of its terms (1e-7), below what differences resolve.

    x, gamma, beta, rm, rv = data(shape, seed=8)
    checks = assert_finite_differences(
        lambda: L.BatchNormalization(gamma.copy(), beta.copy(), 0.9, rm, rv),
        (x, np.bool_(train)), params={"gamma": "dgamma", "beta": "dbeta"})
    assert [c.quantity for c in checks] == ["d(input 0)", "dgamma", "dbeta"]


def test_backward_after_a_test_pass_is_the_affine_maps_derivative(L):
    x, gamma, beta, rm, rv = data((4, 3), seed=9)
    layer = L.BatchNormalization(gamma, beta, running_mean=rm, running_var=rv)
    layer.forward(x, train_flg=False)
    dout = np.random.default_rng(1).standard_normal((4, 3))
    dx = layer.backward(dout)
    np.testing.assert_allclose(dx, dout * gamma / np.sqrt(rv + EPS), rtol=1e-14)
    np.testing.assert_allclose(layer.dgamma, np.sum(dout * (x - rm) / np.sqrt(rv + EPS), 0),
                               rtol=1e-13)
    np.testing.assert_allclose(layer.dbeta, dout.sum(0), rtol=1e-14)


# --- the book's semantics ---------------------------------------------------------------


def test_per_feature_not_per_channel(L):
    x = np.random.default_rng(10).standard_normal((8, 2, 3, 3))
    layer = L.BatchNormalization(np.ones(18), np.zeros(18))
    out = layer.forward(x)
    flat = out.reshape(8, 18)
    np.testing.assert_allclose(flat.mean(axis=0), 0, atol=1e-14)
    np.testing.assert_allclose(flat.var(axis=0), 1, rtol=1e-5)  # eps keeps it just under 1
    assert layer.running_mean.shape == (18,) and out.shape == x.shape
    with pytest.raises(ValueError, match=r"gamma of shape \(2,\)"):
        L.BatchNormalization(np.ones(2), np.zeros(2)).forward(x)  # per channel: not the book


def test_running_statistics_start_at_zero_and_follow_momentum(L):
    x, gamma, beta, _, _ = data((6, 4), seed=11)
    layer = L.BatchNormalization(gamma, beta, momentum=0.75)
    assert layer.running_mean is None and layer.running_var is None
    before = layer.forward(x, train_flg=False)  # before any training: the book's zeros
    np.testing.assert_allclose(before, gamma * x / np.sqrt(EPS) + beta, rtol=1e-12)
    rm, rv = layer.running_mean, layer.running_var
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 0)
    batches = [x, 2 * x + 1, x[:3]]
    want_m, want_v = np.zeros(4), np.zeros(4)
    for b in batches:
        layer.forward(b)
        want_m = 0.75 * want_m + 0.25 * b.mean(axis=0)
        want_v = 0.75 * want_v + 0.25 * b.var(axis=0)
    np.testing.assert_allclose(layer.running_mean, want_m, rtol=1e-14)
    np.testing.assert_allclose(layer.running_var, want_v, rtol=1e-14)
    assert layer.running_mean is rm and layer.running_var is rv  # updated in place: owned arrays
    out = layer.forward(x, train_flg=False)
    np.testing.assert_allclose(out, gamma * (x - want_m) / np.sqrt(want_v + EPS) + beta,
                               rtol=1e-12)
    np.testing.assert_allclose(layer.running_mean, want_m, rtol=1e-14)  # test mode: unchanged


def test_given_running_statistics_are_copied_never_written(L):
    x, gamma, beta, rm, rv = data((5, 3), seed=12)
    rm0, rv0 = rm.copy(), rv.copy()
    layer = L.BatchNormalization(gamma, beta, 0.9, rm, rv)
    layer.forward(x, train_flg=False)
    assert layer.running_mean is rm  # test mode only reads them
    layer.forward(x)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    assert layer.running_mean is not rm
    np.testing.assert_allclose(layer.running_mean, 0.9 * rm0 + 0.1 * x.mean(0), rtol=1e-14)
    own = layer.running_mean
    layer.forward(x)
    assert layer.running_mean is own
    replacement = np.zeros(3)
    layer.running_mean = replacement  # an assigned array is the caller's: copied, not written
    layer.forward(x)
    np.testing.assert_array_equal(replacement, 0)
    np.testing.assert_allclose(layer.running_mean, 0.1 * x.mean(0), rtol=1e-14)


def test_gamma_and_beta_are_read_on_every_call(L):
    x, gamma, beta, _, _ = data((5, 3), seed=13)
    layer = L.BatchNormalization(gamma, beta)
    first = layer.forward(x)
    gamma *= 2  # an optimizer's in-place update
    np.testing.assert_allclose(layer.forward(x) - beta, 2 * (first - beta), rtol=1e-13)
    layer.beta = beta + 1  # reassignment
    np.testing.assert_allclose(layer.forward(x) - 1 - beta, 2 * (first - beta), rtol=1e-13)


def test_attributes_are_the_books(L):
    x, gamma, beta, _, _ = data((5, 2, 3), seed=14)
    layer = L.BatchNormalization(gamma, beta)
    for name in ("input_shape", "running_mean", "running_var", "batch_size", "xc", "xn", "std",
                 "dgamma", "dbeta"):
        assert getattr(layer, name) is None, name
    assert layer.gamma is gamma and layer.beta is beta and layer.momentum == 0.9
    layer.forward(x)
    layer.backward(np.ones_like(x))
    x2 = x.reshape(5, 6)
    assert layer.input_shape == (5, 2, 3) and layer.batch_size == 5
    np.testing.assert_allclose(layer.xc, x2 - x2.mean(0), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(layer.std, np.sqrt(x2.var(0) + EPS), rtol=1e-14)
    np.testing.assert_allclose(layer.xn, layer.xc / layer.std, rtol=1e-13, atol=1e-15)
    assert layer.dgamma.shape == layer.dbeta.shape == (6,)
    xn, std = layer.xn, layer.std
    layer.forward(x + 1, train_flg=False)  # the book's test pass leaves them as they were
    assert layer.std is std
    np.testing.assert_array_equal(layer.xn, xn)


# --- NUMERICS.md rows ---------------------------------------------------------------------


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_of_one_gives_beta_without_warning(L, dtype):
    x = np.array([[3.0, -1.0, 7.5]], dtype=dtype)
    gamma, beta = np.array([2, 3, 4], dtype=dtype), np.array([0.5, -1, 2], dtype=dtype)
    layer = L.BatchNormalization(gamma, beta)
    out = layer.forward(x)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, beta.reshape(1, 3))
    np.testing.assert_array_equal(layer.xn, 0)
    np.testing.assert_array_equal(layer.running_var, 0)
    np.testing.assert_allclose(layer.running_mean, 0.1 * x[0], rtol=1e-6)
    dx = layer.backward(np.array([[1.0, 2.0, 3.0]], dtype=dtype))
    np.testing.assert_array_equal(dx, 0)
    np.testing.assert_array_equal(layer.dgamma, 0)
    np.testing.assert_array_equal(layer.dbeta, [1, 2, 3])


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("shape", [(0, 4), (0, 2, 3, 3)])
def test_empty_batch(L, shape):
    d = int(np.prod(shape[1:]))
    layer = L.BatchNormalization(np.ones(d), np.zeros(d), running_mean=np.ones(d),
                                 running_var=np.ones(d))
    layer.forward(np.ones((3, *shape[1:])))
    rm, rv = layer.running_mean.copy(), layer.running_var.copy()
    out = layer.forward(np.zeros(shape))
    assert out.shape == shape and layer.batch_size == 0
    assert np.isnan(layer.std).all() and layer.xn.shape == (0, d)
    np.testing.assert_array_equal(layer.running_mean, rm)  # no information: unchanged
    np.testing.assert_array_equal(layer.running_var, rv)
    dx = layer.backward(np.zeros(shape))
    assert dx.shape == shape
    np.testing.assert_array_equal(layer.dgamma, np.zeros(d))
    np.testing.assert_array_equal(layer.dbeta, np.zeros(d))
    assert layer.forward(np.zeros(shape), train_flg=False).shape == shape


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_stay_in_their_feature(L, bad, dtype):
    x, gamma, beta, rm, rv = data((6, 5), seed=15)
    x = x.astype(dtype)
    x[2, 3] = bad
    layer = L.BatchNormalization(gamma.astype(dtype), beta.astype(dtype))
    out = layer.forward(x)
    assert np.isnan(out[:, 3]).all()
    clean = L.BatchNormalization(np.delete(gamma, 3).astype(dtype),
                                 np.delete(beta, 3).astype(dtype))
    np.testing.assert_array_equal(np.delete(out, 3, axis=1), clean.forward(np.delete(x, 3, 1)))
    assert not np.isfinite(layer.running_mean[3])
    assert np.isfinite(np.delete(layer.running_mean, 3)).all()
    dx = layer.backward(np.ones_like(x))
    assert np.isnan(dx[:, 3]).all() and np.isfinite(np.delete(dx, 3, axis=1)).all()
    # Test mode with fixed statistics: only the bad element.
    fixed = L.BatchNormalization(gamma.astype(dtype), beta.astype(dtype), 0.9, rm, rv)
    out = fixed.forward(x, train_flg=False)
    assert np.isnan(out[2, 3]) if np.isnan(bad) else np.isinf(out[2, 3])
    assert np.isfinite(np.delete(out.reshape(-1), 2 * 5 + 3)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "bad", [[np.inf], [-np.inf], [np.nan], [np.inf, -np.inf], [np.inf, np.inf]],
    ids=["inf", "-inf", "nan", "inf and -inf", "two infs"])
def test_a_non_finite_dout_makes_its_features_dx_nan_in_both_backends(bad, dtype):
    """Train mode: the book's chain makes ``dmu`` NaN, so the whole feature's ``dx`` is NaN;
    the kernel's closed form gave ``-inf`` at some rows until it checked for it."""
    x, gamma, beta, _, _ = data((6, 5), seed=16)
    dout = np.random.default_rng(17).standard_normal((6, 5))
    for row, value in enumerate(bad):
        dout[2 * row + 1, 3] = value
    results = []
    for module in (layers, reference.layers):
        layer = module.BatchNormalization(gamma.astype(dtype), beta.astype(dtype))
        layer.forward(x.astype(dtype))
        results.append((layer.backward(dout.astype(dtype)), layer.dgamma, layer.dbeta))
    for dx, _, _ in results:
        assert np.isnan(dx[:, 3]).all() and np.isfinite(np.delete(dx, 3, axis=1)).all()
    for got, want in zip(*results, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # NaN meets NaN


# --- dtypes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_output_keeps_the_dtype(L, dtype):
    x, gamma, beta, rm, rv = (a.astype(dtype) for a in data((5, 2, 2), seed=16))
    layer = L.BatchNormalization(gamma, beta)
    out = layer.forward(x)
    dx = layer.backward(np.ones_like(x))
    for name, a in [("out", out), ("dx", dx), ("dgamma", layer.dgamma), ("dbeta", layer.dbeta),
                    ("std", layer.std), ("xc", layer.xc), ("xn", layer.xn),
                    ("running_mean", layer.running_mean), ("running_var", layer.running_var),
                    ("test out", layer.forward(x, False)), ("test dx", layer.backward(x))]:
        assert a.dtype == dtype, name
    given = L.BatchNormalization(gamma, beta, 0.9, rm, rv)  # float32 statistics stay float32
    given.forward(x)
    assert given.running_mean.dtype == dtype


@pytest.mark.parametrize("x_dtype, param_dtype, want", [
    (np.float32, np.float64, np.float64),
    (np.float16, np.float16, np.float16),
    (np.int64, np.float32, np.float64),
    (np.int8, np.float32, np.float32),
    (np.uint8, np.float16, np.float16),
])
def test_mixed_and_other_dtypes_follow_numpy_promotion(x_dtype, param_dtype, want):
    x = np.arange(-6, 6).reshape(4, 3).astype(x_dtype)
    results = []
    for L in BACKENDS.values():
        layer = L.BatchNormalization(np.ones(3, param_dtype), np.zeros(3, param_dtype))
        out = layer.forward(x)
        assert out.dtype == want
        dx = layer.backward(np.ones(x.shape, dtype=param_dtype))
        assert dx.dtype == layer.dgamma.dtype == layer.dbeta.dtype
        assert np.promote_types(dx.dtype, want) == dx.dtype
        results.append(out.astype(np.float64))
    np.testing.assert_allclose(results[0], results[1], rtol=2e-3)


def test_float32_accumulates_in_float64():
    """A large offset with a small spread: float32 sums would lose the spread; the kernel keeps
    it (its float32 result is the float64 result, rounded)."""
    rng = np.random.default_rng(17)
    x = (1000.0 + 0.01 * rng.standard_normal((256, 8))).astype(np.float32)
    want = layers.BatchNormalization(np.ones(8), np.zeros(8)).forward(x.astype(np.float64))
    got = layers.BatchNormalization(np.ones(8, np.float32), np.zeros(8, np.float32)).forward(x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# --- bad input ---------------------------------------------------------------------------


BAD = {
    "gamma": (lambda L: L.BatchNormalization(np.ones(4), np.zeros(5)).forward(np.ones((2, 5))),
              ValueError, r"gamma of shape \(4,\) does not fit x of shape \(2, 5\)"),
    "beta": (lambda L: L.BatchNormalization(np.ones(6), np.zeros((2, 6))).forward(
        np.ones((2, 2, 3))), ValueError, r"beta of shape \(2, 6\) does not fit x of shape"),
    "running_mean": (lambda L: L.BatchNormalization(np.ones(3), np.zeros(3), 0.9, np.zeros(4),
                                                    np.ones(3)).forward(np.ones((2, 3))),
                     ValueError, r"running_mean of shape \(4,\) does not fit x of shape \(2, 3\)"),
    "running_var": (lambda L: L.BatchNormalization(np.ones(3), np.zeros(3), 0.9, np.zeros(3),
                                                   np.ones((1, 3))).forward(np.ones((2, 3)),
                                                                            False),
                    ValueError, r"running_var of shape \(1, 3\) does not fit"),
    "1-d x": (lambda L: L.BatchNormalization(np.ones(3), np.zeros(3)).forward(np.ones(3)),
              ValueError, r"x must have at least 2 axes"),
    "complex x": (lambda L: L.BatchNormalization(np.ones(2), np.zeros(2)).forward(
        np.ones((2, 2), complex)), TypeError, "real numeric"),
    "backward first": (lambda L: L.BatchNormalization(np.ones(2), np.zeros(2)).backward(
        np.ones((2, 2))), RuntimeError, "before BatchNormalization.forward"),
}


def _wrong_dout(L):
    layer = L.BatchNormalization(np.ones(3), np.zeros(3))
    layer.forward(np.ones((4, 3)))
    layer.backward(np.ones((4, 2)))


BAD["dout"] = (_wrong_dout, ValueError, r"dout of shape \(4, 2\) does not match")


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_raises_the_same_clear_error_on_both_backends(name):
    case, kind, message = BAD[name]
    texts = []
    for L in BACKENDS.values():
        with pytest.raises(kind, match=message) as info:
            case(L)
        texts.append(str(info.value))
    assert texts[0] == texts[1]


def test_a_rejected_call_changes_nothing(L):
    layer = L.BatchNormalization(np.ones(3), np.zeros(3), 0.9, np.zeros(3), np.ones(3))
    given = layer.running_mean
    with pytest.raises(ValueError):
        layer.running_var = np.ones(4)
        layer.forward(np.ones((2, 3)))
    assert layer.running_mean is given and layer.input_shape is None


def test_bad_input_never_crashes_the_threaded_kernels():
    code = textwrap.dedent("""
        import numpy as np
        from fastbp import layers
        from fastbp.kernels import parallel
        parallel.settings(parallel_min_elements=0).__enter__()  # for the whole script
        cases = {
            "gamma": lambda: layers.BatchNormalization(np.ones(40), np.zeros(50)).forward(
                np.ones((300, 50))),
            "running": lambda: layers.BatchNormalization(np.ones(50), np.zeros(50), 0.9,
                                                         np.zeros(7), np.ones(50)).forward(
                np.ones((300, 50))),
            "dout": lambda: (lambda l: (l.forward(np.ones((300, 50))),
                                        l.backward(np.ones(3))))(
                layers.BatchNormalization(np.ones(50), np.zeros(50))),
        }
        for name, case in cases.items():
            try:
                case()
            except ValueError:
                print(name, "ValueError")
            else:
                print(name, "NO ERROR")
        l = layers.BatchNormalization(np.ones(50), np.zeros(50))
        l.backward(l.forward(np.ones((300, 50))))
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:4] == ["gamma ValueError", "running ValueError",
                                           "dout ValueError", "ok"], proc.stdout


# --- no mutation ------------------------------------------------------------------------


def checksum(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def test_no_argument_is_written(L):
    x, gamma, beta, rm, rv = data((6, 2, 2), seed=18)
    dout = np.random.default_rng(2).standard_normal(x.shape)
    before = checksum(x, gamma, beta, rm, rv, dout)
    layer = L.BatchNormalization(gamma, beta, 0.9, rm, rv)
    for train in (True, False, True):
        layer.forward(x, train)
        layer.backward(dout)
    _ = layer.xc, layer.xn
    assert checksum(x, gamma, beta, rm, rv, dout) == before


# --- determinism ------------------------------------------------------------------------


def _run(x, gamma, beta, dout):
    layer = layers.BatchNormalization(gamma, beta)
    out = [layer.forward(x), layer.backward(dout), layer.dgamma, layer.dbeta, layer.std,
           layer.running_mean, layer.running_var]
    out += [layer.forward(x, False), layer.backward(dout), layer.dgamma]
    return [a.tobytes() for a in out]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bit_identical_across_builds_thread_counts_and_blocks(dtype, monkeypatch):
    rng = np.random.default_rng(19)
    x = (rng.standard_normal((130, 300)) + 3).astype(dtype)
    dout = rng.standard_normal((130, 300)).astype(dtype)
    gamma, beta = rng.uniform(0.5, 2, 300).astype(dtype), rng.standard_normal(300).astype(dtype)
    with parallel.settings(parallel_min_elements=parallel.BUILDS["serial"]):
        serial = _run(x, gamma, beta, dout)
        assert _run(x, gamma, beta, dout) == serial
    with parallel.settings(parallel_min_elements=parallel.BUILDS["threaded"]):
        for n in sorted({1, 2, numba.config.NUMBA_NUM_THREADS}):
            if n <= numba.config.NUMBA_NUM_THREADS:
                with threads.threads(n):
                    assert _run(x, gamma, beta, dout) == serial, n
        monkeypatch.setattr(kernels, "BLOCK_BYTES", 1 << 12)  # 16-column blocks, many of them
        monkeypatch.setattr(kernels, "MIN_COLUMNS", 16)
        assert kernels.column_block(130, 8, 300) == 16
        assert _run(x, gamma, beta, dout) == serial


def test_column_block_widths():
    with threads.threads(1):
        assert kernels.column_block(100, 8, 100) == 100
        assert kernels.column_block(256, 8, 4096) == 512
        assert kernels.column_block(256, 4, 4096) == 1024
        assert kernels.column_block(100000, 8, 5) == 5
        assert kernels.column_block(100000, 8, 5000) == 256
        assert kernels.column_block(0, 8, 0) == 1
    if numba.config.NUMBA_NUM_THREADS >= 2:
        with threads.threads(2):  # a block for each thread
            assert kernels.column_block(10, 8, 4096) == 2048


# --- hypothesis -------------------------------------------------------------------------


FINITE = st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False, width=32)
SPECIAL = st.one_of(FINITE, st.sampled_from([np.inf, -np.inf, np.nan]))


def cancellation_scales(x2, gamma, dout, n):
    """Lower bounds on the scale of each compared quantity, for results that are rounding noise
    of larger terms: a column whose spread is far below its values (``xc`` is then the rounding
    of the mean, which the summation order changes), and ``dx`` of a batch of 2, where
    ``dout - mean(dout) - xn * mean(xn * dout)`` cancels to ``eps / var`` of its terms."""
    if n == 0:
        return {}
    finite = np.isfinite(x2).all(axis=0)  # features with inf or NaN are NaN throughout
    x2 = x2[:, finite]
    std = np.sqrt(np.var(x2, axis=0) + EPS)
    size = np.max(np.abs(x2), axis=0, initial=0.0)
    c = float(np.max(size / std, initial=0.0)) * n * 1e-3
    g = float(np.max(np.abs(gamma), initial=0.0))
    k = g * float(np.max(1 / std, initial=0.0))
    dmax = float(np.max(np.abs(dout), initial=0.0))
    return {"forward": g * c, "xn": c, "xc": float(np.max(size, initial=0.0)) * n * 1e-3,
            "backward": 1e-3 * n * k * dmax * (1 + c), "dgamma": c * dmax * n}


@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float64]),
       train=st.booleans(), layout=st.sampled_from(list(LAYOUTS)),
       backend=st.sampled_from(list(BACKENDS)), four_d=st.booleans())
def test_hypothesis_against_the_float64_oracle(data, dtype, train, layout, backend, four_d):
    if backend == "reference":
        dtype = np.float64  # the reference in float32 computes in float32: no oracle for it
    n = data.draw(st.integers(0, 9))
    shape = (n, 2, data.draw(st.integers(1, 3))) if four_d else (n, data.draw(st.integers(1, 9)))
    elements = SPECIAL if backend == "kernel" else FINITE
    x = data.draw(hnp.arrays(np.float64, shape, elements=elements))
    d = int(np.prod(shape[1:]))
    params = st.floats(-10, 10, allow_nan=False, width=32)
    gamma = data.draw(hnp.arrays(np.float64, (d,), elements=params))
    beta = data.draw(hnp.arrays(np.float64, (d,), elements=params))
    rm = data.draw(hnp.arrays(np.float64, (d,), elements=params))
    rv = data.draw(hnp.arrays(np.float64, (d,), elements=st.floats(0, 10, width=32)))
    dout = data.draw(hnp.arrays(np.float64, shape, elements=params)).astype(dtype)
    x = x.astype(dtype)
    x2 = x.reshape(n, d).astype(np.float64)
    scales = cancellation_scales(x2, gamma, dout.reshape(n, d), n) if train else {}
    L = BACKENDS[backend]
    prep = LAYOUTS[layout]
    assert_layers_agree(
        lambda c: L.BatchNormalization(prep(c(gamma)), c(beta), 0.9, c(rm), c(rv)),
        lambda c: reference.layers.BatchNormalization(c(gamma), c(beta), 0.9, c(rm), c(rv)),
        (prep(x), np.bool_(train)), dtype=dtype, dout=dout,
        grads=TRAIN_GRADS if train else TEST_GRADS, scales=scales)
