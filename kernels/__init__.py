"""Numba kernels behind :mod:`fastbp.layers`, :mod:`fastbp.functions` and :mod:`fastbp.optim`
(installed as ``fastbp.kernels``).

Kernels take validated, C-contiguous float32/float64 arrays and write into outputs they are given
(outputs last). They do no validation: :mod:`fastbp.validation` (and :mod:`fastbp.optim` for the
updates) does that, in Python, before any kernel runs. Each kernel's docstring says which
arguments it writes; for a ``sized`` kernel, the size of argument 0 picks its serial or its
threaded build.

Machinery: :mod:`.jit` (the numba options and the cache: ``kernel``), :mod:`.parallel` (which
build runs, on how many threads: ``sized``, the thread settings, the load and fork policy).

Kernels, one module per family: :mod:`.activations` (ReLU, sigmoid), :mod:`.affine` (bias add,
column sums), :mod:`.softmax` (softmax and fused softmax-cross-entropy), :mod:`.fastexp` (a
vectorisable ``exp`` within 2 ulp), :mod:`.optim` (fused optimizer updates). The later chapters
add :mod:`.dropout`, :mod:`.batchnorm` (chapter 6), :mod:`.conv` (im2col, col2im, the direct
convolution), :mod:`.winograd` (the F(2x2, 3x3) transforms) and :mod:`.pool` (max pooling)
(chapters 7-8).
"""
