"""The book's networks: ``ch05/two_layer_net.py``, ``common/multi_layer_net.py``,
``common/multi_layer_net_extend.py``, ``ch07/simple_convnet.py`` and ``ch08/deep_convnet.py``.

Same constructors, attributes and methods as the book, built from :mod:`fastbp.layers`
(``backend="kernel"``) or :mod:`fastbp.reference.layers` (``backend="reference"``); the code is
the same for both, only the layer module differs. The layers hold *references* to the arrays in
``params``, so an optimizer that updates ``params`` in place moves the network.

Beyond the book's arguments, all take ``rng`` (a ``numpy.random.Generator`` or a seed; the
default draws from NumPy's global state, like the book) and ``dtype`` (float64, or float32 for
faster training).
"""

import numbers
import os
import pickle
from collections import OrderedDict

import numpy as np

from fastbp.backends import BACKENDS, layer_module
from fastbp.gradient import numerical_gradient

__all__ = ["BACKENDS", "DeepConvNet", "MultiLayerNet", "MultiLayerNetExtend", "SimpleConvNet",
           "TwoLayerNet", "layer_module"]


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


def _accuracy_labels(t, n):
    """The class labels of ``t`` for ``n`` rows: labels (N,), integer labels (N, 1) (as
    ``SoftmaxWithLoss`` reads them; the book's ``argmax`` made them all 0), or one-hot (N, C).
    ``ValueError`` where their count is not ``n`` (the book's ``==`` broadcast or failed)."""
    t = np.asarray(t)
    if t.ndim == 2 and t.shape[1] == 1 and t.dtype.kind in "iu":
        t = t.reshape(t.shape[0])
    elif t.ndim != 1:
        if t.ndim != 2:
            raise ValueError(f"t must be labels (N,) or (N, 1), or one-hot (N, C); got shape "
                             f"{t.shape}")
        t = np.argmax(t, axis=1)
    if t.shape[0] != n:
        raise ValueError(f"x holds {n} rows but t holds {t.shape[0]} labels")
    return t


def _accuracy(y, t):
    t = _accuracy_labels(t, y.shape[0])
    if not y.shape[0]:
        return np.float64(np.nan)  # no rows: as the convolutional nets (the book divides 0 by 0)
    return np.sum(np.argmax(y, axis=1) == t) / float(y.shape[0])


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

    def accuracy(self, X, T):
        """The fraction of rows whose arg-max test-mode logit is the label (``T``: labels or
        one-hot). ``X`` and ``T``, as the book names them in this class."""
        return _accuracy(self.predict(X), T)

    def numerical_gradient(self, X, T):
        """Gradients by central differences of the train-mode loss (slow). With dropout, every
        loss evaluation draws new masks, as in the book: seed them to compare. ``X`` and ``T``,
        as the book names them in this class."""
        def loss_W(W):
            return self.loss(X, T, train_flg=True)

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


# --- chapters 7 and 8: the convolutional networks -------------------------------------------


def _input_dim(input_dim):
    """``(C, H, W)`` as three positive ints, or ValueError."""
    try:
        dims = tuple(int(d) for d in input_dim)
    except (TypeError, ValueError):
        dims = ()
    if len(dims) != 3 or min(dims) < 1 or dims != tuple(input_dim):
        raise ValueError(f"input_dim must be (channels, height, width), three positive ints; "
                         f"got {input_dim!r}")
    return dims


def _conv_output_size(size, filter_size, stride, pad, where):
    """The output size of a convolution layer, as the layers compute it (the floor of the book's
    ``conv_output_size``), or ValueError naming the layer and the sizes."""
    if stride < 1 or pad < 0 or filter_size < 1:
        raise ValueError(f"{where}: filter_size and stride must be at least 1 and pad at least "
                         f"0; got filter_size {filter_size}, stride {stride}, pad {pad}")
    if filter_size > size + 2 * pad:
        raise ValueError(f"{where}: a filter of {filter_size} does not fit a map of {size} "
                         f"padded by {pad}")
    return (size + 2 * pad - filter_size) // stride + 1


def _pool_output_size(size, where):
    """The output size of the nets' 2x2, stride-2 pooling (an odd last row is left out)."""
    if size < 2:
        raise ValueError(f"{where}: 2x2 pooling needs a map of at least 2x2; the map here is "
                         f"{size} wide")
    return size // 2


