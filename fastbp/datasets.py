"""Data for the chapter-5 training job: scikit-learn's 8x8 digits, and MNIST from local files.

Both loaders return ``(x_train, t_train), (x_test, t_test)`` like the book's
``dataset/mnist.py``. Nothing is read at import and nothing is ever downloaded: MNIST is read
from a directory the user gives, and the digits ship inside scikit-learn (an optional extra:
``pip install "fastbp[data]"``).
"""

import gzip
import os
import struct
import zlib

import numpy as np

__all__ = ["DIGITS_SEED", "DIGITS_TRAIN_SIZE", "MNIST_FILES", "load_digits", "load_mnist",
           "read_idx"]

DIGITS_TRAIN_SIZE = 1500
"""Training images in :func:`load_digits`; the other 297 of the 1797 are the test set."""

DIGITS_SEED = 0
"""The seed of the shuffle that makes the fixed digits split."""

MNIST_FILES = {
    "train_img": "train-images-idx3-ubyte.gz",
    "train_label": "train-labels-idx1-ubyte.gz",
    "test_img": "t10k-images-idx3-ubyte.gz",
    "test_label": "t10k-labels-idx1-ubyte.gz",
}
"""The four standard MNIST files, under the keys the book's ``dataset/mnist.py`` uses."""

_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049


def _one_hot(labels, num_classes=10):
    # Float like the book's _change_one_hot_label (np.zeros gives float64).
    out = np.zeros((labels.size, num_classes))
    out[np.arange(labels.size), labels] = 1
    return out


def load_digits(normalize=True, flatten=True, one_hot_label=False):
    """scikit-learn's 8x8 handwritten digits, split 1500/297 by a fixed seeded shuffle.

    Parameters
    ----------
    normalize : bool
        Pixels as float32 in [0, 1] (the raw values are 0..16). If False, uint8 in 0..16.
    flatten : bool
        Images as (N, 64); if False, (N, 1, 8, 8).
    one_hot_label : bool
        Labels as float (N, 10) one-hot; if False, uint8 (N,).

    Returns
    -------
    (x_train, t_train), (x_test, t_test)
        1500 training and 297 test images; the split is the same on every call.

    Raises
    ------
    ImportError
        scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as exc:
        raise ImportError(
            "the digits data set ships with scikit-learn, which is not installed; install it "
            'with: pip install "fastbp[data]"'
        ) from exc
    bunch = sklearn_digits()
    images = np.asarray(bunch.data)
    labels = np.asarray(bunch.target).astype(np.uint8)
    order = np.random.default_rng(DIGITS_SEED).permutation(len(labels))
    images, labels = images[order], labels[order]
    if normalize:
        x = (images / 16.0).astype(np.float32)
    else:
        x = images.astype(np.uint8)
    if not flatten:
        x = x.reshape(-1, 1, 8, 8)
    t = _one_hot(labels) if one_hot_label else labels
    n = DIGITS_TRAIN_SIZE
    return (x[:n], t[:n]), (x[n:], t[n:])


def read_idx(filename, magic):
    """Read one gzipped IDX file of unsigned bytes, checking its header against its payload.

    Parameters
    ----------
    filename : str or path
    magic : int
        2051 for images (3 dimensions), 2049 for labels (1 dimension).

    Returns
    -------
    ndarray of uint8
        Shape ``(N, rows, cols)`` for images, ``(N,)`` for labels.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        The file is not gzip, is truncated or corrupt, has the wrong magic number, or its
        payload does not have the size its header gives. The message names the file.
    """
    filename = os.fspath(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"MNIST file not found: {filename}")
    try:
        with gzip.open(filename, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise ValueError(f"{filename}: not a readable gzip file (truncated or corrupt?): "
                         f"{exc}") from exc
    ndim = 3 if magic == _IMAGES_MAGIC else 1
    header = 4 + 4 * ndim
    if len(data) < 8:
        raise ValueError(f"{filename}: too short for an IDX header ({len(data)} bytes)")
    (found,) = struct.unpack(">i", data[:4])
    if found != magic:
        kind = "images" if magic == _IMAGES_MAGIC else "labels"
        raise ValueError(f"{filename}: magic number {found}, expected {magic} (IDX {kind} of "
                         f"unsigned bytes)")
    if len(data) < header:
        raise ValueError(f"{filename}: header truncated ({len(data)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}i", data[4:header])
    if any(d < 0 for d in dims):
        raise ValueError(f"{filename}: negative dimension in header {dims}")
    expected = int(np.prod(dims, dtype=np.int64))
    payload = len(data) - header
    if payload != expected:
        raise ValueError(f"{filename}: header gives dimensions {dims} ({expected} bytes of "
                         f"data) but the file holds {payload} bytes after the header")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _load_pair(path, img_key, label_key):
    images_file = os.path.join(path, MNIST_FILES[img_key])
    labels_file = os.path.join(path, MNIST_FILES[label_key])
    images = read_idx(images_file, _IMAGES_MAGIC)
    labels = read_idx(labels_file, _LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_file} holds {images.shape[0]} images but {labels_file} "
                         f"holds {labels.shape[0]} labels")
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_file}: images are {images.shape[1]}x{images.shape[2]}, "
                         "MNIST images are 28x28")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_file}: label {int(labels.max())} is not a digit 0..9")
    return images, labels


def load_mnist(path, normalize=True, flatten=True, one_hot_label=False):
    """MNIST from the four standard IDX ``.gz`` files in ``path``, as the book's ``load_mnist``.

    Parameters
    ----------
    path : str or path
        The directory that holds ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
        ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``. Nothing is downloaded.
    normalize : bool
        Pixels as float32 in [0, 1] (``/ 255.0``); if False, uint8 in 0..255.
    flatten : bool
        Images as (N, 784); if False, (N, 1, 28, 28).
    one_hot_label : bool
        Labels as float (N, 10) one-hot; if False, uint8 (N,).

    Returns
    -------
    (x_train, t_train), (x_test, t_test)

    Raises
    ------
    FileNotFoundError
        ``path`` or one of the files is missing.
    ValueError
        A file is truncated, corrupt, not IDX, or does not match its partner file. The message
        names the file.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"MNIST directory not found: {path} (it must hold "
                                f"{', '.join(MNIST_FILES.values())})")
    sets = []
    for img_key, label_key in (("train_img", "train_label"), ("test_img", "test_label")):
        images, labels = _load_pair(path, img_key, label_key)
        x = images.reshape(-1, 1, 28, 28)
        if normalize:
            x = x.astype(np.float32) / 255.0
        else:
            x = x.copy()  # writable, not a view of the file's bytes
        if flatten:
            x = x.reshape(-1, 784)
        t = _one_hot(labels) if one_hot_label else labels.copy()
        sets.append((x, t))
    return sets[0], sets[1]
