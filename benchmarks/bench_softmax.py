"""SoftmaxWithLoss (labels): forward, backward, and peak memory of both."""

from . import BACKENDS, DTYPES, SHAPES, SIZES, layers_module, rng, torch_or_skip


class SoftmaxWithLoss:
    params = [BACKENDS, DTYPES, SIZES]  # noqa: RUF012 (asv reads it)
    param_names = ["backend", "dtype", "size"]  # noqa: RUF012

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
            self.layer = layers_module(backend).SoftmaxWithLoss()
            self.forward = lambda: self.layer.forward(self.x, self.t)
            self.backward = lambda: self.layer.backward(1)
        for _ in range(2):
            self.forward()
            self.backward()

    def _torch_forward(self):
        self.loss = self.F.cross_entropy(self.tx, self.tt)

    def _torch_backward(self):
        self.tx.grad = None
        self.loss.backward(retain_graph=True)

    def time_forward(self, backend, dtype, size):
        self.forward()

    def time_backward(self, backend, dtype, size):
        self.backward()

    def time_forward_backward(self, backend, dtype, size):
        self.forward()
        self.backward()

    def peakmem_forward_backward(self, backend, dtype, size):
        self.forward()
        self.backward()
