"""The book's networks on both backends, and the chapter-5 flow end to end."""

from collections import OrderedDict

import numpy as np
import pytest

from fastbp.backends import BACKENDS, layer_module
from fastbp.datasets import load_digits
from fastbp.gradient import gradient_check
from fastbp.nets import MultiLayerNet, TwoLayerNet
from fastbp.optim import SGD

LAYERS = {backend: layer_module(backend) for backend in BACKENDS}


def close64(a, b):
    """docs/numerics.md: reference vs kernel in float64, rtol 1e-12, atol 1e-12 x largest value."""
    scale = max(1.0, float(np.max(np.abs(b))) if np.size(b) else 1.0)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * scale)


@pytest.fixture(scope="module")
def digits():
    (x_train, t_train), (x_test, t_test) = load_digits()
    return (x_train.astype(np.float64), t_train), (x_test.astype(np.float64), t_test)


@pytest.mark.parametrize("backend", BACKENDS)
def test_chapter5_flow(backend, digits, capsys):
    """ch05/gradient_check.py, then ch05/train_neuralnet.py, shortened: the net must learn."""
    (x_train, t_train), (x_test, t_test) = digits
    network = TwoLayerNet(input_size=64, hidden_size=50, output_size=10, backend=backend,
                          rng=np.random.default_rng(0))

    diffs = gradient_check(network, x_train[:3], t_train[:3])
    assert max(diffs.values()) <= 1e-8
    assert "W1:" in capsys.readouterr().out

    rng = np.random.default_rng(1)
    learning_rate = 0.1
    for _ in range(400):
        batch_mask = rng.choice(x_train.shape[0], 100)
        grad = network.gradient(x_train[batch_mask], t_train[batch_mask])
        for key in ("W1", "b1", "W2", "b2"):
            network.params[key] -= learning_rate * grad[key]
    # Chance is 0.1; the book's loop gets past 0.9 here.
    assert network.accuracy(x_train, t_train) > 0.85
    assert network.accuracy(x_test, t_test) > 0.85


def test_both_backends_train_alike(digits):
    """Same seed, same batches: the backends' losses agree step by step in float64."""
    (x_train, t_train), (x_test, t_test) = digits
    nets = [TwoLayerNet(64, 30, 10, backend=b, rng=3) for b in BACKENDS]
    opts = [SGD(0.1, backend=b) for b in BACKENDS]
    rng = np.random.default_rng(4)
    for _ in range(50):
        mask = rng.choice(x_train.shape[0], 100)
        losses = []
        for net, opt in zip(nets, opts, strict=True):
            opt.update(net.params, net.gradient(x_train[mask], t_train[mask]))
            losses.append(net.lastLayer.loss)
        close64(losses[0], losses[1])
    for key in nets[0].params:
        close64(nets[0].params[key], nets[1].params[key])
    assert nets[0].accuracy(x_test, t_test) == nets[1].accuracy(x_test, t_test)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_layer_net_has_the_books_structure(backend):
    net = TwoLayerNet(6, 4, 3, backend=backend, rng=0)
    L = LAYERS[backend]
    assert isinstance(net.layers, OrderedDict)
    assert list(net.layers) == ["Affine1", "Relu1", "Affine2"]
    assert isinstance(net.layers["Affine1"], L.Affine)
    assert isinstance(net.layers["Relu1"], L.Relu)
    assert isinstance(net.lastLayer, L.SoftmaxWithLoss) and net.last_layer is net.lastLayer
    assert net.params["W1"].shape == (6, 4) and net.params["b2"].shape == (3,)
    assert not net.params["b1"].any()
    # The layers hold the very arrays in params, so in-place updates reach them.
    assert net.layers["Affine1"].W is net.params["W1"]
    assert net.layers["Affine2"].b is net.params["b2"]


