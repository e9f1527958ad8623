"""Training steps of the chapter 7-8 nets (batch 100 of 1x28x28 images, SGD), and the drop-in case.

``ConvNetStep``: one step of :class:`fastbp.nets.SimpleConvNet` or
:class:`fastbp.nets.DeepConvNet` (whose gradient skips the first convolution's ``dx``) on each
backend, with a PyTorch twin (``nn.Conv2d``, ``MaxPool2d``, ``Linear``, autograd). ``DropIn``: a
SimpleConvNet written as the book writes it, backward through every layer, on
:mod:`fastbp.layers` against :mod:`fastbp.reference.layers`. A DeepConvNet reference step takes
most of a second, so the repeat counts are small.
"""

import numpy as np

from . import DTYPES, _StepTimings, torch_or_skip

SHAPE = (100, 1, 28, 28)


class ConvNetStep(_StepTimings):
    params = [["simpleconv", "deepconv"], ["reference", "kernel", "torch"],  # noqa: RUF012
              DTYPES]
    param_names = ["net", "backend", "dtype"]  # noqa: RUF012
    number = 1
    repeat = (2, 10, 10.0)  # (min, max, seconds): asv stops repeating after 10 s
    rounds = 1
    warmup_time = 0.0
    timeout = 300

    def setup(self, net, backend, dtype):
        from fastbp.bench import convnet_step, torch_convnet_step

        if backend == "torch":
            torch_or_skip()
            self.step = torch_convnet_step(net, SHAPE, dtype)
        else:
            self.step = convnet_step(backend, net, SHAPE, np.dtype(dtype))
        self.warm_steps(1)


class DropIn(_StepTimings):
    """The book's SimpleConvNet class, unchanged but for the layer module it imports."""

    params = [["reference", "kernel"], DTYPES]  # noqa: RUF012
    param_names = ["backend", "dtype"]  # noqa: RUF012
    number = 1
    repeat = (2, 10, 10.0)
    rounds = 1
    warmup_time = 0.0
    timeout = 300

    def setup(self, backend, dtype):
        from fastbp.bench import book_simple_convnet_step
        from fastbp.nets import layer_module

        self.step = book_simple_convnet_step(layer_module(backend), SHAPE, np.dtype(dtype))
        self.warm_steps(1)
