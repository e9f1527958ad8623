"""The chapter-5 step's targets in one run (not an asv benchmark: run it by hand).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.step_targets
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.step_targets --load 1

From the repository root. ``--load N`` keeps N background processes busy (one core each)
while it measures. It prints:

* the training step (batch 100) at 784-50-10 and 64-100-10, float64 and float32, timed
  interleaved in one run: ``fastbp.nets.TwoLayerNet`` on the reference and on the kernels
  (the reference on BLAS's default threads), the book's own ``TwoLayerNet`` code on
  ``fastbp.reference.layers`` and on ``fastbp.layers`` (the drop-in case), and PyTorch eager (in a
  process of its own, ``fastbp.bench.PeerProcess``)
  where it is installed; with the ratios the targets name. Each case is timed in blocks, each
  after 0.3 s of its own untimed calls (``fastbp.bench.SPIN_PAUSE``), so that one case's
  still-spinning BLAS or PyTorch threads do not slow the next;
* ``fastbp train --compare`` on the digits (steps/s ratio);
* the warm-cache start: a fresh interpreter imports fastbp and runs one forward and one
  backward of every chapter-5 layer (the numba cache filled first); and whether
  ``import fastbp`` starts a thread or numba's pool;
* with ``--blas``: how much faster each product of the step runs on 2..N BLAS threads than on
  one (where a second thread starts to pay, for :data:`fastbp.threads.PRODUCT_THREADS_MIN_FLOPS`);
* with ``--per-call``: the layers' cost per call at small sizes, with the fast path and with
  every check (thread CPU time, the least of many short runs), and the cost of reading the load
  and of changing BLAS's count.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SHAPES = {"784-50-10": (100, 784, 50, 10), "64-100-10": (100, 64, 100, 10)}

IMPORT_CHECK = """
import os, numpy
before = len(os.listdir("/proc/self/task"))
import fastbp
from numba.np.ufunc import parallel
print(len(os.listdir("/proc/self/task")) - before, parallel._is_initialized,
      "threadpoolctl" in __import__("sys").modules)
