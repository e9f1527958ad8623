"""Input checks and conversions shared by both backends.

The reference layers and the kernel layers call the same functions here, so they accept the same
inputs, reject the same inputs with the same messages, and give the same output dtypes. Nothing
here is compiled: every check runs in Python before any kernel sees the data, because a kernel
given an out-of-range label or a short array reads or writes outside its arrays.

Dtype policy (docs/numerics.md, section 3): float32 and float64 run as they are. Other real dtypes
are promoted the way ``numpy.exp`` promotes them (bool and int8 to float16, int16 to float32, wider
integers to float64). float16 runs in float32 and is cast back. Complex, object, string and
extended-precision inputs raise ``TypeError``.
"""

import math
import numbers

import numpy as np

COMPUTE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _as_array(a, name):
    # An ndarray subclass (np.matrix, a masked array) becomes a plain ndarray view, as NumPy's
    # asarray gives it: a matrix keeps no 2-d rule in the layers, a mask is not applied (both
    # backends alike), and no subclass reaches a kernel (numba rejects some, and results would
    # come back as the subclass).
    if type(a) is np.ndarray:
        arr = a
    else:
        try:
            arr = np.asarray(a)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a real numeric array; got {type(a).__name__}") from exc
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array; got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 8:
        raise TypeError(f"{name} has dtype {arr.dtype}; fastbp supports up to float64")
    return arr


def _dtype_operand(a):
    # Python scalars stay "weak" in NumPy's promotion (float32 array + 0 stays float32).
    if isinstance(a, (numbers.Number, np.dtype)):
        return a
    return np.asarray(a)


def result_dtype(*operands):
    """The float dtype NumPy would give ``numpy.exp`` of an expression of ``operands``.

    An operand may be an array, a scalar or a ``numpy.dtype`` (a backward pass promotes
    ``dout`` with the dtype its forward pass was given, not with the float32 it ran in).
    """
    dtypes = [a if isinstance(a, np.dtype) else a.dtype for a in operands
              if isinstance(a, (np.ndarray, np.dtype))]
    if (dtypes and len(dtypes) == len(operands) and dtypes[0].kind == "f"
            and dtypes.count(dtypes[0]) == len(dtypes)):
        return dtypes[0]  # the common case, without NumPy's promotion machinery
    return np.result_type(*[_dtype_operand(a) for a in operands], np.float16)


def compute_dtype(dtype):
    """The dtype a kernel runs in for a result of ``dtype``: float32 or float64."""
    return np.dtype(np.float32) if np.dtype(dtype).itemsize <= 4 else np.dtype(np.float64)


def float_inputs(names, *arrays, contiguous=False):
    """Convert ``arrays`` to one compute dtype.

    Parameters
    ----------
    names : sequence of str
        Names for error messages, one per array.
    *arrays : array_like
        The inputs.
    contiguous : bool
        Also make every array C-contiguous (what kernels need). The caller's arrays are never
        modified; a copy is made only where the dtype or layout requires one.

    Returns
    -------
    converted : list of ndarray
        The arrays in the compute dtype (float32 or float64).
    out_dtype : numpy.dtype
        The dtype of the result the caller should return.
    """
    checked = [_as_array(a, n) for a, n in zip(arrays, names, strict=True)]
    first = checked[0].dtype
    if first in COMPUTE_DTYPES and all(c.dtype == first for c in checked):
        out_dtype = work = first  # the common case, without NumPy's promotion machinery
    else:
        out_dtype = result_dtype(*[a if isinstance(a, numbers.Number) else c
                                   for a, c in zip(arrays, checked, strict=True)])
        work = compute_dtype(out_dtype)
    if contiguous:
        # asarray, not ascontiguousarray: the latter turns 0-d arrays into shape (1,). The
        # check first, because asarray's keyword handling costs more than it (small layers).
        converted = [c if c.dtype == work and c.flags.c_contiguous
                     else np.asarray(c, dtype=work, order="C") for c in checked]
    else:
        converted = [np.asarray(c, dtype=work) for c in checked]
    return converted, out_dtype


def float_input(x, name="x", *, contiguous=False):
    """:func:`float_inputs` for a single array: returns ``(converted, out_dtype)``."""
    (converted,), out_dtype = float_inputs((name,), x, contiguous=contiguous)
    return converted, out_dtype


def scalar_if_0d(result):
    """A 0-d result as a NumPy scalar, as the book's functions give for scalar input (NumPy's
    arithmetic on a 0-d array returns a scalar); other results unchanged."""
    return result[()] if result.ndim == 0 else result


