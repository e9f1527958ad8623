"""fastbp's two backends, and the modules that hold each one's API.

``"kernel"`` is :mod:`fastbp.layers` and :mod:`fastbp.functions` (Numba kernels behind them);
``"reference"`` is :mod:`fastbp.reference.layers` and :mod:`fastbp.reference.functions` (plain
NumPy, the oracle). Both export the same names with the same signatures
(``tests/test_backends.py`` checks it), so code written against one runs on the other.
"""

__all__ = ["BACKENDS", "check_backend", "function_module", "layer_module"]

BACKENDS = ("kernel", "reference")


def check_backend(backend):
    """Return ``backend`` if it names a backend, else raise ``ValueError``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    return backend


def layer_module(backend):
    """The module that holds the layer classes of ``backend`` ("kernel" or "reference")."""
    if check_backend(backend) == "kernel":
        from fastbp import layers
    else:
        from fastbp.reference import layers
    return layers


def function_module(backend):
    """The module that holds the functions (``softmax``, ``sigmoid``, ...) of ``backend``."""
    if check_backend(backend) == "kernel":
        from fastbp import functions
    else:
        from fastbp.reference import functions
    return functions