"""


def steps(target):

    from fastbp.bench import (
        SPIN_PAUSE,
        PeerProcess,
        _torch_available,
        book_training_step,
        time_interleaved,
        training_step,
    )

    rows = []
    for dtype in ("float64", "float32"):
        for name, size in SHAPES.items():
            cases = {"ref net": training_step("reference", size, dtype),
                     "kernel net": training_step("kernel", size, dtype),
                     "book on ref": book_training_step("reference", size, dtype),
                     "book on kernel": book_training_step("kernel", size, dtype)}
            if _torch_available():  # in a process of its own (fastbp.bench.PeerProcess)
                cases["torch"] = PeerProcess("_torch_case_seeded", "step", size, dtype)
            try:
                timed = time_interleaved(list(cases.values()), target=target, max_repeats=9,
                                         pause=SPIN_PAUSE)
            finally:
                if "torch" in cases:
                    cases["torch"].close()
            times = dict(zip(cases, timed, strict=True))
            row = {"dtype": dtype, "shape": name,
                   "us": {k: round(v * 1e6, 1) for k, v in times.items()},
                   "net ref/kernel": times["ref net"] / times["kernel net"],
                   "book ref/kernel": times["book on ref"] / times["book on kernel"]}
            if "torch" in times:
                row["torch/kernel net"] = times["torch"] / times["kernel net"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def train_compare():
    out = subprocess.run([sys.executable, "-m", "fastbp", "train", "--compare", "--json",
                          "--no-progress", "--epochs", "40"], capture_output=True, text=True)
    if out.returncode not in (0, 1):
        print(out.stderr)
        return None
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"fastbp train --compare: {result['speedup']:.2f}x steps/s "
          f"(accuracies match: {result['accuracies_match']})", flush=True)
    return result["speedup"]


def warm_start(repeats=5):
    from .bench_compile import FIRST_USE

    env = dict(os.environ, NUMBA_CACHE_DIR=tempfile.mkdtemp(prefix="fastbp-targets-"))
    seconds = {}
    for dtype in ("float64", "float32"):
        code = FIRST_USE.format(dtype=dtype)
        subprocess.run([sys.executable, "-c", code], env=env, check=True)  # fills the cache
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True)
            runs.append(time.perf_counter() - t0)
        seconds[dtype] = statistics.median(runs)
    check = subprocess.run([sys.executable, "-c", IMPORT_CHECK], env=env, check=True,
                           capture_output=True, text=True).stdout.split()
    print(f"warm-cache start (median of {repeats}): "
          + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items())
          + f"; import fastbp: {check[0]} new threads, numba pool started: {check[1]}, "
          f"threadpoolctl imported: {check[2]}", flush=True)
    return seconds


def blas_gain():
    """Each product on 1, 2 and all BLAS threads, the count set once per block of calls
    through the BLAS library's own setter (threadpoolctl's ``threadpool_limits`` scans the
    loaded libraries on every entry, about 0.5 ms here: inside the timing it swamped the small
    products, so an earlier version of this table overstated their one-thread times 2-3x)."""
    import numpy as np

    from fastbp.bench import time_interleaved
    from fastbp.threads import _find_blas

    lib = _find_blas().lib
    if lib is None:
        print("no BLAS library that threadpoolctl can control: nothing to measure")
        return
    yours = lib.get_num_threads()
    most = os.cpu_count() or 1
    counts = sorted({1, 2, most} & set(range(1, most + 1)))
    rng = np.random.default_rng(0)
    shapes = [(100, 64, 100), (64, 100, 100), (100, 100, 64), (100, 100, 10), (100, 200, 50),
              (100, 784, 50), (100, 50, 784), (784, 100, 50), (256, 256, 256),
              (256, 1024, 1000)]
    print("product m x k x n: time on 1 thread, and speed-up on " + ", ".join(map(str, counts)))
    try:
        for dtype in ("float64", "float32"):
            for m, k, n in shapes:
                a = rng.standard_normal((m, k)).astype(dtype)
                b = rng.standard_normal((k, n)).astype(dtype)
                out = np.empty((m, n), dtype=dtype)
                calls = max(1, int(2e8 / (2 * m * n * k)))  # a block of about 10 ms

                def on(count, a=a, b=b, out=out, calls=calls):
                    def run():
                        lib.set_num_threads(count)
                        for _ in range(calls):
                            np.dot(a, b, out=out)
                    return run
                times = time_interleaved([on(c) for c in counts], target=0.3)
                gains = " ".join(f"{times[0] / t:5.2f}x" for t in times)
                print(f"{dtype} {m:>4}x{k:>4}x{n:>4} ({2 * m * n * k / 1e6:7.1f} MFLOP): "
                      f"{times[0] / calls * 1e6:9.1f} us  {gains}", flush=True)
    finally:
        lib.set_num_threads(yours)


def _per_call_us(f, inner=200, repeats=100):
    """The least thread CPU time per call over ``repeats`` short runs (robust to load)."""
    for _ in range(5):
        f()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time_ns()
        for _ in range(inner):
            f()
        best = min(best, (time.thread_time_ns() - t0) / inner)
    return best / 1e3


def per_call():
    """The checks a call alike the previous one skips, and what a BLAS count change costs."""
    import ctypes

    import numpy as np

    from fastbp import layers, threads
    from fastbp.kernels import parallel as kernel_parallel

    def forgetting(layer, call, *keys):
        def run():
            for key in keys:
                setattr(layer, key, None)
            call()
        return run

    rng = np.random.default_rng(0)
    for dtype in ("float64", "float32"):
        for n, d, h in ((1, 4, 3), (100, 50, 10)):
            x = rng.standard_normal((n, d)).astype(dtype)
            a = layers.Affine(rng.standard_normal((d, h)).astype(dtype), np.zeros(h, dtype))
            dout = np.ones((n, h), dtype)
            a.forward(x)
            cases = {"forward": (lambda a=a, x=x: a.forward(x), "_forward_key"),
                     "backward": (lambda a=a, dout=dout: a.backward(dout), "_backward_key")}
            for name, (call, key) in cases.items():
                fast, checked = _per_call_us(call), _per_call_us(forgetting(a, call, key))
                print(f"{dtype} Affine {n}x{d}x{h} {name}: {fast:.2f} us, with every check "
                      f"{checked:.2f} us", flush=True)
        loss = layers.SoftmaxWithLoss()
        logits = rng.standard_normal((100, 10)).astype(dtype)
        labels = rng.integers(0, 10, 100)

        def call(loss=loss, logits=logits, labels=labels):
            loss.forward(logits, labels)
        print(f"{dtype} SoftmaxWithLoss 100x10 forward: {_per_call_us(call):.2f} us, with every "
              f"check {_per_call_us(forgetting(loss, call, '_key')):.2f} us", flush=True)
    blas = threads._find_blas()
    print(f"idle_cores(): {_per_call_us(kernel_parallel.idle_cores):.2f} us", flush=True)
    if blas.lib is None:
        return
    lib = blas.lib
    n = lib.get_num_threads()
    # the ctypes function threadpoolctl found (a private method: for this comparison only)
    raw_set = getattr(lib, "_get_symbol", lambda name: None)("openblas_set_num_threads")
    tpc = _per_call_us(lambda: (lib.set_num_threads(1), lib.set_num_threads(n)))
    raw = (_per_call_us(lambda: (raw_set(ctypes.c_int(1)), raw_set(ctypes.c_int(n))))
           if raw_set is not None else float("nan"))
    print(f"threadpoolctl get_num_threads: {_per_call_us(lib.get_num_threads):.2f} us; set 1 "
          f"then back: {tpc:.2f} us through threadpoolctl, {raw:.2f} us through ctypes",
          flush=True)
    big = threads.PRODUCT_THREADS_MIN_FLOPS

    def block():
        with threads.ProductThreads(big):
            pass
    print(f"ProductThreads block around a product: {_per_call_us(block):.2f} us "
          f"(load now: {kernel_parallel.idle_cores()} idle cores)", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_targets")
    parser.add_argument("--load", type=int, default=0, metavar="N",
                        help="busy background processes during the run (default 0)")
    parser.add_argument("--time", type=float, default=0.5,
                        help="seconds per case and backend (default 0.5)")
    parser.add_argument("--blas", action="store_true", help="also the BLAS thread gain table")
    parser.add_argument("--per-call", action="store_true",
                        help="also the layers' per-call cost, with and without the checks")
    args = parser.parse_args(argv)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(args.load)]
    try:
        print(f"{os.cpu_count()} cores, {args.load} busy background processes, "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
        steps(args.time)
        train_compare()
        warm_start()
        if args.blas:
            blas_gain()
        if args.per_call:
            per_call()
    finally:
        for p in busy:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
