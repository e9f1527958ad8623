"""The book's ``Trainer`` (``common/trainer.py``): mini-batch training with progress lines.

A drop-in: ``from fastbp.trainer import Trainer`` replaces ``from common.trainer import Trainer``.
Same constructor, attributes, sampling, evaluation points and printed lines as the book; the
optimizer comes from :mod:`fastbp.optim` and uses the network's backend where it has one.
"""

import math
import numbers

import numpy as np

from fastbp.optim import OPTIMIZERS
from fastbp.validation import is_integer

__all__ = ["OPTIMIZER_NAMES", "Trainer"]

OPTIMIZER_NAMES = {**OPTIMIZERS, "rmsprpo": OPTIMIZERS["rmsprop"]}
"""The names ``optimizer`` may take (any case). One release of the book's ``common/trainer.py``
spells RMSprop's key ``'rmsprpo'``; both spellings are accepted."""

DEFAULT_OPTIMIZER_PARAM = {"lr": 0.01}
"""What ``optimizer_param=None`` stands for: the book's default (also for Adam, whose own
default ``lr`` is 0.001). Copied for every trainer, never handed out."""


def _rows(name, a):
    if not isinstance(a, np.ndarray):
        a = np.asarray(a)
    if a.ndim == 0:
        raise ValueError(f"{name} must have one row per sample; got a scalar")
    return a


def _same_length(x_name, x, t_name, t):
    if x.shape[0] != t.shape[0]:
        raise ValueError(f"{x_name} and {t_name} must have the same length; "
                         f"got {x.shape[0]} and {t.shape[0]}")


def _positive_int(name, value):
    if not is_integer(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def _optimizer_class(optimizer):
    if not isinstance(optimizer, str):
        raise TypeError(f"optimizer must be a name, one of {sorted(OPTIMIZERS)}; "
                        f"got {optimizer!r}")
    try:
        return OPTIMIZER_NAMES[optimizer.lower()]
    except KeyError:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid names (any case): "
                         f"{', '.join(OPTIMIZERS)} (the book's 'rmsprpo' is RMSprop too)"
                         ) from None


