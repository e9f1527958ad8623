"""Every row of docs/numerics.md's tables, and its other requirements, on both backends."""

import math

import numpy as np
import pytest

from fastbp.backends import BACKENDS, function_module, layer_module

LAYERS = {backend: layer_module(backend) for backend in BACKENDS}
FUNCTIONS = {backend: function_module(backend) for backend in BACKENDS}


@pytest.fixture(params=BACKENDS)
def L(request):
    return LAYERS[request.param]


# No edge case may warn (overflow in exp, invalid value, mean of empty slice, ...).
pytestmark = pytest.mark.filterwarnings("error")


def test_warnings_are_errors_here():
    with pytest.raises(RuntimeWarning):
        np.exp(np.array([1000.0]))


def loss_and_grad(L, x, t, dout=1):
    layer = L.SoftmaxWithLoss()
    loss = layer.forward(x, t)
    return layer, loss, layer.backward(dout)


# --- labels -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, row", [(10, 2), (-1, 0), (2**40, 1)])
def test_out_of_range_label_raises_and_writes_nothing(L, bad, row):
    x = np.zeros((3, 10))
    t = np.array([1, 2, 3], dtype=np.int64)
    t[row] = bad
    layer = L.SoftmaxWithLoss()
    with pytest.raises(IndexError) as info:
        layer.forward(x, t)
    message = str(info.value)
    assert f"label {bad}" in message and f"row {row}" in message and "10 classes" in message
    assert layer.loss is None and layer.y is None and layer.t is None


def test_out_of_range_label_keeps_the_previous_result(L):
    layer = L.SoftmaxWithLoss()
    good = layer.forward(np.zeros((2, 3)), np.array([0, 1]))
    y = layer.y.copy()
    with pytest.raises(IndexError):
        layer.forward(np.ones((2, 3)), np.array([0, 3]))
    assert layer.loss == good
    np.testing.assert_array_equal(layer.y, y)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32,
                                   np.uint32, np.int64, np.uint64])
def test_any_integer_label_dtype(L, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4))
    t = np.array([0, 3, 2, 1, 3], dtype=dtype)
    _, loss, dx = loss_and_grad(L, x, t)
    _, want, want_dx = loss_and_grad(L, x, t.astype(np.int64))
    assert loss == want
    np.testing.assert_array_equal(dx, want_dx)
    _, loss_col, _ = loss_and_grad(L, x, t.reshape(-1, 1))
    assert loss_col == want


def test_unsigned_label_too_large_for_intp(L):
    with pytest.raises(IndexError, match="18446744073709551615"):
        L.SoftmaxWithLoss().forward(np.zeros((1, 3)), np.array([2**64 - 1], dtype=np.uint64))


@pytest.mark.parametrize("t", [np.array([0.0, 1.0, 2.0]), np.array([True, False, True])])
def test_float_or_bool_labels_raise_type_error(L, t):
    with pytest.raises(TypeError, match="labels must be integers"):
        L.SoftmaxWithLoss().forward(np.zeros((3, 4)), t)


@pytest.mark.parametrize("t_shape", [(4,), (2,), (4, 3), (2, 5)])
def test_batch_or_class_mismatch_names_both_shapes(L, t_shape):
    t = np.zeros(t_shape, dtype=np.int64 if len(t_shape) == 1 else np.float64)
    with pytest.raises(ValueError) as info:
        L.SoftmaxWithLoss().forward(np.zeros((3, 5)), t)
    assert "(3, 5)" in str(info.value) and str(t_shape) in str(info.value)


def test_affine_shape_mismatch_names_both_shapes(L):
    layer = L.Affine(np.zeros((4, 2)), np.zeros(2))
    with pytest.raises(ValueError) as info:
        layer.forward(np.zeros((3, 5)))
    assert "(3, 5)" in str(info.value) and "(4, 2)" in str(info.value)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        L.Affine(np.zeros((4, 2)), np.zeros(3)).forward(np.zeros((5, 4)))
    layer = L.Affine(np.zeros((4, 2)), np.zeros(2))
    layer.forward(np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"\(5, 3\)"):
        layer.backward(np.zeros((5, 3)))


