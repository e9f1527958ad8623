"""``fastbp train``: the book's chapter-5 training job (``ch05/train_neuralnet.py``), fast.

It trains a :class:`~fastbp.nets.TwoLayerNet` (or, with ``--net``, a ``MultiLayerNet``, a
``SimpleConvNet`` or a ``DeepConvNet``) on scikit-learn's 8x8 digits (or on MNIST from local
files) with mini-batch gradient descent, prints the train and test accuracy as it goes (every
epoch, or about ten lines where the output is not a terminal: ``--progress``) and a summary at
the end. With ``--json`` the standard output is one JSON document and nothing else; the lines
for people go to the standard error. ``--compare`` trains the kernel and the reference backends
from the same seed, epoch by epoch in turn so that both see the same machine load, and reports
the speedup and whether the test accuracies agree.

Only NumPy and fastbp are imported at the top: ``fastbp --help`` imports this module. tqdm,
matplotlib and scikit-learn are imported when they are needed.
"""

import contextlib
import copy
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

from fastbp.nets import BACKENDS, DeepConvNet, MultiLayerNet, SimpleConvNet, TwoLayerNet
from fastbp.optim import OPTIMIZERS

__all__ = ["DEFAULT_LR", "NET_DEFAULTS", "TrainingRun", "add_arguments", "build_net", "load_data",
           "run"]

DEFAULT_LR = {
    "sgd": 0.1,
    "momentum": 0.05,
    "nesterov": 0.05,
    "adagrad": 0.05,
    "rmsprop": 0.002,
    "adam": 0.002,
}
"""The learning rate each optimizer gets when ``--lr`` is not given."""

DEFAULTS = dict(data="digits", hidden=100, epochs=100, batch_size=100, optimizer="sgd", seed=0,
                backend="kernel", dtype="float64")

PROGRESS = ("auto", "bar", "epochs", "sparse", "quiet")
"""``--progress`` modes. auto: ``bar`` where the output is a terminal (``epochs`` without
tqdm), else ``sparse``."""

SPARSE_LINES = 10
"""About how many epoch lines ``--progress sparse`` prints (plus the first and the last)."""

EVAL_ROWS = 2048
"""Rows per forward pass when measuring accuracy, so MNIST's 60000 rows need no 60000-row
intermediates."""

NET_DEFAULTS = {
    "two": dict(hidden=DEFAULTS["hidden"], epochs=DEFAULTS["epochs"],
                optimizer=DEFAULTS["optimizer"], lr=None, eval_rows=EVAL_ROWS),
    "multi": dict(hidden=100, epochs=100, optimizer="sgd", lr=None, eval_rows=EVAL_ROWS),
    # The book's ch07/train_convnet.py and ch08/train_deepnet.py: Adam, 20 epochs, batch 100,
    # lr 0.001. SimpleConvNet gets lr 0.007: the book's 0.001 needs many epochs of 60,000 images
    # to leave the plateau of its 0.01 initial weights (0.90-0.91 test accuracy after 2 epochs of
    # an 8,000-image MNIST split, seeds 0-2), 0.007 gives 0.965-0.970 there (seeds 0-3).
    # Their column matrices are large: evaluate a few hundred images at a time.
    "simpleconv": dict(hidden=100, epochs=20, optimizer="adam", lr=0.007, eval_rows=500),
    "deepconv": dict(hidden=50, epochs=20, optimizer="adam", lr=0.001, eval_rows=100),
}
"""Per ``--net``: the defaults of ``--hidden``, ``--epochs``, ``--optimizer`` and ``--lr`` (None:
the optimizer's :data:`DEFAULT_LR`), and the images per forward pass when measuring accuracy."""

MULTI_HIDDEN_LAYERS = 4
"""``--net multi``: hidden layers of ``--hidden`` units each (the book's ch06 comparisons)."""

SMALL_IMAGE_CONV_PARAM = {"filter_num": 30, "filter_size": 3, "pad": 0, "stride": 1}
"""``--net simpleconv`` on images smaller than MNIST's (the 8x8 digits): 3x3 filters, so that
the 6x6 maps pool to 3x3. The book's 5x5 filters would leave 2x2 after pooling."""

MNIST_TEST_ONLY_TRAIN_SIZE = 8000
"""Where ``--mnist-dir`` holds only the two t10k files: a fixed shuffle of their 10,000 images
gives this many training images, and the rest are the test set."""


