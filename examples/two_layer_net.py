"""A two-layer network in the style of the book's chapter 5, built from fastbp's layers.

    Affine -> Relu -> Affine -> SoftmaxWithLoss

The class is the whole network: ``predict``, ``loss``, ``accuracy``, ``numerical_gradient``
(slow, for checking) and ``gradient`` (backpropagation). The layers hold *references* to the
arrays in ``self.params``, so an in-place update ``params[key] -= lr * grad[key]`` is seen by
the next forward pass.

Run it to see one forward and backward pass on random data:

    python examples/two_layer_net.py
"""

from collections import OrderedDict

import numpy as np

from fastbp.gradient import numerical_gradient
from fastbp.layers import Affine, Relu, SoftmaxWithLoss  # the book: from common.layers import *


class TwoLayerNet:
    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01, seed=None):
        rng = np.random.default_rng(seed)
        self.params = {}
        self.params["W1"] = weight_init_std * rng.standard_normal((input_size, hidden_size))
        self.params["b1"] = np.zeros(hidden_size)
        self.params["W2"] = weight_init_std * rng.standard_normal((hidden_size, output_size))
        self.params["b2"] = np.zeros(output_size)

        self.layers = OrderedDict()
        self.layers["Affine1"] = Affine(self.params["W1"], self.params["b1"])
        self.layers["Relu1"] = Relu()
        self.layers["Affine2"] = Affine(self.params["W2"], self.params["b2"])
        self.lastLayer = SoftmaxWithLoss()

    def predict(self, x):
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def loss(self, x, t):
        """x: input data, t: labels (N,) or one-hot (N, C)."""
        y = self.predict(x)
        return self.lastLayer.forward(y, t)

    def accuracy(self, x, t):
        y = np.argmax(self.predict(x), axis=1)
        if t.ndim != 1:
            t = np.argmax(t, axis=1)
        return np.sum(y == t) / float(x.shape[0])

    def numerical_gradient(self, x, t):
        def loss_W(W):  # W is perturbed in place; the layers see it through their references
            return self.loss(x, t)

        return {key: numerical_gradient(loss_W, self.params[key])
                for key in ("W1", "b1", "W2", "b2")}

    def gradient(self, x, t):
        # forward
        self.loss(x, t)

        # backward
        dout = self.lastLayer.backward(1)
        for layer in reversed(self.layers.values()):
            dout = layer.backward(dout)

        return {
            "W1": self.layers["Affine1"].dW, "b1": self.layers["Affine1"].db,
            "W2": self.layers["Affine2"].dW, "b2": self.layers["Affine2"].db,
        }


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    net = TwoLayerNet(input_size=4, hidden_size=5, output_size=3, seed=0)
    x = rng.random((6, 4))
    t = rng.integers(0, 3, 6)
    print("logits shape:", net.predict(x).shape)
    print("loss:", net.loss(x, t))
    print("accuracy:", net.accuracy(x, t))
    for key, g in net.gradient(x, t).items():
        print(f"grad {key}: shape {g.shape}, |grad| max {np.abs(g).max():.3e}")
