"""Dropout, train mode: forward (mask drawn from NumPy's global state, as the book), backward,
and peak memory of both; plus ``np.random.rand`` alone, the reference's draw (the kernel
backend draws the same numbers in its own MT19937 pass).

Sizes: ``book`` (100, 100), a hidden layer of the book's chapter-6 nets; ``medium``
(256, 4096); ``large`` (4096, 4096) with ``FASTBP_BENCH_FULL=1``. PyTorch's dropout rescales
the kept values by ``1 / (1 - p)`` (the book's does not) and draws its own random numbers: a
speed comparison only.
"""

import numpy as np

from fastbp.nets import layer_module

from . import _LayerTimings, rng, torch_or_skip

SHAPES = {"book": (100, 100), "medium": (256, 4096), "large": (4096, 4096)}
RATIO = 0.5


class Dropout(_LayerTimings):
    timeout = 300

    def setup(self, backend, dtype, size):
        shape = SHAPES[size]
        r = rng()
        self.x = r.standard_normal(shape).astype(dtype)
        self.dout = r.standard_normal(shape).astype(dtype)
        np.random.seed(0)  # noqa: NPY002 (the book's global state)
        if backend == "torch":
            torch = torch_or_skip()
            self.tx = torch.tensor(self.x, requires_grad=True)
            self.tdout = torch.tensor(self.dout)
            self.f = torch.nn.functional.dropout
            self.forward = self._torch_forward
            self.backward = self._torch_backward
        else:
            self.use_layer(layer_module(backend).Dropout(RATIO))
        self.warm_up()

    def _torch_forward(self):
        self.ty = self.f(self.tx, RATIO, training=True)

    def _torch_backward(self):
        self.tx.grad = None
        self.ty.backward(self.tdout, retain_graph=True)

    def time_uniform_draw(self, backend, dtype, size):
        """``np.random.rand(*shape)``: the reference's draw. The kernel backend draws the same
        numbers inside its forward kernel, so this is not part of its time."""
        np.random.rand(*self.x.shape)  # noqa: NPY002
