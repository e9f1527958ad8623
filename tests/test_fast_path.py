"""The layers' fast path for calls alike the previous one: taken when it may be, and exactly as
strict as the checks it skips (a layer warmed up on valid arrays treats every input as a fresh
layer does: same results, same dtypes, same errors)."""

import numpy as np
import pytest

from fastbp import layers
from fastbp import validation as v

rng = np.random.default_rng(7)
N, D, H = 6, 5, 4


def outcome(call):
    """What ``call()`` gives: ("ok", values and dtypes of its results) or ("error", type,
    message)."""
    try:
        result = call()
    except Exception as exc:
        return ("error", type(exc), str(exc))
    results = result if isinstance(result, tuple) else (result,)
    return ("ok", [(np.asarray(r).dtype, np.asarray(r).shape, np.asarray(r).tobytes())
                   for r in results])


KEYS = ("_forward_key", "_backward_key", "_key")


def checked(layer):
    """``layer`` with its fast-path keys forgotten, so that its next call runs every check."""
    for name in KEYS:
        if hasattr(layer, name):
            setattr(layer, name, None)
    return layer


def affine_pair(dtype=np.float64):
    """Two layers with the same history; the second forgets its keys before every call."""
    W = rng.standard_normal((D, H)).astype(dtype)
    b = rng.standard_normal(H).astype(dtype)
    x = rng.standard_normal((N, D)).astype(dtype)
    pair = []
    for _ in range(2):
        layer = layers.Affine(W, b)
        layer.forward(x)
        layer.backward(np.ones((N, H), dtype=dtype))
        pair.append(layer)
    assert pair[0]._forward_key is not None and pair[0]._backward_key is not None
    return pair[0], pair[1], x


X64 = rng.standard_normal((N, D))
FORWARD_INPUTS = {
    "same": X64,
    "other batch": rng.standard_normal((N + 3, D)),
    "other width": rng.standard_normal((N, D + 1)),
    "float32": X64.astype(np.float32),
    "float16": X64.astype(np.float16),
    "int": np.arange(N * D).reshape(N, D),
    "fortran": np.asfortranarray(X64),
    "strided": rng.standard_normal((N, 2 * D))[:, ::2],
    "list": X64.tolist(),
    "matrix": np.asmatrix(X64),
    "complex": X64.astype(np.complex128),
    "0-d": np.float64(1.0),
    "N-d": rng.standard_normal((N, 1, D)),
    "read-only": np.frombuffer(X64.tobytes(), dtype=np.float64).reshape(N, D),
}


@pytest.mark.parametrize("case", list(FORWARD_INPUTS))
def test_affine_forward_after_warm_up_acts_as_a_fresh_layer(case):
    warm, fresh, _ = affine_pair()
    x = FORWARD_INPUTS[case]
    assert outcome(lambda: warm.forward(x)) == outcome(lambda: checked(fresh).forward(x))
    if not isinstance(x, list) and np.ndim(x) == 2 and np.asarray(x).dtype.kind == "f":
        assert outcome(lambda: warm.backward(np.ones((len(x), H)))) == \
            outcome(lambda: checked(fresh).backward(np.ones((len(x), H))))


DOUTS = {
    "same": np.ones((N, H)),
    "broadcast row": np.ones((1, H)),
    "broadcast vector": np.arange(H, dtype=np.float64),
    "scalar": 2.0,
    "wrong shape": np.ones((N, H + 1)),
    "float32": np.ones((N, H), dtype=np.float32),
    "fortran": np.asfortranarray(rng.standard_normal((N, H))),
    "strided": rng.standard_normal((N, 2 * H))[:, ::2],
    "complex": np.ones((N, H), dtype=np.complex128),
}


@pytest.mark.parametrize("case", list(DOUTS))
def test_affine_backward_after_warm_up_acts_as_a_fresh_layer(case):
    warm, fresh, _ = affine_pair()
    d = DOUTS[case]
    assert outcome(lambda: (warm.backward(d), warm.dW, warm.db)) == \
        outcome(lambda: (checked(fresh).backward(d), fresh.dW, fresh.db))


@pytest.mark.parametrize("change", ["W float32", "W other shape", "W fortran", "b matrix",
                                    "b scalar", "b wrong"])
def test_affine_parameters_changed_between_calls(change):
    warm, fresh, x = affine_pair()
    W, b = warm.W, warm.b
    if change == "W float32":
        W = W.astype(np.float32)
    elif change == "W other shape":
        W = rng.standard_normal((D, H + 2))
    elif change == "W fortran":
        W = np.asfortranarray(W)
    elif change == "b matrix":
        b = np.tile(b, (N, 1))
    elif change == "b scalar":
        b = 0
    else:
        b = np.ones(H + 1)
    for layer in (warm, fresh):
        layer.W, layer.b = W, b
    assert outcome(lambda: warm.forward(x)) == outcome(lambda: checked(fresh).forward(x))
    d = np.ones((N, np.shape(W)[1]))
    assert outcome(lambda: (warm.backward(d), warm.dW, warm.db)) == \
        outcome(lambda: (checked(fresh).backward(d), fresh.dW, fresh.db))


