"""fastbp's NumPy reference: the same layers and functions as :mod:`fastbp.layers` and
:mod:`fastbp.functions`, in clear NumPy. It is the oracle the kernels are tested against, and it
ships with the package so that users and benchmarks can call it."""

from fastbp.reference import functions, layers

__all__ = ["functions", "layers"]