class _ConvNet:
    """What both convolutional nets share: accuracy in batches, backprop, and the book's pickles.

    A subclass sets ``params``, ``layers``, ``last_layer``, ``input_dim`` and ``_param_layers``
    (the layers that hold ``W1``/``b1``, ``W2``/``b2``, ... in order).
    """

    def _check_images(self, x):
        shape = np.shape(x)
        if len(shape) != 4 or tuple(shape[1:]) != self.input_dim:
            dims = ", ".join(map(str, self.input_dim))
            hint = ""
            if len(shape) == 2 and shape[1] == int(np.prod(self.input_dim)):
                hint = f" (reshape flat images with x.reshape(-1, {dims}))"
            raise ValueError(f"{type(self).__name__} takes images of shape (N, {dims}); got "
                             f"{shape}{hint}")

    def _layer_list(self):
        return list(self.layers.values()) if isinstance(self.layers, dict) else list(self.layers)

    def _logits(self, x):
        """``predict(x)``, for ``accuracy``, which keeps nothing for a backward pass."""
        return self.predict(x)

    def accuracy(self, x, t, batch_size=100):
        """The fraction of images whose arg-max logit is the label (``t``: labels or one-hot),
        predicted ``batch_size`` images at a time.

        Every image counts. (The book's loop leaves out the last ``len(x) % batch_size`` images
        but still divides by ``len(x)``.)
        """
        n = np.shape(x)[0]
        t = _accuracy_labels(t, n)
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
        step = int(batch_size)  # 3.0 passes the check; slices need an int
        hits = 0
        for lo in range(0, n, step):
            y = self._logits(x[lo:lo + step])
            hits += int(np.sum(np.argmax(y, axis=1) == t[lo:lo + step]))
        return np.float64(hits / n if n else np.nan)  # np.float64, as the book's

    def gradient(self, x, t):
        """Gradients by backprop: a dict ``W1``, ``b1``, ... of the layers' ``dW`` and ``db``.

        The first Convolution computes no ``dx``: nothing needs the gradient of the images.
        """
        self.loss(x, t)
        dout = self.last_layer.backward(1)
        layers = self._layer_list()
        for layer in reversed(layers[1:]):
            dout = layer.backward(dout)
        _backward_without_dx(layers[0], dout)
        grads = {}
        for idx, layer in enumerate(self._param_layers, start=1):
            grads[f"W{idx}"], grads[f"b{idx}"] = layer.dW, layer.db
        return grads

    def save_params(self, file_name="params.pkl"):
        """Pickle ``params`` as the book does: a dict of float64 arrays keyed ``W1``..``bN``.

        A float32 net saves float64 copies (exact), so the file reads the same as the book's.
        """
        params = {key: np.array(val, dtype=np.float64) for key, val in self.params.items()}
        with open(file_name, "wb") as f:
            pickle.dump(params, f)

    def load_params(self, file_name="params.pkl"):
        """Load a pickle written by :meth:`save_params` or by the book's code (its published
        trained weights included) and rebind the layers' ``W`` and ``b`` to the new arrays.

        The arrays are cast to the net's dtype. Nothing changes unless every key is there with
        the right shape. Unpickling runs code from the file: load only files you trust.

        Raises
        ------
        ValueError
            A key is missing or unexpected, or an array has the wrong shape; the message names
            the key and both shapes.
        TypeError
            The file does not hold a dict, or a value is not an array of real numbers.
        """
        with open(file_name, "rb") as f:
            loaded = pickle.load(f)
        params = self._checked_params(loaded, os.fspath(file_name))
        self.params.update(params)
        for idx, layer in enumerate(self._param_layers, start=1):
            layer.W = self.params[f"W{idx}"]
            layer.b = self.params[f"b{idx}"]

    def _checked_params(self, loaded, source):
        name = type(self).__name__
        if not isinstance(loaded, dict):
            raise TypeError(f"{source}: holds a {type(loaded).__name__}, not the dict of arrays "
                            f"keyed {', '.join(self.params)} that {name} needs")
        for key, want in self.params.items():
            if key not in loaded:
                raise ValueError(f"{source}: no {key!r}; {name} needs {key} of shape "
                                 f"{want.shape}")
        extra = [key for key in loaded if key not in self.params]
        if extra:
            raise ValueError(f"{source}: unexpected keys {extra}; {name} has "
                             f"{list(self.params)}")
        params = {}
        for key, want in self.params.items():
            value = np.asarray(loaded[key])
            if value.dtype.kind not in "fiu":
                raise TypeError(f"{source}: {key!r} is an array of {value.dtype}, not of real "
                                "numbers")
            if value.shape != want.shape:
                raise ValueError(f"{source}: {key!r} has shape {value.shape}; {name}'s {key} "
                                 f"has shape {want.shape}")
            params[key] = np.array(value, dtype=want.dtype, order="C")
        return params


