"""``fastbp bench``: the NumPy reference, the kernels and PyTorch (when installed), side by side.

Every case is timed in one run with the backends interleaved (reference, kernel, torch,
reference, kernel, torch, ...), so that a machine whose load changes hurts them alike; the
printed time is the median over the repeats. A case is one forward and one backward through
the layer object, as a user calls them, or one training step (SGD with in-place updates) of a
network: the book's ``TwoLayerNet`` (``step``: batch 100, 784-50-10), ``SimpleConvNet``
(``simpleconv``) and ``DeepConvNet`` (``deepconv``) from :mod:`fastbp.nets` on a batch of 100
MNIST-sized images, and ``dropin``: a SimpleConvNet written as the book writes it (layers in an
OrderedDict, backward through every layer, the first convolution's ``dx`` included) on
:mod:`fastbp.layers` against the same class on :mod:`fastbp.reference.layers`.

Ratios: ``ref/kernel`` and ``torch/kernel`` (above 1: the kernels are faster). ``roofline`` is the
kernel alone (outputs allocated once, so no page faults) against this machine's measured limit:
streaming bandwidth (a copy kernel over as many bytes, bytes read plus bytes written, timed in
the same interleaved loop so that both see the same load) for the memory-bound kernels,
and the time of the three BLAS products alone (same shapes, same BLAS thread rule) for
``Affine``. The exp-bound forwards (sigmoid, softmax) print the bandwidth figure too, for
reference. The bandwidth roofline is computed at ``large`` only: smaller arrays sit in cache,
where a copy is no bound (the kernels beat it), so the column says "in cache" there; Affine's
is filled at every size; a whole training step has none.

Load. The ratios depend on the machine's load: BLAS threads that wait for a busy core slow the
reference (and PyTorch) far more than the kernels, so on a loaded machine ``ref/kernel`` grows
severalfold. The header therefore prints the BLAS and kernel thread counts and the load average
(1, 5, 15 minutes) at the start; the load average at the end follows the table. Each row also
shows ``others``: the cores that other processes kept busy while the row was timed (Linux: busy
time in ``/proc/stat`` of the CPUs this process may use, less this process's CPU time, over the
wall time). A warning
is printed when ``others`` differs by more than :data:`LOAD_CHANGE_CORES` between rows (the load
changed during the run), and a note when it averages more than that (the run was measured under
load). ``--blas-threads N`` runs every backend's BLAS on N threads (1 gives figures that
move least with the load).

PyTorch is optional: it is imported only here, inside functions, and only when installed. It
runs in a process of its own (:class:`PeerProcess`, whose docstring says why), its timed blocks
interleaved with the others'.
"""

import argparse
import contextlib
import json
import os
import sys
import time

SIZES = {  # shared with the asv suite (benchmarks/): one table for both
    "relu": {"book": (100, 50), "medium": (256, 1024), "large": (4096, 4096)},
    "sigmoid": {"book": (100, 50), "medium": (256, 1024), "large": (4096, 4096)},
    "softmax": {"book": (100, 10), "medium": (256, 1000), "large": (4096, 1000)},
    "affine": {"book": (100, 784, 50), "medium": (256, 1024, 1000),
               "large": (4096, 4096, 1000)},
    "step": {"book": (100, 784, 50, 10)},
    "simpleconv": {"book": (100, 1, 28, 28)},
    "deepconv": {"book": (100, 1, 28, 28)},
    "dropin": {"book": (100, 1, 28, 28)},
}
LAYERS = ("relu", "sigmoid", "softmax", "affine", "step", "simpleconv", "deepconv", "dropin")
NET_CASES = ("step", "simpleconv", "deepconv", "dropin")
PAUSED_CASES = ("affine", *NET_CASES)
"""The cases that run BLAS products, timed after :data:`SPIN_PAUSE` seconds of their own calls
before each block; with PyTorch, every case is."""

LOAD_CHANGE_CORES = 0.5
"""Cores of other processes' CPU use: a spread larger than this between the rows of one run
prints a "load changed" warning, and an average above it a "measured under load" note. (Where
``/proc/stat`` is missing, the 1-minute load average at the start and at the end is compared
instead, which also counts the benchmark's own load.)"""

ROOFLINE_NOTES = {
    "cache": "in cache",
    "step": "n/a",
}
"""What the roofline column says where it has no figure (see the module docstring)."""


def add_arguments(parser):
    parser.add_argument("--sizes", default="book,medium,large",
                        help="comma-separated sizes: book, medium, large (default: all three)")
    parser.add_argument("--dtype", default="float64",
                        help="float64, float32, or both (default: float64)")
    parser.add_argument("--layers", default=",".join(LAYERS),
                        help=f"comma-separated cases (default: {','.join(LAYERS)})")
    parser.add_argument("--time", type=float, default=0.25, dest="target",
                        help="about how many seconds to time each backend in each case "
                             "(default 0.25; at most 15 timed blocks of about 20 ms each, 9 "
                             "where the cases pause between backends)")
    parser.add_argument("--blas-threads", type=int, default=None, metavar="N",
                        help="run BLAS on N threads for every backend (threadpoolctl), and "
                             "PyTorch on N threads; default: as they are. The kernels' small "
                             "products still take one thread (fastbp.threads)")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document instead of the table")


