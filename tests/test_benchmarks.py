"""Every asv benchmark runs: its ``setup`` and each of its timed methods once, in this process.

``asv check`` (in CI) finds the benchmarks and checks their signatures; this runs them, on every
backend and dtype at the first size (the book's), so that a renamed function or a broken setup
fails a test rather than a benchmark run. The ``timeraw_`` start-up benchmarks return code for a
fresh interpreter: it is compiled here, not run. PyTorch's twins skip where it is absent, as asv
skips them.
"""

import importlib
import inspect
import itertools
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULES = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))
TIMED = ("time_", "peakmem_", "track_", "mem_", "timeraw_")


def benchmark_classes():
    for name in MODULES:
        module = importlib.import_module(f"benchmarks.{name}")
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and not cls_name.startswith("_") and any(
                    m.startswith(TIMED) for m in dir(cls)):
                yield pytest.param(cls, id=f"{name}.{cls_name}")


def combinations(cls):
    """Every parameter combination, at the first size only (the book's)."""
    params = getattr(cls, "params", None)
    if not params:
        return [()]
    if not isinstance(params[0], list):
        params = [params]
    names = getattr(cls, "param_names", [""] * len(params))
    axes = [values[:1] if name in ("size", "shape") else values
            for name, values in zip(names, params, strict=True)]
    return list(itertools.product(*axes))


def test_every_benchmark_module_is_found():
    assert len(MODULES) >= 10 and {"bench_conv", "bench_convnet", "bench_pool"} <= set(MODULES)


@pytest.mark.parametrize("cls", list(benchmark_classes()))
def test_benchmark_runs(cls):
    for args in combinations(cls):
        bench = cls()
        try:
            if hasattr(bench, "setup"):
                bench.setup(*args)
        except NotImplementedError:  # asv's skip: PyTorch is not installed
            assert "torch" in args
            continue
        for name in sorted(m for m in dir(bench) if m.startswith(TIMED)):
            result = getattr(bench, name)(*args)
            if name.startswith("timeraw_"):
                compile(result, name, "exec")
