"""One SGD step of the book's MultiLayerNetExtend with batch norm and dropout (784 -> 5 x 100
-> 10, batch 100), as ``ch06/batch_norm_test.py`` and ``ch06/overfit_dropout.py`` build it."""

from . import DTYPES, _StepTimings

BATCH, INPUT, HIDDEN, DEPTH, CLASSES = 100, 784, 100, 5, 10


def extend_training_step(backend, dtype, seed=1):
    """``grads = net.gradient(x, t)`` and an SGD update on a fixed batch; masks from NumPy's
    global state, as in the book."""
    import numpy as np

    from fastbp.nets import MultiLayerNetExtend
    from fastbp.optim import SGD

    rng = np.random.default_rng(seed)
    x = rng.random((BATCH, INPUT)).astype(dtype)
    t = rng.integers(0, CLASSES, BATCH)
    np.random.seed(0)  # noqa: NPY002 (weights and masks from the global state, as the book)
    net = MultiLayerNetExtend(INPUT, [HIDDEN] * DEPTH, CLASSES, use_dropout=True,
                              dropout_ration=0.2, use_batchnorm=True, backend=backend,
                              dtype=dtype)
    optimizer = SGD(0.01, backend=backend)

    def run():
        optimizer.update(net.params, net.gradient(x, t))
    return run


class TrainingStepExtend(_StepTimings):
    params = [["reference", "kernel"], DTYPES]  # noqa: RUF012 (asv reads it)
    param_names = ["backend", "dtype"]  # noqa: RUF012
    timeout = 300

    def setup(self, backend, dtype):
        self.step = extend_training_step(backend, dtype)
        self.warm_steps()