# --- the cases -----------------------------------------------------------------------------


def _layer_case(name, module, size, dtype, rng):
    import numpy as np

    if name in ("relu", "sigmoid"):
        x = rng.standard_normal(size).astype(dtype)
        d = rng.standard_normal(size).astype(dtype)
        layer = (module.Relu if name == "relu" else module.Sigmoid)()

        def run():
            layer.forward(x)
            return layer.backward(d)
    elif name == "softmax":
        x = rng.standard_normal(size).astype(dtype)
        t = rng.integers(0, size[1], size[0])
        layer = module.SoftmaxWithLoss()

        def run():
            layer.forward(x, t)
            return layer.backward(1)
    else:
        n, d_in, h = size
        x = rng.standard_normal((n, d_in)).astype(dtype)
        W = (rng.standard_normal((d_in, h)) / np.sqrt(d_in)).astype(dtype)
        b = rng.standard_normal(h).astype(dtype)
        d = rng.standard_normal((n, h)).astype(dtype)
        layer = module.Affine(W, b)

        def run():
            layer.forward(x)
            return layer.backward(d)
    return run


def training_step(backend, size, dtype, seed=1):
    """One SGD step of the book's net as fastbp runs it (``fastbp train``) on a fixed batch:
    :class:`fastbp.nets.TwoLayerNet` and :class:`fastbp.optim.SGD`, both on ``backend``
    ("kernel" or "reference"; the reference's update is the book's ``params[k] -= lr * grads[k]``,
    the kernels' a fused in-place pass with the same bits)."""
    import numpy as np

    from fastbp.nets import TwoLayerNet
    from fastbp.optim import SGD

    n, d_in, hidden, classes = size
    rng = np.random.default_rng(seed)
    x = rng.random((n, d_in)).astype(dtype)
    t = rng.integers(0, classes, n)
    net = TwoLayerNet(d_in, hidden, classes, backend=backend, rng=0, dtype=dtype)
    optimizer = SGD(lr=0.1, backend=backend)

    def run():
        optimizer.update(net.params, net.gradient(x, t))
    return run


def book_training_step(backend, size, dtype, seed=1):
    """One SGD step of the book's own ``TwoLayerNet`` code on ``backend``'s layers: what a
    drop-in user runs. The net is built as the book builds it (:class:`fastbp.nets.TwoLayerNet`
    has the book's ``params`` and ``layers``), and ``gradient`` is the book's loop, which calls
    every layer's ``backward``, the first layer's ``dx`` included."""
    import numpy as np

    from fastbp.nets import TwoLayerNet

    n, d_in, hidden, classes = size
    rng = np.random.default_rng(seed)
    x = rng.random((n, d_in)).astype(dtype)
    t = rng.integers(0, classes, n)
    net = TwoLayerNet(d_in, hidden, classes, backend=backend, rng=0, dtype=dtype)
    lr = np.dtype(dtype).type(0.1)

    def gradient(x, t):  # ch05/two_layer_net.py
        net.loss(x, t)
        dout = net.lastLayer.backward(1)
        for layer in reversed(list(net.layers.values())):
            dout = layer.backward(dout)
        grads = {}
        grads["W1"], grads["b1"] = net.layers["Affine1"].dW, net.layers["Affine1"].db
        grads["W2"], grads["b2"] = net.layers["Affine2"].dW, net.layers["Affine2"].db
        return grads

    def run():
        grads = gradient(x, t)
        for key in ("W1", "b1", "W2", "b2"):
            net.params[key] -= lr * grads[key]
    return run


CONV_LR = 0.01
"""The SGD learning rate of the convolutional training steps."""


def convnet_step(backend, net, size, dtype, seed=1):
    """One SGD step of :class:`fastbp.nets.SimpleConvNet` (``net="simpleconv"``, the book's
    defaults) or :class:`fastbp.nets.DeepConvNet` (``"deepconv"``) built on ``backend``, on a
    fixed batch of ``size`` (N, C, H, W) images: ``params[k] -= lr * grads[k]``, as the book."""
    import numpy as np

    from fastbp.nets import DeepConvNet, SimpleConvNet

    n = size[0]
    rng = np.random.default_rng(seed)
    x = rng.random(size).astype(dtype)
    t = rng.integers(0, 10, n)
    cls = {"simpleconv": SimpleConvNet, "deepconv": DeepConvNet}[net]
    model = cls(input_dim=size[1:], backend=backend, rng=0, dtype=dtype)
    lr = np.dtype(dtype).type(CONV_LR)

    def run():
        grads = model.gradient(x, t)
        for key in model.params:
            model.params[key] -= lr * grads[key]
    return run