def as_result(y, out_dtype):
    """Cast a computed array to the result dtype (no copy when it is already that dtype)."""
    return y if y.dtype == out_dtype else y.astype(out_dtype)


def call_key(*arrays):
    """The key of a call whose operands are used as they are, or ``None``.

    The key is the operands' dtype and shapes, given when every operand is an ``ndarray``
    (not a subclass) that is C-contiguous, and all share one dtype, float32 or float64: then
    no check or conversion here changes them, and every check depends on the shapes and the
    dtype alone (label values excepted). A layer keeps the key of a call it has checked, and
    skips the checks for a later call that :func:`same_call` finds alike.
    """
    dtype = getattr(arrays[0], "dtype", None)
    if dtype not in COMPUTE_DTYPES:
        return None
    for a in arrays:
        if type(a) is not np.ndarray or a.dtype is not dtype or not a.flags.c_contiguous:
            return None
    return dtype, tuple(a.shape for a in arrays)


def same_call(key, *arrays):
    """True when ``arrays`` are C-contiguous ``ndarray`` s of the dtype and shapes of ``key``
    (from :func:`call_key`), so that they pass every check unchanged, as that call's did."""
    dtype, shapes = key
    for a, shape in zip(arrays, shapes, strict=True):
        if (type(a) is not np.ndarray or a.dtype is not dtype or a.shape != shape
                or not a.flags.c_contiguous):
            return False
    return True


def gradient_for(dout, shape, layer):
    """Check that ``dout`` broadcasts to ``shape``, the shape of the layer's forward output."""
    arr = _as_array(dout, "dout")
    if arr.shape == tuple(shape):
        return arr
    try:
        broadcast = np.broadcast_shapes(arr.shape, shape)
    except ValueError:
        broadcast = None
    if broadcast != tuple(shape):
        raise ValueError(
            f"{layer}.backward: dout of shape {arr.shape} does not match the forward "
            f"output of shape {tuple(shape)}"
        )
    return np.broadcast_to(arr, shape)


def require_forward(value, layer):
    """Raise a clear error when ``backward`` is called before ``forward``."""
    if value is None:
        raise RuntimeError(f"{layer}.backward called before {layer}.forward")


def affine_shapes(x, W, b):
    """Check Affine's operands; return ``x`` reshaped to 2-D as the book does.

    ``x`` of shape (N, ...) becomes (N, D). ``W`` must be (D, H), and ``b`` must broadcast to
    (N, H).
    """
    if x.ndim == 0:
        raise ValueError("Affine.forward: x must have a batch axis; got a 0-d array")
    if W.ndim != 2:
        raise ValueError(f"Affine: W must be 2-D (D, H); got shape {W.shape}")
    x2 = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # not -1: ambiguous for 0 rows
    if x2.shape[1] != W.shape[0]:
        hint = ""
        if x.ndim == 1:  # the first axis is the batch: (10,) is 10 samples of 1 feature
            hint = (f"; a 1-D x is read as {x.shape[0]} samples of one feature each"
                    + (": for one sample, pass x.reshape(1, -1)" if x.size == W.shape[0]
                       else ""))
        raise ValueError(
            f"Affine.forward: x of shape {x.shape} (as {x2.shape}) does not fit W of shape "
            f"{W.shape}: x needs {W.shape[0]} features per row{hint}"
        )
    out_shape = (x2.shape[0], W.shape[1])
    b_shape = np.shape(b)
    if b_shape == out_shape[1:] or b_shape == ():
        return x2
    try:
        fits = np.broadcast_shapes(b_shape, out_shape) == out_shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"Affine.forward: b of shape {np.shape(b)} does not broadcast to the output "
            f"shape {out_shape}"
        )
    return x2


def affine_inputs(x, W, b):
    """Check and convert Affine's operands: ``(x, x2, W, b, out_dtype)``.

    ``x`` is the input as an array: ``backward`` restores its shape and dtype. ``x`` of shape
    (N, ...) becomes ``x2`` of shape (N, D) (see :func:`affine_shapes`), and the three are
    converted to one compute dtype (:func:`float_inputs`); ``out_dtype`` is the dtype of the
    result. Raises ``TypeError`` or ``ValueError`` naming the operand and its shape.
    """
    x = _as_array(x, "x")
    W = _as_array(W, "W")
    x2 = affine_shapes(x, W, b)
    (xc, Wc, bc), out_dtype = float_inputs(("x", "W", "b"), x2, W, b)
    return x, xc, Wc, bc, out_dtype


