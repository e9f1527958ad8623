"""SoftmaxWithLoss (labels): forward, backward, and peak memory of both."""

from fastbp.nets import layer_module

from . import SHAPES, _LayerTimings, rng, torch_or_skip


class SoftmaxWithLoss(_LayerTimings):

    def setup(self, backend, dtype, size):
        n, c = SHAPES["softmax"][size]
        r = rng()
        self.x = r.standard_normal((n, c)).astype(dtype)
        self.t = r.integers(0, c, n)
        if backend == "torch":
            torch = torch_or_skip()
            self.tx = torch.tensor(self.x, requires_grad=True)
            self.tt = torch.tensor(self.t)
            self.F = torch.nn.functional
            self.forward = self._torch_forward
            self.backward = self._torch_backward
        else:
            self.layer = layer_module(backend).SoftmaxWithLoss()
            self.forward = lambda: self.layer.forward(self.x, self.t)
            self.backward = lambda: self.layer.backward(1)
        self.warm_up()

    def _torch_forward(self):
        self.loss = self.F.cross_entropy(self.tx, self.tt)

    def _torch_backward(self):
        self.tx.grad = None
        self.loss.backward(retain_graph=True)