def book_simple_convnet_step(module, size, dtype, seed=1):
    """One SGD step of a SimpleConvNet written as the book writes it (``ch07/simple_convnet.py``)
    over the layer classes of ``module``: the drop-in case, where nothing but the import changes.
    Its backward runs through every layer, the first convolution's ``dx`` included."""
    from collections import OrderedDict

    import numpy as np

    class BookSimpleConvNet:
        def __init__(self, input_dim, rng):
            filter_num, filter_size = 30, 5
            conv_size = input_dim[1] - filter_size + 1
            pool_size = filter_num * (conv_size // 2) * (conv_size // 2)
            self.params = {
                "W1": 0.01 * rng.standard_normal((filter_num, input_dim[0], filter_size,
                                                  filter_size)),
                "b1": np.zeros(filter_num),
                "W2": 0.01 * rng.standard_normal((pool_size, 100)),
                "b2": np.zeros(100),
                "W3": 0.01 * rng.standard_normal((100, 10)),
                "b3": np.zeros(10),
            }
            self.params = {k: v.astype(dtype) for k, v in self.params.items()}
            self.layers = OrderedDict()
            self.layers["Conv1"] = module.Convolution(self.params["W1"], self.params["b1"], 1, 0)
            self.layers["Relu1"] = module.Relu()
            self.layers["Pool1"] = module.Pooling(pool_h=2, pool_w=2, stride=2)
            self.layers["Affine1"] = module.Affine(self.params["W2"], self.params["b2"])
            self.layers["Relu2"] = module.Relu()
            self.layers["Affine2"] = module.Affine(self.params["W3"], self.params["b3"])
            self.last_layer = module.SoftmaxWithLoss()

        def predict(self, x):
            for layer in self.layers.values():
                x = layer.forward(x)
            return x

        def loss(self, x, t):
            return self.last_layer.forward(self.predict(x), t)

        def gradient(self, x, t):
            self.loss(x, t)
            dout = self.last_layer.backward(1)
            layers = list(self.layers.values())
            layers.reverse()
            for layer in layers:
                dout = layer.backward(dout)
            grads = {}
            grads["W1"], grads["b1"] = self.layers["Conv1"].dW, self.layers["Conv1"].db
            grads["W2"], grads["b2"] = self.layers["Affine1"].dW, self.layers["Affine1"].db
            grads["W3"], grads["b3"] = self.layers["Affine2"].dW, self.layers["Affine2"].db
            return grads

    rng = np.random.default_rng(seed)
    x = rng.random(size).astype(dtype)
    t = rng.integers(0, 10, size[0])
    network = BookSimpleConvNet(size[1:], np.random.default_rng(0))
    lr = np.dtype(dtype).type(CONV_LR)

    def run():
        grads = network.gradient(x, t)
        for key in ("W1", "b1", "W2", "b2", "W3", "b3"):
            network.params[key] -= lr * grads[key]
    return run


def _torch_convnet(name, size, torch):
    """The PyTorch twin of SimpleConvNet or DeepConvNet (the book's layer sizes)."""
    nn = torch.nn
    c, h = size[1], size[2]
    if name == "deepconv":
        def conv(c_in, c_out, pad=1):
            return [nn.Conv2d(c_in, c_out, 3, padding=pad), nn.ReLU()]

        return nn.Sequential(
            *conv(c, 16), *conv(16, 16), nn.MaxPool2d(2, 2),
            *conv(16, 32), *conv(32, 32, pad=2), nn.MaxPool2d(2, 2),
            *conv(32, 64), *conv(64, 64), nn.MaxPool2d(2, 2),
            nn.Flatten(), nn.Linear(64 * 4 * 4, 50), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(50, 10), nn.Dropout(0.5))
    pooled = (h - 5 + 1) // 2
    return nn.Sequential(nn.Conv2d(c, 30, 5), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Flatten(),
                         nn.Linear(30 * pooled * pooled, 100), nn.ReLU(), nn.Linear(100, 10))


def torch_convnet_step(name, size, dtype, seed=1):
    """One SGD step of the PyTorch twin of ``name`` ("simpleconv", "dropin" or "deepconv"):
    ``nn.Conv2d``, ``MaxPool2d``, ``Linear``, autograd, eager, in train mode. The images need
    no gradient, as in fastbp's nets."""
    import numpy as np
    import torch

    tdtype = {"float32": torch.float32, "float64": torch.float64}[str(np.dtype(dtype))]
    torch.manual_seed(0)
    model = _torch_convnet(name, size, torch).to(tdtype).train()
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.random(size), dtype=tdtype)
    t = torch.tensor(rng.integers(0, 10, size[0]))
    params = list(model.parameters())

    def run():
        for p in params:
            p.grad = None
        torch.nn.functional.cross_entropy(model(x), t).backward()
        with torch.no_grad():
            for p in params:
                p -= CONV_LR * p.grad
    return run


