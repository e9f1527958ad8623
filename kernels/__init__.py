"""Numba kernels behind :mod:`fastbp.layers` (installed as ``fastbp.kernels``).

Kernels take validated, C-contiguous float32/float64 arrays and write into outputs they are given.
They do no validation: :mod:`fastbp.validation` does that, in Python, before any kernel runs.
Modules: :mod:`.jit` (the numba options), :mod:`.activations` (ReLU, sigmoid), :mod:`.affine`
(bias add, column sums), :mod:`.softmax` (softmax and fused softmax-cross-entropy).
"""
