"""The agreement helper must catch what it is there to catch."""

import numpy as np
import pytest

from fastbp import layers, reference
from fastbp.testing import assert_layers_agree, compare_layers, tolerances

X = np.array([[0.0, 1.5, -2.0, 3.0], [np.nan, -0.5, 0.25, 0.0]])


class GradientAtZero(layers.Relu):
    """The classic mistake: passing the gradient at exactly 0."""

    def backward(self, dout):
        dx = super().backward(dout)
        return np.where(self.x == 0, dout, dx)

    def forward(self, x):
        self.x = x
        return super().forward(x)


class Upcasts(layers.Sigmoid):
    def forward(self, x):
        return super().forward(x).astype(np.float64)


class MutatesDout(reference.layers.Relu):
    def backward(self, dout):
        dout[self.mask] = 0  # the book's in-place write
        return dout


class OffBy1e11(layers.Sigmoid):
    def forward(self, x):
        out = super().forward(x)
        return out * (1 + 1e-11)  # 45000 ulp: beyond rtol 1e-12


def test_agreeing_layers_pass():
    result = compare_layers(lambda c: layers.Relu(), lambda c: reference.layers.Relu(), (X,))
    assert result.passed
    assert {c.quantity for c in result.checks} >= {"forward", "backward", "dtype", "inputs kept"}


def test_gradient_at_zero_is_caught():
    with pytest.raises(AssertionError, match="backward"):
        assert_layers_agree(lambda c: GradientAtZero(), lambda c: reference.layers.Relu(),
                            (X,), dout=np.ones_like(X))


def test_upcast_is_caught():
    result = compare_layers(lambda c: Upcasts(), lambda c: reference.layers.Sigmoid(), (X,),
                            dtype=np.float32)
    assert [c.quantity for c in result.checks if not c.passed] == ["dtype"]


