"""The chapters 7-8 targets of issue 10 in one run (not an asv benchmark: run it by hand).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.chapter78_targets
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.chapter78_targets --quick

From the repository root. Every row times its functions in turn, in one run, so each
ratio compares times taken side by side (:func:`measure_in_blocks`: rounds of a block of calls of
each function, each block after :data:`fastbp.bench.SPIN_PAUSE` seconds of the function's own
calls, in which the previous block's BLAS or OpenMP threads stop spinning: one function's
spinning threads would otherwise hold the cores the next one's kernels look for):

* Convolution forward + backward (``dx`` included), reference/kernel: SimpleConvNet's layer
  (100x1x28x28, 30 filters 5x5) and DeepConvNet's second layer (100x16x28x28, 16 filters 3x3,
  pad 1), float64 and float32 (target 5x);
* Pooling forward + backward, 2x2 stride 2 on 100x30x24x24 (target 10x);
* one SGD step, batch 100, of ``fastbp.nets.SimpleConvNet`` (target 10x the reference in
  float64; in float32 15x the float64 reference and 1.5x PyTorch float32), of the book's
  SimpleConvNet code on ``fastbp.layers`` (the drop-in case, target 8x) and of
  ``fastbp.nets.DeepConvNet`` (target 6x in float64, 1x PyTorch in float32);
* the peak memory of a SimpleConvNet step, both backends (``tracemalloc``: NumPy's
  allocations; target: the kernel's no more than the reference's).

PyTorch rows appear where ``torch`` is installed (it is never a dependency). It runs in a
process of its own, on the thread count it starts with, its blocks timed there and interleaved
with the others (:class:`fastbp.bench.PeerProcess`, whose docstring says why: in this process
it would share GNU OpenMP with numba, and whichever loads it first slows the other).
``--quick`` repeats less (for a smoke run).
"""

import sys
import tracemalloc

import numpy as np

from fastbp.backends import layer_module
from fastbp.bench import (
    SPIN_PAUSE,
    PeerProcess,
    _torch_available,
    book_simple_convnet_step,
    convnet_step,
    timed_block,
)

BOOK = (100, 1, 28, 28)
CONV_SHAPES = {  # (x shape, W shape, pad)
    "SimpleConvNet's conv (100x1x28x28, 30 5x5)": ((100, 1, 28, 28), (30, 1, 5, 5), 0),
    "DeepConvNet's conv 2 (100x16x28x28, 16 3x3 pad 1)": ((100, 16, 28, 28), (16, 16, 3, 3), 1),
}


def measure_in_blocks(funcs, rounds=5, calls=3):
    """Per-call seconds of each function: the median over ``rounds`` rounds of the median of
    ``calls`` timed calls, the functions taking turns in blocks, each block after
    :data:`SPIN_PAUSE` seconds of untimed calls of the same function (at least one).

    Each function is timed in its steady state, as a training loop runs it: the previous
    function's spinning threads have stopped, and its own threads are running (why not a
    sleep: :data:`SPIN_PAUSE`)."""
    samples = [[] for _ in funcs]
    for _ in range(rounds):
        for f, out in zip(funcs, samples, strict=True):
            times = [timed_block(f, 1, SPIN_PAUSE if i == 0 else 0.0) for i in range(calls)]
            out.append(float(np.median(times)))
    return [float(np.median(s)) for s in samples]


def _measure_and_close(funcs, repeats):
    """:func:`measure_in_blocks` of ``funcs`` (a dict), then the PyTorch peers closed."""
    try:
        return measure_in_blocks(list(funcs.values()), **repeats)
    finally:
        for f in funcs.values():
            if isinstance(f, PeerProcess):
                f.close()


def layer_pass(layer, x):
    """One forward and one backward (``dout`` of ones) of ``layer`` on ``x``."""
    dout = np.ones_like(layer.forward(x))

    def run():
        layer.forward(x)
        layer.backward(dout)
    return run


