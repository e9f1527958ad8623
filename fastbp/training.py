"""``fastbp train``: the book's chapter-5 training job (``ch05/train_neuralnet.py``), fast.

It trains a :class:`~fastbp.nets.TwoLayerNet` (or, with ``--net``, a ``MultiLayerNet``, a
``SimpleConvNet`` or a ``DeepConvNet``) on scikit-learn's 8x8 digits (or on MNIST from local
files) with mini-batch gradient descent, prints the train and test accuracy after every
epoch and a summary at the end. ``--compare`` trains the kernel and the reference backends from
the same seed, epoch by epoch in turn so that both see the same machine load, and reports the
speedup and whether the test accuracies agree.

Only NumPy and fastbp are imported at the top: ``fastbp --help`` imports this module. tqdm,
matplotlib and scikit-learn are imported when they are needed.
"""

import contextlib
import copy
import json
import math
import os
import sys
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
    parser.add_argument("--data", choices=("digits", "mnist"), default=d["data"],
                        help="digits: scikit-learn's 8x8 digits, 1500 train / 297 test "
                             "(default); mnist: the four IDX .gz files in --mnist-dir")
    parser.add_argument("--mnist-dir", metavar="DIR",
                        help="directory holding train-images-idx3-ubyte.gz and the other "
                             "three MNIST files (nothing is downloaded)")
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
                        help="print one JSON line with the results at the end")
    parser.add_argument("--blas-threads", type=int, default=1, metavar="N",
                        help="BLAS threads while training (default 1: mini-batch products are "
                             "too small to gain from threads, and on a busy machine threads "
                             "that wait for each other cost milliseconds a step; 0 leaves "
                             "BLAS as it is; needs threadpoolctl, which scikit-learn brings)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (it is shown on a terminal when tqdm is installed)")


def load_data(name, mnist_dir=None, dtype=np.float64):
    """The data set as ``(x_train, t_train), (x_test, t_test)``: images in ``dtype``, labels intp.

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
        if mnist_dir is None:
            raise ValueError("--data mnist needs --mnist-dir DIR, the directory that holds the "
                             "four MNIST .gz files (fastbp never downloads)")
        if _mnist_test_only(mnist_dir):
            (x_train, t_train), (x_test, t_test) = _mnist_test_split(mnist_dir)
        else:
            (x_train, t_train), (x_test, t_test) = datasets.load_mnist(mnist_dir)
    else:
        raise ValueError(f"unknown data set {name!r}")

    def prepare(x, t):
        return np.ascontiguousarray(x, dtype=dtype), np.asarray(t, dtype=np.intp)

    return prepare(x_train, t_train), prepare(x_test, t_test)


def _mnist_test_only(mnist_dir):
    """True where the directory holds the two t10k files and neither train file."""
    from fastbp.datasets import MNIST_FILES

    def has(key):
        return os.path.isfile(os.path.join(mnist_dir, MNIST_FILES[key]))

    return (has("test_img") and has("test_label") and not has("train_img")
            and not has("train_label"))


def _mnist_test_split(mnist_dir):
    """The t10k images split by a fixed shuffle into MNIST_TEST_ONLY_TRAIN_SIZE / the rest."""
    from fastbp import datasets

    images_file = os.path.join(mnist_dir, datasets.MNIST_FILES["test_img"])
    labels_file = os.path.join(mnist_dir, datasets.MNIST_FILES["test_label"])
    images = datasets.read_idx(images_file, 2051)
    labels = datasets.read_idx(labels_file, 2049)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError(f"{images_file} holds images of shape {images.shape} but "
                         f"{labels_file} holds {labels.shape[0]} labels (MNIST: 28x28 images, "
                         "one label each)")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_file}: label {int(labels.max())} is not a digit 0..9")
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
    for lo in range(0, x.shape[0], rows):
        y = net.predict(x[lo:lo + rows])
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


def _progress_bar(total, disable):
    """A tqdm bar, or None when tqdm is missing or the bar is switched off."""
    if disable:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    # disable=None: no bar when stderr is not a terminal (CI logs, pipes).
    return tqdm(total=total, unit="step", disable=None, leave=False, dynamic_ncols=True)


def _blas_limit(threads):
    """A context manager that limits BLAS to ``threads`` threads, where threadpoolctl is there."""
    if threads > 0:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:
            return threadpool_limits(limits=threads, user_api="blas")
    return contextlib.nullcontext()


def _printer(bar):
    if bar is None:
        return print
    from tqdm import tqdm
    return tqdm.write


def _check_plot_support(path):
    if not path:
        return None
    if not str(path).lower().endswith(".png"):
        return f"--plot needs a .png file name; got {path!r}"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return ('--plot needs matplotlib, which is not installed; install it with: '
                'pip install "fastbp[data]"')
    return None


def plot(runs, path):
    """Save the loss per step and the accuracies per epoch of ``runs`` to a PNG file."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for r in runs:
        steps = np.arange(1, len(r.losses) + 1)
        ax_loss.plot(steps, r.losses, lw=0.8, label=r.backend)
        ep = r.history["epoch"]
        ax_acc.plot(ep, r.history["train_accuracy"], label=f"train ({r.backend})")
        ax_acc.plot(ep, r.history["test_accuracy"], "--", label=f"test ({r.backend})")
    ax_loss.set(xlabel="step", ylabel="loss (batch)", yscale="log", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1), title="accuracy")
    ax_loss.legend()
    ax_acc.legend(loc="lower right")
    fig.savefig(path, dpi=100)


