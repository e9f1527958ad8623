"""Max pooling: forward, backward, and peak memory of both.

Sizes: ``book`` is SimpleConvNet's pooling (100x30x24x24, 2x2, stride 2), ``medium`` a larger
batch of more channels (256x32x28x28, 2x2, stride 2), ``large`` (``FASTBP_BENCH_FULL=1``)
overlapping 3x3 windows with stride 2 and pad 1 on 256x64x56x56.
"""

from fastbp.nets import layer_module

from . import _LayerTimings, rng, torch_or_skip

POOL_SHAPES = {  # (x shape, pool_h, pool_w, stride, pad)
    "book": ((100, 30, 24, 24), 2, 2, 2, 0),
    "medium": ((256, 32, 28, 28), 2, 2, 2, 0),
    "large": ((256, 64, 56, 56), 3, 3, 2, 1),
}


class Pooling(_LayerTimings):
    timeout = 300

    def setup(self, backend, dtype, size):
        shape, ph, pw, stride, pad = POOL_SHAPES[size]
        r = rng()
        self.x = r.standard_normal(shape).astype(dtype)
        oh = (shape[2] + 2 * pad - ph) // stride + 1
        ow = (shape[3] + 2 * pad - pw) // stride + 1
        self.dout = r.standard_normal((shape[0], shape[1], oh, ow)).astype(dtype)
        if backend == "torch":
            torch = torch_or_skip()
            self.tx = torch.tensor(self.x, requires_grad=True)
            self.tdout = torch.tensor(self.dout)
            self.pool = lambda: torch.nn.functional.max_pool2d(self.tx, (ph, pw), stride, pad)
            self.forward = self._torch_forward
            self.backward = self._torch_backward
        else:
            self.use_layer(layer_module(backend).Pooling(ph, pw, stride, pad))
        self.warm_up()

    def _torch_forward(self):
        self.ty = self.pool()

    def _torch_backward(self):
        self.tx.grad = None
        self.ty.backward(self.tdout, retain_graph=True)