def conv_pass(backend, x_shape, w_shape, pad, dtype):
    r = np.random.default_rng(0)
    x = r.standard_normal(x_shape).astype(dtype)
    W = (r.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(dtype)
    b = r.standard_normal(w_shape[0]).astype(dtype)
    return layer_pass(layer_module(backend).Convolution(W, b, 1, pad), x)


def pool_pass(backend, dtype):
    x = np.random.default_rng(0).standard_normal((100, 30, 24, 24)).astype(dtype)
    return layer_pass(layer_module(backend).Pooling(2, 2, stride=2), x)


def torch_step(name, dtype):
    """PyTorch's step in a process of its own (:class:`fastbp.bench.PeerProcess`: PyTorch in
    this process would share GNU OpenMP with numba), or None without PyTorch. Close it."""
    if not _torch_available():
        return None
    return PeerProcess("torch_convnet_step", name, BOOK, dtype)


def peak_bytes(fn):
    fn()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def row(label, times, names, ratios):
    cells = "  ".join(f"{n} {t * 1e3:8.2f} ms" for n, t in zip(names, times, strict=True))
    print(f"{label:<58} {cells}  " + "  ".join(ratios))


def main(quick=False):
    repeats = dict(rounds=2, calls=1) if quick else {}
    for label, (xs, ws, pad) in CONV_SHAPES.items():
        for dtype in ("float64", "float32"):
            ref, ker = measure_in_blocks([conv_pass(b, xs, ws, pad, dtype)
                                         for b in ("reference", "kernel")], **repeats)
            row(f"Convolution fwd+bwd {label} {dtype}", (ref, ker), ("ref", "kernel"),
                [f"{ref / ker:.2f}x"])
    for dtype in ("float64", "float32"):
        ref, ker = measure_in_blocks([pool_pass(b, dtype) for b in ("reference", "kernel")],
                                    **repeats)
        row(f"Pooling fwd+bwd 100x30x24x24 2x2/2 {dtype}", (ref, ker), ("ref", "kernel"),
            [f"{ref / ker:.2f}x"])

    funcs = {"ref f64": convnet_step("reference", "simpleconv", BOOK, "float64"),
             "kernel f64": convnet_step("kernel", "simpleconv", BOOK, "float64"),
             "kernel f32": convnet_step("kernel", "simpleconv", BOOK, "float32")}
    for dtype in ("float32", "float64"):
        step = torch_step("simpleconv", dtype)
        if step is not None:
            funcs[f"torch {dtype[-2:]}"] = step
    t = dict(zip(funcs, _measure_and_close(funcs, repeats), strict=True))
    ratios = [f"f64 {t['ref f64'] / t['kernel f64']:.2f}x",
              f"f32 vs ref f64 {t['ref f64'] / t['kernel f32']:.2f}x"]
    if "torch 32" in t:
        ratios.append(f"f32 vs torch f32 {t['torch 32'] / t['kernel f32']:.2f}x")
    row("SimpleConvNet step (fastbp.nets)", list(t.values()), list(t), ratios)

    ref, ker = measure_in_blocks([book_simple_convnet_step(layer_module(b), BOOK, "float64")
                                 for b in ("reference", "kernel")], **repeats)
    row("the book's SimpleConvNet on fastbp.layers (drop-in) f64", (ref, ker),
        ("ref", "kernel"), [f"{ref / ker:.2f}x"])

    funcs = {"ref f64": convnet_step("reference", "deepconv", BOOK, "float64"),
             "kernel f64": convnet_step("kernel", "deepconv", BOOK, "float64"),
             "kernel f32": convnet_step("kernel", "deepconv", BOOK, "float32")}
    step = torch_step("deepconv", "float32")
    if step is not None:
        funcs["torch 32"] = step
    deep = dict(rounds=2, calls=1) if quick else dict(rounds=3, calls=2)
    t = dict(zip(funcs, _measure_and_close(funcs, deep), strict=True))
    ratios = [f"f64 {t['ref f64'] / t['kernel f64']:.2f}x"]
    if "torch 32" in t:
        ratios.append(f"f32 vs torch f32 {t['torch 32'] / t['kernel f32']:.2f}x")
    row("DeepConvNet step (fastbp.nets)", list(t.values()), list(t), ratios)

    peaks = {b: peak_bytes(convnet_step(b, "simpleconv", BOOK, "float64"))
             for b in ("reference", "kernel")}
    print(f"{'SimpleConvNet step peak memory (tracemalloc) f64':<58} "
          + "  ".join(f"{b} {p / 2**20:.1f} MiB" for b, p in peaks.items()))


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