def logits(x, *, contiguous=False):
    """Logits for softmax-cross-entropy: integer and bool logits become float64 (docs/numerics.md),
    float16 runs in float32; complex raises ``TypeError``. Returns ``(converted, out_dtype)``."""
    arr = _as_array(x, "x")
    if arr.dtype.kind in "biu":
        arr = arr.astype(np.float64)
    return float_input(arr, contiguous=contiguous)


def logits_2d(x, name="x"):
    """Logits as (N, C): 1-D logits are one sample. Return the 2-D view and the input's shape."""
    if x.ndim == 1:
        return x.reshape(1, -1), x.shape
    if x.ndim != 2:
        raise ValueError(f"{name} must be 1-D (C,) or 2-D (N, C); got shape {x.shape}")
    return x, x.shape


def targets(t, x_shape):
    """Classify and convert the targets of softmax-cross-entropy.

    Parameters
    ----------
    t : array_like
        Integer class labels of shape (N,) or (N, 1), any integer dtype; or class
        probabilities (one-hot included), float or bool, of shape (N, C). An integer array of
        shape (N, C) with C > 1 is read as one-hot.
    x_shape : tuple
        The logits' shape (N, C).

    Returns
    -------
    kind : {"labels", "probs"}
    t : ndarray
        Labels as a new ``intp`` array of shape (N,), checked to lie in [0, C); or the
        probabilities as given (the caller converts them to its compute dtype).

    Raises
    ------
    ValueError
        The batch sizes, or the class counts, of logits and targets differ.
    TypeError
        Float or bool labels of shape (N,), or a non-numeric target.
    IndexError
        A label is negative or not less than C. Nothing is computed.
    """
    n, c = x_shape
    t = _as_array(t, "t")
    if t.ndim == 0 or t.ndim > 2 or t.shape[0] != n:
        raise ValueError(
            f"logits of shape {tuple(x_shape)} and targets of shape {t.shape} do not fit: "
            f"targets need shape ({n},) for labels or ({n}, {c}) for probabilities"
        )
    integer = t.dtype.kind in "iu"
    as_labels = t.ndim == 1 or (t.ndim == 2 and t.shape[1] == 1 and (integer or c != 1))
    if as_labels and not integer:
        raise TypeError(
            f"labels must be integers; got dtype {t.dtype} with shape {t.shape} "
            f"(probability targets need shape ({n}, {c}))"
        )
    if as_labels:
        t = t.reshape(n)
        if n and c < 1:
            raise ValueError(f"logits of shape {tuple(x_shape)} have no classes")
        if t.size and (t.max() >= c or (t.dtype.kind == "i" and t.min() < 0)):
            row = int(np.flatnonzero((t < 0) | (t >= c))[0])
            raise IndexError(
                f"label {t[row]} at row {row} is out of range for {c} classes "
                f"(labels must be in [0, {c - 1}])"
            )
        # A copy (checked in the caller's dtype, above): the layers read the labels again in
        # backward, where a kernel indexes with them, so a later change to the caller's array
        # must not reach them.
        return "labels", np.array(t, dtype=np.intp)
    if t.shape[1] != c:
        raise ValueError(
            f"logits of shape {tuple(x_shape)} and targets of shape {t.shape} do not fit: "
            f"probability targets need shape ({n}, {c})"
        )
    return "probs", t


_INTP = np.dtype(np.intp)
_UINTP = np.dtype(np.uintp)


def labels_in_range(t, x_shape):
    """A copy of ``t`` when it is an ``intp`` ``ndarray`` of N labels that all lie in [0, C), for
    logits of shape ``x_shape`` (N, C) with N > 0: what :func:`targets` would return.
    ``None`` otherwise; :func:`targets` then converts it, or says what is wrong."""
    n, c = x_shape
    if type(t) is not np.ndarray or t.dtype != _INTP or t.shape != (n,) or not n:
        return None
    t = t.copy()  # checked, then read again in backward: see targets
    # One pass: a negative label read as unsigned is larger than any class count.
    return t if t.view(_UINTP).max() < c else None


def loss_gradient_scale(dout):
    """``dout`` of a loss layer must be a scalar (the book passes 1)."""
    arr = _as_array(dout, "dout")
    if arr.size != 1:
        raise ValueError(f"SoftmaxWithLoss.backward: dout must be a scalar; got shape {arr.shape}")
    return float(arr.reshape(()))


# --- convolution and pooling ---------------------------------------------------------------


