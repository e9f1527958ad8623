"""Hostile inputs in a subprocess, threads, fork, caches, and no mutation of the caller's arrays."""

import hashlib
import os
import pathlib
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from fastbp import layers, reference

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_python(code, env=None, timeout=300):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full_env, timeout=timeout)


# --- nothing crashes the process -----------------------------------------------------------

DANGEROUS = r"""
import numpy as np
from fastbp import layers, reference
from fastbp.kernels import parallel
cases = {{
    "label C": lambda L: L.SoftmaxWithLoss().forward(np.zeros((4, 3)), np.array([0, 1, 3, 2])),
    "label -1": lambda L: L.SoftmaxWithLoss().forward(np.zeros((4, 3)), np.array([0, -1, 1, 2])),
    "label 2**40": lambda L: L.SoftmaxWithLoss().forward(np.zeros((2, 3)), np.array([2**40, 0])),
    "label uint64 max": lambda L: L.SoftmaxWithLoss().forward(
        np.zeros((1, 3)), np.array([2**64 - 1], dtype=np.uint64)),
    "int8 -1": lambda L: L.SoftmaxWithLoss().forward(np.zeros((1, 3)), np.array([-1], np.int8)),
    "short labels": lambda L: L.SoftmaxWithLoss().forward(np.zeros((4, 3)), np.array([0, 1])),
    "long labels": lambda L: L.SoftmaxWithLoss().forward(np.zeros((2, 3)), np.zeros(9, int)),
    "narrow one-hot": lambda L: L.SoftmaxWithLoss().forward(np.zeros((2, 3)), np.eye(2)),
    "float labels": lambda L: L.SoftmaxWithLoss().forward(np.zeros((2, 3)), np.zeros(2)),
    "string labels": lambda L: L.SoftmaxWithLoss().forward(np.zeros((2, 3)), np.array(["a", "b"])),
    "3-d logits": lambda L: L.SoftmaxWithLoss().forward(np.zeros((2, 3, 4)), np.zeros(2, int)),
    "complex logits": lambda L: L.SoftmaxWithLoss().forward(np.zeros((2, 3), complex),
                                                            np.zeros(2, int)),
    "affine shapes": lambda L: L.Affine(np.zeros((5, 2)), np.zeros(2)).forward(np.zeros((3, 4))),
    "affine 1-d W": lambda L: L.Affine(np.zeros(5), np.zeros(2)).forward(np.zeros((3, 5))),
    "affine bias": lambda L: L.Affine(np.zeros((4, 2)), np.zeros(7)).forward(np.zeros((3, 4))),
    "object x": lambda L: L.Relu().forward(np.array([None, 1])),
}}

def short_dout(L, make, x):
    layer = make(L)
    layer.forward(x)
    return layer.backward(np.ones(3))

cases["relu short dout"] = lambda L: short_dout(L, lambda L: L.Relu(), np.zeros((50, 50)))
cases["sigmoid short dout"] = lambda L: short_dout(L, lambda L: L.Sigmoid(), np.zeros((50, 50)))
cases["affine short dout"] = lambda L: short_dout(
    L, lambda L: L.Affine(np.zeros((50, 4)), np.zeros(4)), np.zeros((50, 50)))
with parallel.settings(parallel_min_elements=parallel.BUILDS["{build}"]):
    for name, case in cases.items():
        for L in (layers, reference.layers):
            try:
                case(L)
            except (IndexError, ValueError, TypeError) as exc:
                print(name, L.__name__, type(exc).__name__)
            else:
                print(name, L.__name__, "NO ERROR")
"""


@pytest.mark.parametrize("build", ["serial", "threaded"])
def test_dangerous_inputs_raise_and_never_crash(build):
    proc = run_python(DANGEROUS.format(build=build))
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 * 19, proc.stdout
    assert not [line for line in lines if "NO ERROR" in line], proc.stdout
    for line in lines:
        name = line.rsplit(" ", 2)[0]
        kind = line.rsplit(" ", 1)[1]
        if name.startswith("label") or name == "int8 -1":
            assert kind == "IndexError", line
        elif name in ("float labels", "string labels", "complex logits", "object x"):
            assert kind == "TypeError", line
        else:
            assert kind == "ValueError", line


# --- threads -------------------------------------------------------------------------------


def one_pass(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64, 300))
    W, b = rng.standard_normal((300, 40)), rng.standard_normal(40)
    t = rng.integers(0, 40, 64)
    affine, relu, loss = layers.Affine(W, b), layers.Relu(), layers.SoftmaxWithLoss()
    sig = layers.Sigmoid()
    h = relu.forward(affine.forward(sig.forward(x)))
    value = loss.forward(h, t)
    dx = sig.backward(affine.backward(relu.backward(loss.backward())))
    return [np.asarray(value), dx, affine.dW, affine.db]


def test_eight_threads_agree_with_a_serial_run(build):
    # fastbp's kernels give the same bits in any thread; BLAS's products follow its thread
    # count, which fastbp picks by the load, so BLAS runs on one thread here (docs/numerics.md)
    with threadpool_limits(1, user_api="blas"):
        eight_threads_agree_with_a_serial_run()


