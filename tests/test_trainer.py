"""``fastbp.trainer.Trainer``: the book's ``common/trainer.py``, line for line.

The trainer draws its batches from NumPy's global state, as the book does: the tests seed it
with ``np.random.seed``.
"""

import re

import numpy as np
import pytest

from fastbp import optim
from fastbp.nets import MultiLayerNet
from fastbp.trainer import DEFAULT_OPTIMIZER_PARAM, Trainer

NUMBER = r"-?\d+(\.\d+)?(e-?\d+)?"


def data(n, seed=0, d=4):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    t = (x[:, 0] + x[:, 1] > 0).astype(np.intp)
    return x, t


def net(backend="kernel"):
    # rng=0: the weights do not come from NumPy's global state, which the batches use.
    return MultiLayerNet(4, [6], 2, backend=backend, rng=0)


class Spy:
    """A network that records what the trainer asks of it."""

    def __init__(self, network):
        self.network = network
        self.params = network.params
        self.calls = []

    def gradient(self, x, t):
        self.calls.append(("gradient", x.copy(), t.copy()))
        return self.network.gradient(x, t)

    def loss(self, x, t):
        self.calls.append(("loss", x.copy(), t.copy()))
        return self.network.loss(x, t)

    def accuracy(self, x, t):
        self.calls.append(("accuracy", x.copy(), t.copy()))
        return self.network.accuracy(x, t)


def test_printed_lines_are_the_books(capsys):
    x, t = data(40)
    xt, tt = data(10, seed=1)
    np.random.seed(0)  # noqa: NPY002
    trainer = Trainer(net(), x, t, xt, tt, epochs=3, mini_batch_size=20)
    trainer.train()
    lines = capsys.readouterr().out.splitlines()

    # The book's train(): 6 steps (40 rows / 20 per batch * 3 epochs); an epoch line after
    # steps 0, 2 and 4; then the final block.
    shape = ["loss", "epoch", "loss", "loss", "epoch", "loss", "loss", "epoch", "loss"]
    assert len(lines) == len(shape) + 2
    losses = iter(trainer.train_loss_list)
    accs = iter(zip(trainer.train_acc_list, trainer.test_acc_list, strict=True))
    epoch = 0
    for line, kind in zip(lines, shape, strict=False):
        if kind == "loss":
            assert re.fullmatch(f"train loss:{NUMBER}", line), line
            assert line == "train loss:" + str(next(losses))
        else:
            epoch += 1
            assert re.fullmatch(f"=== epoch:{epoch}, train acc:{NUMBER}, test acc:{NUMBER} ===",
                                line), line
            train_acc, test_acc = next(accs)
            assert line == (f"=== epoch:{epoch}, train acc:{train_acc}, "
                            f"test acc:{test_acc} ===")
    assert lines[-2] == "=============== Final Test Accuracy ==============="
    assert re.fullmatch(f"test acc:{NUMBER}", lines[-1])
    assert lines[-1] == "test acc:" + str(trainer.network.accuracy(xt, tt))


def test_quiet_prints_nothing(capsys):
    x, t = data(20)
    Trainer(net(), x, t, x, t, epochs=2, mini_batch_size=10, verbose=False).train()
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(("train_size", "batch", "epochs", "iter_per_epoch", "max_iter",
                          "evaluations"), [
    (40, 20, 3, 2.0, 6, 3),     # epoch lines after steps 0, 2, 4
    (30, 20, 2, 1.5, 3, 1),     # the book's float modulo: 1 % 1.5 and 2 % 1.5 are not 0
    (10, 100, 3, 1, 3, 3),      # a batch larger than the data: one step per epoch
    (50, 10, 0.5, 5.0, 2, 1),   # a fractional epoch count
])
def test_iteration_counts(train_size, batch, epochs, iter_per_epoch, max_iter, evaluations):
    x, t = data(train_size)
    trainer = Trainer(net(), x, t, x, t, epochs=epochs, mini_batch_size=batch, verbose=False)
    assert trainer.train_size == train_size
    assert trainer.iter_per_epoch == iter_per_epoch
    assert trainer.max_iter == max_iter
    trainer.train()
    assert trainer.current_iter == max_iter
    assert len(trainer.train_loss_list) == max_iter
    assert trainer.current_epoch == evaluations
    assert len(trainer.train_acc_list) == len(trainer.test_acc_list) == evaluations