def _train(runs, epochs, no_progress):
    """Warm up each run, then train them all, epoch by epoch in turn, printing each epoch."""
    for r in runs:
        compile_seconds = r.warm_up()
        print(f"  {r.backend}: warm-up (JIT compile or cache load) {compile_seconds:.2f} s, "
              "not counted")

    bar = _progress_bar(epochs * runs[0].steps_per_epoch * len(runs), no_progress)
    say = _printer(bar)

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
    lr = _net_defaults(args)
    for name in ("hidden", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            print(f"fastbp train: --{name.replace('_', '-')} must be at least 1", file=err)
            return 2
    if args.data == "mnist" and not args.mnist_dir:
        print("fastbp train: --data mnist needs --mnist-dir DIR, the directory that holds the "
              "four MNIST .gz files (fastbp never downloads)", file=err)
        return 2
    problem = _check_plot_support(args.plot)
    if problem:
        print(f"fastbp train: {problem}", file=err)
        return 2
    if args.net == "deepconv" and args.data == "digits":
        print("fastbp train: --net deepconv needs 28x28 images: the book's DeepConvNet is built "
              "for MNIST, and the digits are 8x8; use --data mnist --mnist-dir DIR, or "
              "--net simpleconv", file=err)
        return 2
    dtype = np.dtype(args.dtype)
    try:
        data = load_data(args.data, args.mnist_dir, dtype)
    except (ImportError, OSError, ValueError) as exc:
        print(f"fastbp train: {exc}", file=err)
        return 1

    backends = ("kernel", "reference") if args.compare else (args.backend,)
    runs = [TrainingRun(data, b, hidden=args.hidden, batch_size=args.batch_size,
                        optimizer=args.optimizer, lr=lr, seed=args.seed, dtype=dtype,
                        net=args.net)
            for b in backends]
    n_train, n_test = data[0][0].shape[0], data[1][0].shape[0]
    if args.data == "mnist" and _mnist_test_only(args.mnist_dir):
        print(f"fastbp train: {args.mnist_dir} holds only the t10k files: training on "
              f"{n_train} of their images and testing on the other {n_test} (a fixed shuffle)")
    print(f"fastbp train: {args.data} ({n_train} train / {n_test} test, "
          f"{data[0][0].shape[1]} features), {type(runs[0].net).__name__} hidden {args.hidden}, "
          f"{args.optimizer} lr {lr:g}, batch {args.batch_size}, {args.epochs} epochs, "
          f"{dtype.name}, seed {args.seed}, backend {' and '.join(backends)}")
    with _blas_limit(args.blas_threads):
        _train(runs, args.epochs, args.no_progress)

    summaries = [r.summary() for r in runs]
    for s in summaries:
        print(f"{s['backend']}: test accuracy {s['test_accuracy']:.4f}, train accuracy "
              f"{s['train_accuracy']:.4f}, {s['epochs']} epochs, {s['steps']} steps in "
              f"{s['step_seconds']:.2f} s ({s['steps_per_second']:.0f} steps/s), "
              f"{s['seconds']:.2f} s with evaluation")
    result = dict(summaries[0], net=args.net, optimizer=args.optimizer, lr=lr, hidden=args.hidden,
                  batch_size=args.batch_size, data=args.data, dtype=dtype.name, seed=args.seed)
    status = 0
    if args.compare:
        kernel, reference = summaries
        rates = [r.steps / r.step_seconds for r in runs]
        speedup = rates[0] / rates[1]
        diff = abs(runs[0].test_correct - runs[1].test_correct)
        match = diff <= 1
        print(f"speedup: {speedup:.2f}x (kernel {rates[0]:.0f} steps/s, "
              f"reference {rates[1]:.0f} steps/s; training steps only)")
        print(f"test accuracies {'match' if match else 'DIFFER'}: kernel "
              f"{kernel['test_accuracy']:.4f}, reference {reference['test_accuracy']:.4f} "
              f"({diff} of {n_test} test samples apart; at most 1 allowed)")
        result.update(reference=reference, speedup=round(speedup, 3), accuracies_match=match,
                      test_samples_apart=diff)
        status = 0 if match else 1
    if args.plot:
        try:
            plot(runs, args.plot)
        except OSError as exc:
            print(f"fastbp train: cannot save the plot: {exc}", file=err)
            status = 1
        else:
            print(f"saved the curves to {args.plot}")
    if args.json:
        print(json.dumps(result))
    return status
