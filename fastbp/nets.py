"""The book's networks: ``ch05/two_layer_net.py``, ``common/multi_layer_net.py`` and
``common/multi_layer_net_extend.py``.

Same constructors, attributes and methods as the book, built from :mod:`fastbp.layers`
(``backend="kernel"``) or :mod:`fastbp.reference.layers` (``backend="reference"``); the code is
the same for both, only the layer module differs. The layers hold *references* to the arrays in
``params``, so an optimizer that updates ``params`` in place moves the network.

Beyond the book's arguments, both take ``rng`` (a ``numpy.random.Generator`` or a seed; the
default draws from NumPy's global state, like the book) and ``dtype`` (float64, or float32 for
faster training).
"""

import numbers
from collections import OrderedDict

import numpy as np

from fastbp.backends import BACKENDS, layer_module
from fastbp.gradient import numerical_gradient

__all__ = ["BACKENDS", "MultiLayerNet", "MultiLayerNetExtend", "TwoLayerNet", "layer_module"]


def _standard_normal(rng, shape):
    if rng is None:  # the book's draw, so book code seeded with np.random.seed still works
        return np.random.randn(*shape)  # noqa: NPY002
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    return rng.standard_normal(shape)


def _generator(rng):
    if rng is None or isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _float_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64; got {dtype}")
    return dtype


def _accuracy(y, t):
    y = np.argmax(y, axis=1)
    t = np.asarray(t)
    if t.ndim != 1:
        t = np.argmax(t, axis=1)
    return np.sum(y == t) / float(y.shape[0])


class _Net:
    """What both networks share: forward, loss, accuracy and backprop over ``self.layers``."""

    def predict(self, x):
        """The logits (the output of the last Affine layer, before the softmax)."""
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def accuracy(self, x, t):
        """The fraction of rows whose arg-max logit is the label (``t``: labels or one-hot)."""
        return _accuracy(self.predict(x), t)

    def _backprop(self, x, t, **loss_options):
        self.loss(x, t, **loss_options)
        dout = self.last_layer.backward(1)
        layers = list(self.layers.values())
        for layer in reversed(layers[1:]):
            dout = layer.backward(dout)
        _backward_first(layers[0], dout)


def _backward_first(layer, dout):
    """The first layer's backward pass. Nobody reads its ``dx``, so a layer that can skip it
    (a kernel ``Affine``: ``_backward_params``, which sets only ``dW`` and ``db``) does."""
    skip_dx = getattr(layer, "_backward_params", None)
    if skip_dx is None:
        layer.backward(dout)
    else:
        skip_dx(dout)


