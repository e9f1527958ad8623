"""SimpleConvNet and DeepConvNet: the book's structure, gradients, both backends, the book's
pickles, and ``fastbp train --net simpleconv|deepconv``.

Small images and batches throughout: DeepConvNet only runs on a batch of 2 at 28x28.
"""

import gzip
import pathlib
import pickle
import struct
from collections import OrderedDict

import numpy as np
import pytest

from fastbp import cli, training
from fastbp import layers as kernel_layers
from fastbp.nets import DeepConvNet, SimpleConvNet
from fastbp.reference import layers as reference_layers
from fastbp.testing import tolerances

BACKENDS = ["kernel", "reference"]
LAYERS = {"kernel": kernel_layers, "reference": reference_layers}
SMALL = dict(input_dim=(1, 10, 10),
             conv_param={"filter_num": 4, "filter_size": 3, "pad": 0, "stride": 1},
             hidden_size=6, output_size=5)


def close64(a, b):
    """NUMERICS.md: reference vs kernel in float64, rtol 1e-12, atol 1e-12 x largest value."""
    scale = max(1.0, float(np.max(np.abs(b))) if np.size(b) else 1.0)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * scale)


def close32(got, want, scalar=False):
    """NUMERICS.md's float32 tolerances against a float64 reference on the same inputs."""
    want = np.asarray(want, dtype=np.float64)
    rtol, atol = tolerances(np.float32, float(np.max(np.abs(want))), scalar=scalar)
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=rtol, atol=atol)


def images(n, shape=(1, 10, 10), seed=0):
    return np.random.default_rng(seed).random((n, *shape))


# --- structure and initial weights ----------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_simple_convnet_has_the_books_structure(backend):
    net = SimpleConvNet(backend=backend, rng=0)
    L = LAYERS[backend]
    assert isinstance(net.layers, OrderedDict)
    assert list(net.layers) == ["Conv1", "Relu1", "Pool1", "Affine1", "Relu2", "Affine2"]
    kinds = [L.Convolution, L.Relu, L.Pooling, L.Affine, L.Relu, L.Affine]
    assert all(isinstance(layer, kind) for layer, kind in zip(net.layers.values(), kinds,
                                                               strict=True))
    assert isinstance(net.last_layer, L.SoftmaxWithLoss)
    pool = net.layers["Pool1"]
    assert (pool.pool_h, pool.pool_w, pool.stride, pool.pad) == (2, 2, 2, 0)
    conv = net.layers["Conv1"]
    assert (conv.stride, conv.pad) == (1, 0)
    assert {k: v.shape for k, v in net.params.items()} == {
        "W1": (30, 1, 5, 5), "b1": (30,), "W2": (30 * 12 * 12, 100), "b2": (100,),
        "W3": (100, 10), "b3": (10,)}
    assert list(net.params) == ["W1", "b1", "W2", "b2", "W3", "b3"]
    for key, name in (("1", "Conv1"), ("2", "Affine1"), ("3", "Affine2")):
        assert net.layers[name].W is net.params["W" + key]
        assert net.layers[name].b is net.params["b" + key]


