"""``fastbp verify``: check the kernels against the NumPy reference on this machine.

Runs :func:`fastbp.testing.compare_layers` for every layer in float32 and float64, in the serial
and the threaded kernel builds, and :func:`fastbp.testing.finite_difference_check` for every
layer in float64, then prints one table row per check. Exits 1 if any check fails.
"""

import dataclasses
import time

import numpy as np

from fastbp import layers
from fastbp.reference import layers as reference
from fastbp.testing import compare_layers, finite_difference_check

DTYPES = (np.float32, np.float64)


@dataclasses.dataclass
class LayerCase:
    """A layer and the data to run it on: ``make(module, cast)`` builds it from either backend."""

    name: str
    make: object
    inputs: tuple
    grads: tuple = ()
    params: dict = dataclasses.field(default_factory=dict)

    def candidate(self, cast):
        return self.make(layers, cast)

    def reference(self, cast):
        return self.make(reference, cast)


def away_from_zero(rng, shape, low=0.05, high=2.0):
    """Random values with ``low <= |x| <= high``: finite differences never cross ReLU's kink."""
    return rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)


class FixedUniforms:
    """A stand-in for ``numpy.random.Generator`` whose ``random(shape)`` gives the same numbers
    on every call: Dropout layers built with it draw one mask, on either backend and on every
    forward pass (finite differences call ``forward`` many times)."""

    def __init__(self, seed):
        self.seed = seed

    def random(self, shape):
        return np.random.default_rng(self.seed).random(shape)


def layer_cases(seed=0, batch=7):
    """The standard cases: every kernel-backed layer, every label form, odd sizes, N-d input."""
    rng = np.random.default_rng(seed)
    x_nd = rng.standard_normal((batch, 3, 4))
    W, b = rng.standard_normal((12, 9)), rng.standard_normal(9)
    logits = 3 * rng.standard_normal((batch, 10))
    labels = rng.integers(0, 10, batch)
    probs = rng.dirichlet(np.ones(10), batch)
    cases = [
        LayerCase("Relu", lambda m, cast: m.Relu(), (away_from_zero(rng, (batch, 13)),)),
        LayerCase("Sigmoid", lambda m, cast: m.Sigmoid(),
                  (3 * rng.standard_normal((batch, 13)),)),
        LayerCase("Affine", lambda m, cast: m.Affine(cast(W), cast(b)), (x_nd,),
                  grads=("dW", "db"), params={"W": "dW", "b": "db"}),
        LayerCase("SoftmaxWithLoss[labels]", lambda m, cast: m.SoftmaxWithLoss(),
                  (logits, labels)),
        LayerCase("SoftmaxWithLoss[uint8 (N,1)]", lambda m, cast: m.SoftmaxWithLoss(),
                  (logits, labels.astype(np.uint8).reshape(-1, 1))),
        LayerCase("SoftmaxWithLoss[one-hot]", lambda m, cast: m.SoftmaxWithLoss(),
                  (logits, np.eye(10)[labels])),
        LayerCase("SoftmaxWithLoss[probs]", lambda m, cast: m.SoftmaxWithLoss(),
                  (logits, probs)),
        *conv_cases(rng, batch),
    ]
    return cases + chapter6_cases(rng, seed, batch)


def conv_cases(rng, batch):
    """Convolution and Pooling on small odd, non-square images (chapters 7-8)."""
    x = rng.standard_normal((batch, 3, 9, 8))
    W1, b1 = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    W2, b2 = rng.standard_normal((5, 3, 4, 2)), rng.standard_normal(5)
    return [
        LayerCase("Convolution", lambda m, cast: m.Convolution(cast(W1), cast(b1)), (x,),
                  grads=("dW", "db"), params={"W": "dW", "b": "db"}),
        LayerCase("Convolution[stride 2, pad 1]",
                  lambda m, cast: m.Convolution(cast(W2), cast(b2), stride=2, pad=1), (x,),
                  grads=("dW", "db"), params={"W": "dW", "b": "db"}),
        LayerCase("Pooling", lambda m, cast: m.Pooling(2, 2, stride=2), (x,)),
        LayerCase("Pooling[3x2, stride 1, pad 1]",
                  lambda m, cast: m.Pooling(3, 2, stride=1, pad=1), (x,)),
    ]


