"""Check a layer against a reference: the helper every fastbp layer test goes through.

Use it for your own kernels too. Build the candidate and the reference from the same inputs,
and :func:`compare_layers` runs forward and backward on both, compares outputs, input gradients
and parameter gradients with the tolerances of fastbp's numerical contract, checks the output
dtype, and checks that no input was modified::

    import numpy as np
    from fastbp import layers, reference
    from fastbp.testing import assert_layers_agree

    rng = np.random.default_rng(0)
    W, b, x = rng.standard_normal((4, 3)), rng.standard_normal(3), rng.standard_normal((5, 4))
    assert_layers_agree(
        lambda cast: layers.Affine(cast(W), cast(b)),           # the candidate
        lambda cast: reference.layers.Affine(cast(W), cast(b)),  # the oracle
        (x,), dtype=np.float32, grads=("dW", "db"),
    )

Tolerances (docs/numerics.md, section 7, is the full statement): in float64 the two must agree
within ``rtol = 1e-12`` and ``atol = 1e-12 * max|reference|``. In float32 (and float16) the
reference runs in float64 on the *same* rounded inputs; arrays must agree within
``rtol = 1.3e-6`` and ``atol = 1e-5 * max|reference|`` (torch's float32 defaults, scaled), a
scalar loss within ``atol = 1e-6 * max(1, |loss|)``. NaN must meet NaN, and inf the same inf. No
element is held to less than 4 units in the last place of the candidate's dtype, which only
matters for subnormal results (a float32 gradient of 2e-42 has 11 bits, and its spacing is
absolute).
"""

import dataclasses

import numpy as np

from fastbp.backends import layer_module

__all__ = [
    "Check",
    "Comparison",
    "FixedUniforms",
    "LayerCase",
    "assert_finite_differences",
    "assert_layers_agree",
    "away_from_zero",
    "compare_layers",
    "finite_difference_check",
    "layer_cases",
    "tolerances",
]


@dataclasses.dataclass
class Check:
    """One compared quantity: the largest error, and the error it was allowed."""

    quantity: str
    max_error: float
    tolerance: float
    ratio: float
    detail: str = ""

    @property
    def passed(self):
        return bool(self.ratio <= 1.0)


@dataclasses.dataclass
class Comparison:
    """Every :class:`Check` of one :func:`compare_layers` call."""

    name: str
    dtype: str
    checks: list

    @property
    def passed(self):
        return all(c.passed for c in self.checks)

    def report(self):
        """A plain-text table: one row per quantity."""
        rows = [f"{self.name} [{self.dtype}]"]
        for c in self.checks:
            mark = "ok" if c.passed else "FAIL"
            rows.append(
                f"  {c.quantity:<12} max error {c.max_error:10.3e}  tolerance {c.tolerance:10.3e}"
                f"  {mark}{'  ' + c.detail if c.detail else ''}"
            )
        return "\n".join(rows)


def tolerances(dtype, scale, scalar=False):
    """``(rtol, atol)`` for comparing a result of ``dtype`` whose reference peaks at ``scale``."""
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return 1e-12, 1e-12 * scale
    if scalar:
        return 0.0, 1e-6 * max(1.0, scale) if dtype == np.float32 else 1e-3 * max(1.0, scale)
    if dtype == np.float32:
        return 1.3e-6, 1e-5 * scale
    return 1e-3, 1e-3 * scale  # float16: about 1 ulp


def _ulp(values, dtype):
    if np.dtype(dtype).kind != "f":
        return 0.0
    return np.spacing(np.abs(values).astype(dtype)).astype(np.float64)


