"""MultiLayerNetExtend: the book's structure, both backends alike, gradients against numerical
gradients (with batch norm and dropout), and a short training run."""

import warnings
from collections import OrderedDict

import numpy as np
import pytest

from fastbp import layers as kernel_layers
from fastbp.nets import MultiLayerNet, MultiLayerNetExtend
from fastbp.optim import SGD
from fastbp.reference import layers as reference_layers

BACKENDS = ["kernel", "reference"]
LAYERS = {"kernel": kernel_layers, "reference": reference_layers}


def close64(a, b):
    """NUMERICS.md: reference vs kernel in float64, rtol 1e-12, atol 1e-12 x largest value."""
    scale = max(1.0, float(np.max(np.abs(b))) if np.size(b) else 1.0)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * scale)


def batch(n=6, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, classes, n)


def reseeding(net, seed):
    """Make every loss evaluation draw the same dropout masks (np.random.seed before each)."""
    loss = net.loss

    def seeded_loss(x, t, train_flg=False):
        np.random.seed(seed)  # noqa: NPY002
        return loss(x, t, train_flg)

    net.loss = seeded_loss
    return net


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("use_dropout, use_batchnorm", [(False, False), (True, False),
                                                         (False, True), (True, True)])
def test_the_books_structure(backend, use_dropout, use_batchnorm):
    net = MultiLayerNetExtend(5, [4, 3], 2, use_dropout=use_dropout,
                              use_batchnorm=use_batchnorm, backend=backend, rng=0)
    L = LAYERS[backend]
    want = []
    for i in (1, 2):
        want += [f"Affine{i}"] + [f"BatchNorm{i}"] * use_batchnorm + [f"Activation_function{i}"]
        want += [f"Dropout{i}"] * use_dropout
    assert isinstance(net.layers, OrderedDict) and list(net.layers) == [*want, "Affine3"]
    params = ["W1", "b1", "W2", "b2", "W3", "b3"]
    if use_batchnorm:
        params += ["gamma1", "beta1", "gamma2", "beta2"]
    assert list(net.params) == params  # the book's order: weights first, then batch norm
    for i in (1, 2):
        if use_batchnorm:
            bn = net.layers[f"BatchNorm{i}"]
            assert isinstance(bn, L.BatchNormalization)
            assert bn.gamma is net.params[f"gamma{i}"] and bn.beta is net.params[f"beta{i}"]
            np.testing.assert_array_equal(bn.gamma, 1)
            np.testing.assert_array_equal(bn.beta, 0)
        if use_dropout:
            assert isinstance(net.layers[f"Dropout{i}"], L.Dropout)
            assert net.layers[f"Dropout{i}"].dropout_ratio == 0.5
        assert isinstance(net.layers[f"Activation_function{i}"], L.Relu)
    assert isinstance(net.last_layer, L.SoftmaxWithLoss)
    assert net.use_dropout == use_dropout and net.use_batchnorm == use_batchnorm
    assert net.hidden_layer_num == 2 and net.hidden_size_list == [4, 3]
    x, t = batch(classes=2)
    grads = net.gradient(x, t)
    want_keys = ["W1", "b1"] + ["gamma1", "beta1"] * use_batchnorm + ["W2", "b2"]
    want_keys += ["gamma2", "beta2"] * use_batchnorm + ["W3", "b3"]
    assert list(grads) == want_keys
    for key, g in grads.items():
        assert g.shape == net.params[key].shape, key


def test_dropout_ration_and_dropout_ratio():
    book = MultiLayerNetExtend(4, [3], 2, use_dropout=True, dropout_ration=0.2, rng=0)
    ours = MultiLayerNetExtend(4, [3], 2, use_dropout=True, dropout_ratio=0.2, rng=0)
    positional = MultiLayerNetExtend(4, [3], 2, "relu", "relu", 0, True, 0.2, False, rng=0)
    for net in (book, ours, positional):
        assert net.layers["Dropout1"].dropout_ratio == 0.2
    same = MultiLayerNetExtend(4, [3], 2, use_dropout=True, dropout_ration=0.2,
                               dropout_ratio=0.2, rng=0)
    assert same.layers["Dropout1"].dropout_ratio == 0.2
    with pytest.raises(TypeError, match="not both"):
        MultiLayerNetExtend(4, [3], 2, use_dropout=True, dropout_ration=0.2, dropout_ratio=0.3)
    with pytest.raises(ValueError, match=r"dropout_ratio must be in \[0, 1\)"):
        MultiLayerNetExtend(4, [3], 2, use_dropout=True, dropout_ration=1.0)
    with pytest.raises(ValueError, match="activation"):
        MultiLayerNetExtend(4, [3], 2, activation="tanh")