class TwoLayerNet(_Net):
    """Affine, ReLU, Affine, softmax-with-loss: the book's ``ch05/two_layer_net.py``.

    Parameters
    ----------
    input_size, hidden_size, output_size : int
        The layer widths.
    weight_init_std : float
        The standard deviation of the initial weights; biases start at 0.
    backend : {"kernel", "reference"}
        Which layer module to build from.
    rng : numpy.random.Generator or int, optional
        The source of the initial weights. Default: ``np.random.randn``, as in the book.
    dtype : float32 or float64
        The parameters' dtype.

    Attributes
    ----------
    params : dict
        ``W1``, ``b1``, ``W2``, ``b2``, shared with the layers.
    layers : OrderedDict
        ``Affine1``, ``Relu1``, ``Affine2``.
    lastLayer : SoftmaxWithLoss
        Also available as ``last_layer``, the name ``MultiLayerNet`` uses.
    """

    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01, *,
                 backend="kernel", rng=None, dtype=np.float64):
        L = layer_module(backend)
        dtype = _float_dtype(dtype)
        rng = _generator(rng)
        self.backend = backend
        self.params = {}
        self.params["W1"] = (weight_init_std
                             * _standard_normal(rng, (input_size, hidden_size))).astype(dtype)
        self.params["b1"] = np.zeros(hidden_size, dtype=dtype)
        self.params["W2"] = (weight_init_std
                             * _standard_normal(rng, (hidden_size, output_size))).astype(dtype)
        self.params["b2"] = np.zeros(output_size, dtype=dtype)

        self.layers = OrderedDict()
        self.layers["Affine1"] = L.Affine(self.params["W1"], self.params["b1"])
        self.layers["Relu1"] = L.Relu()
        self.layers["Affine2"] = L.Affine(self.params["W2"], self.params["b2"])
        self.lastLayer = L.SoftmaxWithLoss()

    @property
    def last_layer(self):
        return self.lastLayer

    def loss(self, x, t):
        """The mean softmax-cross-entropy loss of the batch."""
        y = self.predict(x)
        return self.lastLayer.forward(y, t)

    def numerical_gradient(self, x, t):
        """Gradients by central differences (slow: two forward passes per parameter element)."""
        def loss_W(W):
            return self.loss(x, t)

        return {key: numerical_gradient(loss_W, self.params[key])
                for key in ("W1", "b1", "W2", "b2")}

    def gradient(self, x, t):
        """Gradients by backprop. The arrays are the layers' ``dW``/``db``, as in the book."""
        self._backprop(x, t)
        grads = {}
        grads["W1"], grads["b1"] = self.layers["Affine1"].dW, self.layers["Affine1"].db
        grads["W2"], grads["b2"] = self.layers["Affine2"].dW, self.layers["Affine2"].db
        return grads


_ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid"}


class MultiLayerNet(_Net):
    """A fully connected network of any depth: the book's ``common/multi_layer_net.py``.

    Parameters
    ----------
    input_size : int
    hidden_size_list : list of int
        The widths of the hidden layers, e.g. ``[100, 100, 100]``.
    output_size : int
    activation : {"relu", "sigmoid"}
    weight_init_std : {"relu", "he", "sigmoid", "xavier"} or float
        "relu"/"he": ``sqrt(2 / fan_in)``; "sigmoid"/"xavier": ``sqrt(1 / fan_in)``; a number:
        that standard deviation.
    weight_decay_lambda : float
        The L2 penalty ``0.5 * lambda * sum(W**2)`` over all weights, added to the loss.
    backend, rng, dtype
        As for :class:`TwoLayerNet`.
    """

    def __init__(self, input_size, hidden_size_list, output_size, activation="relu",
                 weight_init_std="relu", weight_decay_lambda=0, *, backend="kernel", rng=None,
                 dtype=np.float64):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be 'relu' or 'sigmoid'; got {activation!r}")
        L = layer_module(backend)
        self.backend = backend
        self.input_size = input_size
        self.output_size = output_size
        self.hidden_size_list = list(hidden_size_list)
        self.hidden_layer_num = len(self.hidden_size_list)
        self.weight_decay_lambda = weight_decay_lambda
        self.params = {}
        self._init_weight(weight_init_std, _generator(rng), _float_dtype(dtype))

        activation_layer = getattr(L, _ACTIVATIONS[activation])
        self.layers = OrderedDict()
        for idx in range(1, self.hidden_layer_num + 1):
            self.layers[f"Affine{idx}"] = L.Affine(self.params[f"W{idx}"],
                                                  self.params[f"b{idx}"])
            self.layers[f"Activation_function{idx}"] = activation_layer()
        idx = self.hidden_layer_num + 1
        self.layers[f"Affine{idx}"] = L.Affine(self.params[f"W{idx}"], self.params[f"b{idx}"])
        self.last_layer = L.SoftmaxWithLoss()

    def _init_weight(self, weight_init_std, rng, dtype):
        all_size_list = [self.input_size, *self.hidden_size_list, self.output_size]
        name = str(weight_init_std).lower()
        if not isinstance(weight_init_std, numbers.Real) and name not in (
                "relu", "he", "sigmoid", "xavier"):
            raise ValueError("weight_init_std must be 'relu', 'he', 'sigmoid', 'xavier' or a "
                             f"number; got {weight_init_std!r}")
        for idx in range(1, len(all_size_list)):
            scale = weight_init_std
            if name in ("relu", "he"):
                scale = np.sqrt(2.0 / all_size_list[idx - 1])
            elif name in ("sigmoid", "xavier"):
                scale = np.sqrt(1.0 / all_size_list[idx - 1])
            shape = (all_size_list[idx - 1], all_size_list[idx])
            self.params[f"W{idx}"] = (scale * _standard_normal(rng, shape)).astype(dtype)
            self.params[f"b{idx}"] = np.zeros(all_size_list[idx], dtype=dtype)

    def _weights(self):
        return [self.params[f"W{idx}"] for idx in range(1, self.hidden_layer_num + 2)]

    def loss(self, x, t):
        """The mean softmax-cross-entropy loss plus the weight-decay penalty."""
        y = self.predict(x)
        return self._with_weight_decay(self.last_layer.forward(y, t))

    def _with_weight_decay(self, loss):
        if self.weight_decay_lambda:  # the book adds 0 when lambda is 0; skip the work
            weight_decay = 0
            for W in self._weights():
                weight_decay += 0.5 * self.weight_decay_lambda * np.sum(W ** 2)
            loss = loss + weight_decay
        return loss

    def numerical_gradient(self, x, t):
        """Gradients by central differences (slow: two forward passes per parameter element)."""
        def loss_W(W):
            return self.loss(x, t)

        grads = {}
        for idx in range(1, self.hidden_layer_num + 2):
            grads[f"W{idx}"] = numerical_gradient(loss_W, self.params[f"W{idx}"])
            grads[f"b{idx}"] = numerical_gradient(loss_W, self.params[f"b{idx}"])
        return grads

    def gradient(self, x, t):
        """Gradients by backprop, weight decay included."""
        self._backprop(x, t)
        grads = {}
        for idx in range(1, self.hidden_layer_num + 2):
            grads[f"W{idx}"], grads[f"b{idx}"] = self._affine_gradients(idx)
        return grads

    def _affine_gradients(self, idx):
        layer = self.layers[f"Affine{idx}"]
        dW = (layer.dW + self.weight_decay_lambda * layer.W
              if self.weight_decay_lambda else layer.dW)
        return dW, layer.db


