"""The optimizers against hand-written NumPy formulas of the book's update rules.

Each rule is written out below as the book writes it (``common/optimizer.py``), as a function of
the step, and the optimizer's ``update`` is run for several steps beside it, on both backends, in
float64 and float32. The fused kernels do the book's operations in the book's order, so the
kernel backend must match the NumPy backend bit for bit.
"""

import numpy as np
import pytest

from fastbp import layers as kernel_layers
from fastbp import optim
from fastbp.reference import layers as reference_layers

STEPS = 5
SHAPES = {"W1": (7, 5), "b1": (5,), "W2": (5, 3), "b2": (3,)}
BIG_SHAPES = {"W": (130, 70), "b": (70,)}  # above SGD's and Momentum's kernel threshold
EPS = 1e-7


def book_sgd(lr=0.01):
    def step(p, g, s, i):
        return p - lr * g
    return step


def book_momentum(lr=0.01, momentum=0.9):
    def step(p, g, s, i):
        s["v"] = momentum * s.get("v", np.zeros_like(p)) - lr * g
        return p + s["v"]
    return step


def book_nesterov(lr=0.01, momentum=0.9):
    def step(p, g, s, i):
        v = s.get("v", np.zeros_like(p)) * momentum
        v = v - lr * g
        s["v"] = v
        p = p + momentum * momentum * v
        return p - (1 + momentum) * lr * g
    return step


def book_adagrad(lr=0.01):
    def step(p, g, s, i):
        s["h"] = s.get("h", np.zeros_like(p)) + g * g
        return p - lr * g / (np.sqrt(s["h"]) + EPS)
    return step


def book_rmsprop(lr=0.01, decay_rate=0.99):
    def step(p, g, s, i):
        h = s.get("h", np.zeros_like(p)) * decay_rate
        s["h"] = h + (1 - decay_rate) * g * g
        return p - lr * g / (np.sqrt(s["h"]) + EPS)
    return step


def book_adam(lr=0.001, beta1=0.9, beta2=0.999):
    def step(p, g, s, i):
        it = i + 1
        # The book's lr_t is an np.float64, which would lift a float32 step to float64; a
        # Python float keeps float32 in float32, as fastbp does.
        lr_t = float(lr * np.sqrt(1.0 - beta2 ** it) / (1.0 - beta1 ** it))
        m = s.get("m", np.zeros_like(p))
        v = s.get("v", np.zeros_like(p))
        s["m"] = m + (1 - beta1) * (g - m)
        s["v"] = v + (1 - beta2) * (g ** 2 - v)
        return p - lr_t * s["m"] / (np.sqrt(s["v"]) + EPS)
    return step


CASES = {
    "SGD": (dict(lr=0.1), book_sgd),
    "Momentum": (dict(lr=0.05, momentum=0.8), book_momentum),
    "Nesterov": (dict(lr=0.05, momentum=0.7), book_nesterov),
    "AdaGrad": (dict(lr=0.1), book_adagrad),
    "RMSprop": (dict(lr=0.01, decay_rate=0.9), book_rmsprop),
    "Adam": (dict(lr=0.01, beta1=0.8, beta2=0.99), book_adam),
}


def make_problem(dtype, shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
             for _ in range(STEPS)]
    return params, grads


def run_book(rule, params, grads):
    state = {k: {} for k in params}
    out = {k: v.copy() for k, v in params.items()}
    for i, g in enumerate(grads):
        for k in out:
            out[k] = rule(out[k], g[k], state[k], i)
    return out


def run_optimizer(opt, params, grads):
    originals = dict(params)  # holding them keeps their ids from being reused
    for g in grads:
        opt.update(params, g)
    for k, v in params.items():
        assert v is originals[k], f"update rebound params[{k!r}]"
    return params


def assert_close(actual, expected, dtype):
    """docs/numerics.md tolerances: float64 1e-12; float32 against the float64 formula, torch's."""
    for k in expected:
        a, e = actual[k], expected[k]
        assert a.dtype == dtype and a.shape == e.shape
        scale = max(1.0, float(np.max(np.abs(e))))
        if dtype == np.float64:
            np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12 * scale, err_msg=k)
        else:
            np.testing.assert_allclose(a, e, rtol=1.3e-6, atol=1e-5 * scale, err_msg=k)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", ["kernel", "reference"])
@pytest.mark.parametrize("name", list(CASES))
def test_update_follows_the_book_formula(name, backend, dtype):
    kwargs, book = CASES[name]
    params, grads = make_problem(dtype)
    # float32 runs are checked against the formula in float64 from the same float32 inputs.
    expected = run_book(book(**kwargs), {k: v.astype(np.float64) for k, v in params.items()},
                        [{k: v.astype(np.float64) for k, v in g.items()} for g in grads])
    actual = run_optimizer(getattr(optim, name)(**kwargs, backend=backend), params, grads)
    assert_close(actual, expected, np.dtype(dtype))