def test_batches_are_the_books_draws_from_the_global_state():
    x, t = data(10)
    spy = Spy(net())
    np.random.seed(7)  # noqa: NPY002
    trainer = Trainer(spy, x, t, x, t, epochs=2, mini_batch_size=25, verbose=False)
    trainer.train()
    np.random.seed(7)  # noqa: NPY002
    masks = [np.random.choice(10, 25) for _ in range(trainer.max_iter)]  # noqa: NPY002
    steps = [c for c in spy.calls if c[0] == "gradient"]
    losses = [c for c in spy.calls if c[0] == "loss"]
    assert len(steps) == len(losses) == len(masks) == 2
    for (_, xb, tb), (_, xl, tl), mask in zip(steps, losses, masks, strict=True):
        assert xb.shape == (25, 4)  # with replacement: more rows than the data has
        np.testing.assert_array_equal(xb, x[mask])
        np.testing.assert_array_equal(tb, t[mask])
        np.testing.assert_array_equal(xl, xb)  # the loss is of the same batch, after the update
        np.testing.assert_array_equal(tl, tb)


def test_same_seed_same_run():
    x, t = data(60)

    def losses(seed):
        np.random.seed(seed)  # noqa: NPY002
        trainer = Trainer(net(), x, t, x, t, epochs=2, mini_batch_size=16, verbose=False)
        trainer.train()
        return trainer.train_loss_list

    first = losses(3)
    assert losses(3) == first
    assert losses(4) != first


def test_evaluate_sample_num_per_epoch():
    x, t = data(30)
    xt, tt = data(20, seed=1)
    spy = Spy(net())
    trainer = Trainer(spy, x, t, xt, tt, epochs=2, mini_batch_size=10,
                      evaluate_sample_num_per_epoch=5, verbose=False)
    trainer.train()
    evaluated = [c for c in spy.calls if c[0] == "accuracy"]
    # Per epoch: the first 5 train rows, then the first 5 test rows; at the end all of x_test.
    assert len(evaluated) == 2 * trainer.current_epoch + 1
    for (_, xa, ta), (xs, ts) in zip(evaluated[:-1], [(x[:5], t[:5]), (xt[:5], tt[:5])]
                                     * trainer.current_epoch, strict=True):
        np.testing.assert_array_equal(xa, xs)
        np.testing.assert_array_equal(ta, ts)
    np.testing.assert_array_equal(evaluated[-1][1], xt)


def test_all_rows_are_evaluated_by_default():
    x, t = data(30)
    xt, tt = data(20, seed=1)
    spy = Spy(net())
    Trainer(spy, x, t, xt, tt, epochs=1, mini_batch_size=10, verbose=False).train()
    shapes = [c[1].shape[0] for c in spy.calls if c[0] == "accuracy"]
    assert shapes == [30, 20, 20]


@pytest.mark.parametrize(("name", "cls"), [
    ("SGD", optim.SGD), ("sgd", optim.SGD), ("Momentum", optim.Momentum),
    ("nesterov", optim.Nesterov), ("AdaGrad", optim.AdaGrad), ("RMSprop", optim.RMSprop),
    ("rmsprpo", optim.RMSprop), ("Adam", optim.Adam), ("ADAM", optim.Adam),
])
def test_optimizer_by_name(name, cls):
    x, t = data(10)
    trainer = Trainer(net(), x, t, x, t, optimizer=name, verbose=False)
    assert type(trainer.optimizer) is cls
    assert trainer.optimizer.lr == 0.01  # the book's default optimizer_param, Adam included


