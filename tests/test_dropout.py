"""Dropout on both backends: the book's masks, agreement, gradients, edge cases, bad input,
dtypes, layouts, no mutation and determinism; the kernel backend's own draw of
``np.random.rand``'s stream, its lock and its fallback."""

import hashlib
import pickle
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from layouts import LAYOUTS

from fastbp import layers, reference, threads
from fastbp._globalrandom import global_mt19937
from fastbp.kernels import parallel
from fastbp.testing import FixedUniforms, assert_finite_differences, assert_layers_agree

BACKENDS = {"kernel": layers, "reference": reference.layers}


@pytest.fixture(params=list(BACKENDS))
def L(request):
    return BACKENDS[request.param]


def book_dropout(x, ratio, train=True):
    """The book's Dropout.forward, written out: the global state's ``rand`` and ``x * mask``."""
    if train:
        mask = np.random.rand(*x.shape) > ratio  # noqa: NPY002
        return x * mask, mask
    return x * (1.0 - ratio), None


# --- the book's masks -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7, 13), (3, 2, 4, 5), (1, 1)])
def test_seeded_global_state_gives_the_books_mask_and_values(L, shape, dtype, build):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    np.random.seed(42)  # noqa: NPY002
    want, want_mask = book_dropout(x, 0.35)
    after_book = np.random.rand()  # noqa: NPY002
    np.random.seed(42)  # noqa: NPY002
    layer = L.Dropout(0.35)
    out = layer.forward(x)
    assert out.dtype == dtype
    np.testing.assert_array_equal(layer.mask, want_mask)
    assert out.tobytes() == want.tobytes()
    assert np.random.rand() == after_book  # noqa: NPY002 (the stream advanced as the book's)
    dout = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    assert layer.backward(dout).tobytes() == (dout * want_mask).tobytes()


def test_generator_gives_rng_random_masks(L):
    x = np.random.default_rng(0).standard_normal((9, 4))
    layer = L.Dropout(0.5, rng=np.random.default_rng(7))
    masks = [layer.forward(x) != 0 for _ in range(2)]
    draws = np.random.default_rng(7)
    for m in masks:
        np.testing.assert_array_equal(m, draws.random((9, 4)) > 0.5)
    seeded = L.Dropout(0.5, rng=7)  # a seed makes a generator
    np.testing.assert_array_equal(seeded.forward(x) != 0, masks[0])


def test_train_keeps_values_unscaled_and_test_scales(L):
    x = np.random.default_rng(2).uniform(1, 2, (50, 40))
    layer = L.Dropout(0.3, rng=3)
    out = layer.forward(x)
    kept = out != 0
    np.testing.assert_array_equal(out[kept], x[kept])  # no 1 / (1 - ratio) rescaling
    assert 0.6 < kept.mean() < 0.8
    np.testing.assert_array_equal(layer.forward(x, train_flg=False), x * (1.0 - 0.3))
    x32 = x.astype(np.float32)
    test32 = layer.forward(x32, train_flg=False)
    assert test32.dtype == np.float32
    assert test32.tobytes() == (x32 * np.float32(0.7)).tobytes()
    np.testing.assert_array_equal(layer.backward(x), x * 0.7)  # test pass: dout * (1 - ratio)


def test_ratio_zero_keeps_everything_and_attribute_changes_are_seen(L):
    x = np.random.default_rng(4).uniform(1, 2, (6, 6))
    layer = L.Dropout(0.0, rng=5)
    np.testing.assert_array_equal(layer.forward(x), x)
    layer.dropout_ratio = 0.999
    assert (layer.forward(x) == 0).mean() > 0.9
    assert layer.dropout_ratio == 0.999