def _compare(quantity, got, want, dtype, floor=0.0):
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape:
        return Check(quantity, np.inf, 0.0, np.inf, f"shape {got.shape} != {want.shape}")
    g = got.astype(np.float64)
    w = want.astype(np.float64)
    finite = np.isfinite(w)
    scale = max(float(np.max(np.abs(w[finite]), initial=0.0)), floor)
    rtol, atol = tolerances(dtype, scale, scalar=want.ndim == 0)
    same_special = (np.isnan(g) & np.isnan(w)) | ((g == w) & ~finite)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.where(same_special, 0.0, np.abs(g - w))
        err = np.where(np.isnan(err), np.inf, err)  # NaN against a number, or inf against inf
        allowed = atol + rtol * np.abs(np.where(finite, w, 0.0))
        # Never ask for more than the result's dtype can hold. Below the normal range the
        # spacing is absolute, and each rounding of a subnormal intermediate can cost half of
        # it: allow 4 units in the last place. For normal numbers 4 ulps is well inside rtol
        # (float32: 4.8e-7 < 1.3e-6; float64: 8.9e-16 < 1e-12), so this changes nothing there.
        allowed = np.maximum(allowed, 4 * _ulp(np.where(finite, w, 0.0), got.dtype))
        ratio = np.where(err == 0, 0.0, err / np.where(allowed > 0, allowed, np.finfo(float).tiny))
    worst = float(np.max(ratio, initial=0.0))
    return Check(quantity, float(np.max(err, initial=0.0)), float(atol + rtol * scale), worst)


def _is_float(a):
    return isinstance(a, np.ndarray) and a.dtype.kind == "f"


def _outputs(value):
    return value if isinstance(value, tuple) else (value,)


def compare_layers(make_candidate, make_reference, inputs, *, dtype=np.float64, dout=None,
                   grads=(), name=None, seed=0, scales=None):
    """Run forward and backward on two layers built from the same data, and compare them.

    Parameters
    ----------
    make_candidate, make_reference : callable
        ``make(cast) -> layer``. ``cast`` converts a float array to the dtype the layer should
        be built with: ``dtype`` for the candidate, and for the reference float64 holding the
        same ``dtype``-rounded values. Apply it to every float parameter.
    inputs : tuple
        The arguments of ``forward``. Float arrays are cast as above; anything else (integer
        labels, for instance) is passed to both layers unchanged.
    dtype : dtype
        The candidate's dtype: float64, float32 or float16.
    dout : array_like, optional
        The upstream gradient. By default a seeded standard normal array of the output's shape,
        or 1 when ``forward`` returns a scalar loss.
    grads : sequence of str
        Attributes set by ``backward`` to compare as well (``("dW", "db")`` for Affine).
    name : str, optional
        A label for the report.
    scales : dict, optional
        A lower bound on the scale (the ``max|reference|`` that ``atol`` is relative to) for
        named quantities (``"forward"``, ``"backward"``, a gradient name). For a result that is
        a difference of larger terms which nearly cancel (a softmax gradient whose targets
        equal its probabilities), the largest result is rounding noise, and no finite precision
        can be held to it; pass the size of the terms instead.
    seed : int
        Seed of the default ``dout``.

    Returns
    -------
    Comparison
        Checks for the forward output(s), the backward output(s), each of ``grads``, the
        dtype of every one of them (the candidate's dtype wherever the reference gives floats,
        the reference's dtype elsewhere), and that no input array, ``dout`` included, was
        modified.
    """
    dtype = np.dtype(dtype)
    ref_dtype = np.dtype(np.float64)

    def cast_candidate(a):
        return np.asarray(a, dtype=dtype) if _is_float(np.asarray(a)) else a

    def cast_reference(a):
        if not _is_float(np.asarray(a)):
            return a
        return np.asarray(a, dtype=dtype).astype(ref_dtype)

    candidate = make_candidate(cast_candidate)
    reference = make_reference(cast_reference)
    c_inputs = tuple(cast_candidate(a) for a in inputs)
    r_inputs = tuple(cast_reference(a) for a in inputs)
    before = [a.copy() if isinstance(a, np.ndarray) else None for a in c_inputs]

    c_out = candidate.forward(*c_inputs)
    r_out = reference.forward(*r_inputs)
    scales = scales or {}
    pairs = zip(_outputs(c_out), _outputs(r_out), strict=True)
    checks = [_compare("forward", c, r, dtype, scales.get("forward", 0.0)) for c, r in pairs]

    if dout is None:
        shape = np.shape(_outputs(r_out)[0])
        dout = 1 if shape == () else np.random.default_rng(seed).standard_normal(shape)
    # Each layer gets its own dout (a layer that wrote into a shared one would hand its change
    # to the other), and the candidate's is checked to come back unchanged.
    if np.ndim(dout):
        c_dout = np.array(cast_candidate(np.asarray(dout)))
        r_dout = np.array(cast_reference(np.asarray(dout)))
        c_dout_before = c_dout.copy()
    else:  # a scalar (a loss layer's 1)
        c_dout = r_dout = dout
        c_dout_before = None
    c_dx = candidate.backward(c_dout)
    r_dx = reference.backward(r_dout)
    for k, (c, r) in enumerate(zip(_outputs(c_dx), _outputs(r_dx), strict=True)):
        label = "backward" if k == 0 else f"backward[{k}]"
        checks.append(_compare(label, c, r, dtype, scales.get(label, 0.0)))
    for g in grads:
        checks.append(_compare(g, getattr(candidate, g), getattr(reference, g), dtype,
                               scales.get(g, 0.0)))
    # Every output that the reference gives as floats is in the candidate's dtype (an int or
    # object output fails too); any other (a bool mask) has the reference's dtype.
    produced = [("forward", o, r) for o, r in zip(_outputs(c_out), _outputs(r_out), strict=True)]
    produced += [("backward", o, r) for o, r in zip(_outputs(c_dx), _outputs(r_dx), strict=True)]
    produced += [(g, getattr(candidate, g), getattr(reference, g)) for g in grads]

    def wanted(r):
        kind = np.asarray(r).dtype
        return dtype if kind.kind == "f" else kind

    wrong = [f"{q} {np.asarray(o).dtype}" for q, o, r in produced
             if o is not None and np.asarray(o).dtype != wanted(r)]
    checks.append(Check("dtype", float(bool(wrong)), 0.0, np.inf if wrong else 0.0,
                        "got " + ", ".join(wrong) if wrong else ""))

    changed = [i for i, (a, b) in enumerate(zip(c_inputs, before, strict=True))
               if b is not None and not np.array_equal(a, b, equal_nan=True)]
    if c_dout_before is not None and not np.array_equal(c_dout, c_dout_before, equal_nan=True):
        changed.append("dout")
    checks.append(Check("inputs kept", float(bool(changed)), 0.0, np.inf if changed else 0.0,
                        f"inputs {changed} were modified" if changed else ""))
    label = name or type(candidate).__name__
    return Comparison(label, dtype.name, checks)


