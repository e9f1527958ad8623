"""Smoke tests of ``fastbp bench`` and of every asv benchmark (setup plus one call each)."""

import importlib
import inspect
import json
import pathlib
import sys

import pytest

from fastbp import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_bench_json_small(capsys):
    status = cli.main(["bench", "--sizes", "book", "--layers", "relu,softmax,affine,step",
                       "--time", "0.01", "--no-torch", "--json"])
    assert status == 0
    doc = json.loads(capsys.readouterr().out)
    cases = {(r["case"], r["size"]) for r in doc["results"]}
    assert cases == {("relu", "book"), ("softmax", "book"), ("affine", "book"), ("step", "book")}
    for r in doc["results"]:
        assert r["seconds"]["reference"] > 0 and r["seconds"]["kernel"] > 0
        assert r["ref/kernel"] > 0
    assert doc["environment"]["stream_bandwidth_GBps"] > 0


def test_bench_table_and_bad_arguments(capsys):
    assert cli.main(["bench", "--sizes", "book", "--layers", "sigmoid", "--time", "0.01",
                     "--no-torch", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "sigmoid" in out and "float32" in out and "ref/kern" in out
    assert cli.main(["bench", "--sizes", "huge"]) == 2
    assert cli.main(["bench", "--layers", "conv"]) == 2
    assert cli.main(["bench", "--dtype", "float16"]) == 2


def test_bench_module_imports_no_torch():
    """The subcommand's module stays light: no torch (nor numpy) at import."""
    code = ("import sys, fastbp.bench; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


def _asv_benchmarks():
    sys.path.insert(0, str(ROOT))
    try:
        for path in sorted((ROOT / "benchmarks").glob("bench_*.py")):
            module = importlib.import_module(f"benchmarks.{path.stem}")
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ != module.__name__ or cls.__name__.startswith("_"):
                    continue
                yield cls
    finally:
        sys.path.remove(str(ROOT))


def _first_params(cls):
    params = getattr(cls, "params", [])
    if params and not isinstance(params[0], list):
        params = [params]
    # the cheapest combination: kernel backend where there is one, book size, float64
    chosen = []
    for values in params:
        for preferred in ("kernel", "book", "float64"):
            if preferred in values:
                chosen.append(preferred)
                break
        else:
            chosen.append(values[0])
    return chosen


@pytest.mark.parametrize("cls", list(_asv_benchmarks()), ids=lambda c: c.__name__)
def test_every_asv_benchmark_runs_once(cls):
    args = _first_params(cls)
    bench = cls()
    if hasattr(bench, "setup"):
        bench.setup(*args)
    methods = [m for m in dir(bench) if m.startswith(("time_", "peakmem_", "timeraw_"))]
    assert methods, cls.__name__
    for name in methods:
        result = getattr(bench, name)(*args)
        if name.startswith("timeraw_"):
            assert isinstance(result, str) and "fastbp" in result


def test_asv_conf_builds_with_pip_wheel():
    conf = json.loads((ROOT / "asv.conf.json").read_text())
    assert conf["environment_type"] == "virtualenv"
    assert any("pip wheel --no-deps" in c for c in conf["build_command"])
    assert conf["benchmark_dir"] == "benchmarks"