def add_arguments(parser):
    """Add the options of ``fastbp train`` to an argparse (sub)parser."""
    d = DEFAULTS
    parser.add_argument("--data", choices=("digits", "mnist"), default=None,
                        help="digits: scikit-learn's 8x8 digits, 1500 train / 297 test "
                             "(default); mnist: the four MNIST IDX files from --mnist-dir, "
                             "else from $FASTBP_MNIST_DIR, ./dataset or ../dataset")
    parser.add_argument("--mnist-dir", metavar="DIR",
                        help="directory holding train-images-idx3-ubyte.gz and the other "
                             "three MNIST files, gzipped or not (implies --data mnist; "
                             "nothing is downloaded)")
    parser.add_argument("--net", choices=tuple(NET_DEFAULTS), default="two",
                        help="two: TwoLayerNet (default); multi: MultiLayerNet with "
                             f"{MULTI_HIDDEN_LAYERS} hidden layers; simpleconv: the book's "
                             "SimpleConvNet (3x3 filters on the 8x8 digits); deepconv: the "
                             "book's DeepConvNet (MNIST only)")
    parser.add_argument("--hidden", type=int, default=None, metavar="N",
                        help=f"hidden units (default {d['hidden']}; 50 for deepconv)")
    parser.add_argument("--epochs", type=int, default=None, metavar="N",
                        help=f"passes over the training set (default {d['epochs']}; 20 for "
                             "simpleconv and deepconv)")
    parser.add_argument("--batch-size", type=int, default=d["batch_size"], metavar="N",
                        help=f"mini-batch size (default {d['batch_size']})")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate (default: " + ", ".join(
                            f"{k} {v}" for k, v in DEFAULT_LR.items()) + ")")
    parser.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default=None,
                        help=f"update rule (default {d['optimizer']}; adam for simpleconv "
                             "(lr 0.007) and deepconv (lr 0.001, as the book))")
    parser.add_argument("--seed", type=int, default=d["seed"],
                        help="seed of the weights and the batch order (default 0)")
    parser.add_argument("--backend", choices=BACKENDS, default=d["backend"],
                        help="kernel: Numba layers and fused optimizers (default); "
                             "reference: plain NumPy")
    parser.add_argument("--dtype", choices=("float64", "float32"), default=d["dtype"],
                        help="parameter and data dtype (default float64, as in the book; "
                             "float32 is faster and halves the memory MNIST takes)")
    parser.add_argument("--compare", action="store_true",
                        help="train both backends from the same seed and print the speedup "
                             "and whether the test accuracies match (exit status 1 if they "
                             "differ by more than one test sample)")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="save the loss and accuracy curves (needs matplotlib)")
    parser.add_argument("--json", action="store_true",
                        help="print the results as one JSON line on stdout, and nothing else "
                             "there (progress and summary go to stderr)")
    parser.add_argument("--blas-threads", type=int, default=0, metavar="N",
                        help="at most N BLAS threads while training (default 0: BLAS's own "
                             "count, OPENBLAS_NUM_THREADS or all cores; the kernel backend "
                             "gives each product the idle cores up to that count, the "
                             "reference runs NumPy's products as they come)")
    parser.add_argument("--progress", choices=PROGRESS, default="auto",
                        help="bar: a progress bar (tqdm) above a line per epoch; epochs: a "
                             "line per epoch; sparse: about ten epoch lines; quiet: none. "
                             "auto (default): bar on a terminal, sparse otherwise (logs, "
                             "pipes)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar: the same as --progress epochs")


def load_data(name, mnist_dir=None, dtype=np.float64):
    """The data set as ``(x_train, t_train), (x_test, t_test)``: images in ``dtype``, labels intp.

    MNIST is read from ``mnist_dir``, or, where that is None, from the first directory of
    :func:`fastbp.datasets.mnist_search_path` that holds it.

    Converting once here spares every step a conversion (the loaders give float32 images, as the
    book's ``load_mnist`` does, and a float64 net would convert each batch). MNIST in float64
    takes 440 MB; ``dtype=float32`` halves that. Images are flat rows (N, 64) or (N, 784).

    A ``mnist_dir`` that holds only ``t10k-images-idx3-ubyte.gz`` and
    ``t10k-labels-idx1-ubyte.gz`` is split: :data:`MNIST_TEST_ONLY_TRAIN_SIZE` of its images
    (a fixed shuffle) for training, the rest for testing.
    """
    from fastbp import datasets

    if name == "digits":
        (x_train, t_train), (x_test, t_test) = datasets.load_digits()
    elif name == "mnist":
        directory = mnist_directory(mnist_dir)
        if _mnist_test_only(directory):
            (x_train, t_train), (x_test, t_test) = _mnist_test_split(directory)
        else:
            (x_train, t_train), (x_test, t_test) = datasets.load_mnist(path=directory)
    else:
        raise ValueError(f"unknown data set {name!r}")

    def prepare(x, t):
        return np.ascontiguousarray(x, dtype=dtype), np.asarray(t, dtype=np.intp)

    return prepare(x_train, t_train), prepare(x_test, t_test)