@pytest.mark.parametrize("shapes", [SHAPES, BIG_SHAPES], ids=["small", "big"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_numpy_bit_for_bit(name, dtype, shapes):
    kwargs, _ = CASES[name]
    p_kernel, grads = make_problem(dtype, shapes)
    p_numpy = {k: v.copy() for k, v in p_kernel.items()}
    run_optimizer(getattr(optim, name)(**kwargs, backend="kernel"), p_kernel, grads)
    run_optimizer(getattr(optim, name)(**kwargs, backend="reference"), p_numpy, grads)
    for k in p_numpy:
        np.testing.assert_array_equal(p_kernel[k], p_numpy[k], err_msg=k)


KERNELS = {"SGD": "sgd_update", "Momentum": "momentum_update", "Nesterov": "nesterov_update",
           "AdaGrad": "adagrad_update", "RMSprop": "rmsprop_update", "Adam": "adam_update"}


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_backend_runs_the_kernels(name, monkeypatch):
    """Without this, the bit-for-bit test above could pass with no kernel called at all."""
    cls = getattr(optim, name)
    assert BIG_SHAPES["W"][0] * BIG_SHAPES["W"][1] >= cls.fuse_min_elements
    calls = []
    real = getattr(optim.kernels, KERNELS[name])
    monkeypatch.setattr(optim.kernels, KERNELS[name],
                        lambda p, *rest: calls.append(p.size) or real(p, *rest))
    params, grads = make_problem(np.float32, BIG_SHAPES)
    cls(**CASES[name][0]).update(params, grads[0])
    expected = [p.size for p in params.values() if p.size >= cls.fuse_min_elements]
    assert calls == expected
    calls.clear()
    cls(**CASES[name][0], backend="reference").update(params, grads[0])
    assert calls == []


@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_threaded_build_matches_serial(name, build):
    # 40000 elements: several kernel blocks, so threads share the work.
    kwargs, book = CASES[name]
    params, grads = make_problem(np.float64, {"W": (200, 200)})
    expected = run_book(book(**kwargs), params, grads)
    actual = run_optimizer(getattr(optim, name)(**kwargs), params, grads)
    assert_close(actual, expected, np.dtype(np.float64))


@pytest.mark.parametrize("backend", ["kernel", "reference"])
@pytest.mark.parametrize("name", list(CASES))
def test_layers_see_the_update(name, backend):
    """Layers hold the arrays of ``params``; an update must move what they compute."""
    L = kernel_layers if backend == "kernel" else reference_layers
    kwargs, _ = CASES[name]
    params, grads = make_problem(np.float64, BIG_SHAPES)
    layer = L.Affine(params["W"], params["b"])
    x = np.random.default_rng(1).standard_normal((4, 130))
    before = layer.forward(x)
    getattr(optim, name)(**kwargs, backend=backend).update(params, grads[0])
    after = layer.forward(x)
    assert layer.W is params["W"] and layer.b is params["b"]
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, x @ params["W"] + params["b"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_state_has_the_book_names(name):
    kwargs, _ = CASES[name]
    params, grads = make_problem(np.float32)
    opt = getattr(optim, name)(**kwargs)
    opt.update(params, grads[0])
    state = {"SGD": [], "Momentum": ["v"], "Nesterov": ["v"], "AdaGrad": ["h"],
             "RMSprop": ["h"], "Adam": ["m", "v"]}[name]
    for attr in state:
        for k, p in params.items():
            s = getattr(opt, attr)[k]
            assert s.shape == p.shape and s.dtype == np.float32
    if name == "Adam":
        assert opt.iter == 1


def test_defaults_are_the_books():
    assert optim.SGD().lr == 0.01
    assert (optim.Momentum().lr, optim.Momentum().momentum) == (0.01, 0.9)
    assert (optim.Nesterov().lr, optim.Nesterov().momentum) == (0.01, 0.9)
    assert optim.AdaGrad().lr == 0.01
    assert (optim.RMSprop().lr, optim.RMSprop().decay_rate) == (0.01, 0.99)
    adam = optim.Adam()
    assert (adam.lr, adam.beta1, adam.beta2, adam.iter) == (0.001, 0.9, 0.999, 0)


@pytest.mark.parametrize("name", list(CASES))
def test_layouts_the_kernel_cannot_take_fall_back_to_numpy(name):
    """Strided params and mixed dtypes take the NumPy formula; the arrays stay the caller's."""
    kwargs, book = CASES[name]
    rng = np.random.default_rng(3)
    base = rng.standard_normal((6, 10))
    params = {"W": base[:, ::2], "b": rng.standard_normal(4).astype(np.float32)}
    grads = [{"W": rng.standard_normal((6, 5)), "b": rng.standard_normal(4)}  # float64 for b
             for _ in range(STEPS)]
    expected = run_book(book(**kwargs), {k: v.astype(np.float64) for k, v in params.items()},
                        grads)
    actual = run_optimizer(getattr(optim, name)(**kwargs), params, grads)
    assert np.shares_memory(actual["W"], base)
    np.testing.assert_allclose(actual["W"], expected["W"], rtol=1e-12, atol=1e-12)
    assert actual["b"].dtype == np.float32
    np.testing.assert_allclose(actual["b"], expected["b"], rtol=1.3e-6, atol=1e-5)


def test_read_only_params_raise():
    params = {"W": np.ones(5000)}
    params["W"].flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        optim.Adam().update(params, {"W": np.ones(5000)})


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend"):
        optim.SGD(backend="torch")


def test_optimizers_by_name():
    assert set(optim.OPTIMIZERS) == {"sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"}
    for name, cls in optim.OPTIMIZERS.items():
        assert cls.__name__.lower() == name
