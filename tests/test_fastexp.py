"""The vectorisable exp (fastbp.kernels.fastexp) over its whole range, in both dtypes."""

import numpy as np
import pytest

from fastbp.kernels.fastexp import exp32, exp64, fast_exp
from fastbp.kernels.jit import kernel


@kernel
def _exp_array(x, out):
    for i in range(x.size):
        out[i] = fast_exp(x[i])


def fast(x):
    out = np.empty_like(x)
    _exp_array(x, out)
    return out


def ulp_error(dtype, x):
    """Error of the kernel in ulps of the correctly rounded result (a wider type's exp)."""
    wide = np.longdouble if dtype == np.float64 else np.float64
    with np.errstate(over="ignore", under="ignore"):
        exact = np.exp(x.astype(wide))
        rounded = exact.astype(dtype)
    got = fast(x)
    finite = np.isfinite(rounded) & (rounded > 0)
    spacing = np.spacing(rounded[finite]).astype(wide)
    err = np.abs(got[finite].astype(wide) - exact[finite]) / spacing
    return err, got, rounded, finite


# (lowest, highest) of each dtype's interesting range: overflow above, subnormals and 0 below
RANGES = {np.float64: [(-800, 800), (-1, 1), (-746, -700), (700, 710), (-30, 30)],
          np.float32: [(-120, 100), (-1, 1), (-104, -85), (85, 89), (-30, 30)]}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_within_two_ulp_over_the_whole_range(dtype):
    for lo, hi in RANGES[dtype]:
        x = np.linspace(lo, hi, 100_003).astype(dtype)
        err, got, rounded, finite = ulp_error(dtype, x)
        assert err.max() <= 2.0, (lo, hi, err.max())
        # overflow gives inf and underflow gives 0 exactly where the exact result does
        assert np.array_equal(got[~finite], rounded[~finite]), (lo, hi)
        assert got.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_arguments(dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(200_000) * 50).astype(dtype)
    err, *_ = ulp_error(dtype, x)
    assert err.max() <= 2.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values(dtype):
    info = np.finfo(dtype)
    x = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, info.tiny, -info.tiny,
                  info.smallest_subnormal, info.max, -info.max, 1.0], dtype=dtype)
    got = fast(x)
    assert np.isnan(got[0]) and np.isnan(got[1])
    assert got[2] == np.inf and got[3] == 0.0
    assert got[4] == 1.0 and got[5] == 1.0
    assert got[6] == 1.0 and got[7] == 1.0 and got[8] == 1.0  # exp(tiny) rounds to 1
    assert got[9] == np.inf and got[10] == 0.0
    assert abs(got[11] - dtype(np.e)) <= np.spacing(dtype(np.e))  # within an ulp


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_subnormal_results_are_correctly_rounded(dtype):
    info = np.finfo(dtype)
    lo = np.log(float(info.smallest_subnormal)) - 1
    hi = np.log(float(info.tiny)) + 1
    x = np.linspace(lo, hi, 50_001).astype(dtype)
    wide = np.longdouble if dtype == np.float64 else np.float64
    exact = np.exp(x.astype(wide))
    got = fast(x)
    # absolute error within one subnormal step (plus the normal-range ulp where results are normal)
    step = np.maximum(np.spacing(exact.astype(dtype)), info.smallest_subnormal).astype(wide)
    assert (np.abs(got.astype(wide) - exact) <= 1.0 * step).all()


def test_scalar_helpers_and_python_fallback():
    assert abs(exp64(np.float64(1.0)) - np.e) <= np.spacing(np.e)
    assert abs(exp32(np.float32(1.0)) - np.float32(np.e)) <= np.spacing(np.float32(np.e))
    assert fast_exp(np.float32(0.5)).dtype == np.float32  # plain Python: NumPy's exp


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_body_and_scalar_tail_agree(dtype):
    """The same element gives the same bits at every position (vector lanes or the tail)."""
    rng = np.random.default_rng(1)
    values = (rng.standard_normal(37) * 20).astype(dtype)
    reference = fast(values)
    for shift in range(1, 9):
        padded = np.concatenate([np.zeros(shift, dtype), values])
        assert fast(padded)[shift:].tobytes() == reference.tobytes()