def is_integer(value):
    """Whether ``value`` is an integer (Python's or NumPy's), and not a bool: the test of every
    count and size fastbp takes."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def _integer(value, name, layer, minimum):
    """``value`` as a Python int of at least ``minimum``; ``TypeError`` for non-integers."""
    if not is_integer(value):
        raise TypeError(f"{layer}: {name} must be an integer; got {value!r}")
    value = int(value)
    if value < minimum:
        bound = "positive" if minimum == 1 else f"at least {minimum}"
        raise ValueError(f"{layer}: {name} must be {bound}; got {value}")
    return value


def backward_dtypes(forward_dtype, *operands):
    """``(out_dtype, compute_dtype)`` of a backward pass whose forward returned ``forward_dtype``,
    given its new operands (``dout``, and parameters read again): NumPy's promotion of all."""
    out_dtype = np.promote_types(forward_dtype, result_dtype(*operands))
    return out_dtype, compute_dtype(out_dtype)


def window_settings(stride, pad, layer):
    """Check a layer's ``stride`` (an integer >= 1) and ``pad`` (an integer >= 0)."""
    return _integer(stride, "stride", layer, 1), _integer(pad, "pad", layer, 0)


def window_output_size(size, window, stride, pad):
    """Output positions of a ``window`` sliding by ``stride`` over ``size + 2 * pad``: the floor
    of ``(size + 2 * pad - window) / stride`` plus 1, as the book's ``im2col`` computes it."""
    return (size + 2 * pad - window) // stride + 1


def _input_4d(x, layer, what="x"):
    if x.ndim != 4:
        raise ValueError(f"{layer}: {what} must be 4-d (N, C, H, W); got shape {x.shape}")


def _window_fits(x_shape, fh, fw, stride, pad, layer, what="filter"):
    h, w = x_shape[2:]
    if fh > h + 2 * pad or fw > w + 2 * pad:
        raise ValueError(
            f"{layer}: the {what} of {fh}x{fw} is larger than the padded input of "
            f"{h + 2 * pad}x{w + 2 * pad} (input {h}x{w}, pad {pad})"
        )
    return (window_output_size(h, fh, stride, pad), window_output_size(w, fw, stride, pad))


def window_geometry(x_shape, filter_h, filter_w, stride, pad, layer="im2col"):
    """Check the arguments of ``im2col``/``col2im``; return the output size ``(OH, OW)``."""
    if len(x_shape) != 4:
        raise ValueError(f"{layer}: the input must be 4-d (N, C, H, W); got shape "
                         f"{tuple(x_shape)}")
    fh = _integer(filter_h, "filter_h", layer, 1)
    fw = _integer(filter_w, "filter_w", layer, 1)
    stride, pad = window_settings(stride, pad, layer)
    for s in x_shape:
        _integer(s, "each input size", layer, 0)
    return (fh, fw, stride, pad, *_window_fits(x_shape, fh, fw, stride, pad, layer))


def conv_geometry(x, W, b, stride, pad):
    """Check Convolution's operands.

    ``x`` is (N, C, H, W) and ``W`` is (FN, C, FH, FW), with the same C. ``b`` is a scalar (added
    to every filter, as the book's ``ch07/apply_filter.py`` passes 0) or holds one value per
    filter, shape (FN,) (or (1, FN)). The filter must fit the padded input. Where
    ``H + 2 * pad - FH`` is not a multiple of ``stride``, the last rows (columns) that no window
    reaches are left out, as the book's ``Convolution`` and ``im2col`` do (their gradient is 0).

    Returns
    -------
    stride, pad, OH, OW : int
    """
    layer = "Convolution"
    stride, pad = window_settings(stride, pad, layer)
    if W.ndim != 4:
        raise ValueError(f"{layer}: W must be 4-d (FN, C, FH, FW); got shape {W.shape}")
    _input_4d(x, f"{layer}.forward")
    if x.shape[1] != W.shape[1]:
        raise ValueError(
            f"{layer}.forward: x of shape {x.shape} has {x.shape[1]} channels but W of shape "
            f"{W.shape} expects {W.shape[1]}"
        )
    fn = W.shape[0]
    b_shape = np.shape(b)
    fits = b_shape == () or (all(s == 1 for s in b_shape[:-1]) and b_shape[-1] in (1, fn))
    if not fits:
        raise ValueError(
            f"{layer}: b of shape {b_shape} does not fit {fn} filters: b needs shape ({fn},), "
            f"one bias per filter (or a scalar)"
        )
    oh, ow = _window_fits(x.shape, W.shape[2], W.shape[3], stride, pad, f"{layer}.forward")
    return stride, pad, oh, ow


