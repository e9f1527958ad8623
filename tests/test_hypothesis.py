"""Hypothesis differential tests: kernel layers against the reference on drawn inputs."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastbp import layers, reference
from fastbp.testing import assert_layers_agree

DTYPES = st.sampled_from([np.float32, np.float64])
FINITE = st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False, width=32)


def matrices(min_rows=0, max_rows=9, min_cols=1, max_cols=12):
    shape = st.tuples(st.integers(min_rows, max_rows), st.integers(min_cols, max_cols))
    return hnp.arrays(np.float64, shape, elements=FINITE)


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