def test_affine_one_sample_as_1d_suggests_a_reshape(L):
    """x of shape (10,) is 10 samples of one feature (the book's convention): say so, and
    suggest x.reshape(1, -1) when that is one sample that fits."""
    layer = L.Affine(np.zeros((10, 3)), np.zeros(3))
    with pytest.raises(ValueError, match=r"\(10,\).*x\.reshape\(1, -1\)"):
        layer.forward(np.zeros(10))
    assert layer.forward(np.zeros(10).reshape(1, -1)).shape == (1, 3)
    with pytest.raises(ValueError, match="samples of one feature") as info:
        layer.forward(np.zeros(7))
    assert "reshape" not in str(info.value)  # 7 values are no sample of W's 10 features


def test_backward_before_forward(L):
    for layer in (L.Relu(), L.Sigmoid(), L.Affine(np.zeros((2, 2)), 0), L.SoftmaxWithLoss()):
        with pytest.raises(RuntimeError, match="before"):
            layer.backward(np.ones((2, 2)))


def test_dout_that_broadcasts_is_accepted(L):
    x = np.array([[1.0, -2.0, 3.0], [-1.0, 2.0, -0.5]])
    for layer in (L.Relu(), L.Sigmoid()):
        layer.forward(x)
        np.testing.assert_array_equal(layer.backward(np.arange(3.0)),
                                      layer.backward(np.tile(np.arange(3.0), (2, 1))))
    affine = L.Affine(np.ones((3, 2)), np.zeros(2))
    affine.forward(x)
    np.testing.assert_array_equal(affine.backward(np.ones(2)), affine.backward(np.ones((2, 2))))


def test_a_failed_forward_keeps_the_previous_result(L):
    x = np.array([[1.0, -2.0, 3.0], [-1.0, 2.0, -0.5]])
    relu, sig, affine = L.Relu(), L.Sigmoid(), L.Affine(np.ones((3, 2)), np.zeros(2))
    relu.forward(x)
    sig.forward(x)
    affine.forward(x)
    kept = (relu.mask.copy(), sig.out.copy(), affine.x.copy(), affine.original_x_shape)
    for layer in (relu, sig, affine):
        with pytest.raises(TypeError):
            layer.forward(np.zeros((2, 3), dtype=complex))
    with pytest.raises(ValueError):
        affine.forward(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="batch axis"):
        affine.forward(np.float64(1.0))
    np.testing.assert_array_equal(relu.mask, kept[0])
    np.testing.assert_array_equal(sig.out, kept[1])
    np.testing.assert_array_equal(affine.x, kept[2])
    assert affine.original_x_shape == kept[3]


# --- logits dtypes -------------------------------------------------------------------------


def test_integer_logits_promote_to_float64(L):
    x = np.array([[1, 2, 3], [0, 0, 0]], dtype=np.int32)
    layer, loss, dx = loss_and_grad(L, x, np.array([2, 0]))
    _, want, want_dx = loss_and_grad(L, x.astype(np.float64), np.array([2, 0]))
    assert loss.dtype == np.float64 and dx.dtype == np.float64 and layer.y.dtype == np.float64
    assert loss == want
    np.testing.assert_array_equal(dx, want_dx)


def test_complex_logits_raise_type_error(L):
    with pytest.raises(TypeError, match="complex"):
        L.SoftmaxWithLoss().forward(np.zeros((2, 3), dtype=complex), np.array([0, 1]))
    for layer in (L.Relu(), L.Sigmoid(), L.Affine(np.zeros((3, 2)), 0)):
        with pytest.raises(TypeError, match="complex"):
            layer.forward(np.zeros((2, 3), dtype=complex))


def test_object_input_raises_type_error(L):
    with pytest.raises(TypeError):
        L.Sigmoid().forward(np.array([[1, "a"]], dtype=object))