def assert_layers_agree(make_candidate, make_reference, inputs, **kwargs):
    """:func:`compare_layers`, raising ``AssertionError`` with the report if any check fails."""
    result = compare_layers(make_candidate, make_reference, inputs, **kwargs)
    if not result.passed:
        raise AssertionError("layers disagree:\n" + result.report())
    return result


def finite_difference_check(make_layer, inputs, *, params=(), wrt=(0,), dout=None, h=1e-6,
                            seed=0):
    """Compare a layer's backward with central differences, in float64.

    The layer is built once by ``make_layer()``. The scalar probed is ``sum(forward(*inputs) *
    dout)`` (or the loss itself when ``forward`` returns a scalar). Each parameter named in
    ``params`` (a mapping such as ``{"W": "dW", "b": "db"}``) is perturbed in place, element by
    element, which also checks that the layer reads its parameters on every call.

    Returns
    -------
    list of Check
        One per probed input (``wrt`` indexes ``inputs``) and per parameter. The error is
        ``max|analytic - numeric| / max(max|analytic|, max|numeric|)``, allowed ``1e-6``; a
        missing gradient, or one whose shape is not its input's, fails (error inf, ``detail``
        says why).
    """
    layer = make_layer()
    inputs = [np.array(a, dtype=np.float64) if _is_float(np.asarray(a)) else a for a in inputs]
    out = layer.forward(*inputs)
    if dout is None:
        dout = 1.0 if np.ndim(out) == 0 else np.random.default_rng(seed).standard_normal(
            np.shape(out))

    def probe():
        return float(np.sum(np.asarray(layer.forward(*inputs), dtype=np.float64) * dout))

    analytic = _outputs(layer.backward(dout))
    targets = [(f"d(input {i})", inputs[i], analytic[i] if i < len(analytic) else None)
               for i in wrt]
    params = dict(params)
    analytic_params = {p: np.array(getattr(layer, g), dtype=np.float64)
                       for p, g in params.items()}
    targets += [(params[p], getattr(layer, p), analytic_params[p]) for p in params]

    checks = []
    for label, array, grad in targets:
        if grad is None:  # backward returned fewer gradients than inputs
            checks.append(Check(label, np.inf, 1e-6, np.inf, "backward gave no gradient"))
            continue
        grad = np.asarray(grad, dtype=np.float64)
        if grad.shape != np.shape(array):  # (a flat dx passed before: it was reshaped)
            checks.append(Check(label, np.inf, 1e-6, np.inf,
                                f"shape {grad.shape}, the input's {np.shape(array)}"))
            continue
        numeric = np.zeros(array.shape)
        flat = array.reshape(-1)  # a view: perturbs the array the layer reads
        for k in range(flat.size):
            keep = flat[k]
            flat[k] = keep + h
            f_plus = probe()
            flat[k] = keep - h
            f_minus = probe()
            flat[k] = keep
            numeric.reshape(-1)[k] = (f_plus - f_minus) / (2 * h)
        scale = max(np.max(np.abs(grad), initial=0.0), np.max(np.abs(numeric), initial=0.0))
        err = float(np.max(np.abs(grad - numeric), initial=0.0) / scale) if scale else 0.0
        checks.append(Check(label, err, 1e-6, err / 1e-6))
    return checks