def test_weights_follow_the_seed_and_the_book_default():
    a = TwoLayerNet(5, 4, 3, rng=np.random.default_rng(11))
    b = TwoLayerNet(5, 4, 3, rng=11, backend="reference")
    expected = np.random.default_rng(11).standard_normal((5, 4)) * 0.01
    close64(a.params["W1"], expected)
    for key in a.params:
        np.testing.assert_array_equal(a.params[key], b.params[key])
    # Without rng, the book's np.random.randn: book code seeded with np.random.seed still works.
    np.random.seed(5)  # noqa: NPY002
    c = TwoLayerNet(5, 4, 3, weight_init_std=0.5)
    np.random.seed(5)  # noqa: NPY002
    np.testing.assert_array_equal(c.params["W1"], 0.5 * np.random.randn(5, 4))  # noqa: NPY002


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_gradient_and_accuracy_agree_across_backends(backend, digits):
    (x, t), _ = digits
    x, t = x[:20], t[:20]
    net = TwoLayerNet(64, 16, 10, weight_init_std=0.3, backend=backend, rng=2)
    ref = TwoLayerNet(64, 16, 10, weight_init_std=0.3, backend="reference", rng=2)
    close64(net.loss(x, t), ref.loss(x, t))
    g, gr = net.gradient(x, t), ref.gradient(x, t)
    assert set(g) == {"W1", "b1", "W2", "b2"}
    for key in g:
        close64(g[key], gr[key])
    close64(net.predict(x), ref.predict(x))
    acc = net.accuracy(x, t)
    assert acc == net.accuracy(x, np.eye(10)[t])  # labels or one-hot
    assert acc == np.mean(np.argmax(ref.predict(x), axis=1) == t)
    assert acc == net.accuracy(x, t[:, None])  # (N, 1) labels, as SoftmaxWithLoss reads them
    for wrong in (t[:1], t[:5]):  # the book's == broadcast one label, or failed in NumPy
        with pytest.raises(ValueError, match=f"x holds 20 rows but t holds {wrong.size} labels"):
            net.accuracy(x, wrong)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_nets_stay_float32(backend, digits):
    (x, t), _ = digits
    x32 = x[:10].astype(np.float32)
    for net in (TwoLayerNet(64, 8, 10, backend=backend, rng=0, dtype=np.float32),
                MultiLayerNet(64, [8, 8], 10, backend=backend, rng=0, dtype=np.float32,
                              weight_decay_lambda=0.01)):
        assert all(p.dtype == np.float32 for p in net.params.values())
        assert net.predict(x32).dtype == np.float32
        assert np.asarray(net.loss(x32, t[:10])).dtype == np.float32
        assert all(g.dtype == np.float32 for g in net.gradient(x32, t[:10]).values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_layer_net_structure(backend):
    net = MultiLayerNet(7, [5, 4, 3], 2, activation="sigmoid", backend=backend, rng=0)
    L = LAYERS[backend]
    assert list(net.layers) == ["Affine1", "Activation_function1", "Affine2",
                                "Activation_function2", "Affine3", "Activation_function3",
                                "Affine4"]
    assert isinstance(net.layers["Activation_function2"], L.Sigmoid)
    assert isinstance(net.last_layer, L.SoftmaxWithLoss)
    assert net.hidden_layer_num == 3 and net.hidden_size_list == [5, 4, 3]
    assert [net.params[f"W{i}"].shape for i in range(1, 5)] == [(7, 5), (5, 4), (4, 3), (3, 2)]
    for i in range(1, 5):
        assert net.layers[f"Affine{i}"].W is net.params[f"W{i}"]
    relu = MultiLayerNet(7, [5], 2, backend=backend)
    assert isinstance(relu.layers["Activation_function1"], L.Relu)


@pytest.mark.parametrize(("init", "scale"), [
    ("relu", lambda fan_in: np.sqrt(2.0 / fan_in)),
    ("He", lambda fan_in: np.sqrt(2.0 / fan_in)),
    ("sigmoid", lambda fan_in: np.sqrt(1.0 / fan_in)),
    ("xavier", lambda fan_in: np.sqrt(1.0 / fan_in)),
    (0.25, lambda fan_in: 0.25),
])
def test_multi_layer_net_weight_init(init, scale):
    net = MultiLayerNet(9, [6, 4], 3, weight_init_std=init, rng=np.random.default_rng(8))
    rng = np.random.default_rng(8)
    for i, (fan_in, fan_out) in enumerate([(9, 6), (6, 4), (4, 3)], start=1):
        expected = scale(fan_in) * rng.standard_normal((fan_in, fan_out))
        close64(net.params[f"W{i}"], expected)
        assert not net.params[f"b{i}"].any()


def test_multi_layer_net_refuses_unknown_settings():
    with pytest.raises(ValueError, match="weight_init_std"):
        MultiLayerNet(3, [2], 2, weight_init_std="lecun")
    with pytest.raises(ValueError, match="activation"):
        MultiLayerNet(3, [2], 2, activation="tanh")
    with pytest.raises(ValueError, match="backend"):
        TwoLayerNet(3, 2, 2, backend="torch")
    with pytest.raises(TypeError, match="float32 or float64"):
        TwoLayerNet(3, 2, 2, dtype=np.float16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_decay_in_loss_and_gradient(backend, digits):
    (x, t), _ = digits
    x, t = x[:8], t[:8]
    lam = 0.3
    decayed = MultiLayerNet(64, [10], 10, weight_decay_lambda=lam, backend=backend, rng=4)
    plain = MultiLayerNet(64, [10], 10, backend=backend, rng=4)
    penalty = sum(0.5 * lam * np.sum(decayed.params[f"W{i}"] ** 2) for i in (1, 2))
    close64(decayed.loss(x, t), plain.loss(x, t) + penalty)
    g, gp = decayed.gradient(x, t), plain.gradient(x, t)
    for i in (1, 2):
        close64(g[f"W{i}"], gp[f"W{i}"] + lam * decayed.params[f"W{i}"])
        close64(g[f"b{i}"], gp[f"b{i}"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_layer_net_learns(backend, digits):
    (x_train, t_train), (x_test, t_test) = digits
    net = MultiLayerNet(64, [32, 32], 10, weight_decay_lambda=1e-4, backend=backend, rng=0)
    opt = SGD(0.1, backend=backend)
    rng = np.random.default_rng(0)
    for _ in range(200):
        mask = rng.choice(x_train.shape[0], 100)
        opt.update(net.params, net.gradient(x_train[mask], t_train[mask]))
    assert net.accuracy(x_test, t_test) > 0.85


def _book_gradient(net, x, t):
    """The book's gradient(): every layer's backward, the first layer's dx included."""
    net.loss(x, t)
    dout = net.last_layer.backward(1)
    for layer in reversed(list(net.layers.values())):
        dout = layer.backward(dout)
    return {key: np.array(getattr(net.layers[f"Affine{key[1:]}"], "d" + key[0]), copy=True)
            for key in net.params}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gradient_skips_the_first_dx_and_gives_the_same_bits(dtype, digits, monkeypatch):
    (x, t), _ = digits
    x, t = x[:40].astype(dtype), t[:40]
    for net in (TwoLayerNet(64, 20, 10, rng=1, dtype=dtype),
                MultiLayerNet(64, [20, 15], 10, rng=1, dtype=dtype, weight_decay_lambda=0)):
        expected = _book_gradient(net, x, t)

        def no_dx(dout):
            raise AssertionError("the net asked the first layer for a dx nobody reads")
        monkeypatch.setattr(net.layers["Affine1"], "backward", no_dx)
        grads = net.gradient(x, t)
        assert set(grads) == set(expected)
        for key in grads:
            assert grads[key].dtype == dtype
            assert grads[key].tobytes() == expected[key].tobytes(), key


def test_reference_nets_still_run_every_backward(digits):
    (x, t), _ = digits
    net = TwoLayerNet(64, 8, 10, backend="reference", rng=0)
    calls = []
    first = net.layers["Affine1"]
    original = first.backward
    first.backward = lambda dout: calls.append(1) or original(dout)
    net.gradient(x[:5], t[:5])
    assert calls == [1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_grads_of_one_call_survive_the_next(backend, digits):
    """Each gradient() returns new arrays: grads a user keeps are never overwritten."""
    (x, t), _ = digits
    net = TwoLayerNet(64, 8, 10, backend=backend, rng=0)
    first = net.gradient(x[:10], t[:10])
    kept = {k: g.copy() for k, g in first.items()}
    second = net.gradient(x[10:20], t[10:20])
    for key in first:
        np.testing.assert_array_equal(first[key], kept[key])
        assert not np.shares_memory(first[key], second[key])
        assert not np.shares_memory(first[key], net.params[key])
    assert not np.array_equal(first["W1"], second["W1"])
