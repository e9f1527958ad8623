"""``numerical_gradient`` and ``numerical_gradient_2d`` (the book's) and ``gradient_check``
(``ch05/gradient_check.py``)."""

import numpy as np
import pytest

from fastbp.gradient import gradient_check, numerical_gradient, numerical_gradient_2d
from fastbp.nets import MultiLayerNet, TwoLayerNet


def test_numerical_gradient_of_a_known_function():
    x = np.array([[3.0, -4.0, 0.5], [1.0, 2.0, -0.25]])
    grad = numerical_gradient(lambda z: np.sum(z ** 3), x)
    # Central differences are exact for quadratics; for z**3 the error is h**2 = 1e-8.
    np.testing.assert_allclose(grad, 3 * x ** 2, rtol=0, atol=1.1e-8)
    assert grad.shape == x.shape and grad.dtype == x.dtype


def test_numerical_gradient_perturbs_in_place_and_restores():
    x = np.array([1.0, 2.0, 3.0])
    original = x.copy()
    seen = []

    def f(z):
        assert z is x  # the array itself, so layers holding it see the change
        seen.append(z.copy())
        return float(np.sum(z))

    numerical_gradient(f, x)
    np.testing.assert_array_equal(x, original)
    assert len(seen) == 2 * x.size
    np.testing.assert_allclose(seen[0], [1.0001, 2.0, 3.0])
    np.testing.assert_allclose(seen[1], [0.9999, 2.0, 3.0])


def test_numerical_gradient_restores_when_f_raises():
    x = np.array([1.0, 2.0])

    def f(z):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        numerical_gradient(f, x)
    np.testing.assert_array_equal(x, [1.0, 2.0])


def test_numerical_gradient_2d_passes_each_row_to_f():
    """The book's 2-d version calls ``f`` with each row (a view), not with the whole array."""
    X = np.array([[3.0, -4.0, 0.5], [1.0, 2.0, -0.25]])
    original = X.copy()
    seen = []

    def f(row):
        seen.append((row.shape, np.shares_memory(row, X)))
        return np.sum(row ** 3) + row[0] * row[-1]
    grad = numerical_gradient_2d(f, X)
    expected = 3 * X ** 2
    expected[:, 0] += X[:, -1]
    expected[:, -1] += X[:, 0]
    np.testing.assert_allclose(grad, expected, rtol=0, atol=1.1e-8)
    assert grad.shape == X.shape and grad.dtype == X.dtype
    assert set(seen) == {((3,), True)} and len(seen) == 2 * X.size
    np.testing.assert_array_equal(X, original)


def test_numerical_gradient_2d_of_a_closure_is_numerical_gradient():
    """``lambda W: net.loss(x, t)``, as the book uses it: the rows are views of the weights."""
    net = TwoLayerNet(4, 3, 2, rng=0, backend="reference")
    x = np.random.default_rng(1).random((5, 4))
    t = np.array([0, 1, 1, 0, 1])
    for key in ("W1", "b1"):
        two = numerical_gradient_2d(lambda W: net.loss(x, t), net.params[key])
        whole = numerical_gradient(lambda W: net.loss(x, t), net.params[key])
        np.testing.assert_array_equal(two, whole)


def test_numerical_gradient_2d_restores_when_f_raises_and_refuses_other_shapes():
    X = np.array([[1.0, 2.0], [3.0, 4.0]])
    calls = []

    def f(row):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return 0.0
    with pytest.raises(RuntimeError):
        numerical_gradient_2d(f, X)
    np.testing.assert_array_equal(X, [[1.0, 2.0], [3.0, 4.0]])
    for bad in (np.float64(1.0), np.ones((2, 2, 2))):
        with pytest.raises(ValueError, match="1-d or 2-d"):
            numerical_gradient_2d(lambda z: 0.0, bad)


def digits_batch(n=3):
    rng = np.random.default_rng(7)
    x = rng.random((n, 64))
    t = rng.integers(0, 10, n)
    return x, t


@pytest.mark.parametrize("one_hot", [False, True], ids=["labels", "one-hot"])
@pytest.mark.parametrize("backend", ["kernel", "reference"])
def test_gradient_check_two_layer_net(backend, one_hot, capsys):
    """The issue's target: differences <= 1e-8 for every parameter in float64."""
    x, t = digits_batch()
    if one_hot:
        t = np.eye(10)[t]
    net = TwoLayerNet(64, 12, 10, backend=backend, rng=0)
    diffs = gradient_check(net, x, t)
    assert set(diffs) == {"W1", "b1", "W2", "b2"}
    for key, diff in diffs.items():
        assert isinstance(diff, float)
        assert diff <= 1e-8, (key, diff)
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"{key}:{diffs[key]}" for key in ("W1", "b1", "W2", "b2")]


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
@pytest.mark.parametrize("backend", ["kernel", "reference"])
def test_gradient_check_multi_layer_net_with_weight_decay(backend, activation):
    x, t = digits_batch()
    net = MultiLayerNet(64, [8, 6], 10, activation=activation, weight_decay_lambda=0.1,
                        backend=backend, rng=1)
    diffs = gradient_check(net, x, t, verbose=False)
    assert set(diffs) == {"W1", "b1", "W2", "b2", "W3", "b3"}
    assert max(diffs.values()) <= 1e-8, diffs


def test_gradient_check_catches_a_wrong_gradient():
    x, t = digits_batch()
    net = TwoLayerNet(64, 12, 10, rng=0)
    right = net.gradient

    def wrong(x, t):
        grads = right(x, t)
        return dict(grads, b2=grads["b2"] * 1.01)

    net.gradient = wrong
    diffs = gradient_check(net, x, t, verbose=False)
    assert diffs["b2"] > 1e-6
    assert diffs["W1"] <= 1e-8