def torch_case(name, size, dtype, rng):
    """PyTorch's twin of a case (eager, autograd): a function that runs one forward and backward
    of ``name`` (a key of :data:`SIZES`) at ``size``, or one SGD step for ``"step"``.
    Needs PyTorch."""
    import torch

    tdtype = {"float32": torch.float32, "float64": torch.float64}[str(dtype)]

    def tensor(a, grad=False):
        return torch.tensor(a, dtype=tdtype, requires_grad=grad)

    if name in ("relu", "sigmoid"):
        x = tensor(rng.standard_normal(size), True)
        d = tensor(rng.standard_normal(size))
        f = torch.relu if name == "relu" else torch.sigmoid

        def run():
            x.grad = None
            f(x).backward(d)
    elif name == "softmax":
        x = tensor(rng.standard_normal(size), True)
        t = torch.tensor(rng.integers(0, size[1], size[0]))

        def run():
            x.grad = None
            torch.nn.functional.cross_entropy(x, t).backward()
    elif name == "affine":
        n, d_in, h = size
        x = tensor(rng.standard_normal((n, d_in)), True)
        W = tensor(rng.standard_normal((d_in, h)) / d_in ** 0.5, True)
        b = tensor(rng.standard_normal(h), True)
        d = tensor(rng.standard_normal((n, h)))

        def run():
            x.grad = W.grad = b.grad = None
            (x @ W + b).backward(d)
    else:
        n, d_in, hidden, classes = size
        g = torch.Generator().manual_seed(0)
        W1 = (0.01 * torch.randn(d_in, hidden, generator=g, dtype=tdtype)).requires_grad_()
        b1 = torch.zeros(hidden, dtype=tdtype, requires_grad=True)
        W2 = (0.01 * torch.randn(hidden, classes, generator=g, dtype=tdtype)).requires_grad_()
        b2 = torch.zeros(classes, dtype=tdtype, requires_grad=True)
        x = tensor(rng.random((n, d_in)))
        t = torch.tensor(rng.integers(0, classes, n))
        params = (W1, b1, W2, b2)

        def run():
            h1 = torch.relu(x @ W1 + b1)
            torch.nn.functional.cross_entropy(h1 @ W2 + b2, t).backward()
            with torch.no_grad():
                for p in params:
                    p -= 0.1 * p.grad
                    p.grad = None
    return run


# --- timing --------------------------------------------------------------------------------


SPIN_PAUSE = 0.3
"""Seconds of a function's own untimed calls before each of its timed blocks
(``time_interleaved(..., pause=SPIN_PAUSE)``, :func:`warm_up`): longer than OpenBLAS's workers
spin after a product (about 0.1 s) and than an OpenMP pool's spin-wait (PyTorch's), so that
one function's still-spinning threads do not slow the next one's, and each function is timed
in its steady state, as a training loop runs it. Timed back to back, the reference's step
after PyTorch's ran 1.4-1.9x slower, and the kernels' drop-in step after the reference's
measured 0.76x where in blocks it measured 1.16x. A sleep of that length instead of the calls
left the kernels' threaded steps slow in the calls that followed (SimpleConvNet's float64 step
15-16 ms against 9 ms): after an idle pause, the scheduler of the 2-core VM this was measured
on often ran both kernel threads on one core for a while."""


def warm_up(f, seconds):
    """Call ``f`` (untimed) for ``seconds``, at least once."""
    until = time.perf_counter() + seconds
    f()
    while time.perf_counter() < until:
        f()


BLOCK_SECONDS = 0.02
"""The length of one timed block of calls of one function in :func:`time_interleaved`."""


def time_interleaved(funcs, target=0.25, min_repeats=3, max_repeats=15, pause=0.0):
    """Median seconds per call of each function, timed in turn.

    Each function is called once first (JIT, caches, page faults of first use), then timed over
    up to three more calls (20 ms at most) to size its blocks. Each repeat times a block of
    calls of every function in turn, each function's block about :data:`BLOCK_SECONDS` long (at
    least one call): a fast function is not timed by a single call, which the wake-up of a
    sleeping core or BLAS thread can make several times slower. With ``pause`` (seconds;
    :data:`SPIN_PAUSE` where the functions run BLAS products or PyTorch), each timing starts
    after that many seconds of the function's own untimed calls (:func:`warm_up`), so it sees
    the function's own threads, running, and not the previous function's.
    """
    import numpy as np

    once = []
    for f in funcs:
        f()
        best, spent = float("inf"), 0.0
        for _ in range(3):
            t0 = time.perf_counter()
            f()
            took = time.perf_counter() - t0
            best, spent = min(best, took), spent + took
            if spent >= BLOCK_SECONDS:
                break
        once.append(max(best, 1e-7))
    inners = [max(1, int(BLOCK_SECONDS / t)) for t in once]
    longest = max(inner * t for inner, t in zip(inners, once, strict=True))
    repeats = int(min(max_repeats, max(min_repeats, target / longest)))
    samples = [[] for _ in funcs]
    for _ in range(repeats):
        for f, inner, out in zip(funcs, inners, samples, strict=True):
            out.append(timed_block(f, inner, pause))
    return [float(np.median(s)) for s in samples]


def timed_block(f, inner, pause=0.0):
    """Seconds per call of ``inner`` calls of ``f``, after ``pause`` seconds of its untimed calls
    (:func:`warm_up`); a :class:`PeerProcess` times them in its own process."""
    if isinstance(f, PeerProcess):
        return f.block(inner, pause)
    if pause:
        warm_up(f, pause)
    t0 = time.perf_counter()
    for _ in range(inner):
        f()
    return (time.perf_counter() - t0) / inner