def test_sigmoid_weight_decay_and_dtype():
    net = MultiLayerNetExtend(5, [4], 3, activation="sigmoid", weight_init_std="xavier",
                              weight_decay_lambda=0.1, use_batchnorm=True, use_dropout=True,
                              rng=1, dtype=np.float32)
    assert isinstance(net.layers["Activation_function1"], kernel_layers.Sigmoid)
    x, t = batch()
    x = x.astype(np.float32)
    loss = net.loss(x, t)
    plain = net.last_layer.forward(net.predict(x), t)
    penalty = 0.5 * 0.1 * sum(float(np.sum(net.params[k].astype(np.float64) ** 2))
                              for k in ("W1", "W2"))
    assert loss == pytest.approx(float(plain) + penalty, rel=1e-5)
    grads = net.gradient(x, t)
    for key, g in grads.items():
        assert g.dtype == np.float32, key
        assert net.params[key].dtype == np.float32, key
    assert net.layers["BatchNorm1"].running_mean.dtype == np.float32
    assert isinstance(net, MultiLayerNet)


@pytest.mark.parametrize("use_dropout", [False, True])
def test_both_backends_agree_step_by_step(use_dropout):
    """Same weights, same masks (NumPy's global state, seeded before each call), same batches:
    losses, gradients, parameters and running statistics agree in float64."""
    nets = []
    for backend in BACKENDS:
        np.random.seed(3)  # noqa: NPY002 (weights from the global state, as the book)
        nets.append(MultiLayerNetExtend(8, [7, 6, 5], 4, use_dropout=use_dropout,
                                        dropout_ration=0.3, use_batchnorm=True,
                                        weight_decay_lambda=0.01, backend=backend))
    for key in nets[0].params:
        np.testing.assert_array_equal(nets[0].params[key], nets[1].params[key])
    opts = [SGD(0.1, backend=b) for b in BACKENDS]
    rng = np.random.default_rng(4)
    for step in range(20):
        x, t = rng.standard_normal((9, 8)), rng.integers(0, 4, 9)
        results = []
        for net, opt in zip(nets, opts, strict=True):
            np.random.seed(100 + step)  # noqa: NPY002
            grads = net.gradient(x, t)
            results.append((net.last_layer.loss, grads))
            opt.update(net.params, grads)
        close64(results[0][0], results[1][0])
        for key in results[0][1]:
            close64(results[0][1][key], results[1][1][key])
    for key in nets[0].params:
        close64(nets[0].params[key], nets[1].params[key])
    for i in (1, 2, 3):
        for stat in ("running_mean", "running_var"):
            close64(getattr(nets[0].layers[f"BatchNorm{i}"], stat),
                    getattr(nets[1].layers[f"BatchNorm{i}"], stat))
    x = rng.standard_normal((11, 8))
    close64(nets[0].predict(x), nets[1].predict(x))


def test_an_rng_drives_weights_and_masks():
    x, t = batch(d=4, classes=2)
    a, b = (MultiLayerNetExtend(4, [5], 2, use_dropout=True, rng=9, backend=backend)
            for backend in BACKENDS)
    np.random.seed(0)  # noqa: NPY002
    before = np.random.get_state()[1].copy()  # noqa: NPY002
    for _ in range(3):
        close64(a.gradient(x, t)["W1"], b.gradient(x, t)["W1"])
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # noqa: NPY002 (untouched)


def _relative_errors(analytic, numeric):
    """Per key, the largest difference over the largest gradient of the whole net (a bias below
    batch norm has gradient 0: its own scale is rounding noise)."""
    scale = max(float(np.max(np.abs(g))) for g in analytic.values())
    return {key: float(np.max(np.abs(analytic[key] - numeric[key]))) / scale for key in analytic}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("use_dropout", [False, True])