class Trainer:
    """Train ``network`` with mini-batches drawn at random, as the book's ``Trainer`` does.

    Each step draws ``mini_batch_size`` row indices with ``np.random.choice(train_size,
    mini_batch_size)``: from NumPy's global state (``np.random.seed`` makes a run repeatable)
    and *with replacement*, so a batch may repeat rows and ``mini_batch_size`` may exceed the
    number of training rows. After the update the step records the batch's loss. Whenever
    ``current_iter % iter_per_epoch == 0`` (step 0 included, before any epoch has passed) it
    counts an epoch and records the train and test accuracy.

    Parameters
    ----------
    network : object
        Anything with ``params``, ``gradient(x, t)``, ``loss(x, t)`` and ``accuracy(x, t)``,
        such as :class:`fastbp.nets.MultiLayerNet`.
    x_train, t_train, x_test, t_test : ndarray
        Inputs and labels (or one-hot targets); each ``x`` must have as many rows as its ``t``.
    epochs : int or float
        ``max_iter = int(epochs * iter_per_epoch)`` steps are run.
    mini_batch_size : int
        Rows per step (``batch_size`` afterwards).
    optimizer : str
        ``'SGD'``, ``'Momentum'``, ``'Nesterov'``, ``'AdaGrad'``, ``'RMSprop'`` or ``'Adam'``,
        in any case.
    optimizer_param : dict, optional
        Keyword arguments of the optimizer. Default ``{'lr': 0.01}``, as in the book.
    evaluate_sample_num_per_epoch : int, optional
        Measure the per-epoch accuracies on the first this many rows only (the final test
        accuracy always uses all of ``x_test``). Default: all rows.
    verbose : bool
        Print the book's lines: ``train loss:...`` every step, ``=== epoch:...`` at every
        epoch and the final test accuracy.
    backend : {"kernel", "reference"}, optional
        The optimizer's backend (:mod:`fastbp.optim`). Default: ``network.backend`` where the
        network has one (fastbp's networks do), else ``"kernel"``.

    Attributes
    ----------
    optimizer : object
        The :mod:`fastbp.optim` optimizer.
    train_size : int
    iter_per_epoch : float
        ``max(train_size / mini_batch_size, 1)``, a float as in the book.
    max_iter, current_iter, current_epoch : int
    train_loss_list, train_acc_list, test_acc_list : list
        The loss of every step; the accuracies of every epoch.
    """

    def __init__(self, network, x_train, t_train, x_test, t_test, epochs=20, mini_batch_size=100,
                 optimizer="SGD", optimizer_param=None, evaluate_sample_num_per_epoch=None,
                 verbose=True, *, backend=None):
        x_train, t_train = _rows("x_train", x_train), _rows("t_train", t_train)
        x_test, t_test = _rows("x_test", x_test), _rows("t_test", t_test)
        _same_length("x_train", x_train, "t_train", t_train)
        _same_length("x_test", x_test, "t_test", t_test)
        if x_train.shape[0] == 0:
            raise ValueError("x_train is empty: there is nothing to draw mini-batches from")
        mini_batch_size = _positive_int("mini_batch_size", mini_batch_size)
        if evaluate_sample_num_per_epoch is not None:
            evaluate_sample_num_per_epoch = _positive_int("evaluate_sample_num_per_epoch",
                                                          evaluate_sample_num_per_epoch)
        if not isinstance(epochs, numbers.Real) or not 0 <= epochs < math.inf:  # NaN fails too
            raise ValueError(f"epochs must be a finite non-negative number; got {epochs!r}")

        self.network = network
        self.verbose = verbose
        self.x_train = x_train
        self.t_train = t_train
        self.x_test = x_test
        self.t_test = t_test
        self.epochs = epochs
        self.batch_size = mini_batch_size
        self.evaluate_sample_num_per_epoch = evaluate_sample_num_per_epoch

        optimizer_class = _optimizer_class(optimizer)
        if backend is None:
            backend = getattr(network, "backend", "kernel")
            if backend not in ("kernel", "reference"):  # a user's net may mean something else
                backend = "kernel"
        param = dict(DEFAULT_OPTIMIZER_PARAM if optimizer_param is None else optimizer_param)
        param.setdefault("backend", backend)
        self.optimizer = optimizer_class(**param)

        self.train_size = x_train.shape[0]
        self.iter_per_epoch = max(self.train_size / mini_batch_size, 1)
        self.max_iter = int(epochs * self.iter_per_epoch)
        self.current_iter = 0
        self.current_epoch = 0

        self.train_loss_list = []
        self.train_acc_list = []
        self.test_acc_list = []

    def train_step(self):
        """One update on a random mini-batch; at an epoch boundary, measure the accuracies."""
        batch_mask = np.random.choice(self.train_size, self.batch_size)  # noqa: NPY002
        x_batch = self.x_train[batch_mask]
        t_batch = self.t_train[batch_mask]

        grads = self.network.gradient(x_batch, t_batch)
        self.optimizer.update(self.network.params, grads)

        loss = self.network.loss(x_batch, t_batch)
        self.train_loss_list.append(loss)
        if self.verbose:
            print("train loss:" + str(loss))

        if self.current_iter % self.iter_per_epoch == 0:
            self.current_epoch += 1
            x_train_sample, t_train_sample = self.x_train, self.t_train
            x_test_sample, t_test_sample = self.x_test, self.t_test
            n = self.evaluate_sample_num_per_epoch
            if n is not None:
                x_train_sample, t_train_sample = self.x_train[:n], self.t_train[:n]
                x_test_sample, t_test_sample = self.x_test[:n], self.t_test[:n]

            train_acc = self.network.accuracy(x_train_sample, t_train_sample)
            test_acc = self.network.accuracy(x_test_sample, t_test_sample)
            self.train_acc_list.append(train_acc)
            self.test_acc_list.append(test_acc)
            if self.verbose:
                print("=== epoch:" + str(self.current_epoch) + ", train acc:" + str(train_acc)
                      + ", test acc:" + str(test_acc) + " ===")
        self.current_iter += 1

    def train(self):
        """Run ``max_iter`` steps, then measure the accuracy on all of ``x_test``."""
        for _ in range(self.max_iter):
            self.train_step()

        test_acc = self.network.accuracy(self.x_test, self.t_test)
        if self.verbose:
            print("=============== Final Test Accuracy ===============")
            print("test acc:" + str(test_acc))