def mnist_directory(mnist_dir):
    """``mnist_dir``, or the directory :func:`fastbp.datasets.load_mnist` would search out
    (``FileNotFoundError`` naming every place searched, and ``--mnist-dir``, where none holds
    MNIST)."""
    from fastbp import datasets

    if mnist_dir is not None:
        return mnist_dir
    try:
        return datasets._find_mnist_dir()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}\n(fastbp train takes the directory as "
                                "--mnist-dir DIR)") from exc


def _mnist_test_only(mnist_dir):
    """True where the directory holds the two t10k files (gzipped or not) and neither train
    file."""
    from fastbp import datasets

    files = datasets._files_in(mnist_dir)
    return (files["test_img"] is not None and files["test_label"] is not None
            and files["train_img"] is None and files["train_label"] is None)


def _mnist_test_split(mnist_dir):
    """The t10k images split by a fixed shuffle into MNIST_TEST_ONLY_TRAIN_SIZE / the rest."""
    from fastbp import datasets

    images, labels = datasets._load_pair(datasets._files_in(mnist_dir), "test_img", "test_label")
    if images.shape[0] <= MNIST_TEST_ONLY_TRAIN_SIZE:
        raise ValueError(f"{mnist_dir} holds only the t10k files, with {images.shape[0]} images: "
                         f"too few to keep {MNIST_TEST_ONLY_TRAIN_SIZE} for training and test "
                         "on the rest")
    order = np.random.default_rng(datasets.DIGITS_SEED).permutation(images.shape[0])
    x = images[order].reshape(-1, 784).astype(np.float32) / np.float32(255.0)
    t = labels[order]
    n = MNIST_TEST_ONLY_TRAIN_SIZE
    return (x[:n], t[:n]), (x[n:], t[n:])


def _correct(net, x, t, rows=EVAL_ROWS):
    """How many rows of ``x`` the net classifies as ``t``, ``rows`` at a time."""
    hits = 0
    logits = getattr(net, "_logits", net.predict)  # the conv nets' fast predict for accuracy
    for lo in range(0, x.shape[0], rows):
        y = logits(x[lo:lo + rows])
        hits += int(np.sum(np.argmax(y, axis=1) == t[lo:lo + rows]))
    return hits


def _image_shape(features):
    """(1, side, side) for flat square single-channel images: the digits and MNIST."""
    side = math.isqrt(features)
    if side * side != features:
        raise ValueError(f"the convolutional nets need square images; got {features} pixels")
    return (1, side, side)


def build_net(name, features, hidden, *, backend, rng, dtype):
    """The network ``--net name`` trains, for images of ``features`` pixels (64 or 784).

    ``two`` and ``multi`` take flat rows; ``simpleconv`` and ``deepconv`` take (N, 1, H, W)
    images. ``simpleconv`` has the book's 5x5 filters on 28x28 images and
    :data:`SMALL_IMAGE_CONV_PARAM` on smaller ones; ``deepconv`` needs 28x28 images.
    """
    kw = dict(backend=backend, rng=rng, dtype=dtype)
    if name == "two":
        return TwoLayerNet(features, hidden, 10, **kw)
    if name == "multi":
        return MultiLayerNet(features, [hidden] * MULTI_HIDDEN_LAYERS, 10, **kw)
    shape = _image_shape(features)
    if name == "simpleconv":
        if shape[1] >= 28:
            return SimpleConvNet(shape, hidden_size=hidden, **kw)
        return SimpleConvNet(shape, conv_param=SMALL_IMAGE_CONV_PARAM, hidden_size=hidden, **kw)
    if name == "deepconv":
        if shape != (1, 28, 28):
            raise ValueError(f"--net deepconv needs 28x28 images: the book's DeepConvNet is built "
                             f"for MNIST, and these are {shape[1]}x{shape[2]}; train it with "
                             "--data mnist --mnist-dir DIR, or use --net simpleconv")
        return DeepConvNet(shape, hidden_size=hidden, **kw)
    raise ValueError(f"unknown net {name!r}; one of {', '.join(NET_DEFAULTS)}")


