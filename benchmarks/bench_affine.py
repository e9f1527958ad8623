"""Affine (N x D -> H): forward, backward, and peak memory of both."""

import numpy as np

from fastbp.nets import layer_module

from . import SHAPES, _LayerTimings, rng, torch_or_skip


class Affine(_LayerTimings):
    timeout = 300

    def setup(self, backend, dtype, size):
        n, d, h = SHAPES["affine"][size]
        r = rng()
        self.x = r.standard_normal((n, d)).astype(dtype)
        self.W = (r.standard_normal((d, h)) / np.sqrt(d)).astype(dtype)
        self.b = r.standard_normal(h).astype(dtype)
        self.dout = r.standard_normal((n, h)).astype(dtype)
        if backend == "torch":
            torch = torch_or_skip()
            self.tx = torch.tensor(self.x, requires_grad=True)
            self.tW = torch.tensor(self.W, requires_grad=True)
            self.tb = torch.tensor(self.b, requires_grad=True)
            self.tdout = torch.tensor(self.dout)
            self.forward = self._torch_forward
            self.backward = self._torch_backward
        else:
            self.use_layer(layer_module(backend).Affine(self.W, self.b))
        self.warm_up()

    def _torch_forward(self):
        self.ty = self.tx @ self.tW + self.tb

    def _torch_backward(self):
        self.tx.grad = self.tW.grad = self.tb.grad = None
        self.ty.backward(self.tdout, retain_graph=True)

