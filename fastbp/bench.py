"""``fastbp bench``: the NumPy reference, the kernels and PyTorch (when installed), side by side.

Every case is timed in one process with the backends interleaved (reference, kernel, torch,
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
and the BLAS product rate of the same shapes for ``Affine``. The exp-bound forwards (sigmoid,
softmax) print the bandwidth figure too, for reference.

PyTorch is optional: it is imported only here, inside functions, and only when installed.
"""

import argparse
import json
import sys
import time

SIZES = {
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


def add_arguments(parser):
    parser.add_argument("--sizes", default="book,medium,large",
                        help="comma-separated sizes: book, medium, large (default: all three)")
    parser.add_argument("--dtype", default="float64",
                        help="float64, float32, or both (default: float64)")
    parser.add_argument("--layers", default=",".join(LAYERS),
                        help=f"comma-separated cases (default: {','.join(LAYERS)})")
    parser.add_argument("--time", type=float, default=0.25, dest="target",
                        help="seconds to spend timing each backend in each case (default 0.25)")
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
    """One SGD step of the book's net (:class:`fastbp.nets.TwoLayerNet`, built on ``backend``,
    "kernel" or "reference") on a fixed batch: ``params[k] -= lr * grads[k]``, as the book."""
    import numpy as np

    from fastbp.nets import TwoLayerNet

    n, d_in, hidden, classes = size
    rng = np.random.default_rng(seed)
    x = rng.random((n, d_in)).astype(dtype)
    t = rng.integers(0, classes, n)
    net = TwoLayerNet(d_in, hidden, classes, backend=backend, rng=0, dtype=dtype)
    lr = np.dtype(dtype).type(0.1)

    def run():
        grads = net.gradient(x, t)
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


def _torch_case(name, size, dtype, rng):
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


def time_interleaved(funcs, target=0.25, min_repeats=3, max_repeats=15):
    """Median seconds per call of each function, timed in turn.

    Each function is called twice first (JIT, caches, page faults of first use). Each repeat
    times ``inner`` calls of every function in turn, ``inner`` chosen so that one timing of the
    slowest function lasts about 20 ms.
    """
    import numpy as np

    once = []
    for f in funcs:
        f()
        t0 = time.perf_counter()
        f()
        once.append(max(time.perf_counter() - t0, 1e-7))
    inner = max(1, int(0.02 / max(once)))
    repeats = int(min(max_repeats, max(min_repeats, target / (inner * max(once)))))
    samples = [[] for _ in funcs]
    for _ in range(repeats):
        for f, out in zip(funcs, samples, strict=True):
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            out.append((time.perf_counter() - t0) / inner)
    return [float(np.median(s)) for s in samples]


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

        from fastbp.kernels.jit import sized

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

    n, d_in, h = size
    x = rng.standard_normal((n, d_in)).astype(dtype)
    W = rng.standard_normal((d_in, h)).astype(dtype)
    d = rng.standard_normal((n, h)).astype(dtype)

    def products():
        x @ W
        d @ W.T
        x.T @ d
    (t,) = time_interleaved([products], target=0.1)
    return 6 * n * d_in * h / t, t


def _torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def run_case(name, size_name, dtype, target, use_torch):
    """Time one case; return a dict (the JSON record)."""
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
    if use_torch and name in ("simpleconv", "deepconv", "dropin"):
        funcs.append(torch_convnet_step(name, size, dtype))
        names.append("torch")
    elif use_torch:
        funcs.append(_torch_case(name, size, dtype, np.random.default_rng(0)))
        names.append("torch")
    times = dict(zip(names, time_interleaved(funcs, target=target), strict=True))
    record = {"case": name, "size": size_name, "shape": list(size), "dtype": str(dtype),
              "seconds": times, "ref/kernel": times["reference"] / times["kernel"]}
    if "torch" in times:
        record["torch/kernel"] = times["torch"] / times["kernel"]
    return record


def _environment():
    import numba
    import numpy as np

    from fastbp import __version__
    from fastbp.kernels import jit

    env = {"fastbp": __version__, "numpy": np.__version__, "numba": numba.__version__,
           "kernel_threads": numba.get_num_threads(), "adapt_to_load": jit.ADAPT_TO_LOAD,
           "parallel_min_elements": jit.PARALLEL_MIN_ELEMENTS, "idle_cores": jit.idle_cores()}
    try:
        from threadpoolctl import threadpool_info

        env["blas"] = [{k: i.get(k) for k in ("internal_api", "architecture", "num_threads",
                                              "version")} for i in threadpool_info()]
    except ImportError:
        pass
    return env


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
    use_torch = not args.no_torch and _torch_available()
    started = time.perf_counter()
    bandwidth = stream_bandwidth()
    env = _environment()
    env["stream_bandwidth_GBps"] = bandwidth / 1e9
    env["torch"] = None
    if use_torch:
        import torch

        env["torch"] = {"version": torch.__version__, "threads": torch.get_num_threads()}
    if not args.json:
        print(f"fastbp {env['fastbp']}  numpy {env['numpy']}  numba {env['numba']}  "
              f"torch {env['torch']['version'] if use_torch else '(not installed)'}")
        print(f"kernel threads {env['kernel_threads']} (adapt to load: {env['adapt_to_load']}, "
              f"idle cores now: {env['idle_cores']})  stream bandwidth "
              f"{bandwidth / 1e9:.1f} GB/s")
        head = f"{'case':8} {'size':7} {'dtype':8} {'reference':>11} {'kernel':>11}"
        head += f" {'torch':>11} {'ref/kern':>9} {'torch/kern':>10}  roofline"
        print(head)
    records = []
    for dtype in dtypes:
        for name in cases:
            for size_name in sizes:
                if size_name not in SIZES[name]:
                    continue
                record = run_case(name, size_name, np.dtype(dtype), args.target, use_torch)
                rng = np.random.default_rng(0)
                if size_name == "large":
                    if name == "affine":
                        rate, _ = _gemm_rate(SIZES[name][size_name], dtype, rng)
                        flops = 6 * np.prod(SIZES[name][size_name])
                        record["roofline"] = {"fwd+bwd vs BLAS": flops / record["seconds"]
                                              ["kernel"] / rate}
                    elif name not in NET_CASES:
                        record["roofline"] = _kernel_roofline(name, SIZES[name][size_name],
                                                              dtype, bandwidth, rng)
                records.append(record)
                if not args.json:
                    print(_row(record), flush=True)
    elapsed = time.perf_counter() - started
    if args.json:
        json.dump({"environment": env, "results": records, "seconds": elapsed}, sys.stdout,
                  indent=1)
        print()
    else:
        print(f"({elapsed:.0f} s; times are medians per fwd+bwd or per step)")
    return 0


def _fmt_time(s):
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def _row(r):
    t = r["seconds"]
    roof = ""
    if r.get("roofline"):
        roof = "  ".join(f"{k} {v * 100:.0f}%" for k, v in r["roofline"].items())
    torch_ratio = f"{r['torch/kernel']:.2f}x" if "torch/kernel" in r else "-"
    return (f"{r['case']:8} {r['size']:7} {r['dtype']:8} {_fmt_time(t['reference']):>11} "
            f"{_fmt_time(t['kernel']):>11} {_fmt_time(t.get('torch')):>11} "
            f"{r['ref/kernel']:>8.2f}x {torch_ratio:>10}  {roof}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastbp bench")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