class TrainingRun:
    """One backend's training: a net, its optimizer, its batch order, and what was measured.

    Parameters
    ----------
    data : tuple
        ``(x_train, t_train), (x_test, t_test)`` from :func:`load_data`.
    backend : {"kernel", "reference"}
    hidden, batch_size, optimizer, lr, seed, dtype, net
        As the command-line options (``net``: "two", "multi", "simpleconv" or "deepconv").

    Notes
    -----
    One ``numpy.random.default_rng(seed)`` draws the initial weights and then every epoch's
    permutation of the training set, so two runs with the same seed see the same numbers
    whatever their backend. The step rate counts only training steps (batch gather, gradient,
    update): not evaluation, and not JIT compilation, which :meth:`warm_up` triggers on copies.
    """

    def __init__(self, data, backend, *, hidden, batch_size, optimizer, lr, seed, dtype,
                 net="two"):
        (self.x_train, self.t_train), (self.x_test, self.t_test) = data
        self.backend = backend
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        features = int(np.prod(self.x_train.shape[1:]))
        self.net = build_net(net, features, hidden, backend=backend, rng=self.rng, dtype=dtype)
        self.net_name = net
        self.eval_rows = NET_DEFAULTS[net]["eval_rows"]
        if net in ("simpleconv", "deepconv"):  # views: the conv nets take (N, 1, H, W)
            self.x_train = self.x_train.reshape(-1, *self.net.input_dim)
            self.x_test = self.x_test.reshape(-1, *self.net.input_dim)
        self.optimizer = OPTIMIZERS[optimizer](lr, backend=backend)
        self.params = self.net.params
        self.steps = 0
        self.step_seconds = 0.0  # in training steps only
        self.seconds = 0.0  # in epochs: steps and evaluation, not warm-up
        self.warm_up_seconds = None
        self.losses = []
        self.history = {"epoch": [], "loss": [], "train_accuracy": [], "test_accuracy": []}

    @property
    def steps_per_epoch(self):
        return math.ceil(self.x_train.shape[0] / self.batch_size)

    def warm_up(self):
        """One step and one evaluation on copies of the net and optimizer: compiles the kernels
        (or loads them from numba's cache) outside the timed steps, and changes nothing."""
        started = time.perf_counter()
        net, optimizer = copy.deepcopy((self.net, self.optimizer))
        x, t = self.x_train[:self.batch_size], self.t_train[:self.batch_size]
        optimizer.update(net.params, net.gradient(x, t))
        net.predict(self.x_test[:self.eval_rows])
        self.warm_up_seconds = time.perf_counter() - started
        return self.warm_up_seconds

    def epoch(self, on_step=None):
        """Train one pass over the shuffled training set, then measure; return the epoch's row.

        ``on_step(run, loss)`` is called after each step, outside the timed part.
        """
        started = time.perf_counter()
        net, optimizer, params = self.net, self.optimizer, self.params
        x_train, t_train, batch = self.x_train, self.t_train, self.batch_size
        order = self.rng.permutation(x_train.shape[0])
        epoch_losses = []
        clock = time.perf_counter
        for lo in range(0, order.size, batch):
            t0 = clock()
            idx = order[lo:lo + batch]
            grads = net.gradient(x_train[idx], t_train[idx])
            optimizer.update(params, grads)
            t1 = clock()
            self.step_seconds += t1 - t0
            # The loss of the batch before this update: the forward pass that gradient() ran
            # (the book runs a second forward pass to get it).
            loss = float(net.last_layer.loss)
            epoch_losses.append(loss)
            if on_step is not None:
                on_step(self, loss)
        self.steps += len(epoch_losses)
        self.losses.extend(epoch_losses)
        h = self.history
        h["epoch"].append(len(h["epoch"]) + 1)
        h["loss"].append(float(np.mean(epoch_losses)))
        h["train_accuracy"].append(_correct(net, x_train, t_train, self.eval_rows)
                                   / x_train.shape[0])
        h["test_accuracy"].append(self.test_correct / self.x_test.shape[0])
        self.seconds += time.perf_counter() - started
        return {key: values[-1] for key, values in h.items()}

    @property
    def test_correct(self):
        return _correct(self.net, self.x_test, self.t_test, self.eval_rows)

    def summary(self):
        """What the JSON line reports for this run."""
        h = self.history
        return {
            "backend": self.backend,
            "net": self.net_name,
            "test_accuracy": h["test_accuracy"][-1] if h["epoch"] else None,
            "train_accuracy": h["train_accuracy"][-1] if h["epoch"] else None,
            "loss": h["loss"][-1] if h["epoch"] else None,
            "epochs": len(h["epoch"]),
            "steps": self.steps,
            "seconds": round(self.seconds, 4),
            "step_seconds": round(self.step_seconds, 4),
            "steps_per_second": round(self.steps / self.step_seconds, 1)
            if self.step_seconds else None,
            "warm_up_seconds": None if self.warm_up_seconds is None
            else round(self.warm_up_seconds, 4),
            "test_size": int(self.x_test.shape[0]),
        }


