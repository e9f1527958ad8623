"""The chapter-6 targets of issue 9 in one run (not an asv benchmark: run it by hand).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.chapter6_targets
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.chapter6_targets --cpu

From the repository root. It prints reference/kernel time ratios, each backend timed in turn
in one process (the least, over rounds, of the median of short repeats):

* BatchNormalization forward + backward (train mode) at (100, 100) and (256, 4096), float64
  and float32 (targets: 4x and 6x);
* Dropout forward + backward (train mode, the book's global-state mask) at (100, 100) (target
  1.5x) and (256, 4096), with ``np.random.rand(*shape)`` timed alongside: the reference's draw
  and its share of the reference's time (the kernel backend draws the same numbers with its own
  MT19937 kernel, in its forward pass);
* one SGD step of ``MultiLayerNetExtend`` 784 -> 5 x 100 -> 10 with batch norm and dropout,
  batch 100 (target 1.5x): :func:`benchmarks.bench_training_extend.extend_training_step`.

``--cpu`` times the calling thread's CPU time with the kernels held to one thread: steadier
on a machine that other work is loading (it leaves out waiting for a core, not the cache and
memory contention). Without it: wall-clock time, kernels on their default threads (use that
on an idle machine).
"""

import sys
import time
import timeit

import numpy as np

from benchmarks.bench_training_extend import extend_training_step
from fastbp import threads
from fastbp.backends import layer_module


def per_call(fn, number, timer):
    return float(np.median(timeit.repeat(fn, number=number, repeat=5, timer=timer))) / number


def compare(make, number, timer, rounds=5, extra=None):
    """Least per-call time of ``make("reference")``, ``make("kernel")`` and ``extra``'s
    functions, timed in turn."""
    fns = {b: make(b) for b in ("reference", "kernel")}
    fns.update(extra or {})
    for fn in fns.values():
        fn()
        fn()
    best = dict.fromkeys(fns, np.inf)
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], per_call(fn, number, timer))
    return best


def layer_pass(name, shape, dtype):
    def make(backend):
        r = np.random.default_rng(0)
        x = (r.standard_normal(shape) + 0.5).astype(dtype)
        dout = r.standard_normal(shape).astype(dtype)
        L = layer_module(backend)
        if name == "BatchNormalization":
            layer = L.BatchNormalization(np.ones(shape[1], dtype), np.zeros(shape[1], dtype))
        else:
            layer = L.Dropout(0.5)

        def run():
            layer.forward(x)
            layer.backward(dout)
        return run
    return make


def row(label, t, unit=1e6, extra=""):
    u = "us" if unit == 1e6 else "ms"
    ref, ker = t["reference"], t["kernel"]
    print(f"{label:<46} {ref * unit:9.1f}{u} {ker * unit:9.1f}{u} {ref / ker:6.2f}x {extra}")


def main(timer):
    print(f"{'case':<46} {'reference':>11} {'kernel':>11}  ratio")
    for dtype in ("float64", "float32"):
        for shape, number in (((100, 100), 200), ((256, 4096), 3)):
            t = compare(layer_pass("BatchNormalization", shape, dtype), number, timer)
            row(f"BatchNormalization fwd+bwd {shape} {dtype}", t)
    for dtype in ("float64", "float32"):
        for shape, number in (((100, 100), 300), ((256, 4096), 3)):
            draw = {"rand": lambda shape=shape: np.random.rand(*shape)}  # noqa: NPY002
            t = compare(layer_pass("Dropout", shape, dtype), number, timer, rounds=9,
                        extra=draw)
            row(f"Dropout fwd+bwd {shape} {dtype}", t,
                extra=f"rand {t['rand'] * 1e6:.1f}us: {t['rand'] / t['reference']:.0%} "
                      f"of reference")
    for dtype in ("float64", "float32"):
        t = compare(lambda b, dtype=dtype: extend_training_step(b, dtype), 5, timer)
        row(f"MultiLayerNetExtend step, batch 100 {dtype}", t, unit=1e3)


if __name__ == "__main__":
    if "--cpu" in sys.argv:
        print("timer: the thread's CPU time, kernels on one thread")
        with threads.threads(1):
            main(time.thread_time)
    else:
        print("timer: wall clock")
        main(time.perf_counter)