def _backward_without_dx(conv, dout):
    """``conv.backward(dout)`` for ``dW`` and ``db`` only: the first layer's ``dx`` is unused.

    The Convolution's ``need_dx`` is switched off for this one call and restored after, so the
    layer still returns ``dx`` to anyone who calls its ``backward`` directly.
    """
    saved = conv.need_dx
    conv.need_dx = False
    try:
        conv.backward(dout)
    finally:
        conv.need_dx = saved


class SimpleConvNet(_ConvNet):
    """conv - relu - pool - affine - relu - affine - softmax: the book's ``ch07/simple_convnet.py``.

    Parameters
    ----------
    input_dim : (int, int, int)
        ``(channels, height, width)`` of the images.
    conv_param : dict
        ``filter_num``, ``filter_size``, ``pad`` and ``stride`` of the convolution.
    hidden_size, output_size : int
        The widths of the hidden and the output Affine layers.
    weight_init_std : float
        The standard deviation of the initial weights; biases start at 0.
    backend, rng, dtype
        As for :class:`TwoLayerNet`.

    Attributes
    ----------
    params : dict
        ``W1`` (filter_num, C, filter_size, filter_size), ``b1``, ``W2``, ``b2``, ``W3``, ``b3``,
        shared with the layers.
    layers : OrderedDict
        ``Conv1``, ``Relu1``, ``Pool1`` (2x2, stride 2), ``Affine1``, ``Relu2``, ``Affine2``.
    last_layer : SoftmaxWithLoss

    Notes
    -----
    The sizes are computed as the layers compute them (rows that no window reaches are left
    out), so ``W2`` fits whatever the convolution's output size; the book's formula for ``W2``
    only holds where that size is even. A filter larger than the padded image is an error that
    names the sizes.
    """

    def __init__(self, input_dim=(1, 28, 28),
                 conv_param={"filter_num": 30, "filter_size": 5,  # noqa: B006 (the book's; read only)
                             "pad": 0, "stride": 1},
                 hidden_size=100, output_size=10, weight_init_std=0.01, *, backend="kernel",
                 rng=None, dtype=np.float64):
        L = layer_module(backend)
        dtype = _float_dtype(dtype)
        rng = _generator(rng)
        self.backend = backend
        self.input_dim = _input_dim(input_dim)
        channels, height, width = self.input_dim
        filter_num = conv_param["filter_num"]
        filter_size = conv_param["filter_size"]
        filter_pad = conv_param["pad"]
        filter_stride = conv_param["stride"]
        conv_h = _conv_output_size(height, filter_size, filter_stride, filter_pad, "Conv1")
        conv_w = _conv_output_size(width, filter_size, filter_stride, filter_pad, "Conv1")
        pool_output_size = (filter_num * _pool_output_size(conv_h, "Pool1")
                            * _pool_output_size(conv_w, "Pool1"))

        def weights(shape):
            return (weight_init_std * _standard_normal(rng, shape)).astype(dtype)

        self.params = {}
        self.params["W1"] = weights((filter_num, channels, filter_size, filter_size))
        self.params["b1"] = np.zeros(filter_num, dtype=dtype)
        self.params["W2"] = weights((pool_output_size, hidden_size))
        self.params["b2"] = np.zeros(hidden_size, dtype=dtype)
        self.params["W3"] = weights((hidden_size, output_size))
        self.params["b3"] = np.zeros(output_size, dtype=dtype)

        self.layers = OrderedDict()
        self.layers["Conv1"] = L.Convolution(self.params["W1"], self.params["b1"],
                                             filter_stride, filter_pad)
        self.layers["Relu1"] = L.Relu()
        self.layers["Pool1"] = L.Pooling(pool_h=2, pool_w=2, stride=2)
        self.layers["Affine1"] = L.Affine(self.params["W2"], self.params["b2"])
        self.layers["Relu2"] = L.Relu()
        self.layers["Affine2"] = L.Affine(self.params["W3"], self.params["b3"])
        self.last_layer = L.SoftmaxWithLoss()
        self._block = None

    @property
    def _param_layers(self):
        return (self.layers["Conv1"], self.layers["Affine1"], self.layers["Affine2"])

    def _fused(self):
        """The fused block over the first three layers, or None where they are not the block
        it computes (see :meth:`gradient`)."""
        if self.backend != "kernel":  # the reference layers are never the block
            return None
        layers = self._layer_list()
        block = self._block
        if block is None or block.conv is not layers[0] or block.relu is not layers[1] \
                or block.pool is not layers[2]:
            block = self._block = layer_module("kernel")._ConvReluPool(*layers[:3])
        return block if block.fits() else None

    def _logits(self, x):
        """``predict(x)`` through the fused block where it applies (``accuracy`` keeps nothing
        for a backward pass, so the layers' state need not be the layers' own)."""
        block = self._fused()
        if block is None:
            return self.predict(x)
        self._check_images(x)
        z = block.forward(x)
        for layer in self._layer_list()[3:]:
            z = layer.forward(z)
        return z

    def gradient(self, x, t):
        """Gradients by backprop: a dict ``W1``, ``b1``, ... of the layers' ``dW`` and ``db``.

        On the kernel backend, ``Conv1 -> Relu1 -> Pool1`` runs as one fused block (a kernel
        for the forward pass, one for ``dW1`` and ``db1``; no ``dx`` for the images), while the
        layers are the book's (the Convolution at stride 1). ``Conv1`` is left as its own
        forward pass leaves it, with ``dW`` and ``db`` set; ``Relu1`` and ``Pool1`` keep their
        state from their last own call (``accuracy`` runs the block's forward pass too). The
        other layers run as they are.
        """
        block = self._fused()
        if block is None:
            return super().gradient(x, t)
        layers = self._layer_list()
        self._check_images(x)
        z = block.forward(x)
        # (The block's kernels have just run, so each product below runs on one BLAS thread,
        # the large ones split into blocks over helper threads, and no BLAS worker spins on the
        # core the block's backward kernel needs: see fastbp.threads.KERNELS_BUSY_SECONDS.)
        for layer in layers[3:]:
            z = layer.forward(z)
        self.last_layer.forward(z, t)
        dout = self.last_layer.backward(1)
        for layer in reversed(layers[3:]):
            dout = layer.backward(dout)
        block.backward_params(dout)
        grads = {}
        for idx, layer in enumerate(self._param_layers, start=1):
            grads[f"W{idx}"], grads[f"b{idx}"] = layer.dW, layer.db
        return grads

    def predict(self, x):
        """The logits of images ``x`` of shape (N, C, H, W)."""
        self._check_images(x)
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def loss(self, x, t):
        """The mean softmax-cross-entropy loss of the batch."""
        y = self.predict(x)
        return self.last_layer.forward(y, t)

    def numerical_gradient(self, x, t):
        """Gradients by central differences (slow: two forward passes per parameter element)."""
        def loss_w(w):
            return self.loss(x, t)

        return {key: numerical_gradient(loss_w, self.params[key]) for key in self.params}