@pytest.mark.parametrize("name", ["Dropout[train]", "Dropout[test]"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_agreement_through_the_helper(name, dtype, build):
    from fastbp.testing import layer_cases

    for batch in (1, 5):
        case = next(c for c in layer_cases(seed=2, batch=batch) if c.name == name)
        assert_layers_agree(case.candidate, case.reference, case.inputs, dtype=dtype,
                            grads=case.grads, name=name)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layouts_of_x_and_dout(L, layout, dtype):
    rng = np.random.default_rng(6)
    x, dout = (rng.standard_normal((8, 5)).astype(dtype) for _ in range(2))
    want = L.Dropout(0.4, rng=FixedUniforms(1))
    want_out, want_dx = want.forward(x), want.backward(dout)
    layer = L.Dropout(0.4, rng=FixedUniforms(1))
    prep = LAYOUTS[layout]
    assert layer.forward(prep(x)).tobytes() == want_out.tobytes()
    assert layer.backward(prep(dout)).tobytes() == want_dx.tobytes()
    assert layer.forward(prep(x), False).tobytes() == want.forward(x, False).tobytes()


@pytest.mark.parametrize("train", [True, False])
def test_finite_differences(L, train):
    x = np.random.default_rng(7).standard_normal((4, 6))
    checks = assert_finite_differences(lambda: L.Dropout(0.5, rng=FixedUniforms(3)),
                                       (x, np.bool_(train)))
    assert checks[0].max_error < 1e-8


# --- np.random.rand's stream, drawn by the kernel ------------------------------------------


def global_state(seed, pos=None, gauss=False):
    """Seed the global state; then put it at ``pos`` (of 624 words) and cache a gaussian."""
    np.random.seed(seed)  # noqa: NPY002
    if gauss:
        np.random.randn(3)  # noqa: NPY002 (an odd count leaves one gaussian cached)
    if pos is not None:
        name, key, _, has_gauss, cached = np.random.get_state()  # noqa: NPY002
        np.random.set_state((name, key, pos, has_gauss, cached))  # noqa: NPY002
    return np.random.get_state()  # noqa: NPY002


def assert_same_global_state(want):
    got = np.random.get_state()  # noqa: NPY002
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])
    assert got[2:] == want[2:]  # pos, has_gauss and the cached gaussian, bit for bit


@pytest.fixture
def kernel_draws(monkeypatch):
    """Counts the calls of the kernel that draws the global stream itself (the test fails if
    it is not reached: the global state must be MT19937 over NumPy's layout here)."""
    from fastbp.kernels import dropout

    assert global_mt19937() is not None
    calls = []
    drawing = dropout.dropout_forward_mt19937

    def spy(*args):
        calls.append(args[0].shape)
        return drawing(*args)

    monkeypatch.setattr(dropout, "dropout_forward_mt19937", spy)
    return calls


@pytest.mark.parametrize("seed", [0, 42, 2**32 - 1])
@pytest.mark.parametrize("pos, gauss", [(None, False), (None, True), (0, False), (1, True),
                                        (2, False), (311, False), (622, False), (623, True),
                                        (624, False)])
@pytest.mark.parametrize("shape", [(0,), (0, 5), (), (1,), (311,), (312,), (313,), (624,),
                                   (100, 100), (7, 13, 3)])
def test_kernel_draws_rands_stream_bit_for_bit(kernel_draws, seed, pos, gauss, shape):
    for dtype in (np.float32, np.float64):
        x = np.random.default_rng(seed % 97).standard_normal(shape).astype(dtype)
        dout = np.random.default_rng(1).standard_normal(shape).astype(dtype)
        start = global_state(seed, pos, gauss)
        want = reference.layers.Dropout(0.4)
        want_out, want_dx = want.forward(x), want.backward(dout)
        after = np.random.get_state()  # noqa: NPY002
        next_draws, next_gauss = np.random.rand(5), np.random.randn()  # noqa: NPY002
        np.random.set_state(start)  # noqa: NPY002
        layer = layers.Dropout(0.4)
        out = layer.forward(x)
        assert_same_global_state(after)
        assert np.random.rand(5).tobytes() == next_draws.tobytes()  # noqa: NPY002
        assert np.random.randn() == next_gauss  # noqa: NPY002 (the gaussian cache kept)
        assert out.dtype == dtype and out.tobytes() == want_out.tobytes()
        np.testing.assert_array_equal(layer.mask, want.mask)
        assert layer.backward(dout).tobytes() == want_dx.tobytes()
    assert kernel_draws == [shape] * 2