# --- edge values of softmax-cross-entropy --------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_batch(L, dtype):
    layer, loss, dx = loss_and_grad(L, np.zeros((0, 4), dtype), np.zeros(0, dtype=np.int64))
    assert math.isnan(loss) and loss.dtype == dtype
    assert dx.shape == (0, 4) and dx.dtype == dtype
    assert layer.y.shape == (0, 4)
    _, loss, dx = loss_and_grad(L, np.zeros((0, 4), dtype), np.zeros((0, 4), dtype))
    assert math.isnan(loss) and dx.shape == (0, 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_class(L, dtype):
    x = np.array([[3.0], [-7.0], [0.0]], dtype)
    _, loss, dx = loss_and_grad(L, x, np.zeros(3, dtype=np.int64))
    assert loss == 0
    np.testing.assert_array_equal(dx, np.zeros((3, 1)))


@pytest.mark.parametrize("c", [1, 2, 10, 1000])
def test_equal_logits_give_log_c(L, c):
    _, loss, _ = loss_and_grad(L, np.full((4, c), 2.5), np.zeros(4, dtype=np.int64))
    assert loss == pytest.approx(math.log(c), rel=1e-15, abs=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_logits_are_exact(L, dtype):
    _, loss, dx = loss_and_grad(L, np.array([[1e4, -1e4]], dtype), np.array([1]))
    assert loss == 20000.0
    np.testing.assert_array_equal(dx, np.array([[1.0, -1.0]], dtype))
    _, loss, _ = loss_and_grad(L, np.array([[1e4, -1e4]], dtype), np.array([[0.0, 1.0]]))
    assert loss == 20000.0


@pytest.mark.parametrize("targets", ["labels", "one-hot"])
def test_minus_inf_on_a_non_target_class(L, targets):
    x = np.array([[1.0, -np.inf, 0.5], [0.0, 0.0, 0.0]])
    t = np.array([0, 2]) if targets == "labels" else np.eye(3)[[0, 2]]
    layer, loss, dx = loss_and_grad(L, x, t)
    assert np.isfinite(loss)
    assert dx[0, 1] == 0 and layer.y[0, 1] == 0
    assert np.all(np.isfinite(dx))


@pytest.mark.parametrize("targets", ["labels", "one-hot"])
def test_minus_inf_on_the_target_gives_inf(L, targets):
    x = np.array([[1.0, -np.inf, 0.5]])
    t = np.array([1]) if targets == "labels" else np.array([[0.0, 1.0, 0.0]])
    _, loss, dx = loss_and_grad(L, x, t)
    assert loss == np.inf
    assert np.all(np.isfinite(dx))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("targets", ["labels", "probs"])
def test_nan_or_plus_inf_at_every_position_poisons_only_its_row(L, bad, dtype, targets):
    c = 7
    rng = np.random.default_rng(5)
    t = np.array([3, 0]) if targets == "labels" else rng.dirichlet(np.ones(c), 2)
    for pos in range(c):
        x = rng.standard_normal((2, c)).astype(dtype)
        x[0, pos] = bad
        layer, loss, dx = loss_and_grad(L, x, t)
        assert math.isnan(loss), pos
        assert np.all(np.isnan(layer.y[0])) and np.all(np.isnan(dx[0])), pos
        assert np.all(np.isfinite(layer.y[1])) and np.all(np.isfinite(dx[1])), pos


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_function_nan_at_every_position(dtype):
    for name, F in FUNCTIONS.items():
        for pos in range(5):
            x = np.arange(10, dtype=dtype).reshape(2, 5)
            x[1, pos] = np.nan
            y = F.softmax(x)
            assert np.all(np.isnan(y[1])), (name, pos)
            np.testing.assert_allclose(y[0].sum(), 1, rtol=1e-6)


def test_dout_scales_the_gradient(L):
    x = np.random.default_rng(6).standard_normal((4, 3))
    t = np.array([0, 1, 2, 1])
    _, _, dx1 = loss_and_grad(L, x, t)
    _, _, dx3 = loss_and_grad(L, x, t, dout=3.0)
    np.testing.assert_allclose(dx3, 3 * dx1, rtol=1e-15)
    with pytest.raises(ValueError, match="scalar"):
        loss_and_grad(L, x, t, dout=np.ones(4))


def test_one_hot_gradient_is_the_books(L):
    x = np.random.default_rng(7).standard_normal((5, 4))
    t = np.eye(4)[[0, 3, 2, 1, 1]]
    layer, _, dx = loss_and_grad(L, x, t)
    np.testing.assert_allclose(dx, (layer.y - t) / 5, rtol=1e-13, atol=1e-16)


def test_one_dimensional_logits(L):
    x = np.array([0.5, 2.0, -1.0])
    layer, loss, dx = loss_and_grad(L, x, 1)
    _, want, want_dx = loss_and_grad(L, x.reshape(1, 3), np.array([1]))
    assert loss == want and dx.shape == (3,) and layer.y.shape == (3,)
    np.testing.assert_array_equal(dx, want_dx[0])
    _, loss_oh, _ = loss_and_grad(L, x, np.array([0.0, 1.0, 0.0]))
    assert loss_oh == pytest.approx(want, rel=1e-15)


# --- sigmoid, relu, affine -----------------------------------------------------------------


@pytest.mark.parametrize("dtype, low", [(np.float64, -1000.0), (np.float32, -89.0)])
def test_sigmoid_is_stable(L, dtype, low):
    x = np.array([low, -30.0, 0.0, 30.0, -low, -np.inf, np.inf, np.nan], dtype)
    layer = L.Sigmoid()
    y = layer.forward(x)
    assert y.dtype == dtype
    assert y[0] >= 0 and y[0] < 1e-38 and y[2] == 0.5 and y[4] == 1.0
    assert y[5] == 0.0 and y[6] == 1.0 and np.isnan(y[7])
    dx = layer.backward(np.ones_like(x))
    np.testing.assert_allclose(dx[:7], exact_sigmoid_grad(x[:7]), rtol=4 * np.finfo(dtype).eps,
                               atol=0)
    assert np.isnan(dx[7])
    for F in FUNCTIONS.values():
        np.testing.assert_array_equal(F.sigmoid(x), y)


def exact_sigmoid_grad(x):
    """``s(x) * (1 - s(x))`` in extended precision: ``e / (1 + e)**2`` with ``e = exp(-|x|)``."""
    e = np.exp(-np.abs(np.asarray(x, dtype=np.longdouble)))
    return (e / (1 + e) ** 2).astype(np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_saturated_sigmoid_gradient_keeps_relative_precision(L, dtype):
    """Where ``out`` rounds to nearly 1, ``(1 - out) * out`` loses every digit; fastbp does not."""
    x = np.array([3.0, 8.0, 12.0, 17.0, 30.0, -8.0, -30.0], dtype)
    layer = L.Sigmoid()
    layer.forward(x)
    dx = layer.backward(np.ones_like(x))
    np.testing.assert_allclose(dx, exact_sigmoid_grad(x), rtol=8 * np.finfo(dtype).eps, atol=0)
    for F in FUNCTIONS.values():
        np.testing.assert_allclose(F.sigmoid_grad(x), exact_sigmoid_grad(x),
                                   rtol=8 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("targets", ["labels", "one-hot", "probs"])
def test_confident_rows_keep_relative_precision(L, dtype, targets):
    """A target class with probability near 1: ``y - 1`` computed from a rounded ``y`` loses
    every digit of the gradient; fastbp gets it from the complement instead."""
    c = 4
    for gap in (4.0, 9.0, 17.0, 30.0):
        x = np.zeros((2, c), dtype)
        x[0, 2] = gap
        x[1, 0] = gap
        labels = np.array([2, 0])
        t = labels if targets == "labels" else np.eye(c, dtype=dtype)[labels]
        if targets == "probs":
            t = t * dtype(0.5)  # half the mass: the gradient is y * 0.5 - 0.5
        _, _, dx = loss_and_grad(L, x, t)
        e = np.exp(-np.longdouble(gap))
        y_top = 1 / (1 + (c - 1) * e)
        mass = 0.5 if targets == "probs" else 1.0
        want_top = float(mass * (y_top - 1) / 2)  # mean over the batch of 2
        want_other = float(mass * e * y_top / 2)
        rtol = 16 * float(np.finfo(dtype).eps)
        for row, col in ((0, 2), (1, 0)):
            assert dx[row, col] == pytest.approx(want_top, rel=rtol), (gap, row)
            others = [j for j in range(c) if j != col]
            np.testing.assert_allclose(dx[row, others], want_other, rtol=rtol)


def test_relu_edges(L):
    x = np.array([-2.0, -0.0, 0.0, 3.0, np.nan, -np.inf, np.inf])
    layer = L.Relu()
    out = layer.forward(x)
    np.testing.assert_array_equal(out, [0, 0, 0, 3, np.nan, 0, np.inf])
    np.testing.assert_array_equal(layer.mask, x <= 0)
    dout = np.arange(1.0, 8.0)
    keep = dout.copy()
    dx = layer.backward(dout)
    np.testing.assert_array_equal(dx, [0, 0, 0, 4, 5, 0, 7])
    assert dx is not dout
    np.testing.assert_array_equal(dout, keep)


def test_affine_sees_in_place_updates_and_reassignment(L):
    rng = np.random.default_rng(8)
    W, b, x = rng.standard_normal((3, 2)), rng.standard_normal(2), rng.standard_normal((4, 3))
    layer = L.Affine(W, b)
    assert layer.W is W and layer.b is b
    first = layer.forward(x)
    W -= 0.5
    b += 1.0
    np.testing.assert_allclose(layer.forward(x), x @ W + b, rtol=1e-14)
    assert not np.allclose(first, layer.forward(x))
    layer.W = np.ones((3, 2))
    np.testing.assert_allclose(layer.forward(x), x @ np.ones((3, 2)) + b, rtol=1e-14)


def test_affine_nd_input(L):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 4, 5))
    layer = L.Affine(rng.standard_normal((60, 7)), 0)
    out = layer.forward(x)
    assert out.shape == (2, 7) and layer.original_x_shape == x.shape and layer.x.shape == (2, 60)
    dx = layer.backward(np.ones((2, 7)))
    assert dx.shape == x.shape and layer.dW.shape == (60, 7) and layer.db.shape == (7,)


# --- inputs that are not the usual ---------------------------------------------------------


def test_broadcast_and_memmap_inputs(L, tmp_path):
    row = np.linspace(-2, 2, 6)
    x = np.broadcast_to(row, (4, 6))  # read-only, zero strides
    path = tmp_path / "x.dat"
    mm = np.memmap(path, dtype=np.float64, mode="w+", shape=(4, 6))
    mm[:] = x
    mm.flush()
    ro = np.memmap(path, dtype=np.float64, mode="r", shape=(4, 6))
    want = np.ascontiguousarray(x)
    for arr in (x, ro):
        for make in (L.Relu, L.Sigmoid):
            got = make().forward(arr)
            np.testing.assert_array_equal(got, make().forward(want))
        affine = L.Affine(np.broadcast_to(np.ones(3), (6, 3)), np.broadcast_to(0.5, (3,)))
        np.testing.assert_allclose(affine.forward(arr), want @ np.ones((6, 3)) + 0.5, rtol=1e-14)
        t = np.broadcast_to(np.array([1]), (4,))
        _, loss, dx = loss_and_grad(L, arr, t)
        _, want_loss, want_dx = loss_and_grad(L, want, np.ones(4, dtype=np.int64))
        assert loss == want_loss
        np.testing.assert_array_equal(dx, want_dx)
