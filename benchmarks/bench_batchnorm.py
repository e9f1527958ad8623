"""BatchNormalization (N, D), train mode: forward, backward, and peak memory of both; plus the
test-mode forward (running statistics) that ``accuracy`` runs.

Sizes: ``book`` is a hidden layer of the book's chapter-6 nets, (100, 100); ``medium`` is
(256, 4096), where the kernels run threaded; ``large`` (4096, 4096) joins with
``FASTBP_BENCH_FULL=1``.
"""

import numpy as np

from fastbp.nets import layer_module

from . import _LayerTimings, rng, torch_or_skip

SHAPES = {"book": (100, 100), "medium": (256, 4096), "large": (4096, 4096)}


class BatchNormalization(_LayerTimings):
    timeout = 300

    def setup(self, backend, dtype, size):
        n, d = SHAPES[size]
        r = rng()
        self.x = (r.standard_normal((n, d)) + 0.5).astype(dtype)
        self.gamma = r.uniform(0.5, 2, d).astype(dtype)
        self.beta = r.standard_normal(d).astype(dtype)
        self.dout = r.standard_normal((n, d)).astype(dtype)
        if backend == "torch":
            torch = torch_or_skip()
            self.tx = torch.tensor(self.x, requires_grad=True)
            self.tgamma = torch.tensor(self.gamma, requires_grad=True)
            self.tbeta = torch.tensor(self.beta, requires_grad=True)
            self.trunning = (torch.zeros(d, dtype=self.tx.dtype),
                             torch.zeros(d, dtype=self.tx.dtype))
            self.tdout = torch.tensor(self.dout)
            self.f = torch.nn.functional.batch_norm
            self.forward = self._torch_forward
            self.backward = self._torch_backward
            self.test_forward = self._torch_test_forward
        else:
            self.use_layer(layer_module(backend).BatchNormalization(self.gamma, self.beta))
            self.test_forward = lambda: self.layer.forward(self.x, train_flg=False)
        self.warm_up(self.test_forward)

    def _torch_forward(self):
        # torch's momentum is the weight of the batch: 0.1 is the book's momentum=0.9.
        self.ty = self.f(self.tx, *self.trunning, self.tgamma, self.tbeta, training=True,
                         momentum=0.1, eps=10e-7)

    def _torch_backward(self):
        self.tx.grad = self.tgamma.grad = self.tbeta.grad = None
        self.ty.backward(self.tdout, retain_graph=True)

    def _torch_test_forward(self):
        import torch

        with torch.no_grad():
            self.f(self.tx, *self.trunning, self.tgamma, self.tbeta, training=False, eps=10e-7)

    def time_test_forward(self, backend, dtype, size):
        self.test_forward()


class BatchNormKernels:
    """The two fused kernels alone, outputs allocated once."""

    params = [["float32", "float64"], list(SHAPES)[:2]]  # noqa: RUF012 (asv reads it)
    param_names = ["dtype", "size"]  # noqa: RUF012

    def setup(self, dtype, size):
        from fastbp.kernels import batchnorm

        self.k = batchnorm
        n, d = SHAPES[size]
        r = rng()
        self.x = r.standard_normal((n, d)).astype(dtype)
        self.dout = r.standard_normal((n, d)).astype(dtype)
        self.gamma, self.beta = np.ones(d, dtype), np.zeros(d, dtype)
        self.rm, self.rv = np.zeros(d, dtype), np.zeros(d, dtype)
        self.mean, self.inv, self.std = np.empty(d), np.empty(d), np.empty(d, dtype)
        self.out, self.dx = np.empty_like(self.x), np.empty_like(self.x)
        self.dgamma, self.dbeta = np.empty(d, dtype), np.empty(d, dtype)
        self.block = batchnorm.column_block(n, self.x.itemsize, d)
        self.block2 = self.block
        self.time_forward_kernel(dtype, size)
        self.time_backward_kernel(dtype, size)

    def time_forward_kernel(self, dtype, size):
        self.k.batchnorm_train_forward(self.x, self.gamma, self.beta, 0.9, 1e-6, self.block,
                                       self.rm, self.rv, self.mean, self.inv, self.std, self.out)

    def time_backward_kernel(self, dtype, size):
        self.k.batchnorm_backward(self.dout, self.x, self.mean, self.inv, self.gamma, True,
                                  self.block2, self.dx, self.dgamma, self.dbeta)