@pytest.mark.parametrize("pos", [None, 1, 623])
@pytest.mark.parametrize("n", [0, 1, 311, 312, 313, 624, 625, 10000, 100000])
def test_mt19937_uniforms_are_rands_doubles(pos, n):
    from fastbp.kernels import dropout

    for seed in (3, 12345):
        start = global_state(seed, pos)
        want = np.random.rand(n)  # noqa: NPY002
        after = np.random.get_state()  # noqa: NPY002
        np.random.set_state(start)  # noqa: NPY002
        lock, state = global_mt19937()
        u = np.empty(n)
        with lock:
            dropout.mt19937_uniforms(state, u)
        assert u.tobytes() == want.tobytes()
        assert_same_global_state(after)


@pytest.mark.parametrize("pos", [625, 1000, -1])
def test_a_position_outside_the_state_is_left_to_np_random_rand(kernel_draws, pos):
    """``set_state`` accepts any ``pos``; the kernel then leaves the draw to NumPy. (Only an
    empty ``x``: NumPy itself reads outside the state there.)"""
    name, key, _, has_gauss, cached = global_state(0)
    np.random.set_state((name, key, pos, has_gauss, cached))  # noqa: NPY002
    layer = layers.Dropout(0.5)
    assert layer.forward(np.ones((0, 3))).shape == (0, 3)
    assert kernel_draws == []
    assert np.random.get_state()[2] == pos  # noqa: NPY002
    np.random.seed(0)  # noqa: NPY002


def test_a_draw_equal_to_the_ratio_is_dropped(kernel_draws):
    np.random.seed(5)  # noqa: NPY002
    u = np.random.rand(40)  # noqa: NPY002
    x = np.ones(40)
    for j in (0, 17, 39):
        for L in BACKENDS.values():
            np.random.seed(5)  # noqa: NPY002
            layer = L.Dropout(u[j])
            layer.forward(x)
            np.testing.assert_array_equal(layer.mask, u > u[j])
            assert not layer.mask[j]


def test_kernel_draws_and_other_threads_are_serialised(kernel_draws):
    """A draw in the kernel and ``np.random.rand`` in other threads take the generator's lock:
    none is lost or repeated, so the state ends where the same draws, one after the other,
    leave it (it depends on how many words were drawn, not on their order)."""
    import threading

    x = np.ones((200, 300))
    np.random.seed(11)  # noqa: NPY002
    layer = layers.Dropout(0.5)

    def dropouts():
        for _ in range(50):
            layer.forward(x)

    def rands():
        for _ in range(200):
            np.random.rand(20000)  # noqa: NPY002

    workers = [threading.Thread(target=f) for f in (dropouts, rands, dropouts, rands)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    after = np.random.get_state()  # noqa: NPY002
    np.random.seed(11)  # noqa: NPY002
    np.random.rand(2 * 50 * x.size + 2 * 200 * 20000)  # noqa: NPY002
    assert_same_global_state(after)
    assert len(kernel_draws) == 100


@pytest.mark.parametrize("how", ["rand replaced", "not MT19937", "layout check fails",
                                 "state differs"])
def test_fallback_draws_with_np_random_rand(monkeypatch, how):
    from fastbp import _globalrandom
    from fastbp.kernels import dropout

    x = np.random.default_rng(0).standard_normal((30, 20)).astype(np.float32)
    np.random.seed(8)  # noqa: NPY002
    get_state, set_state = np.random.get_state, np.random.set_state
    rand = np.random.rand
    calls = []
    if how == "rand replaced":
        def counted(*shape):
            calls.append(shape)
            return rand(*shape)

        monkeypatch.setattr(np.random, "rand", counted)
    elif how == "not MT19937":
        pcg = np.random.PCG64(3)
        monkeypatch.setattr(np.random, "rand", np.random.RandomState(pcg).rand)
        get_state, set_state = (lambda: pcg.state), (lambda st: setattr(pcg, "state", st))
    else:
        monkeypatch.setattr(_globalrandom, "_cache", None)
        monkeypatch.setattr(_globalrandom, "_checked", None)
        if how == "layout check fails":
            monkeypatch.setattr(_globalrandom, "_layout_is_numpys", lambda: False)
        else:
            monkeypatch.setattr(_globalrandom, "_matches", lambda view, bg: False)
    assert _globalrandom.global_mt19937() is None
    monkeypatch.setattr(dropout, "dropout_forward_mt19937", None)  # must not be reached
    start = get_state()
    results = []
    for L in (reference.layers, layers):
        set_state(start)
        layer = L.Dropout(0.3)
        results.append((layer.forward(x).tobytes(), layer.mask, pickle.dumps(get_state())))
    (want_out, want_mask, want_state), (out, mask, state) = results
    assert out == want_out
    np.testing.assert_array_equal(mask, want_mask)
    assert state == want_state and state != pickle.dumps(start)
    if how == "rand replaced":
        assert calls == [(30, 20)] * 2


# --- NUMERICS.md rows -------------------------------------------------------------------


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_stay_in_their_element(L, dtype):
    x = np.ones((4, 6), dtype=dtype)
    x[0, :3] = [np.nan, np.inf, -np.inf]
    x[1, :3] = [np.nan, np.inf, -np.inf]
    u = FixedUniforms(0)
    u.random = lambda shape: np.where(np.arange(24).reshape(shape) < 6, 0.9, 0.1)
    layer = L.Dropout(0.5, rng=u)  # row 0 kept, the rest dropped
    out = layer.forward(x)
    assert np.isnan(out[0, 0]) and out[0, 1] == np.inf and out[0, 2] == -np.inf
    assert np.isnan(out[1, :3]).all()  # a dropped inf is x * 0: NaN, as the book's x * mask
    np.testing.assert_array_equal(out[0, 3:], 1)
    np.testing.assert_array_equal(out[1:, 3:], 0)
    dx = layer.backward(x)
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(out))
    test = layer.forward(x, train_flg=False)
    assert np.isnan(test[0, 0]) and test[0, 1] == np.inf
    assert np.isfinite(test[2:]).all()


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("shape", [(0, 5), (0,), ()])
def test_empty_and_zero_d(L, shape):
    x = np.full(shape, 2.0)
    np.random.seed(0)  # noqa: NPY002
    layer = L.Dropout(0.5)
    out = layer.forward(x)
    assert out.shape == shape and layer.mask.shape == shape
    assert layer.backward(np.ones(shape)).shape == shape
    assert layer.forward(x, train_flg=False).shape == shape


