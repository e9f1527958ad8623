"""The book's chapter-5 code, run on fastbp with only its imports changed.

``BookTwoLayerNet`` follows ``ch05/two_layer_net.py`` statement for statement: a ``params`` dict
whose arrays the layers hold, an ``OrderedDict`` of layers, ``lastLayer``, the book's central-
difference ``numerical_gradient``, and in-place SGD updates as in ``train_neuralnet.py``. The
layer module is a parameter, as an import line would be.
"""

from collections import OrderedDict

import numpy as np
import pytest

import fastbp
from fastbp import layers, reference
from fastbp.backends import BACKENDS, layer_module

LAYERS = {backend: layer_module(backend) for backend in BACKENDS}


def numerical_gradient(f, x):
    """The book's ``common/gradient.py``: perturb each element in place, then restore it."""
    h = 1e-4
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        idx = it.multi_index
        tmp_val = x[idx]
        x[idx] = float(tmp_val) + h
        fxh1 = f(x)
        x[idx] = tmp_val - h
        fxh2 = f(x)
        grad[idx] = (fxh1 - fxh2) / (2 * h)
        x[idx] = tmp_val
        it.iternext()
    return grad


class BookTwoLayerNet:
    def __init__(self, L, input_size, hidden_size, output_size, weight_init_std=0.01, rng=None):
        rng = rng or np.random.default_rng(0)
        self.params = {}
        self.params["W1"] = weight_init_std * rng.standard_normal((input_size, hidden_size))
        self.params["b1"] = np.zeros(hidden_size)
        self.params["W2"] = weight_init_std * rng.standard_normal((hidden_size, output_size))
        self.params["b2"] = np.zeros(output_size)
        self.layers = OrderedDict()
        self.layers["Affine1"] = L.Affine(self.params["W1"], self.params["b1"])
        self.layers["Relu1"] = L.Relu()
        self.layers["Affine2"] = L.Affine(self.params["W2"], self.params["b2"])
        self.lastLayer = L.SoftmaxWithLoss()

    def predict(self, x):
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def loss(self, x, t):
        y = self.predict(x)
        return self.lastLayer.forward(y, t)

    def accuracy(self, x, t):
        y = np.argmax(self.predict(x), axis=1)
        if t.ndim != 1:
            t = np.argmax(t, axis=1)
        return np.sum(y == t) / float(x.shape[0])

    def numerical_gradient(self, x, t):
        def loss_W(W):
            return self.loss(x, t)

        return {key: numerical_gradient(loss_W, self.params[key])
                for key in ("W1", "b1", "W2", "b2")}

    def gradient(self, x, t):
        self.loss(x, t)
        dout = self.lastLayer.backward(1)
        for layer in reversed(list(self.layers.values())):
            dout = layer.backward(dout)
        grads = {}
        grads["W1"], grads["b1"] = self.layers["Affine1"].dW, self.layers["Affine1"].db
        grads["W2"], grads["b2"] = self.layers["Affine2"].dW, self.layers["Affine2"].db
        return grads


class BookLayers:
    """The book's own ``Relu``, ``Affine`` and ``SoftmaxWithLoss`` semantics, for comparison:
    ``softmax`` then ``-log(y + 1e-7)``, and a ``Relu.backward`` that writes into ``dout``."""

    class Relu:
        def forward(self, x):
            self.mask = x <= 0
            out = x.copy()
            out[self.mask] = 0
            return out

        def backward(self, dout):
            dout[self.mask] = 0
            return dout

    Affine = reference.layers.Affine

    class SoftmaxWithLoss:
        def forward(self, x, t):
            self.t = t
            e = np.exp(x - x.max(axis=1, keepdims=True))
            self.y = e / e.sum(axis=1, keepdims=True)
            labels = t.argmax(axis=1) if t.size == self.y.size else t
            n = self.y.shape[0]
            return -np.sum(np.log(self.y[np.arange(n), labels] + 1e-7)) / n

        def backward(self, dout=1):
            return (self.y - self.t) / self.t.shape[0]


def small_problem(seed=0, n=3, d=20, classes=5):
    rng = np.random.default_rng(seed)
    x = rng.random((n, d))
    t = np.eye(classes)[rng.integers(0, classes, n)]
    return x, t


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_check_like_the_book(backend):
    """``ch05/gradient_check.py``: mean |backprop - numerical| per parameter."""
    x, t = small_problem()
    diffs = {}
    for name, L in (("fastbp", LAYERS[backend]), ("book", BookLayers)):
        net = BookTwoLayerNet(L, 20, 10, 5, rng=np.random.default_rng(1))
        numeric = net.numerical_gradient(x, t)
        backprop = net.gradient(x, t)
        diffs[name] = {k: np.average(np.abs(backprop[k] - numeric[k])) for k in numeric}
    for key, diff in diffs["fastbp"].items():
        assert diff < 1e-9, (key, diff)
        # As small as with the book's own layers (both are rounding noise of h = 1e-4).
        assert diff <= 2 * diffs["book"][key] + 1e-12, (key, diff, diffs["book"][key])