def _has_tqdm():
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def _progress_bar(total, disable, file=None):
    """A tqdm bar on ``file`` (stderr by default), or None when tqdm is missing or the bar is
    switched off."""
    if disable:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="step", leave=False, dynamic_ncols=True,
                file=file if file is not None else sys.stderr)


def progress_mode(requested, stream, no_progress=False):
    """The ``--progress`` mode to use: ``requested`` unless it is "auto".

    auto is ``epochs`` under ``--no-progress``, ``bar`` where ``stream`` (where the lines for
    people go) is a terminal and tqdm is installed, ``epochs`` on a terminal without tqdm, and
    ``sparse`` elsewhere: a log file or a pipe gets about ten lines, not one per epoch.
    """
    if requested == "bar" and not _has_tqdm():
        return "epochs"
    if requested != "auto":
        return requested
    if no_progress:
        return "epochs"
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):
        terminal = False
    if terminal:
        return "bar" if _has_tqdm() else "epochs"
    return "sparse"


def _epoch_shown(epoch, epochs, mode):
    """Whether the line of ``epoch`` (1-based) is printed in ``mode``."""
    if mode in ("bar", "epochs"):
        return True
    if mode == "quiet":
        return False
    every = max(1, math.ceil(epochs / SPARSE_LINES))
    return epoch == 1 or epoch == epochs or epoch % every == 0


def _blas_limit(threads):
    """A context manager that limits BLAS to ``threads`` threads (0: no limit)."""
    if threads > 0:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=threads, user_api="blas")
    return contextlib.nullcontext()


def _printer(bar, stream):
    if bar is None:
        return lambda line: print(line, file=stream, flush=True)
    from tqdm import tqdm
    return lambda line: tqdm.write(line, file=stream)


def _check_plot_support(path):
    """Why ``--plot path`` cannot work, before any training; None if it can."""
    if not path:
        return None
    if not str(path).lower().endswith(".png"):
        return f"--plot needs a .png file name; got {path!r}"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return ('--plot needs matplotlib, which is not installed; install it with: '
                'pip install "fastbp[data]"')
    target = os.path.abspath(path)
    directory = os.path.dirname(target)
    if os.path.isdir(target):
        return f"--plot {path}: that is a directory"
    if not os.path.isdir(directory):
        return f"--plot {path}: the directory {directory} does not exist"
    try:  # a real write: os.access says yes to root even on a read-only file system
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        return f"--plot {path}: cannot write in {directory}: {exc.strerror or exc}"
    if os.path.exists(target) and not os.access(target, os.W_OK):
        return f"--plot {path}: the file exists and is not writable"
    return None


# Backends are told apart by line style, so that identical curves (the same seed on both
# backends) stay visible: the kernel's as a wide pale band, the reference's as a thin dashed
# line with markers on top of it.
_BACKEND_STYLE = {
    "kernel": dict(ls="-", lw=3.0, alpha=0.45),
    "reference": dict(ls="--", lw=1.0, marker="o", markersize=3),
}