def test_dropped_negative_gives_negative_zero(L):
    layer = L.Dropout(0.5, rng=FixedUniforms(0))
    layer.rng.random = lambda shape: np.zeros(shape)
    out = layer.forward(np.array([-3.0, 3.0]))
    assert np.signbit(out[0]) and not np.signbit(out[1])  # x * 0, as the book


# --- dtypes -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, want", [
    (np.float16, np.float16), (np.float32, np.float32), (np.float64, np.float64),
    (np.int64, np.float64), (np.int8, np.float16), (np.int16, np.float32), (np.bool_, np.float16),
])
def test_output_dtypes(dtype, want):
    x = np.arange(-6, 6).reshape(3, 4).astype(dtype)
    results = []
    for L in BACKENDS.values():
        layer = L.Dropout(0.5, rng=FixedUniforms(0))
        out = layer.forward(x)
        assert out.dtype == want
        assert layer.backward(np.ones(x.shape, dtype)).dtype == want
        assert layer.forward(x, False).dtype == want
        assert layer.backward(np.ones(x.shape, dtype)).dtype == want
        results.append(out)
    np.testing.assert_array_equal(results[0], results[1])


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, np.nan, np.inf])
def test_ratio_outside_zero_one_raises(L, ratio):
    with pytest.raises(ValueError, match=r"dropout_ratio must be in \[0, 1\)"):
        L.Dropout(ratio)
    layer = L.Dropout(0.5)
    layer.dropout_ratio = ratio
    with pytest.raises(ValueError, match=r"dropout_ratio must be in \[0, 1\)"):
        layer.forward(np.ones((2, 2)))
    assert layer.mask is None


@pytest.mark.parametrize("ratio", ["0.5", [0.5], None, True])
def test_ratio_that_is_not_a_number_raises(L, ratio):
    with pytest.raises(TypeError, match="dropout_ratio must be a real number"):
        L.Dropout(ratio)


def test_bad_rng_raises(L):
    with pytest.raises(TypeError, match="rng must be"):
        L.Dropout(0.5, rng="seed")