class GradientsUpcast(layers.Affine):
    """float16 in, float32 gradients out: what Affine once did."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.dW = self.dW.astype(np.float32)
        return dx.astype(np.float32)


def test_upcast_of_a_gradient_is_caught():
    rng = np.random.default_rng(0)
    W, b, x = rng.standard_normal((4, 3)), rng.standard_normal(3), rng.standard_normal((5, 4))
    result = compare_layers(lambda c: GradientsUpcast(c(W), c(b)),
                            lambda c: reference.layers.Affine(c(W), c(b)), (x,),
                            dtype=np.float16, grads=("dW", "db"))
    failed = [c for c in result.checks if not c.passed]
    assert [c.quantity for c in failed] == ["dtype"]
    assert "backward float32" in failed[0].detail and "dW float32" in failed[0].detail
    assert "db" not in failed[0].detail


def test_mutation_of_an_input_is_caught():
    # dout is not an input of forward; a layer mutating x is caught by "inputs kept".
    class MutatesX(layers.Relu):
        def forward(self, x):
            x[...] = 0
            return super().forward(x)

    result = compare_layers(lambda c: MutatesX(), lambda c: reference.layers.Relu(), (X.copy(),))
    assert not result.passed
    assert "inputs kept" in [c.quantity for c in result.checks if not c.passed]


def test_float64_tolerance_is_tight():
    result = compare_layers(lambda c: OffBy1e11(), lambda c: reference.layers.Sigmoid(),
                            (np.abs(np.nan_to_num(X)),))
    assert not result.passed


def test_nan_must_meet_nan():
    class NanToZero(layers.Relu):
        def forward(self, x):
            return np.nan_to_num(super().forward(x))

    result = compare_layers(lambda c: NanToZero(), lambda c: reference.layers.Relu(), (X,))
    assert not result.passed


def test_tolerances_follow_the_contract():
    assert tolerances(np.float64, 10.0) == (1e-12, 1e-11)
    assert tolerances(np.float32, 2.0) == (1.3e-6, 2e-5)
    assert tolerances(np.float32, 20000.0, scalar=True) == (0.0, 1e-6 * 20000.0)
    assert tolerances(np.float32, 0.01, scalar=True) == (0.0, 1e-6)


def test_reference_does_not_mutate_dout_but_the_books_relu_would():
    dout = np.ones_like(X)
    layer = MutatesDout()
    layer.forward(X)
    layer.backward(dout)
    assert dout.sum() < dout.size  # the book's behaviour, shown for contrast
    ref = reference.layers.Relu()
    ref.forward(X)
    dout = np.ones_like(X)
    ref.backward(dout)
    assert dout.sum() == dout.size


def test_subnormal_results_are_held_to_their_dtype_only():
    """A float32 gradient of 2e-42 is subnormal (11 bits): a few ulps is all it can promise."""
    result = compare_layers(lambda c: layers.SoftmaxWithLoss(),
                            lambda c: reference.layers.SoftmaxWithLoss(),
                            (np.array([[96.0, 0.0]]), np.array([0])), dtype=np.float32)
    assert result.passed, result.report()

    class EightUlpsOff(layers.SoftmaxWithLoss):
        def backward(self, dout=1):
            dx = super().backward(dout)
            return dx + 8 * np.spacing(np.abs(dx))

    result = compare_layers(lambda c: EightUlpsOff(), lambda c: reference.layers.SoftmaxWithLoss(),
                            (np.array([[96.0, 0.0]]), np.array([0])), dtype=np.float32)
    assert not result.passed


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_layer_that_writes_into_dout_is_caught(dtype):
    """The book's Relu writes zeros into dout, and a layer scaling dout in place gives a wrong
    gradient: in float64 the reference was handed the same (changed) dout and agreed with it."""
    class Doubling(MutatesDout):
        def backward(self, dout):
            dout *= 2
            return super().backward(dout)

    for make in (MutatesDout, Doubling):
        result = compare_layers(lambda c, make=make: make(), lambda c: reference.layers.Relu(),
                                (np.nan_to_num(X),), dtype=dtype)
        failed = [c for c in result.checks if not c.passed]
        assert "inputs kept" in [c.quantity for c in failed]
        assert "dout" in next(c.detail for c in failed if c.quantity == "inputs kept")
        assert ("backward" in [c.quantity for c in failed]) == (make is Doubling)


@pytest.mark.parametrize("kind", [object, np.int64])
def test_a_non_float_output_fails_the_dtype_check(kind):
    class Cast(layers.Relu):
        def forward(self, x):
            return super().forward(x).astype(kind)

    x = np.round(np.nan_to_num(X))  # whole numbers: int64 output has the right values
    result = compare_layers(lambda c: Cast(), lambda c: reference.layers.Relu(), (x,))
    assert "dtype" in [c.quantity for c in result.checks if not c.passed]


class FlatDx(layers.Affine):
    """Forgets the book's ``dx.reshape(*self.original_x_shape)``."""

    def backward(self, dout):
        return super().backward(dout).reshape(dout.shape[0], -1)


class NoDx:
    """A backward that returns nothing."""

    def forward(self, x):
        return 2 * x

    def backward(self, dout):
        return None


def test_finite_differences_fail_a_gradient_of_the_wrong_shape_or_none():
    """A flat ``dx`` for (N, C, H) input was reshaped and passed; a missing one raised an
    unrelated error."""
    from fastbp.testing import assert_finite_differences, finite_difference_check

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4))
    W, b = rng.standard_normal((12, 5)), rng.standard_normal(5)
    assert all(c.passed for c in finite_difference_check(lambda: layers.Affine(W, b), [x]))
    (check,) = finite_difference_check(lambda: FlatDx(W, b), [x])
    assert not check.passed and "(2, 12)" in check.detail and "(2, 3, 4)" in check.detail
    with pytest.raises(AssertionError, match=r"d\(input 0\): shape \(2, 12\)"):
        assert_finite_differences(lambda: FlatDx(W, b), [x])
    (check,) = finite_difference_check(NoDx, [x])
    assert not check.passed and "no gradient" in check.detail