def test_simple_convnet_draws_the_books_weights():
    """Without rng, the book's np.random.randn draws in the book's order and scale."""
    np.random.seed(3)  # noqa: NPY002
    net = SimpleConvNet(weight_init_std=0.05, **SMALL)
    np.random.seed(3)  # noqa: NPY002
    expected = [0.05 * np.random.randn(4, 1, 3, 3),  # noqa: NPY002
                0.05 * np.random.randn(4 * 4 * 4, 6),  # noqa: NPY002
                0.05 * np.random.randn(6, 5)]  # noqa: NPY002
    for i, want in enumerate(expected, start=1):
        np.testing.assert_array_equal(net.params[f"W{i}"], want)
        np.testing.assert_array_equal(net.params[f"b{i}"], np.zeros(want.shape[-1] if i > 1
                                                                    else 4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_deep_convnet_has_the_books_structure_and_weights(backend):
    np.random.seed(7)  # noqa: NPY002
    net = DeepConvNet(backend=backend)
    L = LAYERS[backend]
    assert isinstance(net.layers, list) and len(net.layers) == 20
    conv, relu, pool = L.Convolution, L.Relu, L.Pooling
    kinds = [conv, relu, conv, relu, pool] * 3 + [L.Affine, relu, L.Dropout, L.Affine,
                                                   L.Dropout]
    assert [type(layer) for layer in net.layers] == kinds
    assert all(layer.dropout_ratio == 0.5 for layer in net.layers if isinstance(layer,
                                                                               L.Dropout))
    # The book's draws: He scales from its pre_node_nums, W1..W8 in order.
    np.random.seed(7)  # noqa: NPY002
    pre_node_nums = np.array([1 * 3 * 3, 16 * 3 * 3, 16 * 3 * 3, 32 * 3 * 3, 32 * 3 * 3,
                              64 * 3 * 3, 64 * 4 * 4, 50])
    scales = np.sqrt(2.0 / pre_node_nums)
    shapes = [(16, 1, 3, 3), (16, 16, 3, 3), (32, 16, 3, 3), (32, 32, 3, 3), (64, 32, 3, 3),
              (64, 64, 3, 3), (64 * 4 * 4, 50), (50, 10)]
    pads = [1, 1, 1, 2, 1, 1]
    for i, (shape, scale) in enumerate(zip(shapes, scales, strict=True), start=1):
        np.testing.assert_array_equal(net.params[f"W{i}"],
                                      scale * np.random.randn(*shape))  # noqa: NPY002
        assert net.params[f"b{i}"].shape == (shape[0] if i <= 6 else shape[1],)
    for i, index in enumerate((0, 2, 5, 7, 10, 12, 15, 18), start=1):
        assert net.layers[index].W is net.params[f"W{i}"]
        assert net.layers[index].b is net.params[f"b{i}"]
        if i <= 6:
            assert (net.layers[index].stride, net.layers[index].pad) == (1, pads[i - 1])


def test_sizes_that_do_not_fit_are_named():
    with pytest.raises(ValueError, match="Conv1: a filter of 5 does not fit a map of 3"):
        SimpleConvNet(input_dim=(1, 3, 3))
    with pytest.raises(ValueError, match="input_dim"):
        SimpleConvNet(input_dim=(28, 28))
    with pytest.raises(ValueError, match="backend"):
        DeepConvNet(backend="torch")
    with pytest.raises(TypeError, match="float32 or float64"):
        SimpleConvNet(dtype=np.int32)
    net = SimpleConvNet(rng=0, **SMALL)
    with pytest.raises(ValueError, match=r"reshape flat images with x.reshape\(-1, 1, 10, 10\)"):
        net.predict(np.zeros((2, 100)))
    with pytest.raises(ValueError, match=r"\(N, 1, 10, 10\); got \(2, 1, 9, 9\)"):
        net.loss(np.zeros((2, 1, 9, 9)), np.zeros(2, dtype=int))


def test_odd_maps_pool_as_the_layers_do():
    """An odd convolution output loses its last row in pooling; W2 is sized to match."""
    net = SimpleConvNet(input_dim=(2, 11, 9), conv_param={"filter_num": 3, "filter_size": 3,
                                                          "pad": 0, "stride": 1},
                        hidden_size=4, output_size=3, rng=0)
    assert net.params["W1"].shape == (3, 2, 3, 3)
    assert net.params["W2"].shape == (3 * 4 * 3, 4)  # 9x7 maps pool to 4x3
    assert net.predict(images(2, (2, 11, 9))).shape == (2, 3)


# --- gradients ------------------------------------------------------------------------------


def _kink_margins(net, x, h=1e-4):
    """True where no ReLU input and no pooling tie is within reach of a step of ``h`` in any
    parameter, so that central differences see a smooth function (NUMERICS.md)."""
    conv, pool, affine = net.layers["Conv1"], net.layers["Pool1"], net.layers["Affine1"]
    z1 = conv.forward(x)
    a1 = np.maximum(z1, 0)
    n, c, oh, ow = a1.shape
    windows = a1[:, :, :oh // 2 * 2, :ow // 2 * 2].reshape(n, c, oh // 2, 2, ow // 2, 2)
    windows = np.sort(windows.transpose(0, 1, 2, 4, 3, 5).reshape(-1, 4), axis=1)
    gaps = (windows[:, -1] - windows[:, -2])[windows[:, -1] > 0]
    pooled = pool.forward(a1)
    z2 = affine.forward(pooled)
    w2 = np.abs(net.params["W2"])
    reach2 = h * max(1.0, float(np.max(pooled)), float(np.max(w2.sum(axis=0))))
    return (np.min(np.abs(z1)) > 10 * h * max(1.0, float(np.max(x)))
            and (gaps.size == 0 or np.min(gaps) > 10 * h)
            and np.min(np.abs(z2)) > 10 * reach2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_matches_numerical_gradient(backend):
    """The book's ch07/gradient_check.py: input (1, 10, 10), 10 filters of 3x3, hidden 10,
    one image, label [[1]]; at a point away from the kinks, relative error <= 1e-6."""
    shape = dict(input_dim=(1, 10, 10),
                 conv_param={"filter_num": 10, "filter_size": 3, "pad": 0, "stride": 1},
                 hidden_size=10, output_size=10, weight_init_std=0.3)
    for seed in range(40):
        network = SimpleConvNet(**shape, backend=backend, rng=seed)
        X = np.random.default_rng(seed).random(100).reshape((1, 1, 10, 10))
        if _kink_margins(network, X):
            break
    else:
        pytest.fail("no seed gives a point away from the kinks")
    T = np.array([1]).reshape((1, 1))
    grad_num = network.numerical_gradient(X, T)
    grad = network.gradient(X, T)
    assert list(grad_num) == list(grad) == ["W1", "b1", "W2", "b2", "W3", "b3"]
    for key in grad:
        scale = float(np.max(np.abs(grad_num[key])))
        assert scale > 0, key
        assert np.max(np.abs(grad[key] - grad_num[key])) <= 1e-6 * scale, key


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_skips_the_images_dx(backend):
    """gradient() asks the first Convolution for no dx, for that call only, and gets the same
    gradients as the book's backward through every layer. (The kernel backend's fused block
    does the same without the layer: see test_the_fused_block_*; a stride-2 Convolution, which
    the block does not compute, goes through the layers.)"""
    small = dict(SMALL, conv_param=dict(SMALL["conv_param"], stride=2 if backend == "kernel"
                                        else 1))
    net = SimpleConvNet(backend=backend, rng=0, weight_init_std=0.3, **small)
    x, t = images(3), np.array([0, 1, 2])
    conv = net.layers["Conv1"]
    seen = []
    backward = conv.backward

    def spy(dout):
        seen.append(conv.need_dx)
        seen.append(backward(dout))
        return seen[-1]

    conv.backward = spy
    grads = {key: value.copy() for key, value in net.gradient(x, t).items()}
    assert seen == [False, None] and conv.need_dx is True
    del conv.backward
    net.loss(x, t)  # the book's way: every layer's backward, the images' dx included
    dout = net.last_layer.backward(1)
    for layer in reversed(list(net.layers.values())):
        dout = layer.backward(dout)
    assert dout.shape == x.shape
    np.testing.assert_array_equal(conv.dW, grads["W1"])
    np.testing.assert_array_equal(conv.db, grads["b1"])


# --- the kernel backend's fused Convolution-Relu-Pooling block --------------------------------

FUSED_SHAPES = [
    # (input_dim, filter_num, filter_size, pad, batch): the book's net, padding, C > 1,
    # odd maps (the pooling leaves out the last row or column), non-square images, batch 1
    ((1, 28, 28), 30, 5, 0, 4),
    ((1, 10, 10), 10, 3, 0, 1),
    ((3, 11, 9), 5, 3, 2, 3),
    ((2, 9, 12), 4, 4, 1, 2),
    ((1, 7, 8), 3, 1, 0, 2),
    ((2, 8, 8), 6, 7, 2, 3),
]


def _book_gradient(net, x, t):
    """The book's SimpleConvNet.gradient: backward through every layer."""
    net.loss(x, t)
    dout = net.last_layer.backward(1)
    for layer in reversed(list(net.layers.values())):
        dout = layer.backward(dout)
    grads = [g.copy() for layer in net._param_layers for g in (layer.dW, layer.db)]
    return dict(zip(net.params, grads, strict=True))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", FUSED_SHAPES, ids=str)
def test_the_fused_block_agrees_with_the_layers(shape, dtype):
    """The kernel net's gradient (fused Conv1-Relu1-Pool1) against the reference net's and
    against the kernel layers' own backward, on the same values."""
    input_dim, filter_num, filter_size, pad, batch = shape
    kwargs = dict(input_dim=input_dim, conv_param={"filter_num": filter_num, "filter_size":
                  filter_size, "pad": pad, "stride": 1}, hidden_size=7, output_size=5,
                  weight_init_std=0.3)
    net, ref = _twin_nets(SimpleConvNet, dtype, **kwargs)
    x = np.random.default_rng(2).standard_normal((batch, *input_dim)).astype(dtype)
    t = np.arange(batch) % 5
    grads = {key: g.copy() for key, g in net.gradient(x, t).items()}
    assert net._block is not None and net._block.fits()
    loss = net.last_layer.loss
    want = ref.gradient(x.astype(np.float64), t)
    layers_way = _book_gradient(net, x, t)
    close = close64 if dtype == np.float64 else close32
    close(loss, ref.last_layer.loss)
    for key in want:
        assert grads[key].dtype == dtype and grads[key].shape == want[key].shape
        close(grads[key], want[key])
        if dtype == np.float64:
            close64(grads[key], layers_way[key])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("input_dim", [(1, 3, 3), (2, 3, 4)], ids=str)
def test_the_fused_block_never_reads_past_the_batch(input_dim, dtype):
    """Images smaller than the kernels' rounded runs (kernels/conv.py, SPAN_ROUND), given as the
    start of a larger array whose remaining images are NaN: nothing past the batch may be read
    (``dW1`` turned NaN when it was). Run under NUMBA_BOUNDSCHECK=1 in CI too."""
    kwargs = dict(input_dim=input_dim, conv_param={"filter_num": 3, "filter_size": 2, "pad": 0,
                  "stride": 1}, hidden_size=4, output_size=3, weight_init_std=0.5)
    net, ref = _twin_nets(SimpleConvNet, dtype, **kwargs)
    whole = np.full((7, *input_dim), np.nan, dtype=dtype)
    whole[:5] = np.random.default_rng(3).standard_normal((5, *input_dim))
    x, t = whole[:5], np.arange(5) % 3
    grads = net.gradient(x, t)
    assert net._block is not None and net.layers["Conv1"]._direct[0] is x
    want = ref.gradient(x.astype(np.float64), t)
    close = close64 if dtype == np.float64 else close32
    for key in want:
        assert np.isfinite(grads[key]).all()
        close(grads[key], want[key])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_accuracy_through_the_fused_block_is_predicts(dtype):
    """accuracy() runs the fused block's forward pass: the same logits as predict()."""
    net = SimpleConvNet(rng=0, dtype=dtype, weight_init_std=0.3, **SMALL)
    x = images(7).astype(dtype)
    assert net._fused() is not None
    close = close64 if dtype == np.float64 else close32
    close(net._logits(x), net.predict(x))
    t = np.argmax(net.predict(x), axis=1)
    assert net.accuracy(x, t, batch_size=3) == 1.0
    assert net.accuracy(x, (t + 1) % 5, batch_size=3) == 0.0


def test_the_fused_block_sets_the_convolutions_gradients():
    net = SimpleConvNet(rng=0, weight_init_std=0.3, **SMALL)
    x, t = images(3), np.array([0, 1, 2])
    grads = net.gradient(x, t)
    conv = net.layers["Conv1"]
    assert grads["W1"] is conv.dW and grads["b1"] is conv.db
    assert conv.dW.shape == net.params["W1"].shape and conv.db.shape == (4,)


def test_after_the_fused_block_the_convolution_is_as_its_forward_leaves_it():
    """Conv1's x, col and backward after gradient() are those of Conv1.forward on the images."""
    net = SimpleConvNet(rng=0, weight_init_std=0.3, **dict(SMALL, conv_param=dict(
        SMALL["conv_param"], pad=1)))
    x, t = images(3), np.array([0, 1, 2])
    conv = net.layers["Conv1"]
    conv.forward(images(2, seed=5))  # an earlier, different call
    net.gradient(x, t)
    ref = reference_layers.Convolution(net.params["W1"], net.params["b1"], 1, 1)
    ref.forward(x)
    dout = np.random.default_rng(1).standard_normal((3, 4, 10, 10))
    np.testing.assert_array_equal(conv.x, x)
    np.testing.assert_array_equal(conv.col, ref.col)
    close64(conv.backward(dout), ref.backward(dout))
    close64(conv.dW, ref.dW)


def test_the_fused_block_sees_in_place_updates_and_rebinding():
    net = SimpleConvNet(rng=0, weight_init_std=0.3, **SMALL)
    ref = SimpleConvNet(backend="reference", rng=0, weight_init_std=0.3, **SMALL)
    x, t = images(3), np.array([0, 1, 2])
    net.gradient(x, t)
    for key in net.params:
        net.params[key] *= 1.5  # in place, as the optimizers do
        ref.params[key] *= 1.5
    for key, g in net.gradient(x, t).items():
        close64(g, ref.gradient(x, t)[key])
    net.layers["Conv1"].W = net.params["W1"] = net.params["W1"] * -1.0  # rebound
    ref.layers["Conv1"].W = ref.params["W1"] = ref.params["W1"] * -1.0
    for key, g in net.gradient(x, t).items():
        close64(g, ref.gradient(x, t)[key])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_fused_block_keeps_the_layers_ties_and_nans(dtype):
    """Windows with tied maxima, all-negative windows (Relu's zeros), zeros and NaN: the fused
    block's loss and gradients are the layers' (NaN where theirs are NaN)."""
    kwargs = dict(input_dim=(1, 6, 6), conv_param={"filter_num": 2, "filter_size": 1, "pad": 0,
                  "stride": 1}, hidden_size=4, output_size=3, weight_init_std=0.3)
    net = SimpleConvNet(rng=0, dtype=dtype, **kwargs)
    net.params["W1"][...] = np.array([1.0, -1.0]).reshape(2, 1, 1, 1)
    x = np.zeros((2, 1, 6, 6), dtype=dtype)
    x[0, 0, :2, :2] = [[2.0, 2.0], [2.0, 1.0]]  # a tie: the first of the 2s wins
    x[0, 0, 2:4, 0:2] = [[-1.0, -3.0], [-2.0, -1.0]]  # negative: filter 2 sees positives
    x[0, 0, 4:6, 4:6] = [[0.5, 3.0], [3.0, 0.5]]
    x[1] = np.random.default_rng(0).standard_normal((1, 6, 6))
    t = np.array([0, 2])
    grads = {k: g.copy() for k, g in net.gradient(x, t).items()}
    want = _book_gradient(net, x, t)
    for key in want:
        np.testing.assert_allclose(grads[key], want[key], rtol=1e-5 if dtype == np.float32
                                   else 1e-12, atol=1e-6 if dtype == np.float32 else 1e-13)
    x[1, 0, 3, 3] = np.nan
    grads = {k: g.copy() for k, g in net.gradient(x, t).items()}
    want = _book_gradient(net, x, t)
    for key in want:
        np.testing.assert_array_equal(np.isnan(grads[key]), np.isnan(want[key]), err_msg=key)
    assert np.isnan(grads["W1"]).all()


def test_the_fused_block_spreads_an_inf_at_the_border_as_the_layers_do():
    """The block's backward reads whole flat rows of the image; an inf in a first or last
    column must reach exactly the sums of dW1 it reaches through the layers. (Without padding:
    with it, every tap reaches every pixel.)"""
    kwargs = dict(input_dim=(1, 8, 8), conv_param={"filter_num": 3, "filter_size": 3,
                  "pad": 0, "stride": 1}, hidden_size=4, output_size=3, weight_init_std=0.5)
    net = SimpleConvNet(rng=2, **kwargs)
    # Negative filters on positive images: the windows that read the inf are -inf and never
    # win, so the loss stays finite and only the sums that multiply the inf (by a zero
    # gradient) are NaN.
    net.params["W1"][...] = -np.abs(net.params["W1"])
    x = np.abs(np.random.default_rng(1).standard_normal((2, 1, 8, 8)))
    x[0, 0, 4, 0] = np.inf
    x[1, 0, 2, 7] = np.inf
    t = np.array([0, 1])
    with np.errstate(invalid="ignore", over="ignore"):
        grads = {k: g.copy() for k, g in net.gradient(x, t).items()}
        want = _book_gradient(net, x, t)
    assert np.isfinite(net.last_layer.loss)
    assert np.isnan(want["W1"]).any() and not np.isnan(want["W1"]).all()
    for key in want:
        np.testing.assert_array_equal(np.isnan(grads[key]), np.isnan(want[key]), err_msg=key)


def test_the_fused_kernels_give_the_same_bits_on_every_build():
    """Serial and threaded builds, and the threaded one at each thread count, agree bit for bit
    (each output element and each filter's sums are computed by the same code, in the same
    order)."""
    import numba

    from fastbp.kernels import conv

    rng = np.random.default_rng(3)
    xp = rng.standard_normal((9, 2, 12, 11))
    W = rng.standard_normal((7, 2 * 3 * 3))
    b = rng.standard_normal(7)
    taps = np.empty(18, dtype=np.intp)
    conv.tap_offsets(2, 3, 3, 12, 11, taps)
    dout = rng.standard_normal((9, 7, 5, 4))
    results = []
    counts = [c for c in (1, 2, 3) if c <= numba.config.NUMBA_NUM_THREADS]
    for build, count in [("serial", 1)] + [("parallel", c) for c in counts]:
        out = np.empty((9, 7, 5, 4))
        code = np.empty(out.shape, dtype=np.uint8)
        dW, db = np.empty((7, 18)), np.empty(7)
        saved = numba.get_num_threads()
        numba.set_num_threads(count)
        try:
            getattr(conv.conv_relu_pool, build)(out, code, xp, W, b, taps)
            getattr(conv.filter_grads, build)(dout, out, code, True, xp, taps, 10, 8, True, dW,
                                              db)
        finally:
            numba.set_num_threads(saved)
        results.append((out, code, dW, db))
    for got in results[1:]:
        for a, want in zip(got, results[0], strict=True):
            np.testing.assert_array_equal(a, want)


def test_the_fused_block_checks_its_input():
    net = SimpleConvNet(rng=0, **SMALL)
    with pytest.raises(ValueError, match=r"images of shape \(N, 1, 10, 10\)"):
        net.gradient(np.zeros((2, 1, 9, 10)), np.array([0, 1]))
    net.gradient(images(2), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"dout of shape \(2, 4, 3, 3\)"):
        net._block.backward_params(np.zeros((2, 4, 3, 3)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_fused_pooling_picks_the_layers_winner(dtype):
    """Small integers make many tied maxima: wherever a window's maximum is positive (the only
    windows whose gradient is not 0), the fused kernel's winner is the Pooling layer's winner
    over the Relu's output (the first in row-major order), and the outputs are equal."""
    from fastbp.kernels import conv

    rng = np.random.default_rng(5)
    x = rng.integers(-2, 3, (6, 2, 9, 10)).astype(dtype)
    W = rng.integers(-1, 2, (5, 2, 3, 3)).astype(dtype)
    b = rng.integers(-1, 2, 5).astype(dtype)
    layers = [kernel_layers.Convolution(W, b), kernel_layers.Relu(),
              kernel_layers.Pooling(2, 2, stride=2)]
    relu_out = layers[1].forward(layers[0].forward(x))
    want = layers[2].forward(relu_out)
    arg = layers[2]._arg
    windows = relu_out[:, :, :6, :8].reshape(6, 5, 3, 2, 4, 2).transpose(0, 1, 2, 4, 3, 5)
    tied = (windows == want[..., None, None]).sum(axis=(-1, -2)) > 1
    assert (tied & (want > 0)).sum() > 20  # positive windows whose maximum is tied
    taps = np.empty(18, dtype=np.intp)
    conv.tap_offsets(2, 3, 3, 9, 10, taps)
    out = np.empty(want.shape, dtype=dtype)
    code = np.empty(want.shape, dtype=np.uint8)
    conv.conv_relu_pool(out, code, x, W.reshape(5, 18), b, taps)
    np.testing.assert_array_equal(out, want)
    ph, pw = np.meshgrid(np.arange(want.shape[2]), np.arange(want.shape[3]), indexing="ij")
    fused_arg = (2 * ph + (code >> 1)) * 8 + 2 * pw + (code & 1)  # the conv output is 7x8
    positive = want > 0
    assert (fused_arg != arg)[~positive].any()  # where Relu zeroed a window, it may differ
    np.testing.assert_array_equal(fused_arg[positive], arg[positive])


def _twin_nets(cls, dtype, **kwargs):
    """A kernel net in ``dtype`` and a float64 reference net holding the same (rounded)
    parameter values."""
    net = cls(backend="kernel", rng=1, dtype=dtype, **kwargs)
    ref = cls(backend="reference", rng=1, **kwargs)
    for key in ref.params:
        ref.params[key][...] = net.params[key]  # in place: the layers hold these arrays
    return net, ref


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_backends_agree_on_loss_and_every_gradient(dtype):
    net, ref = _twin_nets(SimpleConvNet, dtype, weight_init_std=0.3, **SMALL)
    x = images(5).astype(dtype)
    t = np.array([0, 1, 2, 3, 4])
    loss, want = net.loss(x, t), ref.loss(x.astype(np.float64), t)
    grads, want_grads = net.gradient(x, t), ref.gradient(x.astype(np.float64), t)
    logits, want_logits = net.predict(x), ref.predict(x.astype(np.float64))
    assert set(grads) == set(want_grads) == set(net.params)
    if dtype == np.float64:
        close64(loss, want)
        close64(logits, want_logits)
        for key in grads:
            close64(grads[key], want_grads[key])
    else:
        close32(loss, want, scalar=True)
        close32(logits, want_logits)
        for key in grads:
            close32(grads[key], want_grads[key])
    assert net.accuracy(x, t) == ref.accuracy(x.astype(np.float64), t)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_stays_float32(backend):
    net = SimpleConvNet(backend=backend, rng=0, dtype=np.float32, **SMALL)
    x = images(3).astype(np.float32)
    t = np.array([0, 1, 2])
    assert all(p.dtype == np.float32 for p in net.params.values())
    assert net.predict(x).dtype == np.float32
    assert np.asarray(net.loss(x, t)).dtype == np.float32
    assert all(g.dtype == np.float32 for g in net.gradient(x, t).values())


def test_accuracy_counts_every_image():
    """Unlike the book's loop, the last partial batch counts too."""
    net = SimpleConvNet(rng=0, weight_init_std=0.5, **SMALL)
    x = images(7)
    t = np.array([0, 1, 2, 3, 4, 0, 1])
    expected = np.mean(np.argmax(net.predict(x), axis=1) == t)
    assert net.accuracy(x, t, batch_size=3) == expected
    assert net.accuracy(x, t, batch_size=3.0) == expected  # a whole float passes the check
    assert isinstance(net.accuracy(x, t), np.float64)  # as the book's
    assert net.accuracy(x, t[:, None], batch_size=3) == expected  # (N, 1) labels
    assert net.accuracy(x, np.eye(5)[t], batch_size=100) == expected  # one-hot labels
    with pytest.raises(ValueError, match="7 rows but t holds 6"):
        net.accuracy(x, t[:6])


def test_deep_convnet_backends_agree_with_dropout_seeded():
    """DeepConvNet at 28x28 on a batch of 2: the same seeded dropout masks on both backends,
    the same loss and gradients; predict (train_flg=False) scales instead of dropping."""
    x = images(2, (1, 28, 28), seed=5)
    t = np.array([3, 8])
    nets = []
    for backend in BACKENDS:
        np.random.seed(0)  # noqa: NPY002
        nets.append(DeepConvNet(backend=backend))
    grads, losses = [], []
    for net in nets:
        np.random.seed(1)  # noqa: NPY002
        grads.append(net.gradient(x, t))
        losses.append(net.last_layer.loss)
    close64(losses[0], losses[1])
    assert set(grads[0]) == {f"{p}{i}" for p in "Wb" for i in range(1, 9)}
    for key in grads[1]:
        assert grads[0][key].shape == nets[0].params[key].shape
        close64(grads[0][key], grads[1][key])
    # Test mode is deterministic (no draws) and agrees across backends.
    state = np.random.get_state()  # noqa: NPY002
    close64(nets[0].predict(x), nets[1].predict(x))
    assert np.array_equal(nets[0].predict(x), nets[0].predict(x, train_flg=False))
    assert np.random.get_state()[2] == state[2]  # noqa: NPY002


# --- the book's pickles ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_save_and_load_give_the_same_predictions(tmp_path, dtype):
    path = tmp_path / "params.pkl"
    net = SimpleConvNet(rng=0, dtype=dtype, weight_init_std=0.5, **SMALL)
    x = images(4).astype(dtype)
    net.save_params(str(path))
    other = SimpleConvNet(rng=1, dtype=dtype, weight_init_std=0.5, **SMALL)
    assert not np.array_equal(other.predict(x), net.predict(x))
    other.load_params(str(path))
    np.testing.assert_array_equal(other.predict(x), net.predict(x))
    assert all(p.dtype == dtype for p in other.params.values())
    for key, name in (("1", "Conv1"), ("2", "Affine1"), ("3", "Affine2")):
        assert other.layers[name].W is other.params["W" + key]  # the layers are rebound
        assert other.layers[name].b is other.params["b" + key]


def test_the_pickle_is_the_books_format(tmp_path):
    """A dict of float64 arrays keyed W1..bN, also from a float32 net (exact: float32 values
    are float64 values)."""
    net = SimpleConvNet(rng=0, dtype=np.float32, **SMALL)
    net.save_params(str(tmp_path / "params.pkl"))
    with open(tmp_path / "params.pkl", "rb") as f:
        saved = pickle.load(f)
    assert type(saved) is dict
    assert list(saved) == ["W1", "b1", "W2", "b2", "W3", "b3"]
    for key, value in saved.items():
        assert type(value) is np.ndarray and value.dtype == np.float64
        np.testing.assert_array_equal(value, net.params[key])


def test_a_pickle_written_as_the_book_writes_it_loads(tmp_path):
    """The book's save_params pickles its params dict as it is; DeepConvNet loads such a file,
    the order of the keys does not matter, and the layers see the new weights."""
    source = DeepConvNet(rng=2)
    params = {key: source.params[key] for key in reversed(list(source.params))}
    with open(tmp_path / "deep_convnet_params.pkl", "wb") as f:
        pickle.dump(params, f)
    net = DeepConvNet(rng=3)
    net.load_params(tmp_path / "deep_convnet_params.pkl")
    for i, index in enumerate((0, 2, 5, 7, 10, 12, 15, 18), start=1):
        np.testing.assert_array_equal(net.layers[index].W, source.params[f"W{i}"])
        assert net.layers[index].b is net.params[f"b{i}"]


def _write(path, params):
    with open(path, "wb") as f:
        pickle.dump(params, f)
    return str(path)


def test_bad_pickles_name_the_key_and_the_shapes(tmp_path):
    net = SimpleConvNet(rng=0, **SMALL)
    before = {key: value.copy() for key, value in net.params.items()}
    good = {key: value.copy() for key, value in net.params.items()}

    missing = _write(tmp_path / "missing.pkl", {k: v for k, v in good.items() if k != "W2"})
    with pytest.raises(ValueError, match=r"no 'W2'; SimpleConvNet needs W2 of shape \(64, 6\)"):
        net.load_params(missing)
    wrong = _write(tmp_path / "wrong.pkl", dict(good, W1=np.zeros((30, 1, 5, 5))))
    with pytest.raises(ValueError, match=r"'W1' has shape \(30, 1, 5, 5\); SimpleConvNet's W1 "
                                         r"has shape \(4, 1, 3, 3\)"):
        net.load_params(wrong)
    extra = _write(tmp_path / "extra.pkl", dict(good, W4=np.zeros(3)))
    with pytest.raises(ValueError, match=r"unexpected keys \['W4'\]"):
        net.load_params(extra)
    not_a_dict = _write(tmp_path / "list.pkl", list(good.values()))
    with pytest.raises(TypeError, match="holds a list, not the dict"):
        net.load_params(not_a_dict)
    strings = _write(tmp_path / "strings.pkl", dict(good, b3=np.array(["a"] * 5)))
    with pytest.raises(TypeError, match="'b3' is an array of <U1"):
        net.load_params(strings)
    # Nothing was changed by the failed loads.
    for key in before:
        np.testing.assert_array_equal(net.params[key], before[key])
        assert net.layers["Conv1"].W is net.params["W1"]


# --- fastbp train ---------------------------------------------------------------------------


def train(capsys, *argv):
    status = cli.main(["train", *argv])
    captured = capsys.readouterr()
    return status, captured.out.splitlines(), captured.err


def test_train_simpleconv_on_the_digits(capsys):
    import json

    status, lines, err = train(capsys, "--net", "simpleconv", "--epochs", "1", "--hidden", "8",
                               "--no-progress", "--json")
    result = json.loads("\n".join(lines))  # with --json, stdout is the JSON and nothing else
    assert status == 0
    assert result["net"] == "simpleconv" and result["steps"] == 15
    assert result["optimizer"] == "adam" and result["lr"] == training.NET_DEFAULTS[
        "simpleconv"]["lr"]
    assert 0 <= result["test_accuracy"] <= 1
    assert "SimpleConvNet hidden 8" in err.splitlines()[0]


def test_train_deepconv_on_the_digits_stops_clearly(capsys):
    status, lines, err = train(capsys, "--net", "deepconv", "--epochs", "1")
    assert status == 2 and not lines
    assert "28x28" in err and "--data mnist" in err


def test_build_net_shapes():
    kw = dict(backend="kernel", rng=0, dtype=np.float64)
    small = training.build_net("simpleconv", 64, 10, **kw)
    assert small.input_dim == (1, 8, 8) and small.params["W1"].shape == (30, 1, 3, 3)
    assert small.params["W2"].shape == (30 * 3 * 3, 10)
    mnist = training.build_net("simpleconv", 784, 100, **kw)
    assert mnist.params["W1"].shape == (30, 1, 5, 5)
    multi = training.build_net("multi", 64, 12, **kw)
    assert multi.hidden_size_list == [12] * training.MULTI_HIDDEN_LAYERS
    with pytest.raises(ValueError, match="28x28"):
        training.build_net("deepconv", 64, 50, **kw)


def _write_idx(path, array, magic):
    array = np.asarray(array, dtype=np.uint8)
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(f">i{array.ndim}i", magic, *array.shape) + array.tobytes())


def test_a_test_only_mnist_directory_is_split(capsys, tmp_path, monkeypatch):
    """Only the t10k files: a fixed shuffle of them trains and tests (the shared data's case)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 120)
    pictures = rng.integers(0, 40, (120, 28, 28))
    pictures[np.arange(120), 2 * labels] = 255  # class c lights row 2c
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", pictures, 2051)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, 2049)
    monkeypatch.setattr(training, "MNIST_TEST_ONLY_TRAIN_SIZE", 100)
    (x_train, t_train), (x_test, t_test) = training.load_data("mnist", str(tmp_path))
    assert x_train.shape == (100, 784) and x_test.shape == (20, 784)
    order = np.random.default_rng(0).permutation(120)
    np.testing.assert_array_equal(np.concatenate([t_train, t_test]), labels[order])
    # float32 pixels, as the book's load_mnist gives them, then the training dtype
    expected = pictures[order[100]].reshape(-1).astype(np.float32) / np.float32(255.0)
    np.testing.assert_array_equal(x_test[0], expected.astype(np.float64))
    status, lines, _ = train(capsys, "--net", "simpleconv", "--data", "mnist", "--mnist-dir",
                             str(tmp_path), "--epochs", "1", "--hidden", "8", "--no-progress")
    assert status == 0
    assert "holds only the t10k files: training on 100 of their images" in lines[0]


def _shared_mnist():
    """``../shared/data/mnist`` beside the repository root (the project's real test set)."""
    candidate = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
    return candidate if (candidate / "t10k-images-idx3-ubyte.gz").is_file() else None


@pytest.mark.skipif(_shared_mnist() is None, reason="no real MNIST files here")
def test_simpleconv_learns_real_mnist(capsys):
    """One epoch on the 8,000 training images of the split: well past chance."""
    import json

    status, lines, _ = train(capsys, "--net", "simpleconv", "--data", "mnist", "--mnist-dir",
                             str(_shared_mnist()), "--epochs", "1", "--dtype", "float32",
                             "--no-progress", "--json")
    result = json.loads("\n".join(lines))
    assert status == 0 and result["test_size"] == 2000 and result["steps"] == 80
    assert result["test_accuracy"] >= 0.9


def test_bench_times_the_conv_steps(capsys):
    """``fastbp bench`` runs the SimpleConvNet step and the drop-in case on both backends."""
    import json

    status = cli.main(["bench", "--sizes", "book", "--layers", "simpleconv,dropin",
                       "--time", "0.01", "--no-torch", "--json", "--dtype", "float32"])
    assert status == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(r["case"], r["dtype"]) for r in doc["results"]] == [("simpleconv", "float32"),
                                                                  ("dropin", "float32")]
    for r in doc["results"]:
        assert r["shape"] == [100, 1, 28, 28]
        assert r["seconds"]["reference"] > 0 and r["seconds"]["kernel"] > 0


def test_a_test_only_mnist_directory_is_found_by_the_search(capsys, tmp_path, monkeypatch):
    """No --mnist-dir: the directory load_mnist's search finds ($FASTBP_MNIST_DIR here) is split
    the same way when it holds only the t10k files (gzipped or not)."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 120)
    pictures = rng.integers(0, 255, (120, 28, 28))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", pictures, 2051)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "rb") as f:
        (tmp_path / "t10k-images-idx3-ubyte").write_bytes(f.read())
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, 2049)
    monkeypatch.setenv("FASTBP_MNIST_DIR", str(tmp_path))
    monkeypatch.setattr(training, "MNIST_TEST_ONLY_TRAIN_SIZE", 100)
    status, lines, _ = train(capsys, "--data", "mnist", "--epochs", "1", "--hidden", "8",
                             "--no-progress")
    assert status == 0
    assert "holds only the t10k files: training on 100 of their images" in lines[0]
