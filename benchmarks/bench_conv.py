"""Convolution: forward, backward, and peak memory of both.

Sizes: ``book`` is SimpleConvNet's layer (100x1x28x28, 30 filters 5x5), ``medium`` DeepConvNet's
second layer (100x16x28x28, 16 filters 3x3, pad 1), ``large`` (``FASTBP_BENCH_FULL=1``) a wider
layer (256x32x28x28, 64 filters 3x3, pad 1). ``time_backward_no_dx`` is the first layer of a
network, whose input needs no gradient (``need_dx = False``).
"""

import numpy as np

from fastbp.nets import layer_module

from . import _LayerTimings, rng, torch_or_skip

CONV_SHAPES = {  # (x shape, W shape, stride, pad)
    "book": ((100, 1, 28, 28), (30, 1, 5, 5), 1, 0),
    "medium": ((100, 16, 28, 28), (16, 16, 3, 3), 1, 1),
    "large": ((256, 32, 28, 28), (64, 32, 3, 3), 1, 1),
}


class Convolution(_LayerTimings):
    timeout = 300

    def setup(self, backend, dtype, size):
        x_shape, w_shape, stride, pad = CONV_SHAPES[size]
        r = rng()
        self.x = r.standard_normal(x_shape).astype(dtype)
        self.W = (r.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(dtype)
        self.b = r.standard_normal(w_shape[0]).astype(dtype)
        oh = (x_shape[2] + 2 * pad - w_shape[2]) // stride + 1
        ow = (x_shape[3] + 2 * pad - w_shape[3]) // stride + 1
        self.dout = r.standard_normal((x_shape[0], w_shape[0], oh, ow)).astype(dtype)
        if backend == "torch":
            torch = torch_or_skip()
            self.tx = torch.tensor(self.x, requires_grad=True)
            self.tW = torch.tensor(self.W, requires_grad=True)
            self.tb = torch.tensor(self.b, requires_grad=True)
            self.tdout = torch.tensor(self.dout)
            self.conv = lambda: torch.nn.functional.conv2d(self.tx, self.tW, self.tb, stride, pad)
            self.forward = self._torch_forward
            self.backward = self._torch_backward
        else:
            L = layer_module(backend)
            self.use_layer(L.Convolution(self.W, self.b, stride, pad))
            self.first = L.Convolution(self.W, self.b, stride, pad)
            self.first.need_dx = False
            self.first.forward(self.x)
        self.warm_up()

    def time_backward_no_dx(self, backend, dtype, size):
        if backend == "torch":
            self.tx.requires_grad_(False)
            self._torch_forward()
            self._torch_backward()
            self.tx.requires_grad_(True)
        else:
            self.first.backward(self.dout)

    def _torch_forward(self):
        self.ty = self.conv()

    def _torch_backward(self):
        self.tx.grad = self.tW.grad = self.tb.grad = None
        self.ty.backward(self.tdout, retain_graph=True)