def test_fast_path_is_taken_for_a_call_alike(monkeypatch):
    warm, _, x = affine_pair(np.float32)
    expected = outcome(lambda: (warm.forward(x), warm.backward(np.ones((N, H), np.float32))))
    loss = layers.SoftmaxWithLoss()
    logits, labels = rng.standard_normal((N, H)), rng.integers(0, H, N)
    loss_expected = outcome(lambda: (loss.forward(logits, labels), loss.backward()))

    def refuse(*args, **kwargs):
        raise AssertionError("the checks ran for a call alike the previous one")
    for name in ("float_inputs", "affine_shapes", "gradient_for", "logits", "targets"):
        monkeypatch.setattr(v, name, refuse)
    x2 = x.copy()  # another array, same shape and dtype: the values are not part of the key
    assert outcome(lambda: (warm.forward(x2), warm.backward(np.ones((N, H), np.float32)))) == \
        expected
    assert outcome(lambda: (loss.forward(logits.copy(), labels.copy()), loss.backward())) == \
        loss_expected


LOGITS = rng.standard_normal((N, H))
TARGETS = {
    "same": rng.integers(0, H, N),
    "too large": np.array([0, 1, H, 2, 0, 1]),
    "negative": np.array([0, 1, -1, 2, 0, 1]),
    "uint8": rng.integers(0, H, N).astype(np.uint8),
    "int32 out of range": np.array([0, 1, 2, 3, 200, 1], dtype=np.int32),
    "column": rng.integers(0, H, (N, 1)),
    "float labels": rng.integers(0, H, N).astype(np.float64),
    "one-hot": np.eye(H)[rng.integers(0, H, N)],
    "wrong count": rng.integers(0, H, N + 1),
    "strided": rng.integers(0, H, 2 * N)[::2],
    "list": [0, 1, 2, 3, 0, 1],
}


@pytest.mark.parametrize("case", list(TARGETS))
@pytest.mark.parametrize("logits", ["same", "float32", "other shape", "fortran", "1-d"])
def test_softmax_after_warm_up_acts_as_a_fresh_layer(case, logits):
    warm, fresh = layers.SoftmaxWithLoss(), layers.SoftmaxWithLoss()
    warm.forward(LOGITS, TARGETS["same"])
    fresh.forward(LOGITS, TARGETS["same"])
    assert warm._key is not None
    x = {"same": LOGITS, "float32": LOGITS.astype(np.float32),
         "other shape": rng.standard_normal((N, H + 1)), "fortran": np.asfortranarray(LOGITS),
         "1-d": LOGITS[0]}[logits]
    t = TARGETS[case]
    assert outcome(lambda: warm.forward(x, t)) == outcome(lambda: checked(fresh).forward(x, t))
    if outcome(lambda: checked(fresh).forward(x, t))[0] == "ok":
        for dout in (1, 2, True, 10**400, 0.5, np.float32(3), np.ones(1)):
            assert outcome(lambda d=dout: warm.backward(d)) == \
                outcome(lambda d=dout: fresh.backward(d))
        assert outcome(lambda: warm.backward(np.ones(2))) == \
            outcome(lambda: fresh.backward(np.ones(2)))


def test_call_key_only_for_arrays_used_as_they_are():
    a = np.ones((3, 4))
    assert v.call_key(a, np.ones(4)) == (a.dtype, ((3, 4), (4,)))
    for bad in (np.ones((3, 4), dtype=np.float32), np.asfortranarray(np.ones((3, 4))),
                np.ones((3, 8))[:, ::2], np.asmatrix(np.ones((3, 4))), [[1.0] * 4] * 3,
                np.ones((3, 4), dtype=np.int64)):
        assert v.call_key(a, bad) is None
        assert v.call_key(bad, a) is None
    key = v.call_key(a)
    assert v.same_call(key, np.zeros((3, 4)))
    assert not v.same_call(key, np.zeros((4, 3)))
    assert not v.same_call(key, np.zeros((3, 4), dtype=np.float32))
    assert not v.same_call(key, np.zeros((3, 8))[:, ::2])


@pytest.mark.parametrize("label_dtype", [np.intp, np.int32])
@pytest.mark.parametrize("module", ["kernel", "reference"])
def test_labels_changed_after_forward_do_not_reach_backward(module, label_dtype):
    """The labels are checked in ``forward`` and kept as a copy: ``intp`` labels (the fast
    path's) were kept by reference, and a kernel indexed with them in ``backward`` unchecked (a
    label changed to 10**9 after ``forward`` crashed the process)."""
    from fastbp import reference

    mod = layers if module == "kernel" else reference.layers
    x = rng.standard_normal((N, D))
    t = np.arange(N, dtype=label_dtype) % D
    expected = mod.SoftmaxWithLoss()
    expected.forward(x, t.copy())
    want = expected.backward()
    layer = mod.SoftmaxWithLoss()
    for _ in range(2):  # the second call takes the kernel's fast path
        layer.forward(x, t)
        t[0] = 1  # was 0: in range, so a layer that read it again would give another dx
        np.testing.assert_array_equal(layer.backward(), want)
        t[0] = 0