def assert_finite_differences(make_layer, inputs, **kwargs):
    """:func:`finite_difference_check`, raising ``AssertionError`` if any error exceeds 1e-6."""
    checks = finite_difference_check(make_layer, inputs, **kwargs)
    bad = [c for c in checks if not c.passed]
    if bad:
        raise AssertionError("finite differences disagree: " + ", ".join(
            f"{c.quantity}: {c.detail or f'{c.max_error:.3e}'}" for c in bad))
    return checks


# --- the standard cases ---------------------------------------------------------------------


@dataclasses.dataclass
class LayerCase:
    """A layer and the data to run it on: ``make(module, cast)`` builds it from either backend.

    ``inputs`` are the arguments of ``forward``; ``grads`` the attributes that ``backward`` sets
    (compared too); ``params`` maps each parameter attribute to its gradient attribute, for the
    finite-difference check.
    """

    name: str
    make: object
    inputs: tuple
    grads: tuple = ()
    params: dict = dataclasses.field(default_factory=dict)

    def candidate(self, cast):
        """The kernel layer (:mod:`fastbp.layers`), built with ``cast``."""
        return self.make(layer_module("kernel"), cast)

    def reference(self, cast):
        """The reference layer (:mod:`fastbp.reference.layers`), built with ``cast``."""
        return self.make(layer_module("reference"), cast)


def away_from_zero(rng, shape, low=0.05, high=2.0):
    """Random values with ``low <= |x| <= high``: finite differences never cross ReLU's kink."""
    return rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)


def layer_cases(seed=0, batch=7):
    """The standard cases: every kernel-backed layer, every label form, odd sizes, N-d input.

    The registry that the agreement and finite-difference tests and ``fastbp verify`` run: a new
    layer is added here, once.
    """
    rng = np.random.default_rng(seed)
    x_nd = rng.standard_normal((batch, 3, 4))
    W, b = rng.standard_normal((12, 9)), rng.standard_normal(9)
    logits = 3 * rng.standard_normal((batch, 10))
    labels = rng.integers(0, 10, batch)
    probs = rng.dirichlet(np.ones(10), batch)
    return [
        LayerCase("Relu", lambda m, cast: m.Relu(), (away_from_zero(rng, (batch, 13)),)),
        LayerCase("Sigmoid", lambda m, cast: m.Sigmoid(),
                  (3 * rng.standard_normal((batch, 13)),)),
        LayerCase("Affine", lambda m, cast: m.Affine(cast(W), cast(b)), (x_nd,),
                  grads=("dW", "db"), params={"W": "dW", "b": "db"}),
        LayerCase("SoftmaxWithLoss[labels]", lambda m, cast: m.SoftmaxWithLoss(),
                  (logits, labels)),
        LayerCase("SoftmaxWithLoss[uint8 (N,1)]", lambda m, cast: m.SoftmaxWithLoss(),
                  (logits, labels.astype(np.uint8).reshape(-1, 1))),
        LayerCase("SoftmaxWithLoss[one-hot]", lambda m, cast: m.SoftmaxWithLoss(),
                  (logits, np.eye(10)[labels])),
        LayerCase("SoftmaxWithLoss[probs]", lambda m, cast: m.SoftmaxWithLoss(),
                  (logits, probs)),
        *conv_cases(rng, batch),
        *chapter6_cases(rng, seed, batch),
    ]


