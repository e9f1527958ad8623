"""ReLU and sigmoid: forward, backward, and peak memory of a forward and backward."""

import numpy as np

from fastbp.nets import layer_module

from . import DTYPES, SHAPES, SIZES, _LayerTimings, rng, torch_or_skip


class _Elementwise(_LayerTimings):
    layer_name = None
    torch_function = None

    def setup(self, backend, dtype, size):
        shape = SHAPES[self.layer_name.lower()][size]  # fastbp bench's "relu" or "sigmoid"
        r = rng()
        self.x = r.standard_normal(shape).astype(dtype)
        self.dout = r.standard_normal(shape).astype(dtype)
        if backend == "torch":
            torch = torch_or_skip()
            self.tx = torch.tensor(self.x, requires_grad=True)
            self.tdout = torch.tensor(self.dout)
            self.f = getattr(torch, self.torch_function)
            self.forward = self._torch_forward
            self.backward = self._torch_backward
        else:
            self.use_layer(getattr(layer_module(backend), self.layer_name)())
        self.warm_up()

    def _torch_forward(self):
        self.ty = self.f(self.tx)

    def _torch_backward(self):
        self.tx.grad = None
        self.ty.backward(self.tdout, retain_graph=True)



class Relu(_Elementwise):
    layer_name = "Relu"
    torch_function = "relu"


class Sigmoid(_Elementwise):
    layer_name = "Sigmoid"
    torch_function = "sigmoid"


class ReluKernels:
    """The ReLU kernels alone, outputs allocated once: the numbers the roofline compares."""

    params = [DTYPES, SIZES]  # noqa: RUF012 (asv reads it)
    param_names = ["dtype", "size"]  # noqa: RUF012

    def setup(self, dtype, size):
        from fastbp.kernels import activations

        self.k = activations
        n = int(np.prod(SHAPES["relu"][size]))
        self.x = rng().standard_normal(n).astype(dtype)
        self.out = np.empty_like(self.x)
        self.mask = np.empty(n, dtype=bool)
        self.k.relu_forward(self.x, self.out, self.mask)
        self.k.relu_backward(self.x, self.mask, self.out)

    def time_relu_forward_kernel(self, dtype, size):
        self.k.relu_forward(self.x, self.out, self.mask)

    def time_relu_backward_kernel(self, dtype, size):
        self.k.relu_backward(self.x, self.mask, self.out)