def test_optimizer_param_is_passed_and_left_alone():
    x, t = data(10)
    param = {"lr": 0.5, "momentum": 0.7}
    trainer = Trainer(net(), x, t, x, t, optimizer="momentum", optimizer_param=param)
    assert (trainer.optimizer.lr, trainer.optimizer.momentum) == (0.5, 0.7)
    assert param == {"lr": 0.5, "momentum": 0.7}
    assert DEFAULT_OPTIMIZER_PARAM == {"lr": 0.01}


@pytest.mark.parametrize("backend", ["kernel", "reference"])
def test_optimizer_follows_the_network_backend(backend):
    x, t = data(10)
    trainer = Trainer(net(backend), x, t, x, t, verbose=False)
    assert trainer.optimizer.backend == backend
    override = "reference" if backend == "kernel" else "kernel"
    assert Trainer(net(backend), x, t, x, t, backend=override).optimizer.backend == override


def test_both_backends_train_alike():
    x, t = data(64)
    xt, tt = data(32, seed=1)
    runs = {}
    for backend in ("kernel", "reference"):
        np.random.seed(0)  # noqa: NPY002
        trainer = Trainer(net(backend), x, t, xt, tt, epochs=10, mini_batch_size=16,
                          optimizer="adam", optimizer_param={"lr": 0.05}, verbose=False)
        trainer.train()
        runs[backend] = trainer
    k, r = runs["kernel"], runs["reference"]
    np.testing.assert_allclose(k.train_loss_list, r.train_loss_list, rtol=1e-9)
    assert k.train_acc_list == r.train_acc_list and k.test_acc_list == r.test_acc_list
    assert np.mean(k.train_loss_list[-8:]) < 0.5 * np.mean(k.train_loss_list[:8])  # it learns
    assert k.train_acc_list[-1] > 0.9


def test_float32_network_stays_float32():
    x, t = data(20)
    network = MultiLayerNet(4, [6], 2, rng=0, dtype=np.float32)
    Trainer(network, x.astype(np.float32), t, x.astype(np.float32), t, epochs=1,
            mini_batch_size=10, verbose=False).train()
    assert all(p.dtype == np.float32 for p in network.params.values())


@pytest.mark.parametrize(("args", "message"), [
    ((np.zeros((10, 4)), np.zeros(9, int), np.zeros((3, 4)), np.zeros(3, int)),
     r"x_train and t_train .* 10 and 9"),
    ((np.zeros((10, 4)), np.zeros(10, int), np.zeros((3, 4)), np.zeros(4, int)),
     r"x_test and t_test .* 3 and 4"),
    ((np.zeros((0, 4)), np.zeros(0, int), np.zeros((3, 4)), np.zeros(3, int)), "empty"),
])
def test_mismatched_data(args, message):
    with pytest.raises(ValueError, match=message):
        Trainer(net(), *args)


def test_unknown_optimizer_lists_the_names():
    x, t = data(10)
    with pytest.raises(ValueError, match="adamw") as info:
        Trainer(net(), x, t, x, t, optimizer="adamw")
    for name in ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"):
        assert name in str(info.value)
    with pytest.raises(TypeError, match="optimizer must be a name"):
        Trainer(net(), x, t, x, t, optimizer=optim.SGD)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mini_batch_size": 0}, "mini_batch_size"),
    ({"mini_batch_size": 2.5}, "mini_batch_size"),
    ({"evaluate_sample_num_per_epoch": 0}, "evaluate_sample_num_per_epoch"),
    ({"epochs": -1}, "epochs"),
    ({"epochs": float("nan")}, "epochs must be a finite"),
    ({"epochs": float("inf")}, "epochs must be a finite"),
])
def test_bad_settings(kwargs, message):
    x, t = data(10)
    with pytest.raises(ValueError, match=message):
        Trainer(net(), x, t, x, t, **kwargs)