def pool_geometry(x, pool_h, pool_w, stride, pad):
    """Check Pooling's input and settings.

    ``pool_h``, ``pool_w`` and ``stride`` are integers >= 1, ``pad`` an integer of at most half
    of each pool size (so that every window holds at least one input element: padding never
    wins a maximum), and the window must fit the padded input.

    Returns
    -------
    pool_h, pool_w, stride, pad, OH, OW : int
    """
    layer = "Pooling"
    ph = _integer(pool_h, "pool_h", layer, 1)
    pw = _integer(pool_w, "pool_w", layer, 1)
    stride, pad = window_settings(stride, pad, layer)
    if 2 * pad > min(ph, pw):
        raise ValueError(
            f"{layer}: pad {pad} is more than half of the pool size {ph}x{pw}: a window could "
            f"hold nothing but padding"
        )
    _input_4d(x, f"{layer}.forward")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{layer}.forward: x of shape {x.shape} has no pixels to pool")
    oh, ow = _window_fits(x.shape, ph, pw, stride, pad, f"{layer}.forward", "pool window")
    return ph, pw, stride, pad, oh, ow


def filters_for_backward(W, w_shape):
    """``W`` as ``Convolution.backward`` reads it: it must still have the shape forward saw."""
    W = _as_array(W, "W")
    if W.shape != tuple(w_shape):
        raise ValueError(
            f"Convolution.backward: W has shape {W.shape}, but forward ran with {tuple(w_shape)}"
        )
    return W


def bias_vector(b, fn):
    """A checked Convolution bias (see :func:`conv_geometry`) as a contiguous (FN,) vector."""
    return np.ascontiguousarray(np.broadcast_to(np.reshape(b, -1), (fn,)))


# --- dropout and batch normalisation ------------------------------------------------------


def dropout_ratio(ratio):
    """Dropout's ``dropout_ratio``: a real number in [0, 1), returned as a Python float."""
    if type(ratio) is float and 0.0 <= ratio < 1.0:  # the usual case, checked cheaply
        return ratio
    if isinstance(ratio, bool) or np.ndim(ratio) != 0 or np.asarray(ratio).dtype.kind not in "iuf":
        raise TypeError(f"Dropout: dropout_ratio must be a real number; got {ratio!r}")
    r = float(ratio)
    if not 0.0 <= r < 1.0:
        raise ValueError(f"Dropout: dropout_ratio must be in [0, 1); got {ratio!r}")
    return r


def random_source(rng):
    """Dropout's ``rng``: None (NumPy's global state, as the book), a ``numpy.random.Generator``
    (or anything with its ``random(shape)`` method), or a seed for ``numpy.random.default_rng``."""
    if rng is None or callable(getattr(rng, "random", None)):
        return rng
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"Dropout: rng must be a numpy.random.Generator, a seed or None; got "
                        f"{type(rng).__name__}") from exc


def batchnorm_input(x):
    """BatchNormalization's ``x`` as (N, D), ``D = prod(x.shape[1:])``, as the book reshapes it."""
    if x.ndim < 2:
        raise ValueError(
            f"BatchNormalization.forward: x must have at least 2 axes, (N, D) or (N, C, H, W) "
            f"for example; got shape {x.shape}")
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # not -1: ambiguous for 0 rows


def feature_parameter(a, name, x_shape, d):
    """Check that ``gamma`` or ``beta`` fits ``d`` features: its shape broadcasts to (1, d)
    without growing, as ``gamma * xn`` does in the book ((d,) is the usual shape)."""
    shape = np.shape(a)
    if shape == (d,):  # the usual case, without broadcast_shapes's cost
        return
    try:
        fits = len(shape) <= 2 and np.broadcast_shapes(shape, (1, d)) == (1, d)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"BatchNormalization: {name} of shape {shape} does not fit x of shape "
            f"{tuple(x_shape)}: it needs shape ({d},), one value per feature of x.reshape(N, -1)"
        )


def running_statistic(a, name, x_shape, d):
    """Check a running mean or variance: None, or an array of shape (d,). Return it checked."""
    if a is None:
        return None
    arr = _as_array(a, name)
    if arr.shape != (d,):
        raise ValueError(
            f"BatchNormalization: {name} of shape {arr.shape} does not fit x of shape "
            f"{tuple(x_shape)}: it needs shape ({d},), one value per feature of x.reshape(N, -1)"
        )
    return arr