@pytest.mark.parametrize("backend", BACKENDS)
def test_layers_hold_the_params_arrays(backend):
    net = BookTwoLayerNet(LAYERS[backend], 20, 10, 5)
    assert net.layers["Affine1"].W is net.params["W1"]
    assert net.layers["Affine2"].b is net.params["b2"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_loop_with_in_place_sgd(backend, dtype):
    """``ch05/train_neuralnet.py`` on a small separable problem: the net must learn."""
    rng = np.random.default_rng(2)
    centers = 3 * rng.standard_normal((4, 16))
    labels = rng.integers(0, 4, 600)
    x = (centers[labels] + rng.standard_normal((600, 16))).astype(dtype)
    t = np.eye(4, dtype=dtype)[labels]
    net = BookTwoLayerNet(LAYERS[backend], 16, 20, 4, weight_init_std=0.1,
                          rng=np.random.default_rng(3))
    for key in net.params:
        net.params[key] = net.params[key].astype(dtype)
    net = _rebind(net, LAYERS[backend])
    ids = {k: id(v) for k, v in net.params.items()}
    first = net.loss(x, t)
    for _ in range(300):
        batch = rng.choice(600, 50)
        grad = net.gradient(x[batch], t[batch])
        for key in ("W1", "b1", "W2", "b2"):
            net.params[key] -= 0.1 * grad[key]
    assert {k: id(v) for k, v in net.params.items()} == ids
    assert net.loss(x, t) < 0.3 * first
    assert net.accuracy(x, t) > 0.9
    assert net.params["W1"].dtype == dtype and net.predict(x).dtype == dtype


def _rebind(net, L):
    # After a dtype change the layers must hold the new arrays, as a fresh net would.
    net.layers["Affine1"] = L.Affine(net.params["W1"], net.params["b1"])
    net.layers["Affine2"] = L.Affine(net.params["W2"], net.params["b2"])
    return net


def test_both_backends_train_the_same_way():
    x, t = small_problem(seed=4, n=40, d=12, classes=3)
    results = {}
    for backend, L in LAYERS.items():
        net = BookTwoLayerNet(L, 12, 8, 3, weight_init_std=0.3, rng=np.random.default_rng(5))
        for _ in range(50):
            grad = net.gradient(x, t)
            for key in net.params:
                net.params[key] -= 0.5 * grad[key]
        results[backend] = net.params
    for key in results["kernel"]:
        np.testing.assert_allclose(results["kernel"][key], results["reference"][key],
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_buy_apple(backend):
    """``ch05/buy_apple.py``: 2 apples at 100, tax 1.1."""
    L = LAYERS[backend]
    apple, apple_num, tax = 100, 2, 1.1
    mul_apple_layer, mul_tax_layer = L.MulLayer(), L.MulLayer()
    apple_price = mul_apple_layer.forward(apple, apple_num)
    price = mul_tax_layer.forward(apple_price, tax)
    dapple_price, dtax = mul_tax_layer.backward(1)
    dapple, dapple_num = mul_apple_layer.backward(dapple_price)
    assert price == pytest.approx(220)
    assert dapple == pytest.approx(2.2)
    assert dapple_num == pytest.approx(110)
    assert dtax == 200 and type(dtax) is int and str(dtax) == "200"


@pytest.mark.parametrize("backend", BACKENDS)
def test_buy_apple_orange(backend):
    """``ch05/buy_apple_orange.py``: 2 apples at 100 and 3 oranges at 150, tax 1.1."""
    L = LAYERS[backend]
    apple, apple_num, orange, orange_num, tax = 100, 2, 150, 3, 1.1
    mul_apple, mul_orange, add, mul_tax = L.MulLayer(), L.MulLayer(), L.AddLayer(), L.MulLayer()
    apple_price = mul_apple.forward(apple, apple_num)
    orange_price = mul_orange.forward(orange, orange_num)
    all_price = add.forward(apple_price, orange_price)
    price = mul_tax.forward(all_price, tax)
    dall_price, dtax = mul_tax.backward(1)
    dapple_price, dorange_price = add.backward(dall_price)
    dorange, dorange_num = mul_orange.backward(dorange_price)
    dapple, dapple_num = mul_apple.backward(dapple_price)
    assert price == pytest.approx(715)
    assert dapple_num == pytest.approx(110)
    assert dapple == pytest.approx(2.2)
    assert dorange == pytest.approx(3.3)
    assert dorange_num == pytest.approx(165)
    assert dtax == 650 and type(dtax) is int


def test_star_import_gives_the_books_names():
    namespace = {}
    exec("from fastbp.layers import *", namespace)
    assert {"MulLayer", "AddLayer", "Relu", "Sigmoid", "Affine", "SoftmaxWithLoss"} <= set(
        namespace)
    namespace = {}
    exec("from fastbp.functions import *", namespace)
    assert {"softmax", "cross_entropy_error", "sigmoid", "sigmoid_grad", "relu", "relu_grad",
            "identity_function", "step_function"} <= set(namespace)
    assert fastbp.Affine is layers.Affine and isinstance(fastbp.__version__, str)