class MultiLayerNetExtend(MultiLayerNet):
    """:class:`MultiLayerNet` with dropout and batch normalisation: the book's
    ``common/multi_layer_net_extend.py``.

    Each hidden layer is ``Affine{i}``, then ``BatchNorm{i}`` (with ``use_batchnorm``; its
    parameters are ``gamma{i}`` and ``beta{i}`` in ``params``, starting at 1 and 0), then
    ``Activation_function{i}``, then ``Dropout{i}`` (with ``use_dropout``). ``predict`` and
    ``loss`` pass ``train_flg`` to the dropout and batch-norm layers; ``gradient`` runs the loss
    with ``train_flg=True``, as the book does.

    Parameters
    ----------
    input_size, hidden_size_list, output_size, activation, weight_init_std, weight_decay_lambda
        As for :class:`MultiLayerNet`.
    use_dropout : bool
    dropout_ration : float
        The dropout ratio, under the book's (misspelled) name; ``dropout_ratio`` is accepted too.
    use_batchnorm : bool
    backend, dtype
        As for :class:`TwoLayerNet`.
    rng : numpy.random.Generator or int, optional
        The source of the initial weights and, when given, of the dropout masks too. Default:
        NumPy's global state for both, as in the book (``np.random.seed`` reproduces a run).
    """

    def __init__(self, input_size, hidden_size_list, output_size, activation="relu",
                 weight_init_std="relu", weight_decay_lambda=0, use_dropout=False,
                 dropout_ration=0.5, use_batchnorm=False, *, dropout_ratio=None,
                 backend="kernel", rng=None, dtype=np.float64):
        if dropout_ratio is not None:
            if dropout_ration != 0.5 and dropout_ration != dropout_ratio:
                raise TypeError("give dropout_ratio or the book's dropout_ration, not both; got "
                                f"{dropout_ratio!r} and {dropout_ration!r}")
            dropout_ration = dropout_ratio
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be 'relu' or 'sigmoid'; got {activation!r}")
        L = layer_module(backend)
        dtype = _float_dtype(dtype)
        rng = _generator(rng)
        self.backend = backend
        self.input_size = input_size
        self.output_size = output_size
        self.hidden_size_list = list(hidden_size_list)
        self.hidden_layer_num = len(self.hidden_size_list)
        self.use_dropout = use_dropout
        self.weight_decay_lambda = weight_decay_lambda
        self.use_batchnorm = use_batchnorm
        self.params = {}
        self._init_weight(weight_init_std, rng, dtype)

        activation_layer = getattr(L, _ACTIVATIONS[activation])
        self.layers = OrderedDict()
        for idx in range(1, self.hidden_layer_num + 1):
            self.layers[f"Affine{idx}"] = L.Affine(self.params[f"W{idx}"],
                                                  self.params[f"b{idx}"])
            if self.use_batchnorm:
                width = self.hidden_size_list[idx - 1]
                self.params[f"gamma{idx}"] = np.ones(width, dtype=dtype)
                self.params[f"beta{idx}"] = np.zeros(width, dtype=dtype)
                self.layers[f"BatchNorm{idx}"] = L.BatchNormalization(
                    self.params[f"gamma{idx}"], self.params[f"beta{idx}"])
            self.layers[f"Activation_function{idx}"] = activation_layer()
            if self.use_dropout:
                self.layers[f"Dropout{idx}"] = L.Dropout(dropout_ration, rng=rng)
        idx = self.hidden_layer_num + 1
        self.layers[f"Affine{idx}"] = L.Affine(self.params[f"W{idx}"], self.params[f"b{idx}"])
        self.last_layer = L.SoftmaxWithLoss()

    def predict(self, x, train_flg=False):
        """The logits; dropout and batch norm run in train mode when ``train_flg``."""
        for key, layer in self.layers.items():
            if key.startswith(("Dropout", "BatchNorm")):
                x = layer.forward(x, train_flg)
            else:
                x = layer.forward(x)
        return x

    def loss(self, x, t, train_flg=False):
        """The mean softmax-cross-entropy loss plus the weight-decay penalty."""
        y = self.predict(x, train_flg)
        return self._with_weight_decay(self.last_layer.forward(y, t))

    def _parameter_keys(self):
        """Parameter names in the book's order: ``W{i}``, ``b{i}``, ``gamma{i}``, ``beta{i}``."""
        for idx in range(1, self.hidden_layer_num + 2):
            yield idx, f"W{idx}", f"b{idx}"
            if self.use_batchnorm and idx != self.hidden_layer_num + 1:
                yield idx, f"gamma{idx}", f"beta{idx}"

    def numerical_gradient(self, x, t):
        """Gradients by central differences of the train-mode loss (slow). With dropout, every
        loss evaluation draws new masks, as in the book: seed them to compare."""
        def loss_W(W):
            return self.loss(x, t, train_flg=True)

        grads = {}
        for _, *keys in self._parameter_keys():
            for key in keys:
                grads[key] = numerical_gradient(loss_W, self.params[key])
        return grads

    def gradient(self, x, t):
        """Gradients by backprop of the train-mode loss, weight decay included."""
        self._backprop(x, t, train_flg=True)
        grads = {}
        for idx, first, second in self._parameter_keys():
            if first.startswith("W"):
                grads[first], grads[second] = self._affine_gradients(idx)
            else:
                layer = self.layers[f"BatchNorm{idx}"]
                grads[first], grads[second] = layer.dgamma, layer.dbeta
        return grads
