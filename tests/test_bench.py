"""Smoke tests of ``fastbp bench`` and of every asv benchmark (setup plus one call each)."""

import importlib
import inspect
import json
import os
import pathlib
import sys

import pytest

from fastbp import bench, cli

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
        assert "others_cores" in r
    env = doc["environment"]
    assert env["stream_bandwidth_GBps"] > 0
    assert env["kernel_threads"] >= 1 and env["cpu_count"] >= 1
    assert all(b["num_threads"] >= 1 for b in env["blas"])
    if hasattr(os, "getloadavg"):
        assert len(env["load_average_start"]) == 3 and len(env["load_average_end"]) == 3
    assert isinstance(doc["warnings"], list)
    by_case = {r["case"]: r for r in doc["results"]}
    # book size: Affine has its roofline; the bandwidth-bound ones and the step say why not
    assert 0 < by_case["affine"]["roofline"]["fwd+bwd vs BLAS"]
    assert by_case["relu"]["roofline"] is None and "in cache" in by_case["relu"]["roofline_note"]
    assert by_case["step"]["roofline"] is None and by_case["step"]["roofline_note"]
    assert by_case["affine"]["shape"] == [100, 784, 50]


def test_bench_table_and_bad_arguments(capsys):
    assert cli.main(["bench", "--sizes", "book", "--layers", "sigmoid", "--time", "0.01",
                     "--no-torch", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "sigmoid" in out and "float32" in out and "ref/kern" in out
    lines = out.splitlines()
    assert any(line.startswith("BLAS threads") for line in lines)
    assert any(line.startswith("kernel threads") for line in lines)
    assert any(line.startswith("load average at start") for line in lines)
    assert any(line.startswith("load average at end") for line in lines)
    (row,) = [line for line in lines if line.startswith("sigmoid")]
    assert "x 100x50" in row and row.rstrip().endswith("in cache")
    assert any("smaller arrays sit in cache" in line for line in lines)
    assert cli.main(["bench", "--sizes", "huge"]) == 2
    assert cli.main(["bench", "--layers", "conv"]) == 2
    assert cli.main(["bench", "--dtype", "float16"]) == 2
    for time_ in ("0", "-1", "nan", "inf"):
        assert cli.main(["bench", "--time", time_]) == 2
    assert cli.main(["bench", "--sizes", ""]) == 2
    assert cli.main(["bench", "--layers", " , "]) == 2


class FakeClock:
    """A stand-in for ``bench.time``: ``perf_counter`` reads a clock that only the functions
    being timed advance (``call``), and ``sleep`` fails the test."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def sleep(self, seconds):
        pytest.fail(f"slept {seconds} s")

    def call(self, events, name, seconds):
        def f():
            events.append(name)
            self.now += seconds
        return f


def _runs(events):
    """``events`` as [(name, count), ...], one pair per run of consecutive calls of a function."""
    runs = []
    for name in events:
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    return [tuple(r) for r in runs]


def test_time_interleaved_warms_each_function_before_its_block(monkeypatch):
    """With ``pause``, every timed block of a function follows ``pause`` seconds of untimed
    calls of that same function (never a sleep), so the previous function's spinning threads
    are gone and its own are running; without it, the blocks follow each other back to back."""
    clock = FakeClock()
    monkeypatch.setattr(bench, "time", clock)
    events = []
    a, b = clock.call(events, "a", 2 ** -9), clock.call(events, "b", 2 ** -8)  # exact sums
    bench.time_interleaved([a, b], target=0.0, min_repeats=2, max_repeats=2, pause=0.05)
    assert events[:8] == ["a"] * 4 + ["b"] * 4  # one call, then three that size the blocks
    # a: 26 calls of warm-up (0.05 s: 25.6 calls), then a block of 10 (20 ms); b: 13 and 5
    assert _runs(events[8:]) == [("a", 36), ("b", 18), ("a", 36), ("b", 18)]
    events.clear()
    bench.time_interleaved([a, b], target=0.0, min_repeats=2, max_repeats=2)
    assert _runs(events[8:]) == [("a", 10), ("b", 5), ("a", 10), ("b", 5)]  # the blocks alone


def test_warm_up_calls_at_least_once_and_for_the_time_given(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(bench, "time", clock)
    events = []
    bench.warm_up(clock.call(events, "f", 2 ** -10), 0.0)
    assert events == ["f"]
    bench.warm_up(clock.call(events, "g", 2 ** -10), 0.0305)  # 31.2 calls' time
    assert events[1:] == ["g"] * 32


def test_time_interleaved_times_each_function_over_a_block_not_one_call(monkeypatch):
    """A function much faster than the slowest one still gets a block of many calls (a single
    call after a pause was 2-10x slower than the function's steady rate, and made the reference
    net's step at 64-100-10 read 2.2 ms instead of 0.25 ms)."""
    clock = FakeClock()
    monkeypatch.setattr(bench, "time", clock)
    events = []
    slow, fast = clock.call(events, "slow", 2 ** -5), clock.call(events, "fast", 2 ** -12)
    bench.time_interleaved([slow, fast], target=0.0, min_repeats=1, max_repeats=1)
    # sizing: slow once, then once more (31 ms is a block); fast once, then three calls; then
    # the blocks: slow once, fast for 20 ms (81.9 calls' time)
    assert _runs(events) == [("slow", 2), ("fast", 4), ("slow", 1), ("fast", 81)]


def test_bench_module_imports_no_torch():
    """The subcommand's module stays light: no torch (nor numpy) at import. Nor does checking
    whether PyTorch is installed import it: in the benchmark's process it would share GNU OpenMP
    with numba (PeerProcess)."""
    code = ("import sys, fastbp.bench; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "fastbp.bench._torch_available(); "
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


def test_bench_table_shapes_and_blas_threads(capsys):
    from threadpoolctl import threadpool_info

    before = {i["filepath"]: i["num_threads"] for i in threadpool_info()}
    assert cli.main(["bench", "--sizes", "book", "--layers", "affine,step", "--time", "0.01",
                     "--no-torch", "--blas-threads", "1"]) == 0
    out = capsys.readouterr().out
    (blas,) = [line for line in out.splitlines() if line.startswith("BLAS threads")]
    assert "(--blas-threads)" in blas and " 1 (" in blas and " 2 (" not in blas
    (affine,) = [line for line in out.splitlines() if line.startswith("affine")]
    assert "x 100x784 W 784x50" in affine and "fwd+bwd vs BLAS" in affine
    (step,) = [line for line in out.splitlines() if line.startswith("step")]
    assert "x 100x784 784-50-10" in step and step.rstrip().endswith("n/a")
    after = {i["filepath"]: i["num_threads"] for i in threadpool_info()}
    assert {k: v for k, v in after.items() if k in before} == before  # restored


def test_bench_blas_threads_json_and_bad_value(capsys):
    assert cli.main(["bench", "--sizes", "book", "--layers", "relu", "--time", "0.01",
                     "--no-torch", "--blas-threads", "1", "--json"]) == 0
    env = json.loads(capsys.readouterr().out)["environment"]
    assert env["blas_threads_option"] == 1
    assert env["blas"] and all(b["num_threads"] == 1 for b in env["blas"])
    assert cli.main(["bench", "--blas-threads", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err


def test_bench_without_threadpoolctl(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    assert cli.main(["bench", "--sizes", "book", "--layers", "relu", "--blas-threads", "1",
                     "--no-torch"]) == 2
    assert "needs threadpoolctl" in capsys.readouterr().err
    assert cli.main(["bench", "--sizes", "book", "--layers", "relu", "--time", "0.01",
                     "--no-torch"]) == 0
    assert "BLAS threads unknown (threadpoolctl not installed)" in capsys.readouterr().out


@pytest.mark.parametrize(("others", "start", "end", "expected"), [
    ([0.05, 0.1, 0.2], (0.1, 0, 0), (0.3, 0, 0), []),
    ([0.05, 0.9], (0.1, 0, 0), (0.2, 0, 0), ["load changed"]),
    ([0.05, 1.0], (0.1, 0, 0), (0.2, 0, 0), ["load changed", "under load"]),
    ([0.0, 0.7], None, None, ["load changed"]),
    ([1.4, 1.5, 1.6], (1.4, 0, 0), (1.5, 0, 0), ["under load"]),
    ([None, None], (0.2, 0, 0), (1.5, 0, 0), ["load changed"]),   # no /proc/stat
    ([None], (0.2, 0, 0), (0.4, 0, 0), []),
    ([None], None, None, []),
])
def test_load_warnings(others, start, end, expected):
    warnings = bench.load_warnings(others, start, end)
    assert len(warnings) == len(expected)
    for w, e in zip(warnings, expected, strict=True):
        assert e.replace("load changed", "the load changed") in w


def test_other_processes_cpu_is_busy_time_less_our_own(monkeypatch):
    """others = (busy time of all CPUs - this process's CPU time) / wall time, never < 0."""
    samples = iter([(0.0, 100.0, 5.0), (2.0, 103.0, 6.8), (3.0, 103.5, 7.8)])
    monkeypatch.setattr(bench._CpuClock, "_now", staticmethod(lambda: next(samples)))
    clock = bench._CpuClock()
    assert clock.others() == pytest.approx((3.0 - 1.8) / 2.0)
    assert clock.others() == 0.0  # tick rounding may make busy < own: clipped
    monkeypatch.setattr(bench._CpuClock, "_now", staticmethod(lambda: (0.0, None, 1.0)))
    assert bench._CpuClock().others() is None  # no /proc/stat


def test_busy_seconds_counts_our_own_work():
    import time

    first = bench._busy_seconds()
    if first is None:
        pytest.skip("no /proc/stat")
    own = sum(os.times()[:2])
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:
        pass
    spent = sum(os.times()[:2]) - own
    assert spent > 0.1
    assert bench._busy_seconds() - first >= spent - 0.05  # all CPUs' busy time includes ours


def test_peer_process_times_blocks_in_a_process_of_its_own():
    """PyTorch's steps run in a PeerProcess (here the reference's step stands in for one, so
    that the test runs without PyTorch): its blocks are timed there and come back as seconds
    per call, it takes its turn in time_interleaved, and close() ends the process."""
    import numpy as np

    local = bench.training_step("reference", (10, 8, 5, 3), "float64")
    with bench.PeerProcess("training_step", "reference", (10, 8, 5, 3), "float64") as peer:
        assert peer._proc.pid != os.getpid() and peer._proc.is_alive()
        per_call = peer.block(3, 0.01)
        assert 0 < per_call < 1
        peer()  # one call
        times = bench.time_interleaved([local, peer], target=0.0, min_repeats=2, max_repeats=2,
                                       pause=0.01)
        assert len(times) == 2 and all(0 < t < 1 for t in times)
        assert np.isfinite(times).all()
    assert not peer._proc.is_alive()


def test_a_peer_that_fails_to_start_raises():
    with pytest.raises(RuntimeError, match="peer process died"):
        bench.PeerProcess("training_step", "no such backend", (10, 8, 5, 3), "float64")