def conv_cases(rng, batch):
    """Convolution (its three paths) and Pooling on small odd, non-square images (chapters 7-8)."""
    x = rng.standard_normal((batch, 3, 9, 8))
    W1, b1 = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    W2, b2 = rng.standard_normal((5, 3, 4, 2)), rng.standard_normal(5)
    wide = np.random.default_rng(rng.bit_generator.seed_seq.spawn(1)[0])  # rng's draws unchanged
    x3 = wide.standard_normal((batch, 8, 7, 6))
    W3, b3 = wide.standard_normal((9, 8, 3, 3)), wide.standard_normal(9)
    return [
        LayerCase("Convolution", lambda m, cast: m.Convolution(cast(W1), cast(b1)), (x,),
                  grads=("dW", "db"), params={"W": "dW", "b": "db"}),
        LayerCase("Convolution[stride 2, pad 1]",
                  lambda m, cast: m.Convolution(cast(W2), cast(b2), stride=2, pad=1), (x,),
                  grads=("dW", "db"), params={"W": "dW", "b": "db"}),
        LayerCase("Convolution[3x3, 8 channels, pad 1: Winograd]",
                  lambda m, cast: m.Convolution(cast(W3), cast(b3), pad=1), (x3,),
                  grads=("dW", "db"), params={"W": "dW", "b": "db"}),
        LayerCase("Pooling", lambda m, cast: m.Pooling(2, 2, stride=2), (x,)),
        LayerCase("Pooling[3x2, stride 1, pad 1]",
                  lambda m, cast: m.Pooling(3, 2, stride=1, pad=1), (x,)),
    ]


class FixedUniforms:
    """A stand-in for ``numpy.random.Generator`` whose ``random(shape)`` gives the same numbers
    on every call: Dropout layers built with it draw one mask, on either backend and on every
    forward pass (finite differences call ``forward`` many times)."""

    def __init__(self, seed):
        self.seed = seed

    def random(self, shape):
        return np.random.default_rng(self.seed).random(shape)


def chapter6_cases(rng, seed, batch):
    """BatchNormalization (2-d and 4-d, train and test mode) and Dropout (train and test,
    with one fixed mask on both backends: :class:`FixedUniforms`), chapter 6."""
    x_bn = 2 * rng.standard_normal((batch, 11)) + 1
    x_bn4 = rng.standard_normal((batch, 2, 3, 2)) - 0.5
    gamma, beta = rng.uniform(0.5, 2, 11), rng.standard_normal(11)
    gamma4, beta4 = rng.uniform(0.5, 2, 12), rng.standard_normal(12)
    running = rng.standard_normal(11), rng.uniform(0.5, 2, 11)
    running4 = rng.standard_normal(12), rng.uniform(0.5, 2, 12)
    x_drop = rng.standard_normal((batch, 13))
    train_grads = ("dgamma", "dbeta", "running_mean", "running_var", "xc", "xn", "std")
    test_grads = ("dgamma", "dbeta", "running_mean", "running_var")
    bn_params = {"gamma": "dgamma", "beta": "dbeta"}

    def batchnorm(g, b, stats=None):
        if stats is None:
            return lambda m, cast: m.BatchNormalization(cast(g), cast(b), momentum=0.8)
        return lambda m, cast: m.BatchNormalization(cast(g), cast(b), running_mean=cast(stats[0]),
                                                    running_var=cast(stats[1]))

    return [
        LayerCase("BatchNormalization[train]", batchnorm(gamma, beta), (x_bn,),
                  grads=train_grads, params=bn_params),
        LayerCase("BatchNormalization[train 4-d]", batchnorm(gamma4, beta4), (x_bn4,),
                  grads=train_grads, params=bn_params),
        LayerCase("BatchNormalization[test]", batchnorm(gamma, beta, running),
                  (x_bn, np.False_), grads=test_grads, params=bn_params),
        LayerCase("BatchNormalization[test 4-d]", batchnorm(gamma4, beta4, running4),
                  (x_bn4, np.False_), grads=test_grads, params=bn_params),
        LayerCase("Dropout[train]", lambda m, cast: m.Dropout(0.3, rng=FixedUniforms(seed)),
                  (x_drop,), grads=("mask",)),
        LayerCase("Dropout[test]", lambda m, cast: m.Dropout(0.3), (x_drop, np.False_)),
    ]
