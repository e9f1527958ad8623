"""fastbp.functions (kernel-backed where it pays) against fastbp.reference.functions."""

import warnings

import numpy as np
import pytest

from fastbp import functions as F
from fastbp import reference
from fastbp.testing import tolerances

R = reference.functions


def assert_close(got, want, dtype):
    rtol, atol = tolerances(dtype, float(np.max(np.abs(want), initial=0)))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    assert got.dtype == np.dtype(dtype)


@pytest.mark.parametrize("shape", [(), (5,), (1, 5), (4, 7), (2, 3, 6), (3, 0), (0, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_any_rank(shape, dtype, build):
    x = (4 * np.random.default_rng(0).standard_normal(shape)).astype(dtype)
    got = F.softmax(x)
    assert got.shape == x.shape
    assert_close(got, R.softmax(x.astype(np.float64)).astype(dtype), dtype)
    if x.size:
        np.testing.assert_allclose(got.sum(axis=-1), 1, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_and_grad(dtype, build):
    x = (10 * np.random.default_rng(1).standard_normal((5, 9))).astype(dtype)
    assert_close(F.sigmoid(x), R.sigmoid(x.astype(np.float64)).astype(dtype), dtype)
    assert_close(F.sigmoid_grad(x), R.sigmoid_grad(x.astype(np.float64)).astype(dtype), dtype)


def test_sigmoid_no_overflow_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert F.sigmoid(np.array([-1000.0]))[0] == 0.0
        assert F.sigmoid(np.array([-89.0], np.float32))[0] >= 0
        assert R.sigmoid(np.array([-1000.0]))[0] == 0.0


def test_simple_functions_keep_the_books_meaning():
    x = np.array([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(F.relu(x), [0, 0, 2])
    np.testing.assert_array_equal(F.relu_grad(x), [0, 1, 1])  # the book: 1 where x >= 0
    np.testing.assert_array_equal(F.step_function(x), [0, 0, 1])
    assert F.step_function(x).dtype.kind == "i"
    assert F.identity_function(x) is x
    assert F.sum_squared_error(np.array([0.5, 0.5]), np.array([1.0, 0.0])) == 0.25


def test_cross_entropy_error_keeps_the_guard():
    y = np.array([[0.0, 1.0], [0.5, 0.5]])
    # label 0 of row 0 has probability 0: the guard gives -log(1e-7) instead of inf
    got = F.cross_entropy_error(y, np.array([0, 1]))
    assert got == pytest.approx((-np.log(1e-7) - np.log(0.5 + 1e-7)) / 2)
    assert F.cross_entropy_error(y, np.array([[1.0, 0.0], [0.0, 1.0]])) == got
    assert F.cross_entropy_error(y[1], np.array([0.0, 1.0])) == pytest.approx(
        -np.log(0.5 + 1e-7))
    with pytest.raises(IndexError, match="label 2 at row 1"):
        F.cross_entropy_error(y, np.array([0, 2]))


def test_softmax_loss():
    x = np.array([[1.0, 2.0, 3.0]])
    assert F.softmax_loss(x, np.array([2])) == pytest.approx(
        -np.log(np.exp(3) / np.exp([1, 2, 3]).sum() + 1e-7))


def test_softmax_does_not_touch_its_input():
    x = np.array([[1.0, 2.0], [3.0, 5.0]])
    x.setflags(write=False)
    F.softmax(x)
    F.sigmoid(x)


@pytest.mark.parametrize("module", [F, R], ids=["kernel", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scalar_input_gives_a_numpy_scalar_as_the_books(module, dtype):
    """The book's formulas on a scalar give a NumPy scalar (NumPy's arithmetic on 0-d arrays
    does); sigmoid and softmax gave a 0-d array."""
    x = dtype(0.5)
    for f in (module.sigmoid, module.softmax, module.sigmoid_grad):
        y = f(x)
        assert isinstance(y, np.generic) and y.dtype == dtype, (f.__name__, type(y))
    assert isinstance(module.sigmoid(0.5), np.float64)
    assert module.sigmoid(np.array([0.5])).shape == (1,)