_DEEP_CONV_PARAMS = (
    {"filter_num": 16, "filter_size": 3, "pad": 1, "stride": 1},
    {"filter_num": 16, "filter_size": 3, "pad": 1, "stride": 1},
    {"filter_num": 32, "filter_size": 3, "pad": 1, "stride": 1},
    {"filter_num": 32, "filter_size": 3, "pad": 2, "stride": 1},
    {"filter_num": 64, "filter_size": 3, "pad": 1, "stride": 1},
    {"filter_num": 64, "filter_size": 3, "pad": 1, "stride": 1},
)


class DeepConvNet(_ConvNet):
    """The book's ``ch08/deep_convnet.py``: six 3x3 convolutions, three poolings, dropout.

    conv - relu - conv - relu - pool (three times), affine - relu - dropout - affine - dropout -
    softmax.

    Parameters
    ----------
    input_dim : (int, int, int)
        ``(channels, height, width)``; the book's net is built for MNIST's (1, 28, 28).
    conv_param_1, ..., conv_param_6 : dict
        ``filter_num``, ``filter_size``, ``pad`` and ``stride`` of each convolution.
    hidden_size, output_size : int
    backend, rng, dtype
        As for :class:`TwoLayerNet`. ``rng`` draws the weights and then the Dropout masks, so a
        seed repeats a whole training run. Without it both come from NumPy's global state, as
        in the book (``np.random.seed`` repeats them).

    Attributes
    ----------
    params : dict
        ``W1``..``W8`` and ``b1``..``b8``, shared with the layers.
    layers : list
        The book's list of 20 layers; ``W1``..``W8`` live in layers 0, 2, 5, 7, 10, 12, 15, 18.
    last_layer : SoftmaxWithLoss

    Notes
    -----
    The weights are He-initialised, ``sqrt(2 / fan_in)``, as in the book. The book writes the
    fan-ins out for its default arguments (``1*3*3, 16*3*3, ..., 64*4*4, hidden_size``); here
    they are computed from the arguments, which gives the book's numbers for its defaults, and
    so is the input width of ``W7`` (the book's ``64*4*4``). A filter larger than its padded map
    is an error that names the sizes.
    """

    _PARAM_LAYER_INDEXES = (0, 2, 5, 7, 10, 12, 15, 18)

    def __init__(self, input_dim=(1, 28, 28),
                 conv_param_1=_DEEP_CONV_PARAMS[0], conv_param_2=_DEEP_CONV_PARAMS[1],
                 conv_param_3=_DEEP_CONV_PARAMS[2], conv_param_4=_DEEP_CONV_PARAMS[3],
                 conv_param_5=_DEEP_CONV_PARAMS[4], conv_param_6=_DEEP_CONV_PARAMS[5],
                 hidden_size=50, output_size=10, *, backend="kernel", rng=None,
                 dtype=np.float64):
        L = layer_module(backend)
        dtype = _float_dtype(dtype)
        rng = _generator(rng)
        self.backend = backend
        self.input_dim = _input_dim(input_dim)
        conv_params = (conv_param_1, conv_param_2, conv_param_3, conv_param_4, conv_param_5,
                       conv_param_6)
        self._dropout = L.Dropout

        self.params = {}
        channels, height, width = self.input_dim
        for idx, cp in enumerate(conv_params, start=1):
            where = f"conv_param_{idx}"
            size = cp["filter_size"]
            height = _conv_output_size(height, size, cp["stride"], cp["pad"], where)
            width = _conv_output_size(width, size, cp["stride"], cp["pad"], where)
            if idx % 2 == 0:
                where = f"the pooling after conv_param_{idx}"
                height = _pool_output_size(height, where)
                width = _pool_output_size(width, where)
            scale = np.sqrt(2.0 / (channels * size * size))
            self.params[f"W{idx}"] = (scale * _standard_normal(
                rng, (cp["filter_num"], channels, size, size))).astype(dtype)
            self.params[f"b{idx}"] = np.zeros(cp["filter_num"], dtype=dtype)
            channels = cp["filter_num"]
        flat = channels * height * width
        self.params["W7"] = (np.sqrt(2.0 / flat)
                             * _standard_normal(rng, (flat, hidden_size))).astype(dtype)
        self.params["b7"] = np.zeros(hidden_size, dtype=dtype)
        self.params["W8"] = (np.sqrt(2.0 / hidden_size)
                             * _standard_normal(rng, (hidden_size, output_size))).astype(dtype)
        self.params["b8"] = np.zeros(output_size, dtype=dtype)

        self.layers = []
        for idx, cp in enumerate(conv_params, start=1):
            self.layers.append(L.Convolution(self.params[f"W{idx}"], self.params[f"b{idx}"],
                                             cp["stride"], cp["pad"]))
            self.layers.append(L.Relu())
            if idx % 2 == 0:
                self.layers.append(L.Pooling(pool_h=2, pool_w=2, stride=2))
        self.layers.append(L.Affine(self.params["W7"], self.params["b7"]))
        self.layers.append(L.Relu())
        self.layers.append(L.Dropout(0.5, rng=rng))
        self.layers.append(L.Affine(self.params["W8"], self.params["b8"]))
        self.layers.append(L.Dropout(0.5, rng=rng))
        self.last_layer = L.SoftmaxWithLoss()

    @property
    def _param_layers(self):
        return tuple(self.layers[i] for i in self._PARAM_LAYER_INDEXES)

    def predict(self, x, train_flg=False):
        """The logits of images ``x`` (N, C, H, W); ``train_flg`` switches Dropout to training."""
        self._check_images(x)
        for layer in self.layers:
            if isinstance(layer, self._dropout):
                x = layer.forward(x, train_flg)
            else:
                x = layer.forward(x)
        return x

    def loss(self, x, t):
        """The mean softmax-cross-entropy loss, with Dropout in training mode (as the book)."""
        y = self.predict(x, train_flg=True)
        return self.last_layer.forward(y, t)