def test_gradient_matches_numerical_gradient(backend, use_dropout):
    np.random.seed(5)  # noqa: NPY002 (weights and masks from the global state, as the book)
    net = MultiLayerNetExtend(5, [4, 4], 3, use_batchnorm=True, use_dropout=use_dropout,
                              dropout_ration=0.2, weight_decay_lambda=0.05, backend=backend)
    rng = np.random.default_rng(6)
    for key in net.params:
        if key.startswith(("gamma", "beta")):  # away from the initial 1 and 0
            net.params[key] += 0.3 * rng.standard_normal(net.params[key].shape)
    reseeding(net, 11)
    x, t = batch(n=7, seed=7)
    numeric = net.numerical_gradient(x, t)
    analytic = net.gradient(x, t)
    assert list(numeric) == list(analytic)
    errors = _relative_errors(analytic, numeric)
    assert max(errors.values()) < 1e-6, errors
    assert np.max(np.abs(analytic["b1"])) < 1e-14  # a bias before batch norm: no effect
    if use_dropout:  # the masks did drop something, the same in every evaluation
        assert not net.layers["Dropout1"].mask.all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_books_batch_of_one_gradient_check(backend):
    """ch06/batch_norm_gradient_check.py checks on x_train[:1]: batch norm then gives beta,
    the weights below it get no gradient, and nothing warns."""
    net = MultiLayerNetExtend(6, [5, 5], 3, use_batchnorm=True, backend=backend, rng=8)
    for key in ("beta1", "beta2"):  # batch norm gives beta: keep it off ReLU's kink at 0
        net.params[key] += np.random.default_rng(13).uniform(0.1, 1, 5)
    x, t = batch(n=1, d=6, seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        numeric = net.numerical_gradient(x, t)
        analytic = net.gradient(x, t)
    for key in analytic:
        assert np.max(np.abs(analytic[key] - numeric[key])) < 1e-8, key
    np.testing.assert_array_equal(analytic["W1"], 0)
    np.testing.assert_array_equal(analytic["gamma1"], 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_predict_modes(backend):
    net = MultiLayerNetExtend(5, [6], 3, use_batchnorm=True, use_dropout=True, backend=backend,
                              rng=10)
    x, t = batch(n=20)
    assert net.predict(x).tobytes() == net.predict(x).tobytes()  # test mode: deterministic
    assert net.predict(x, train_flg=True).tobytes() != net.predict(x, train_flg=True).tobytes()
    acc = net.accuracy(x, t)
    assert 0 <= acc <= 1
    assert net.accuracy(x, np.eye(3)[t]) == acc
    running = net.layers["BatchNorm1"].running_mean.copy()
    net.accuracy(x, t)  # test mode: running statistics untouched
    np.testing.assert_array_equal(net.layers["BatchNorm1"].running_mean, running)
    net.gradient(x, t)  # train mode: updated
    assert not np.array_equal(net.layers["BatchNorm1"].running_mean, running)


@pytest.mark.parametrize("backend", BACKENDS)
def test_it_learns_the_digits(backend):
    pytest.importorskip("sklearn")
    from fastbp.datasets import load_digits

    (x_train, t_train), (x_test, t_test) = load_digits()
    net = MultiLayerNetExtend(64, [40, 40], 10, use_batchnorm=True, use_dropout=True,
                              dropout_ration=0.1, backend=backend, rng=11)
    opt = SGD(0.1, backend=backend)
    rng = np.random.default_rng(12)
    for _ in range(300):
        mask = rng.choice(x_train.shape[0], 100)
        opt.update(net.params, net.gradient(x_train[mask], t_train[mask]))
    assert net.accuracy(x_test, t_test) > 0.85  # chance is 0.1


def test_accuracy_and_numerical_gradient_take_the_books_argument_names():
    """The book's MultiLayerNetExtend names them X and T (MultiLayerNet: x and t)."""
    import inspect

    for name in ("accuracy", "numerical_gradient"):
        assert list(inspect.signature(getattr(MultiLayerNetExtend, name)).parameters) == [
            "self", "X", "T"]
        assert list(inspect.signature(getattr(MultiLayerNet, name)).parameters) == [
            "self", "x", "t"]
    net = MultiLayerNetExtend(4, [5], 3, rng=0)
    x, t = np.random.default_rng(1).standard_normal((6, 4)), np.arange(6) % 3
    assert net.accuracy(X=x, T=t) == net.accuracy(x, t)
    assert isinstance(net.accuracy(x, t), np.float64)
