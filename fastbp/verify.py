"""``fastbp verify``: check the kernels against the NumPy reference on this machine.

Runs :func:`fastbp.testing.compare_layers` for every case of :func:`fastbp.testing.layer_cases`
in float32 and float64, in the serial and the threaded kernel builds, and
:func:`fastbp.testing.finite_difference_check` for every case in float64, then prints one table
row per check. Exits 1 if any check fails.
"""

import sys
import time

import numpy as np

from fastbp.testing import (  # noqa: F401 (LayerCase, away_from_zero: importable from here too)
    LayerCase,
    away_from_zero,
    compare_layers,
    finite_difference_check,
    layer_cases,
)

DTYPES = (np.float32, np.float64)


def run_checks(seed=0):
    """Yield ``(layer, dtype, build, check)`` for every agreement and finite-difference check."""
    from fastbp.kernels import parallel

    for build, threshold in parallel.BUILDS.items():
        with parallel.settings(parallel_min_elements=threshold):
            for case in layer_cases(seed):
                for dtype in DTYPES:
                    result = compare_layers(case.candidate, case.reference, case.inputs,
                                            dtype=dtype, grads=case.grads, name=case.name)
                    for check in result.checks:
                        yield case.name, np.dtype(dtype).name, build, check
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
    if args.seed < 0:
        print(f"fastbp verify: --seed must be at least 0; got {args.seed}", file=sys.stderr)
        return 2
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
