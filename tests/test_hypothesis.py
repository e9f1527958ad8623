"""Hypothesis differential tests: kernel layers against the reference on drawn inputs."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from layouts import LAYOUTS

from fastbp import layers, reference
from fastbp.backends import BACKENDS, layer_module
from fastbp.testing import assert_layers_agree

DTYPES = st.sampled_from([np.float32, np.float64])
FINITE = st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False, width=32)


def matrices(min_rows=0, max_rows=9, min_cols=1, max_cols=12, elements=FINITE):
    shape = st.tuples(st.integers(min_rows, max_rows), st.integers(min_cols, max_cols))
    return hnp.arrays(np.float64, shape, elements=elements)


@given(x=matrices(), dtype=DTYPES)
def test_relu(x, dtype):
    assert_layers_agree(lambda c: layers.Relu(), lambda c: reference.layers.Relu(), (x,),
                        dtype=dtype)


@given(x=matrices(), dtype=DTYPES)
def test_sigmoid(x, dtype):
    assert_layers_agree(lambda c: layers.Sigmoid(), lambda c: reference.layers.Sigmoid(), (x,),
                        dtype=dtype)


@given(data=st.data(), dtype=DTYPES)
def test_affine(data, dtype):
    n, d, h = (data.draw(st.integers(lo, 8)) for lo in (0, 1, 1))
    elems = st.floats(-100, 100, allow_nan=False, width=32)
    x = data.draw(hnp.arrays(np.float64, (n, d), elements=elems))
    W = data.draw(hnp.arrays(np.float64, (d, h), elements=elems))
    b = data.draw(hnp.arrays(np.float64, (h,), elements=elems))
    assert_layers_agree(lambda c: layers.Affine(c(W), c(b)),
                        lambda c: reference.layers.Affine(c(W), c(b)), (x,), dtype=dtype,
                        grads=("dW", "db"))


@given(data=st.data(), dtype=DTYPES, form=st.sampled_from(["labels", "column", "one-hot",
                                                            "probs"]))
def test_softmax_with_loss(data, dtype, form):
    x = data.draw(matrices())
    n, c = x.shape
    labels = data.draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    label_dtype = data.draw(st.sampled_from([np.uint8, np.int16, np.int32, np.int64]))
    if form == "labels":
        t = labels.astype(label_dtype)
    elif form == "column":
        t = labels.astype(label_dtype).reshape(-1, 1)
    elif form == "one-hot":
        t = np.eye(c)[labels]
    else:
        t = data.draw(hnp.arrays(np.float64, (n, c), elements=st.floats(0, 1)))
    # dx = (y * t.sum(1) - t) / N: where targets equal the probabilities every entry cancels to
    # rounding noise, so the scale is the size of the terms, not of the (vanishing) result.
    terms = np.max(np.sum(t, axis=1), initial=1.0) / max(n, 1) if form == "probs" else 0.0
    assert_layers_agree(lambda c: layers.SoftmaxWithLoss(),
                        lambda c: reference.layers.SoftmaxWithLoss(), (x, t), dtype=dtype,
                        scales={"backward": terms})


# --- both backends against the float64 oracle, with special values and layouts -------------

SPECIAL = st.one_of(FINITE, st.sampled_from([np.inf, -np.inf, np.nan]))
LAYERS = {backend: layer_module(backend) for backend in BACKENDS}


def laid_out(x, dtype, layout):
    return LAYOUTS[layout](x.astype(dtype))


@given(x=matrices(elements=SPECIAL), dtype=DTYPES, layout=st.sampled_from(list(LAYOUTS)),
       backend=st.sampled_from(BACKENDS), name=st.sampled_from(["Relu", "Sigmoid"]))
def test_elementwise_special_values_and_layouts(x, dtype, layout, backend, name):
    candidate = getattr(LAYERS[backend], name)
    assert_layers_agree(lambda c: candidate(), lambda c: getattr(reference.layers, name)(),
                        (laid_out(x, dtype, layout),), dtype=dtype)


@given(data=st.data(), dtype=DTYPES, layout=st.sampled_from(list(LAYOUTS)),
       backend=st.sampled_from(BACKENDS), form=st.sampled_from(["labels", "probs"]))
def test_softmax_special_values_and_layouts(data, dtype, layout, backend, form):
    x = data.draw(matrices(elements=SPECIAL))
    n, c = x.shape
    if form == "labels":
        label_dtype = data.draw(st.sampled_from([np.uint8, np.int8, np.int32, np.int64]))
        hi = min(c - 1, np.iinfo(label_dtype).max)
        t = data.draw(hnp.arrays(label_dtype, (n,), elements=st.integers(0, hi)))
        terms = 0.0
    else:
        t = laid_out(data.draw(hnp.arrays(np.float64, (n, c), elements=st.floats(0, 1))), dtype,
                     layout)
        terms = np.max(np.sum(t, axis=1), initial=1.0) / max(n, 1)
    assert_layers_agree(lambda c: LAYERS[backend].SoftmaxWithLoss(),
                        lambda c: reference.layers.SoftmaxWithLoss(),
                        (laid_out(x, dtype, layout), t), dtype=dtype,
                        scales={"backward": terms})


@given(data=st.data(), dtype=DTYPES, layout=st.sampled_from(list(LAYOUTS)),
       backend=st.sampled_from(BACKENDS))
def test_affine_layouts_against_the_oracle(data, dtype, layout, backend):
    n, d, h = (data.draw(st.integers(lo, 7)) for lo in (0, 1, 1))
    elems = st.floats(-100, 100, allow_nan=False, width=32)
    x = data.draw(hnp.arrays(np.float64, (n, d), elements=elems))
    W = data.draw(hnp.arrays(np.float64, (d, h), elements=elems))
    b = data.draw(hnp.arrays(np.float64, (h,), elements=elems))
    L = LAYERS[backend]
    assert_layers_agree(lambda c: L.Affine(LAYOUTS[layout](c(W)), c(b)),
                        lambda c: reference.layers.Affine(c(W), c(b)),
                        (laid_out(x, dtype, layout),), dtype=dtype, grads=("dW", "db"))
