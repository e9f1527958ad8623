"""One SGD step of the book's TwoLayerNet (batch 100, 784-50-10), as the book writes it."""

from . import BACKENDS, DTYPES, SHAPES, torch_or_skip


class TrainingStep:
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
        for _ in range(3):
            self.step()

    def time_step(self, backend, dtype):
        self.step()

    def peakmem_step(self, backend, dtype):
        self.step()
