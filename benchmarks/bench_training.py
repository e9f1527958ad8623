"""One SGD step of the book's TwoLayerNet (batch 100): ``fastbp.nets.TwoLayerNet`` (784-50-10),
and the book's own net code on each backend's layers, the drop-in case (784-50-10, MNIST's
shape, and 64-100-10, the digits')."""

from . import BACKENDS, DTYPES, SHAPES, _StepTimings, torch_or_skip


class TrainingStep(_StepTimings):
    params = [BACKENDS, DTYPES]  # noqa: RUF012 (asv reads it)
    param_names = ["backend", "dtype"]  # noqa: RUF012

    def setup(self, backend, dtype):
        size = SHAPES["step"]["book"]  # batch 100, 784 -> 50 -> 10
        if backend == "torch":
            torch_or_skip()
            import numpy as np

            from fastbp.bench import torch_case

            self.step = torch_case("step", size, np.dtype(dtype), np.random.default_rng(0))
        else:
            from fastbp.bench import training_step

            self.step = training_step(backend, size, dtype)
        self.warm_steps()


class BookTrainingStep(_StepTimings):
    """The book's ``TwoLayerNet`` code, with ``from fastbp.layers import *`` (kernel) or the
    NumPy reference layers: it runs every layer's backward, the first ``dx`` included."""

    params = [["reference", "kernel"], DTYPES, ["mnist", "digits"]]  # noqa: RUF012
    param_names = ["backend", "dtype", "shape"]  # noqa: RUF012
    shapes = {"mnist": SHAPES["step"]["book"], "digits": (100, 64, 100, 10)}  # noqa: RUF012

    def setup(self, backend, dtype, shape):
        from fastbp.bench import book_training_step

        self.step = book_training_step(backend, self.shapes[shape], dtype)
        self.warm_steps()