def curves_figure(runs, title=None):
    """A matplotlib ``Figure``: loss per step and accuracies per epoch of ``runs``.

    The accuracy axis is zoomed to the data; train and test are told apart by colour, and,
    where there are two runs (``--compare``), backends by line style and markers.
    """
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    accuracies = []
    for r in runs:
        style = dict(_BACKEND_STYLE.get(r.backend, {})) if len(runs) > 1 else dict(lw=1.2)
        steps = np.arange(1, len(r.losses) + 1)
        loss_style = dict(style, markevery=max(1, len(steps) // 20))
        if "marker" not in loss_style:
            loss_style.pop("markevery")
        ax_loss.plot(steps, r.losses, color="C0", label=r.backend, **loss_style)
        ep = r.history["epoch"]
        acc_style = dict(style, markevery=max(1, len(ep) // 20)) if "marker" in style else style
        for key, color in (("train_accuracy", "C1"), ("test_accuracy", "C2")):
            values = r.history[key]
            accuracies.extend(values)
            ax_acc.plot(ep, values, color=color,
                        label=f"{key.split('_')[0]} ({r.backend})", **acc_style)
    ax_loss.set(xlabel="step", ylabel="loss (batch)", yscale="log", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    if accuracies:
        low, high = min(accuracies), max(accuracies)
        pad = max(0.02, 0.05 * (high - low))
        ax_acc.set_ylim(max(0.0, low - pad), min(1.005, high + pad))
    ax_loss.legend()
    ax_acc.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    return fig


def plot(runs, path, title=None):
    """Save :func:`curves_figure` of ``runs`` to a PNG file."""
    curves_figure(runs, title).savefig(path, dpi=100)


def _train(runs, epochs, mode="epochs", stream=None):
    """Warm up each run, then train them all, epoch by epoch in turn, printing epoch lines to
    ``stream`` (stdout by default) as the progress ``mode`` says."""
    stream = sys.stdout if stream is None else stream
    for r in runs:
        compile_seconds = r.warm_up()
        if r.backend == "reference":  # plain NumPy: there is nothing to compile
            print("  reference: plain NumPy, no compilation", file=stream)
        else:
            print(f"  {r.backend}: warm-up (JIT compile or cache load) {compile_seconds:.2f} "
                  "s, not counted", file=stream)

    bar = _progress_bar(epochs * runs[0].steps_per_epoch * len(runs), mode != "bar", stream)
    say = _printer(bar, stream)

    def on_step(r, loss):
        if bar is not None:
            bar.update(1)
            if bar.n % 20 == 0:
                bar.set_postfix_str(f"{r.backend} loss {loss:.4f}", refresh=False)

    wide = max(len(r.backend) for r in runs)
    try:
        for _ in range(epochs):
            # Backends take turns epoch by epoch: a change in machine load hits both.
            for r in runs:
                row = r.epoch(on_step)
                if not _epoch_shown(row["epoch"], epochs, mode):
                    continue
                say(f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}  "
                    f"{r.backend:<{wide}}  loss {row['loss']:.4f}  "
                    f"train acc {row['train_accuracy']:.4f}  "
                    f"test acc {row['test_accuracy']:.4f}")
    finally:
        if bar is not None:
            bar.close()


def _net_defaults(args):
    """Fill in the options left out with the defaults of ``--net``; return the learning rate."""
    args.net = getattr(args, "net", None) or "two"
    defaults = NET_DEFAULTS[args.net]
    optimizer_given = args.optimizer is not None
    for name in ("hidden", "epochs", "optimizer"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    if args.lr is not None:
        return args.lr
    if not optimizer_given and defaults["lr"] is not None:
        return defaults["lr"]
    return DEFAULT_LR[args.optimizer]


def run(args):
    """Run ``fastbp train`` with parsed ``args``; return the exit status."""
    err = sys.stderr
    out = err if args.json else sys.stdout  # with --json, stdout holds the JSON and nothing else
    lr = _net_defaults(args)
    for name in ("hidden", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            print(f"fastbp train: --{name.replace('_', '-')} must be at least 1", file=err)
            return 2
    if args.seed < 0:
        print(f"fastbp train: --seed must be at least 0; got {args.seed}", file=err)
        return 2
    if not math.isfinite(lr):
        print(f"fastbp train: --lr must be a finite number; got {lr}", file=err)
        return 2
    if args.mnist_dir and args.data == "digits":
        print("fastbp train: --mnist-dir is for --data mnist; leave out --data digits or "
              "--mnist-dir", file=err)
        return 2
    data_name = args.data or ("mnist" if args.mnist_dir else DEFAULTS["data"])
    mode = progress_mode(args.progress, out, args.no_progress)
    problem = _check_plot_support(args.plot)
    if problem:
        print(f"fastbp train: {problem}", file=err)
        return 2
    if args.net == "deepconv" and data_name == "digits":
        print("fastbp train: --net deepconv needs 28x28 images: the book's DeepConvNet is built "
              "for MNIST, and the digits are 8x8; use --data mnist --mnist-dir DIR, or "
              "--net simpleconv", file=err)
        return 2
    dtype = np.dtype(args.dtype)
    mnist_dir = args.mnist_dir
    try:
        if data_name == "mnist":
            mnist_dir = mnist_directory(mnist_dir)  # searched once, here
        data = load_data(data_name, mnist_dir, dtype)
    except (ImportError, OSError, ValueError) as exc:
        print(f"fastbp train: {exc}", file=err)
        return 1
    for part, (x, _) in zip(("training", "test"), data, strict=True):
        if not x.shape[0]:
            print(f"fastbp train: the {data_name} {part} set holds no images", file=err)
            return 1

    backends = ("kernel", "reference") if args.compare else (args.backend,)
    runs = [TrainingRun(data, b, hidden=args.hidden, batch_size=args.batch_size,
                        optimizer=args.optimizer, lr=lr, seed=args.seed, dtype=dtype,
                        net=args.net)
            for b in backends]
    n_train, n_test = data[0][0].shape[0], data[1][0].shape[0]
    if data_name == "mnist" and _mnist_test_only(mnist_dir):
        print(f"fastbp train: {mnist_dir} holds only the t10k files: "
              f"training on {n_train} of their images and testing on the other {n_test} "
              "(a fixed shuffle)", file=out)
    print(f"fastbp train: {data_name} ({n_train} train / {n_test} test, "
          f"{data[0][0].shape[1]} features), {type(runs[0].net).__name__} hidden {args.hidden}, "
          f"{args.optimizer} lr {lr:g}, batch {args.batch_size}, {args.epochs} epochs, "
          f"{dtype.name}, seed {args.seed}, backend {' and '.join(backends)}", file=out)
    with _blas_limit(args.blas_threads):
        _train(runs, args.epochs, mode, out)

    summaries = [r.summary() for r in runs]
    for s in summaries:
        print(f"{s['backend']}: test accuracy {s['test_accuracy']:.4f}, train accuracy "
              f"{s['train_accuracy']:.4f}, {s['epochs']} epochs, {s['steps']} steps in "
              f"{s['step_seconds']:.2f} s ({s['steps_per_second']:.0f} steps/s), "
              f"{s['seconds']:.2f} s with evaluation", file=out)
    result = dict(summaries[0], net=args.net, optimizer=args.optimizer, lr=lr, hidden=args.hidden,
                  batch_size=args.batch_size, data=data_name, dtype=dtype.name, seed=args.seed)
    status = 0
    if args.compare:
        kernel, reference = summaries
        rates = [r.steps / r.step_seconds for r in runs]
        speedup = rates[0] / rates[1]
        diff = abs(runs[0].test_correct - runs[1].test_correct)
        match = diff <= 1
        print(f"speedup: {speedup:.2f}x (kernel {rates[0]:.0f} steps/s, "
              f"reference {rates[1]:.0f} steps/s; training steps only)", file=out)
        print(f"test accuracies {'match' if match else 'DIFFER'}: kernel "
              f"{kernel['test_accuracy']:.4f}, reference {reference['test_accuracy']:.4f} "
              f"({diff} of {n_test} test samples apart; at most 1 allowed)", file=out)
        result.update(reference=reference, speedup=round(speedup, 3), accuracies_match=match,
                      test_samples_apart=diff)
        status = 0 if match else 1
    if args.plot:
        title = (f"{type(runs[0].net).__name__} on {data_name}: {args.optimizer}, lr {lr:g}, "
                 f"{dtype.name}, hidden {args.hidden}, batch {args.batch_size}")
        try:
            plot(runs, args.plot, title)
        except OSError as exc:
            print(f"fastbp train: cannot save the plot: {exc}", file=err)
            status = 1
        else:
            print(f"saved the curves to {args.plot}", file=out)
    if args.json:
        print(json.dumps(_json_safe(result), allow_nan=False))
    return status


def _json_safe(value):
    """``value`` with every non-finite float (a loss that diverged) as None: JSON has no NaN or
    inf, and strict parsers reject Python's ``NaN``."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
