"""Finite-difference gradient checks in float64, for every layer on both backends."""

import numpy as np
import pytest

from fastbp import layers
from fastbp.backends import BACKENDS, layer_module
from fastbp.testing import assert_finite_differences, finite_difference_check, layer_cases

LAYERS = {backend: layer_module(backend) for backend in BACKENDS}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", [c.name for c in layer_cases()])
def test_finite_differences(name, backend):
    case = next(c for c in layer_cases(seed=3) if c.name == name)
    module = LAYERS[backend]
    checks = assert_finite_differences(
        lambda: case.make(module, lambda a: np.array(a, dtype=np.float64)),
        case.inputs, params=case.params)
    assert len(checks) == 1 + len(case.params)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mul_and_add_layers(backend):
    module = LAYERS[backend]
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    for make in (module.MulLayer, module.AddLayer):
        assert_finite_differences(make, (x, y), wrt=(0, 1))


def test_finite_differences_catch_a_wrong_gradient():
    class HalfGradientRelu(layers.Relu):
        def backward(self, dout):
            return 0.5 * super().backward(dout)

    x = np.array([[0.5, -1.0, 2.0]])
    checks = finite_difference_check(HalfGradientRelu, (x,))
    assert not checks[0].passed and checks[0].max_error == pytest.approx(0.5)
    with pytest.raises(AssertionError, match="finite differences disagree"):
        assert_finite_differences(HalfGradientRelu, (x,))
