"""Kernel layers against the NumPy reference, through the one agreement helper."""

import numpy as np
import pytest
from layouts import LAYOUTS

from fastbp import layers, reference
from fastbp.testing import assert_layers_agree, layer_cases

CASE_NAMES = [c.name for c in layer_cases()]


def _case(name, batch=7):
    return next(c for c in layer_cases(seed=1, batch=batch) if c.name == name)


def _prepared(inputs, dtype, layout):
    # Cast first, then lay out, so that the layer sees the layout in its own dtype.
    return tuple(LAYOUTS[layout](a.astype(dtype)) if a.dtype.kind == "f" else a
                 for a in inputs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", CASE_NAMES)
def test_layers_agree(name, dtype, build):
    case = _case(name)
    assert_layers_agree(case.candidate, case.reference, case.inputs, dtype=dtype,
                        grads=case.grads, name=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", CASE_NAMES)
def test_batch_of_one(name, dtype):
    case = _case(name, batch=1)
    assert_layers_agree(case.candidate, case.reference, case.inputs, dtype=dtype,
                        grads=case.grads, name=name)


@pytest.mark.parametrize("layout", [k for k in LAYOUTS if k != "C"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", CASE_NAMES)
def test_layouts(name, dtype, layout):
    case = _case(name)
    inputs = _prepared(case.inputs, dtype, layout)
    assert_layers_agree(case.candidate, case.reference, inputs, dtype=dtype,
                        grads=case.grads, name=f"{name} {layout}")


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_affine_parameter_layouts(dtype, layout):
    """W and b in any layout (a transposed W is Fortran-ordered) give the same result."""
    rng = np.random.default_rng(2)
    W, b, x = rng.standard_normal((6, 5)), rng.standard_normal(5), rng.standard_normal((4, 6))
    prep = LAYOUTS[layout]
    assert_layers_agree(lambda cast: layers.Affine(prep(cast(W)), prep(cast(b))),
                        lambda cast: reference.layers.Affine(cast(W), cast(b)),
                        (x,), dtype=dtype, grads=("dW", "db"))


@pytest.mark.parametrize("bias", ["scalar", "row", "column", "full", "python zero"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_affine_bias_shapes(bias, dtype):
    """b may be anything that broadcasts to (N, H), a scalar too."""
    rng = np.random.default_rng(3)
    W, x = rng.standard_normal((6, 5)), rng.standard_normal((4, 6))
    b = {"scalar": np.float64(0.5), "row": rng.standard_normal((1, 5)),
         "column": rng.standard_normal((4, 1)), "full": rng.standard_normal((4, 5)),
         "python zero": 0}[bias]

    def cast_b(cast):
        return b if isinstance(b, int) else cast(np.asarray(b))

    result = assert_layers_agree(lambda cast: layers.Affine(cast(W), cast_b(cast)),
                                 lambda cast: reference.layers.Affine(cast(W), cast_b(cast)),
                                 (x,), dtype=dtype, grads=("dW", "db"))
    assert result.passed


@pytest.mark.parametrize("name", ["Relu", "Sigmoid", "Affine", "SoftmaxWithLoss[labels]"])
def test_float16_runs_in_float32_and_returns_float16(name):
    case = _case(name)
    assert_layers_agree(case.candidate, case.reference, case.inputs, dtype=np.float16,
                        grads=case.grads, name=name)


def _float16_layer_runs(module):
    """Each chapter-5 layer of ``module`` run forward and backward on float16 data: yields
    ``(name, {output: array})`` for every array the layer returns or sets."""
    rng = np.random.default_rng(5)

    def h(*shape):
        return rng.standard_normal(shape).astype(np.float16)

    x, W, b = h(4, 2, 3), h(6, 5), h(5)
    affine = module.Affine(W, b)
    out = affine.forward(x)
    dx = affine.backward(h(4, 5))
    yield "Affine", {"forward": out, "dx": dx, "dW": affine.dW, "db": affine.db}
    for name in ("Relu", "Sigmoid"):
        layer = getattr(module, name)()
        out = layer.forward(h(4, 7))
        yield name, {"forward": out, "dx": layer.backward(h(4, 7)),
                     "out/mask": getattr(layer, "out", np.zeros(0, np.float16))}
    logits = h(4, 10)
    for label, t in (("labels", rng.integers(0, 10, 4)),
                     ("one-hot", np.eye(10, dtype=np.float16)[rng.integers(0, 10, 4)])):
        layer = module.SoftmaxWithLoss()
        loss = layer.forward(logits, t)
        yield f"SoftmaxWithLoss[{label}]", {"loss": np.asarray(loss), "y": layer.y,
                                             "dx": layer.backward()}
    a, c, dout = h(3), h(3), h(3)
    mul, add = module.MulLayer(), module.AddLayer()
    out = mul.forward(a, c)
    dmul = mul.backward(dout)
    yield "MulLayer", {"forward": out, "dx": dmul[0], "dy": dmul[1]}
    out = add.forward(a, c)
    dadd = add.backward(dout)
    yield "AddLayer", {"forward": out, "dx": dadd[0], "dy": dadd[1]}


@pytest.mark.parametrize("backend", ["kernel", "reference"])
def test_float16_in_float16_out_everywhere(backend):
    """float16 runs in float32 and every output is cast back: forward, dx, dW, db, y, loss."""
    module = layers if backend == "kernel" else reference.layers
    seen = set()
    for name, outputs in _float16_layer_runs(module):
        seen.add(name.split("[")[0])
        for what, value in outputs.items():
            assert value.dtype == np.float16, f"{backend} {name}.{what}: {value.dtype}"
    assert seen == {"Affine", "Relu", "Sigmoid", "SoftmaxWithLoss", "MulLayer", "AddLayer"}


@pytest.mark.parametrize("backend", ["kernel", "reference"])
def test_float16_forward_with_a_wider_dout_follows_numpy(backend):
    """The backward pass promotes dout with the forward's input dtype, as NumPy would."""
    module = layers if backend == "kernel" else reference.layers
    x = np.linspace(-2, 2, 12, dtype=np.float16).reshape(3, 4)
    sig = module.Sigmoid()
    sig.forward(x)
    assert sig.backward(np.ones((3, 4), np.float32)).dtype == np.float32
    affine = module.Affine(np.ones((4, 2), np.float16), np.zeros(2, np.float16))
    affine.forward(x)
    assert affine.backward(np.ones((3, 2), np.float64)).dtype == np.float64
    assert affine.dW.dtype == affine.db.dtype == np.float64
    affine = module.Affine(np.ones((4, 2), np.float32), np.zeros(2, np.float32))
    assert affine.forward(x).dtype == np.float32
    assert affine.backward(np.ones((3, 2), np.float16)).dtype == np.float32
    assert affine.dW.dtype == np.float32


def test_mixed_dtypes_follow_numpy_promotion():
    rng = np.random.default_rng(4)
    W = rng.standard_normal((3, 2))  # float64
    x = rng.standard_normal((4, 3)).astype(np.float32)
    for module in (layers, reference.layers):
        layer = module.Affine(W, np.zeros(2, np.float32))
        assert layer.forward(x).dtype == np.float64
        assert layer.backward(np.ones((4, 2), np.float32)).dtype == np.float64
        assert layer.dW.dtype == np.float64


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.bool_])
def test_integer_inputs_promote_like_numpy(dtype):
    x = np.arange(-6, 6).reshape(3, 4).astype(dtype)
    for module in (layers, reference.layers):
        relu = module.Relu()
        assert relu.forward(x).dtype == x.dtype
        sig = module.Sigmoid().forward(x)
        assert sig.dtype == np.exp(x[:0]).dtype
        loss = module.SoftmaxWithLoss()
        value = loss.forward(x, np.array([0, 1, 2]))
        assert np.isfinite(value)
    np.testing.assert_array_equal(layers.Relu().forward(x), reference.layers.Relu().forward(x))
    np.testing.assert_allclose(layers.Sigmoid().forward(x), reference.layers.Sigmoid().forward(x),
                               rtol=1e-3)


@pytest.mark.parametrize("module", [layers, reference.layers], ids=["kernel", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_layer_on_a_scalar_gives_numpy_scalars_as_the_books(module, dtype):
    """The book's ``1 / (1 + np.exp(-x))`` and ``dout * (1.0 - out) * out`` give NumPy scalars
    for a scalar or 0-d input; the kernel layer gave 0-d arrays both ways, the reference a 0-d
    array forward and a scalar backward."""
    for x in (dtype(0.3), np.array(0.3, dtype=dtype)):
        layer = module.Sigmoid()
        out = layer.forward(x)
        dx = layer.backward(np.array(2.0, dtype=dtype))
        assert isinstance(out, np.generic) and out.dtype == dtype
        assert isinstance(dx, np.generic) and dx.dtype == dtype
        s = 1 / (1 + np.exp(-np.float64(0.3)))
        np.testing.assert_allclose([out, dx], [s, 2 * s * (1 - s)], rtol=1e-6)
