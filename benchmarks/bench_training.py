"""One SGD step of the book's TwoLayerNet (batch 100, 784-50-10), as the book writes it."""

from . import DTYPES, torch_or_skip

BATCH, INPUT, HIDDEN, CLASSES = 100, 784, 50, 10


class TrainingStep:
    params = [["reference", "kernel", "torch"], DTYPES]  # noqa: RUF012 (asv reads it)
    param_names = ["backend", "dtype"]  # noqa: RUF012

    def setup(self, backend, dtype):
        from fastbp.bench import _torch_case, training_step

        size = (BATCH, INPUT, HIDDEN, CLASSES)
        if backend == "torch":
            torch_or_skip()
            import numpy as np

            self.step = _torch_case("step", size, np.dtype(dtype), np.random.default_rng(0))
        else:
            self.step = training_step(backend, size, dtype)
        for _ in range(3):
            self.step()

    def time_step(self, backend, dtype):
        self.step()

    def peakmem_step(self, backend, dtype):
        self.step()