def chapter6_cases(rng, seed, batch):
    """BatchNormalization (2-d and 4-d, train and test mode) and Dropout (train and test)."""
    x_bn = 2 * rng.standard_normal((batch, 11)) + 1
    x_bn4 = rng.standard_normal((batch, 2, 3, 2)) - 0.5
    gamma, beta = rng.uniform(0.5, 2, 11), rng.standard_normal(11)
    gamma4, beta4 = rng.uniform(0.5, 2, 12), rng.standard_normal(12)
    running = rng.standard_normal(11), rng.uniform(0.5, 2, 11)
    running4 = rng.standard_normal(12), rng.uniform(0.5, 2, 12)
    x_drop = rng.standard_normal((batch, 13))
    train_grads = ("dgamma", "dbeta", "running_mean", "running_var", "xc", "xn", "std")
    test_grads = ("dgamma", "dbeta", "running_mean", "running_var")
    bn_params = {"gamma": "dgamma", "beta": "dbeta"}

    def batchnorm(g, b, stats=None):
        if stats is None:
            return lambda m, cast: m.BatchNormalization(cast(g), cast(b), momentum=0.8)
        return lambda m, cast: m.BatchNormalization(cast(g), cast(b), running_mean=cast(stats[0]),
                                                    running_var=cast(stats[1]))

    return [
        LayerCase("BatchNormalization[train]", batchnorm(gamma, beta), (x_bn,),
                  grads=train_grads, params=bn_params),
        LayerCase("BatchNormalization[train 4-d]", batchnorm(gamma4, beta4), (x_bn4,),
                  grads=train_grads, params=bn_params),
        LayerCase("BatchNormalization[test]", batchnorm(gamma, beta, running),
                  (x_bn, np.False_), grads=test_grads, params=bn_params),
        LayerCase("BatchNormalization[test 4-d]", batchnorm(gamma4, beta4, running4),
                  (x_bn4, np.False_), grads=test_grads, params=bn_params),
        LayerCase("Dropout[train]", lambda m, cast: m.Dropout(0.3, rng=FixedUniforms(seed)),
                  (x_drop,), grads=("mask",)),
        LayerCase("Dropout[test]", lambda m, cast: m.Dropout(0.3), (x_drop, np.False_)),
    ]


def run_checks(seed=0):
    """Yield ``(layer, dtype, build, check)`` for every agreement and finite-difference check."""
    from fastbp.kernels import jit

    saved = jit.PARALLEL_MIN_ELEMENTS
    try:
        for build, threshold in (("serial", np.iinfo(np.int64).max), ("threaded", 0)):
            jit.PARALLEL_MIN_ELEMENTS = threshold
            for case in layer_cases(seed):
                for dtype in DTYPES:
                    result = compare_layers(case.candidate, case.reference, case.inputs,
                                            dtype=dtype, grads=case.grads, name=case.name)
                    for check in result.checks:
                        yield case.name, np.dtype(dtype).name, build, check
    finally:
        jit.PARALLEL_MIN_ELEMENTS = saved
    for case in layer_cases(seed):
        checks = finite_difference_check(
            lambda case=case: case.candidate(lambda a: np.array(a, dtype=np.float64)),
            case.inputs, params=case.params,
        )
        for check in checks:
            check.quantity = "fd " + check.quantity
            yield case.name, "float64", "finite diff", check


def add_arguments(parser):
    parser.add_argument("--seed", type=int, default=0, help="seed of the test data (default 0)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="print every check, not one row per layer, dtype and build")


def _environment():
    import platform

    import numba

    from fastbp import __version__

    return (f"fastbp {__version__}, numpy {np.__version__}, numba {numba.__version__}, "
            f"Python {platform.python_version()}, {platform.machine()}, "
            f"{numba.config.NUMBA_NUM_THREADS} numba threads")


def run(args):
    start = time.perf_counter()
    print(_environment())
    rows = {}
    failures = []
    for name, dtype, build, check in run_checks(args.seed):
        key = (name, dtype, build)
        worst = rows.get(key)
        if worst is None or check.ratio > worst.ratio:
            rows[key] = check
        if args.verbose:
            print(f"  {name:<30} {dtype:<8} {build:<11} {check.quantity:<14} "
                  f"{check.max_error:10.3e} {check.tolerance:10.3e}")
        if not check.passed:
            failures.append((key, check))
    header = (f"{'layer':<30} {'dtype':<8} {'build':<11} {'worst quantity':<15}"
              f"{'max error':>11} {'tolerance':>11}  result")
    print(header)
    print("-" * len(header))
    for (name, dtype, build), check in rows.items():
        status = "pass" if all(k != (name, dtype, build) for k, _ in failures) else "FAIL"
        print(f"{name:<30} {dtype:<8} {build:<11} {check.quantity:<15}"
              f"{check.max_error:11.3e} {check.tolerance:11.3e}  {status}")
    elapsed = time.perf_counter() - start
    if failures:
        print(f"\n{len(failures)} check(s) FAILED ({elapsed:.1f} s):")
        for (name, dtype, build), check in failures:
            print(f"  {name} {dtype} {build}: {check.quantity} error {check.max_error:.3e} "
                  f"> {check.tolerance:.3e} {check.detail}")
        return 1
    print(f"\nall {len(rows)} rows pass ({elapsed:.1f} s, JIT compilation included)")
    return 0
