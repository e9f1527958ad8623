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
    """b may be anything that broadcasts to (N, H): the book passes a scalar 0 in chapter 7."""
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