def stream_bandwidth(n=1 << 24):
    """Bytes per second of a numba copy (read plus write) over ``n`` float64, outputs faulted
    in, run the way fastbp's kernels run (the threaded build where a core is idle)."""
    import numpy as np

    a = np.ones(n)
    b = np.zeros(n)
    copy = _copy_kernel()
    copy(a, b)
    best = []
    for _ in range(5):
        t0 = time.perf_counter()
        copy(a, b)
        best.append(time.perf_counter() - t0)
    return 16 * n / float(np.median(best))


_COPY = None


def _copy_kernel():
    global _COPY
    if _COPY is None:
        from numba import prange

        from fastbp.kernels.parallel import sized

        def _copy(a, b):
            n = a.size
            block = 16384
            for k in prange((n + block - 1) // block):
                lo = k * block
                hi = min(n, lo + block)
                b[lo:hi] = a[lo:hi]

        _COPY = sized(_copy)
    return _COPY


def _kernel_roofline(name, size, dtype, bandwidth, rng):
    """(bytes moved or flops, seconds) of the kernel alone, for the roofline column."""
    import numpy as np

    from fastbp.kernels import activations, softmax

    itemsize = np.dtype(dtype).itemsize
    if name in ("relu", "sigmoid"):
        n = size[0] * size[1]
        x = rng.standard_normal(n).astype(dtype)
        d = rng.standard_normal(n).astype(dtype)
        out = np.empty_like(x)
        dx = np.empty_like(x)
        if name == "relu":
            mask = np.empty(n, dtype=bool)
            fwd = (lambda: activations.relu_forward(x, out, mask), n * (2 * itemsize + 1))
            bwd = (lambda: activations.relu_backward(d, mask, dx), n * (2 * itemsize + 1))
        else:
            tail = np.empty_like(x)
            activations.sigmoid_forward(x, out, tail)
            fwd = (lambda: activations.sigmoid_forward(x, out, tail), n * 3 * itemsize)
            bwd = (lambda: activations.sigmoid_backward(d, tail, dx), n * 3 * itemsize)
    elif name == "softmax":
        n, c = size
        x = rng.standard_normal(size).astype(dtype)
        t = rng.integers(0, c, n).astype(np.intp)
        y = np.empty_like(x)
        dx = np.empty_like(x)
        losses = np.empty(n)
        fwd = (lambda: softmax.softmax_cross_entropy_labels_forward(x, t, y, losses),
               n * c * 2 * itemsize)
        softmax.softmax_cross_entropy_labels_forward(x, t, y, losses)
        bwd = (lambda: softmax.softmax_cross_entropy_labels_backward(y, t, 1.0 / n, dx),
               n * c * 2 * itemsize)
    else:
        return None
    # the copy runs in the same interleaved loop, over as many bytes, so both see the same load
    src = np.ones(fwd[1] // 16)
    dst = np.zeros_like(src)
    copy = _copy_kernel()
    times = time_interleaved([lambda: copy(src, dst), fwd[0], bwd[0]], target=0.1)
    bandwidth = 16 * src.size / times[0]
    return {"forward": fwd[1] / times[1] / bandwidth, "backward": bwd[1] / times[2] / bandwidth}


def _gemm_rate(size, dtype, rng):
    from fastbp.threads import ProductThreads

    n, d_in, h = size
    x = rng.standard_normal((n, d_in)).astype(dtype)
    W = rng.standard_normal((d_in, h)).astype(dtype)
    d = rng.standard_normal((n, h)).astype(dtype)

    def products():  # on the BLAS thread count the Affine layer gives them
        with ProductThreads(2 * n * d_in * h):
            x @ W
        with ProductThreads(2 * n * d_in * h):
            d @ W.T
            x.T @ d
    (t,) = time_interleaved([products], target=0.1)
    return 6 * n * d_in * h / t, t


def _torch_available():
    """Whether PyTorch is installed, without importing it here (see :class:`PeerProcess`)."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _torch_case_seeded(name, size, dtype):
    """:func:`torch_case` with the generator a :class:`PeerProcess` can't be sent."""
    import numpy as np

    return torch_case(name, size, np.dtype(dtype), np.random.default_rng(0))


def _peer_main(conn, factory, args, threads):
    """The peer process's loop: build ``factory(*args)``, then run what the parent asks."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    f = globals()[factory](*args)
    conn.send(("ready", None))
    while True:
        what, inner, pause = conn.recv()
        if what == "close":
            return
        conn.send(("done", timed_block(f, inner, pause)))


class PeerProcess:
    """A benchmark function (``factory(*args)``, a function of this module: PyTorch's steps) that
    runs in a process of its own, with its timed blocks timed there.

    Why not in the benchmark's process: PyTorch and numba both load GNU OpenMP (``libgomp.so.1``)
    and, in one process, share whichever loads first. Loaded by numba first, it has fastbp's
    passive wait policy, and PyTorch's DeepConvNet step took 57-66 ms instead of 46-52 in
    float32. Loaded by PyTorch first (``import torch`` before fastbp's first threaded kernel),
    numba's workers spin after each parallel region, take the core a helper thread needs, and
    make the load check see no idle core: fastbp's DeepConvNet step took 77-84 ms instead of
    48-53. Each library is measured here as its users run it, alone in its process.

    Calling the object runs one call in the peer. ``block(inner, pause)`` runs ``pause`` seconds
    of untimed calls there, then ``inner`` timed ones, and returns the seconds per call: the
    time of the round trip to the peer is not in it. ``threads``: PyTorch's thread count
    (``None``: its default). Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, factory, *args, threads=None):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of ours loaded
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_peer_main, args=(child, factory, args, threads),
                                 daemon=True)
        self._proc.start()
        child.close()
        self._receive()

    def _receive(self):
        try:
            _, value = self._conn.recv()
        except EOFError:
            self._proc.join(5)
            raise RuntimeError(f"the benchmark's peer process died (exit code "
                               f"{self._proc.exitcode})") from None
        return value

    def block(self, inner, pause=0.0):
        self._conn.send(("block", inner, pause))
        return self._receive()

    def __call__(self):
        self.block(1)

    def close(self):
        if self._proc.is_alive():
            try:
                self._conn.send(("close", 0, 0.0))
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_case(name, size_name, dtype, target, use_torch, torch_threads=None):
    """Time one case; return a dict (the JSON record). PyTorch's twin (``use_torch``) runs in a
    :class:`PeerProcess`, on ``torch_threads`` threads (``None``: its default)."""
    import numpy as np

    from fastbp import layers
    from fastbp.reference import layers as reference

    size = SIZES[name][size_name]
    funcs, names = [], []
    for label, module in (("reference", reference), ("kernel", layers)):
        rng = np.random.default_rng(0)
        if name == "step":
            funcs.append(training_step(label, size, dtype))
        elif name == "dropin":
            funcs.append(book_simple_convnet_step(module, size, dtype))
        elif name in ("simpleconv", "deepconv"):
            funcs.append(convnet_step(label, name, size, dtype))
        else:
            funcs.append(_layer_case(name, module, size, dtype, rng))
        names.append(label)
    with contextlib.ExitStack() as stack:
        if use_torch:  # in a process of its own (PeerProcess)
            factory = ("torch_convnet_step" if name in ("simpleconv", "deepconv", "dropin")
                       else "_torch_case_seeded")
            funcs.append(stack.enter_context(PeerProcess(factory, name, size,
                                                         str(np.dtype(dtype)),
                                                         threads=torch_threads)))
            names.append("torch")
        # BLAS products (Affine, the steps) and PyTorch leave threads spinning: pause between
        pause = SPIN_PAUSE if use_torch or name in PAUSED_CASES else 0.0
        times = dict(zip(names, time_interleaved(funcs, target=target,
                                                 max_repeats=9 if pause else 15, pause=pause),
                         strict=True))
    record = {"case": name, "size": size_name, "shape": list(size), "dtype": str(dtype),
              "seconds": times, "ref/kernel": times["reference"] / times["kernel"]}
    if "torch" in times:
        record["torch/kernel"] = times["torch"] / times["kernel"]
    return record


def _environment():
    import numba
    import numpy as np

    from fastbp import __version__
    from fastbp.kernels import parallel

    env = {"fastbp": __version__, "numpy": np.__version__, "numba": numba.__version__,
           "kernel_threads": numba.get_num_threads(), "adapt_to_load": parallel.ADAPT_TO_LOAD,
           "parallel_min_elements": parallel.PARALLEL_MIN_ELEMENTS,
           "idle_cores": parallel.idle_cores()}
    try:
        from threadpoolctl import threadpool_info

        env["blas"] = [dict({k: i.get(k) for k in ("internal_api", "architecture",
                                                    "num_threads", "version")},
                            library=os.path.basename(os.path.dirname(i.get("filepath") or "")))
                       for i in threadpool_info() if i.get("user_api") == "blas"]
    except ImportError:
        env["blas"] = None  # unknown without threadpoolctl
    env["cpu_count"] = os.cpu_count()
    return env


# --- load ----------------------------------------------------------------------------------


def _load_average():
    """``os.getloadavg()``, or None where the platform has none."""
    try:
        return tuple(round(v, 2) for v in os.getloadavg())
    except (AttributeError, OSError):
        return None


def _busy_seconds():
    """Busy time since boot of the CPUs this process may run on (Linux ``/proc/stat``; in a
    container limited to some CPUs, only those), or None elsewhere."""
    try:
        allowed = {f"cpu{c}" for c in os.sched_getaffinity(0)}
    except (AttributeError, OSError):
        allowed = {"cpu"}  # the total line
    try:
        busy = 0
        with open("/proc/stat") as f:
            for line in f:
                fields = line.split()
                if not fields or not fields[0].startswith("cpu"):
                    break  # the cpu lines come first
                if fields[0] in allowed:
                    # user nice system idle iowait irq softirq steal; guest is within user
                    ticks = [int(v) for v in fields[1:9]]
                    busy += sum(ticks) - ticks[3] - ticks[4]
        return busy / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class _CpuClock:
    """Other processes' CPU use, in cores, between :meth:`mark` calls."""

    def __init__(self):
        self.mark()

    @staticmethod
    def _now():
        t = os.times()  # with the PyTorch peers' (PeerProcess), once they have exited
        return (time.perf_counter(), _busy_seconds(),
                t.user + t.system + t.children_user + t.children_system)

    def mark(self):
        self._last = self._now()

    def others(self):
        """Cores busy with other processes since the last mark (None off Linux); marks."""
        (w0, b0, o0), now = self._last, self._now()
        self._last = now
        w1, b1, o1 = now
        if b0 is None or b1 is None or w1 <= w0:
            return None
        return max(0.0, (b1 - b0 - (o1 - o0)) / (w1 - w0))


def load_warnings(others, load_start, load_end, threshold=LOAD_CHANGE_CORES):
    """The warnings about load for one run.

    Parameters
    ----------
    others : list of float or None
        Each row's cores busy with other processes.
    load_start, load_end : tuple or None
        ``os.getloadavg()`` at the start and at the end.
    threshold : float
        :data:`LOAD_CHANGE_CORES`.

    Returns
    -------
    list of str
    """
    warnings = []
    measured = [o for o in others if o is not None]
    if measured:
        low, high = min(measured), max(measured)
        if high - low > threshold:
            warnings.append(
                f"the load changed during the run: other processes kept {low:.2f} to "
                f"{high:.2f} cores busy from row to row (more than {threshold} apart), so "
                "the rows are not comparable; rerun on an idle machine, or with "
                "--blas-threads 1")
        mean = sum(measured) / len(measured)
        if mean > threshold:
            warnings.append(
                f"measured under load: other processes kept {mean:.2f} cores busy on average; "
                "BLAS threads that wait for a core slow the reference and PyTorch far more "
                "than the kernels, which inflates the ratios (--blas-threads 1 steadies them)")
    elif load_start and load_end and abs(load_end[0] - load_start[0]) > threshold:
        warnings.append(
            f"the load changed during the run: 1-minute load average {load_start[0]:.2f} at "
            f"the start, {load_end[0]:.2f} at the end (this includes the benchmark itself)")
    return warnings


def _blas_limits(threads):
    """threadpoolctl's limit of BLAS to ``threads`` (None: a no-op); ImportError without it."""
    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads, user_api="blas")


def _torch_info(threads):
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    return torch.__version__, torch.get_num_threads()


def _torch_environment(threads):
    """PyTorch's version and thread count (``threads``, or its default), asked in a process of
    its own: PyTorch is never imported in the benchmark's process (:class:`PeerProcess`)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_torch_info, (threads,))


def run(args):
    import numpy as np


    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    cases = [c.strip() for c in args.layers.split(",") if c.strip()]
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    for s in sizes:
        if s not in ("book", "medium", "large"):
            print(f"fastbp bench: unknown size {s!r} (book, medium, large)", file=sys.stderr)
            return 2
    for c in cases:
        if c not in LAYERS:
            print(f"fastbp bench: unknown case {c!r} ({', '.join(LAYERS)})", file=sys.stderr)
            return 2
    for d in dtypes:
        if d not in ("float32", "float64"):
            print(f"fastbp bench: unknown dtype {d!r} (float32, float64, both)", file=sys.stderr)
            return 2
    if not (sizes and cases):
        print("fastbp bench: --sizes and --layers need at least one name each", file=sys.stderr)
        return 2
    if not 0 < args.target < float("inf"):  # NaN fails too
        print(f"fastbp bench: --time must be a positive number of seconds; got {args.target}",
              file=sys.stderr)
        return 2
    blas_threads = getattr(args, "blas_threads", None)
    if blas_threads is not None and blas_threads < 1:
        print("fastbp bench: --blas-threads must be at least 1", file=sys.stderr)
        return 2
    # threadpoolctl limits only the libraries already loaded: compile one kernel first, since
    # numba's first compilation loads SciPy's BLAS too.
    _copy_kernel()(np.ones(1), np.zeros(1))
    try:
        limits = _blas_limits(blas_threads)
    except ImportError:
        print("fastbp bench: --blas-threads needs threadpoolctl, which is not installed; "
              'install it with: pip install "fastbp[data]"', file=sys.stderr)
        return 2
    use_torch = not args.no_torch and _torch_available()
    with limits:
        return _run(args, sizes, cases, dtypes, use_torch, blas_threads)


def _blas_text(env):
    if env["blas"] is None:
        return "BLAS threads unknown (threadpoolctl not installed)"
    if not env["blas"]:
        return "BLAS threads: no BLAS found"
    option = env.get("blas_threads_option")
    return "BLAS threads" + (" (--blas-threads)" if option is not None else "") + " " + ", ".join(
        f"{b['num_threads']} ({b['internal_api']} {b['version']} in "
        f"{b['library'].removesuffix('.libs') or '?'})" for b in env["blas"])


def _load_text(load):
    return " ".join(f"{v:.2f}" for v in load) if load else "unavailable"


def _run(args, sizes, cases, dtypes, use_torch, blas_threads):
    import numpy as np

    from fastbp.threads import PRODUCT_THREADS_MIN_FLOPS

    load_start = _load_average()
    started = time.perf_counter()
    bandwidth = stream_bandwidth()
    env = _environment()
    env["stream_bandwidth_GBps"] = bandwidth / 1e9
    env["blas_threads_option"] = blas_threads
    env["load_average_start"] = load_start
    env["torch"] = None
    if use_torch:
        version, threads = _torch_environment(blas_threads)
        env["torch"] = {"version": version, "threads": threads}
    if not args.json:
        torch_text = (f"{env['torch']['version']} ({env['torch']['threads']} threads)"
                      if use_torch else "(not installed or --no-torch)")
        print(f"fastbp {env['fastbp']}  numpy {env['numpy']}  numba {env['numba']}  "
              f"torch {torch_text}")
        print(f"{_blas_text(env)}; kernel products from "
              f"{PRODUCT_THREADS_MIN_FLOPS / 1e6:.1f} MFLOP on 1 + idle cores' BLAS threads")
        print(f"kernel threads {env['kernel_threads']} (adapt to load: {env['adapt_to_load']}, "
              f"idle cores now: {env['idle_cores']})  stream bandwidth "
              f"{bandwidth / 1e9:.1f} GB/s")
        print(f"load average at start {_load_text(load_start)} (1, 5, 15 min; "
              f"{env['cpu_count']} cores)")
        print(_header())
    records = []
    clock = _CpuClock()
    for dtype in dtypes:
        for name in cases:
            for size_name in sizes:
                if size_name not in SIZES[name]:
                    continue
                clock.mark()
                record = run_case(name, size_name, np.dtype(dtype), args.target, use_torch,
                                  torch_threads=blas_threads)
                record["others_cores"] = clock.others()  # over the timing, not the roofline
                rng = np.random.default_rng(0)
                if name == "affine":
                    rate, _ = _gemm_rate(SIZES[name][size_name], dtype, rng)
                    flops = 6 * np.prod(SIZES[name][size_name])
                    record["roofline"] = {"fwd+bwd vs BLAS": flops / record["seconds"]
                                          ["kernel"] / rate}
                elif name in NET_CASES:
                    record["roofline"] = None
                    record["roofline_note"] = ("a whole training step: no single limit to "
                                               "compare with")
                elif size_name == "large":
                    record["roofline"] = _kernel_roofline(name, SIZES[name][size_name],
                                                          dtype, bandwidth, rng)
                else:
                    record["roofline"] = None
                    record["roofline_note"] = ("in cache: a copy of as many bytes is no bound "
                                               "there (the kernels beat it); see large")
                records.append(record)
                if not args.json:
                    print(_row(record), flush=True)
    elapsed = time.perf_counter() - started
    load_end = _load_average()
    env["load_average_end"] = load_end
    warnings = load_warnings([r["others_cores"] for r in records], load_start, load_end)
    if args.json:
        json.dump({"environment": env, "results": records, "seconds": elapsed,
                   "warnings": warnings}, sys.stdout, indent=1)
        print()
    else:
        print(f"load average at end {_load_text(load_end)} (at start {_load_text(load_start)})")
        print(f"({elapsed:.0f} s; times are medians per fwd+bwd or per step; others: cores "
              "busy with other processes during the row)")
        if any(r.get("roofline_note", "").startswith("in cache") for r in records):
            print("roofline: relu, sigmoid and softmax only at large; smaller arrays sit in "
                  "cache, where a copy of as many bytes is no bound (the kernels beat it)")
    for w in warnings:
        print(f"fastbp bench: warning: {w}", file=sys.stderr)
    return 0


def _fmt_time(s):
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def _shape_text(case, shape):
    """A row's shapes, as the layer sees them."""
    if case == "affine":
        n, d, h = shape
        return f"x {n}x{d} W {d}x{h}"
    if case == "step":
        n, d, h, c = shape
        return f"x {n}x{d} {d}-{h}-{c}"
    return "x " + "x".join(str(v) for v in shape)


_SHAPE_WIDTH = 21


def _header():
    return (f"{'case':8} {'size':7} {'dtype':8} {'shape':{_SHAPE_WIDTH}} {'reference':>11} "
            f"{'kernel':>11} {'torch':>11} {'ref/kern':>9} {'torch/kern':>10} {'others':>6}  "
            "roofline")


def _row(r):
    t = r["seconds"]
    roof = ""
    if r.get("roofline"):
        roof = "  ".join(f"{k} {v * 100:.0f}%" for k, v in r["roofline"].items())
    elif r.get("roofline_note"):
        roof = ROOFLINE_NOTES["step" if r["case"] in NET_CASES else "cache"]
    torch_ratio = f"{r['torch/kernel']:.2f}x" if "torch/kernel" in r else "-"
    others = r.get("others_cores")
    others = "-" if others is None else f"{others:.2f}"
    return (f"{r['case']:8} {r['size']:7} {r['dtype']:8} "
            f"{_shape_text(r['case'], r['shape']):{_SHAPE_WIDTH}} "
            f"{_fmt_time(t['reference']):>11} "
            f"{_fmt_time(t['kernel']):>11} {_fmt_time(t.get('torch')):>11} "
            f"{r['ref/kernel']:>8.2f}x {torch_ratio:>10} {others:>6}  {roof}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastbp bench")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
