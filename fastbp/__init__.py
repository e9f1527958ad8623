"""fastbp: the backprop layers of *Deep Learning from Scratch* as Numba kernels.

``from fastbp.layers import *`` and ``from fastbp.functions import *`` replace the book's
``common.layers`` and ``common.functions``. :mod:`fastbp.reference` holds the same API in plain
NumPy, and :mod:`fastbp.testing` checks one against the other.
"""

from fastbp._version import __version__
from fastbp.layers import (
    AddLayer,
    Affine,
    BatchNormalization,
    Convolution,
    Dropout,
    MulLayer,
    Pooling,
    Relu,
    Sigmoid,
    SoftmaxWithLoss,
)

__all__ = [
    "AddLayer",
    "Affine",
    "BatchNormalization",
    "Convolution",
    "Dropout",
    "MulLayer",
    "Pooling",
    "Relu",
    "Sigmoid",
    "SoftmaxWithLoss",
    "__version__",
]