def test_backward_before_forward_and_wrong_dout(L):
    layer = L.Dropout()
    with pytest.raises(RuntimeError, match=r"Dropout.backward called before Dropout.forward"):
        layer.backward(np.ones((2, 2)))
    layer.forward(np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"dout of shape \(4, 3\) does not match the forward "
                                         r"output of shape \(3, 4\)"):
        layer.backward(np.ones((4, 3)))
    with pytest.raises(TypeError, match="real numeric"):
        layer.forward(np.ones((2, 2), complex))


def test_bad_input_never_crashes_the_threaded_kernels():
    code = textwrap.dedent("""
        import numpy as np
        from fastbp import layers
        from fastbp.kernels import parallel
        parallel.settings(parallel_min_elements=0).__enter__()  # for the whole script
        layer = layers.Dropout(0.5)
        layer.forward(np.ones((300, 400)))
        for dout in (np.ones(3), np.ones((400, 300)), np.ones((300, 401))):
            try:
                layer.backward(dout)
            except ValueError:
                print("ValueError")
        layer.forward(np.ones((300, 400)), train_flg=False)
        try:
            layer.backward(np.ones(7))
        except ValueError:
            print("ValueError")
        print(layer.backward(np.ones((300, 400))).shape)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ValueError"] * 4 + ["(300,", "400)"], proc.stdout


# --- no mutation, determinism ----------------------------------------------------------


def test_no_argument_is_written(L):
    rng = np.random.default_rng(8)
    x, dout = rng.standard_normal((5, 6)), rng.standard_normal((5, 6))
    before = hashlib.sha256(x.tobytes() + dout.tobytes()).hexdigest()
    layer = L.Dropout(0.5, rng=1)
    for train in (True, False):
        layer.forward(x, train)
        layer.backward(dout)
    assert hashlib.sha256(x.tobytes() + dout.tobytes()).hexdigest() == before


def _run(x, dout):
    layer = layers.Dropout(0.3, rng=FixedUniforms(9))
    out = [layer.forward(x), layer.mask, layer.backward(dout)]
    out += [layer.forward(x, False), layer.backward(dout)]
    return [a.tobytes() for a in out]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bit_identical_across_builds_and_thread_counts(dtype):
    rng = np.random.default_rng(10)
    x, dout = (rng.standard_normal((300, 1000)).astype(dtype) for _ in range(2))
    with parallel.settings(parallel_min_elements=parallel.BUILDS["serial"]):
        serial = _run(x, dout)
    with parallel.settings(parallel_min_elements=parallel.BUILDS["threaded"]):
        for n in sorted({1, 2, numba.config.NUMBA_NUM_THREADS}):
            if n <= numba.config.NUMBA_NUM_THREADS:
                with threads.threads(n):
                    assert _run(x, dout) == serial, n


# --- hypothesis -------------------------------------------------------------------------


SPECIAL = st.one_of(st.floats(-1e4, 1e4, allow_nan=False, width=32),
                    st.sampled_from([np.inf, -np.inf, np.nan]))


@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float64]),
       train=st.booleans(), layout=st.sampled_from(list(LAYOUTS)),
       backend=st.sampled_from(list(BACKENDS)),
       ratio=st.floats(0, 1, exclude_max=True), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_against_the_book(data, dtype, train, layout, backend, ratio, seed):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6))
    x = data.draw(hnp.arrays(np.float64, shape, elements=SPECIAL)).astype(dtype)
    dout = data.draw(hnp.arrays(np.float64, shape, elements=SPECIAL)).astype(dtype)
    layer = BACKENDS[backend].Dropout(ratio, rng=FixedUniforms(seed))
    prep = LAYOUTS[layout]
    with np.errstate(invalid="ignore"):
        if train:
            mask = FixedUniforms(seed).random(shape) > ratio
            want, want_dx = x * mask, dout * mask
        else:
            want, want_dx = x * dtype(1.0 - ratio), dout * dtype(1.0 - ratio)
    out = layer.forward(prep(x), train)
    assert out.dtype == dtype and out.tobytes() == want.tobytes()
    if train:
        np.testing.assert_array_equal(layer.mask, mask)
    dx = layer.backward(prep(dout))
    assert dx.dtype == dtype and dx.tobytes() == want_dx.tobytes()