def eight_threads_agree_with_a_serial_run():
    expected = {seed: one_pass(seed) for seed in range(8)}
    results, errors = {}, []

    def work(seed):
        try:
            for _ in range(5):
                results[seed] = one_pass(seed)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    for seed, want in expected.items():
        for got, ref in zip(results[seed], want, strict=True):
            assert got.tobytes() == ref.tobytes()


def test_threads_in_a_fresh_process_do_not_abort():
    """A fresh process whose first kernel calls come from 8 threads at once (the case that
    aborts numba's workqueue layer with "Concurrent access")."""
    code = """
    import threading, numpy as np
    from fastbp import layers
    from fastbp.kernels import parallel
    x = np.random.default_rng(0).standard_normal((300, 300))
    def work():
        for _ in range(20):
            r = layers.Relu(); r.backward(r.forward(x))
            s = layers.Sigmoid(); s.backward(s.forward(x))
    with parallel.settings(parallel_min_elements=0):
        ts = [threading.Thread(target=work) for _ in range(8)]
        [t.start() for t in ts]; [t.join() for t in ts]
    import numba; print("ok", numba.threading_layer())
    """
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok")


# --- fork ----------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_after_parallel_work():
    code = """
    import os, sys, numpy as np
    from fastbp import layers
    from fastbp.kernels import parallel
    x = np.random.default_rng(0).standard_normal((400, 400))
    with parallel.settings(parallel_min_elements=0):
        parent = layers.Sigmoid().forward(x)
        pid = os.fork()
        if pid == 0:
            child = layers.Sigmoid().forward(x)
            r = layers.Relu(); r.backward(r.forward(x))
            os._exit(0 if child.tobytes() == parent.tobytes() else 3)
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status))
    """
    proc = run_python(code, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "child 0", (proc.stdout, proc.stderr[-2000:])


# --- caches --------------------------------------------------------------------------------

USE_ALL = """
import numpy as np, fastbp
from fastbp import layers
x = np.random.default_rng(0).standard_normal((6, 5))
for L in (layers.Relu(), layers.Sigmoid()):
    L.backward(L.forward(x))
a = layers.Affine(np.ones((5, 3)), np.zeros(3)); a.backward(a.forward(x))
s = layers.SoftmaxWithLoss(); s.forward(x, np.arange(6) % 5); s.backward()
print("ok")
"""


def test_numba_cache_dir_is_honoured(tmp_path):
    proc = run_python(USE_ALL, env={"NUMBA_CACHE_DIR": str(tmp_path)})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    assert list(tmp_path.rglob("*.nbi")) and list(tmp_path.rglob("*.nbc"))


def test_unusable_numba_cache_dir_falls_back():
    proc = run_python(USE_ALL, env={"NUMBA_CACHE_DIR": "/dev/null/cache"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    assert "RuntimeError" not in proc.stderr


def test_no_writable_cache_location_anywhere():
    """Every cache location refuses writes (a read-only install and HOME): numba raises
    RuntimeError("no locator available") at decoration; fastbp compiles uncached."""
    code = textwrap.dedent("""
        import numba.core.caching as caching
        def refuse(self):
            raise PermissionError("read-only file system")
        caching._CacheLocator.ensure_cache_path = refuse
    """) + USE_ALL
    proc = run_python(code)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes through permission bits")
def test_read_only_package_and_home(tmp_path):
    import shutil

    site = tmp_path / "site"
    shutil.copytree(ROOT / "fastbp", site / "fastbp")
    shutil.copytree(ROOT / "kernels", site / "fastbp" / "kernels")
    home = tmp_path / "home"
    home.mkdir()
    for path in [site, home, *site.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    env = {"PYTHONPATH": str(site), "HOME": str(home), "NUMBA_CACHE_DIR": "",
           "XDG_CACHE_HOME": str(home)}
    proc = run_python(USE_ALL, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_cache_files_are_recompiled(tmp_path, damage):
    env = {"NUMBA_CACHE_DIR": str(tmp_path)}
    first = run_python(USE_ALL, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    files = list(tmp_path.rglob("*.nbi")) + list(tmp_path.rglob("*.nbc"))
    assert files
    for f in files:
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"\x80garbage" * 7)
    second = run_python(USE_ALL, env=env)
    assert second.returncode == 0 and second.stdout.strip() == "ok", second.stderr[-2000:]


# --- no mutation ---------------------------------------------------------------------------


def checksum(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("L", [layers, reference.layers], ids=["kernel", "reference"])
def test_no_layer_writes_into_its_arguments(L):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((9, 6))
    W, b = rng.standard_normal((6, 4)), rng.standard_normal(4)
    t = rng.integers(0, 4, 9)
    dout = rng.standard_normal((9, 4))
    before = checksum(x, W, b, t, dout)
    for layer in (L.Relu(), L.Sigmoid()):
        layer.backward(layer.forward(x))
    affine = L.Affine(W, b)
    out = affine.forward(x)
    affine.backward(dout)
    loss = L.SoftmaxWithLoss()
    loss.forward(out, t)
    loss.backward()
    relu = L.Relu()
    relu.forward(out)
    relu.backward(dout)
    assert checksum(x, W, b, t, dout) == before


@pytest.mark.parametrize("layer", ["workqueue", "omp"])
def test_threads_on_each_threading_layer(layer):
    """numba's workqueue layer aborts the process on concurrent parallel regions; fastbp
    serialises its own threaded calls there. omp and tbb are thread-safe and run concurrently."""
    code = """
    import threading, numpy as np, numba
    from fastbp import layers
    from fastbp.kernels import parallel
    x = np.random.default_rng(0).standard_normal((300, 300))
    bad = []
    def work():
        for _ in range(30):
            r = layers.Relu(); r.backward(r.forward(x))
            if layers.Sigmoid().forward(x).tobytes() != want.tobytes():
                bad.append(1)
    with parallel.settings(parallel_min_elements=0, adapt_to_load=False):
        want = layers.Sigmoid().forward(x)
        ts = [threading.Thread(target=work) for _ in range(8)]
        [t.start() for t in ts]; [t.join() for t in ts]
    print(numba.threading_layer(), parallel._LAYER_LOCK is not None, len(bad))
    """
    proc = run_python(code, env={"NUMBA_THREADING_LAYER": layer})
    if layer == "omp" and "No threading layer" in proc.stderr:
        pytest.skip("GNU OpenMP is not available here")
    assert proc.returncode == 0, proc.stderr[-2000:]
    name, locked, bad = proc.stdout.split()
    assert name == layer and locked == str(layer == "workqueue") and bad == "0"


def test_without_a_threading_layer_kernels_and_the_threads_api_run_serial():
    """Where numba can load no threading layer (NUMBA_THREADING_LAYER=tbb without tbb, here
    forced by making numba's pool fail to start), every kernel runs its serial build with one
    warning, and fastbp.threads answers; numba's own get_num_threads raised before the kernels
    looked (a ValueError from the first large Relu)."""
    code = """
    import warnings, numpy as np
    import numba.np.ufunc.parallel as numba_parallel
    def no_layer():
        raise ValueError("No threading layer could be loaded.")
    numba_parallel._launch_threads = no_layer
    from fastbp import layers, threads
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = np.linspace(-1, 1, 2**19)
        out = layers.Relu().forward(x)
        assert (out == np.maximum(x, 0)).all()
        assert threads.get_num_threads() == 1
        threads.set_num_threads(1)
        threads.set_num_threads(None)
        with threads.threads(2):
            layers.Sigmoid().forward(x)
    print(sum("no numba threading layer" in str(w.message) for w in caught))
    """
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1"]


def test_disable_jit_runs_the_kernels_as_python():
    """NUMBA_DISABLE_JIT=1 (coverage, debugging) must still run every layer."""
    code = USE_ALL + textwrap.dedent("""
        from fastbp import reference
        x = np.random.default_rng(1).standard_normal((5, 7))
        for make in ("Relu", "Sigmoid"):
            got = getattr(layers, make)().forward(x)
            want = getattr(reference.layers, make)().forward(x)
            assert np.allclose(got, want, rtol=1e-12, atol=0), make
        t = np.arange(5) % 7
        assert np.isclose(layers.SoftmaxWithLoss().forward(x, t),
                          reference.layers.SoftmaxWithLoss().forward(x, t), rtol=1e-12)
        print("agree")
    """)
    proc = run_python(code, env={"NUMBA_DISABLE_JIT": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ok", "agree"]


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("wrap", [np.asmatrix, np.ma.masked_array], ids=["matrix", "masked"])
def test_ndarray_subclasses_are_read_as_plain_arrays_by_both_backends(wrap):
    """np.matrix and masked arrays reached the kernels as they were: numba rejected some
    (Sigmoid on a matrix, anything masked in a fresh process), and results came back as the
    subclass (an Affine dx as a (3, 4) matrix for x of shape (3, 1, 4))."""
    from fastbp import functions, reference

    x = np.random.default_rng(3).standard_normal((6, 4))
    for module, funcs in ((layers, functions), (reference.layers, reference.functions)):
        for got in (module.Sigmoid().forward(wrap(x)), funcs.sigmoid(wrap(x)),
                    funcs.softmax(wrap(x))):
            assert type(got) is np.ndarray and got.shape == (6, 4)
        loss = module.SoftmaxWithLoss()
        loss.forward(wrap(x), np.arange(6) % 4)
        assert type(loss.y) is np.ndarray and type(loss.backward()) is np.ndarray
        affine = module.Affine(np.ones((4, 2)), np.zeros(2))
        affine.forward(np.ones((3, 1, 4)))
        dx = affine.backward(wrap(np.ones((3, 2))))
        assert type(dx) is np.ndarray and dx.shape == (3, 1, 4)
        assert type(affine.dW) is np.ndarray
    np.testing.assert_array_equal(layers.Sigmoid().forward(wrap(x)), layers.Sigmoid().forward(x))
