"""Data for the chapter-5 training job: scikit-learn's 8x8 digits, and MNIST from local files.

Both loaders return ``(x_train, t_train), (x_test, t_test)`` like the book's
``dataset/mnist.py``. Nothing is read at import and nothing is ever downloaded: MNIST is read
from a directory the user gives, or found where a reader of the book already has it (see
:func:`mnist_search_path`), and the digits ship inside scikit-learn (an optional extra:
``pip install "fastbp[data]"``).
"""

import gzip
import math
import os
import stat
import struct
import zlib

import numpy as np

__all__ = ["DIGITS_SEED", "DIGITS_TRAIN_SIZE", "MNIST_DIR_ENV", "MNIST_FILES", "load_digits",
           "load_mnist", "mnist_search_path", "read_idx"]

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
"""The four standard MNIST files, under the keys the book's ``dataset/mnist.py`` uses. The same
names without ``.gz`` (uncompressed IDX files) are read too."""

MNIST_DIR_ENV = "FASTBP_MNIST_DIR"
"""The environment variable :func:`load_mnist` looks at first when it is given no ``path``."""

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
    """Read one IDX file of unsigned bytes, gzipped or not, checking its header against its
    payload.

    Parameters
    ----------
    filename : str or path
        A name ending in ``.gz`` is read as gzip; any other name as an uncompressed IDX file.
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
        The file is not gzip (for ``.gz``), is truncated or corrupt, has the wrong magic number,
        or its payload does not have the size its header gives. The message names the file.
    """
    filename = os.fsdecode(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"MNIST file not found: {filename}")
    gz = filename.endswith(".gz")
    ndim = 3 if magic == _IMAGES_MAGIC else 1
    header = 4 + 4 * ndim
    with (gzip.open if gz else open)(filename, "rb") as f:
        try:
            head = _read_up_to(f, header)
            if not gz and head[:2] == b"\x1f\x8b":
                raise ValueError(f"{filename}: this is a gzip file; name it {filename}.gz, or "
                                 "gunzip it")
            if len(head) < 8:
                raise ValueError(f"{filename}: too short for an IDX header ({len(head)} bytes)")
            (found,) = struct.unpack(">i", head[:4])
            if found != magic:
                kind = "images" if magic == _IMAGES_MAGIC else "labels"
                raise ValueError(f"{filename}: magic number {found}, expected {magic} (IDX "
                                 f"{kind} of unsigned bytes)")
            if len(head) < header:
                raise ValueError(f"{filename}: header truncated ({len(head)} bytes, need "
                                 f"{header})")
            dims = struct.unpack(f">{ndim}i", head[4:header])
            if any(d < 0 for d in dims):
                raise ValueError(f"{filename}: negative dimension in header {dims}")
            expected = math.prod(dims)  # Python ints: no overflow
            # At most one byte more than the header promises: a small gzip file that inflates
            # to gigabytes, or a header that claims more than the file holds, fails without
            # reading (or allocating) more than that.
            if gz:
                payload = _read_up_to(f, expected + 1)
                size = len(payload)
            else:
                size = os.fstat(f.fileno()).st_size - header
                payload = f.read(expected) if size == expected else b""
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            if not gz or isinstance(exc, PermissionError):  # not the gzip's fault
                raise
            raise ValueError(f"{filename}: not a readable gzip file (truncated or corrupt?): "
                             f"{exc}") from exc
    if size != expected:
        holds = (f"more than {expected}" if gz and size > expected else f"{size}")
        raise ValueError(f"{filename}: header gives dimensions {dims} ({expected} bytes of "
                         f"data) but the file holds {holds} bytes after the header")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _read_up_to(f, n):
    """Up to ``n`` bytes of ``f``, fewer at its end, read a megabyte at a time (a request for
    ``n`` bytes at once would allocate them all first)."""
    data = bytearray()
    while len(data) < n:
        chunk = f.read(min(1 << 20, n - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _mnist_file(directory, key):
    """The file for ``key`` in ``directory``: the ``.gz`` name, else the uncompressed one, else
    None. PermissionError where the directory can't be searched (reported as such, not as a
    missing file)."""
    gz = os.path.join(directory, MNIST_FILES[key])
    for candidate in (gz, gz[:-len(".gz")]):
        try:
            if stat.S_ISREG(os.stat(candidate).st_mode):
                return candidate
        except PermissionError as exc:
            raise PermissionError(exc.errno, f"cannot look for MNIST in {directory}: "
                                             f"{exc.strerror}", candidate) from None
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:  # e.g. a name too long, a loop of links: not a file here
            continue
    return None


def _files_in(directory):
    """``{key: file or None}`` for the four MNIST files in ``directory``."""
    return {key: _mnist_file(directory, key) for key in MNIST_FILES}


def mnist_search_path():
    """The directories :func:`load_mnist` searches, in order, when it is given no ``path``.

    Returns
    -------
    list of (str, str)
        ``(directory, where it comes from)``: ``$FASTBP_MNIST_DIR`` if set, then ``./dataset``
        and ``../dataset`` relative to the working directory (where the book's
        ``dataset/mnist.py`` saves the files it downloads, for scripts run from ``ch05/``).
    """
    places = []
    env = os.environ.get(MNIST_DIR_ENV)
    if env:
        places.append((os.path.abspath(env), f"${MNIST_DIR_ENV}"))
    places.append((os.path.abspath("dataset"), "./dataset"))
    places.append((os.path.abspath(os.path.join(os.pardir, "dataset")), "../dataset"))
    return places


def _find_mnist_dir():
    """The first searched directory that holds any MNIST file; FileNotFoundError naming every
    place searched if none does."""
    report = []
    for directory, origin in mnist_search_path():
        if not os.path.isdir(directory):
            report.append(f"{origin} = {directory} (no such directory)")
        elif any(_files_in(directory).values()):
            return directory
        else:
            report.append(f"{origin} = {directory} (no MNIST files)")
    if not os.environ.get(MNIST_DIR_ENV):
        report.insert(0, f"${MNIST_DIR_ENV} (not set)")
    raise FileNotFoundError(
        "MNIST not found; searched:\n  " + "\n  ".join(report) + "\n"
        f"Put {', '.join(MNIST_FILES.values())} (or the same names without .gz) in one of "
        f"these, set ${MNIST_DIR_ENV} to their directory, or pass path=. fastbp never "
        "downloads.")


def _load_pair(files, img_key, label_key):
    images_file, labels_file = files[img_key], files[label_key]
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


def load_mnist(normalize=True, flatten=True, one_hot_label=False, path=None):
    """MNIST from the four standard IDX files, called as the book's ``load_mnist``.

    Parameters
    ----------
    normalize : bool
        Pixels as float32 in [0, 1] (``/ 255.0``); if False, uint8 in 0..255. A net trained
        on unscaled 0..255 pixels does not learn (its loss stays near 2.30).
    flatten : bool
        Images as (N, 784); if False, (N, 1, 28, 28).
    one_hot_label : bool
        Labels as float (N, 10) one-hot; if False, uint8 (N,).
    path : str or path, optional
        The directory that holds ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
        ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``, or the same names
        without ``.gz``. By default the first directory of :func:`mnist_search_path`
        (``$FASTBP_MNIST_DIR``, ``./dataset``, ``../dataset``) that holds any of them.
        Nothing is downloaded.

    Returns
    -------
    (x_train, t_train), (x_test, t_test)

    Raises
    ------
    FileNotFoundError
        ``path`` is not a directory; or, without ``path``, no searched directory holds an
        MNIST file (the message names every place searched); or files are missing (the
        message names all of them).
    PermissionError
        A directory to look in can't be searched, or a file can't be read.
    ValueError
        A file is truncated, corrupt, not IDX, or does not match its partner file. The message
        names the file.
    TypeError
        A directory was passed as the first argument (fastbp 0.1.0 took ``path`` first; the
        book's first argument is ``normalize``).
    """
    if isinstance(normalize, (str, bytes, os.PathLike)):
        raise TypeError(f"load_mnist's first argument is normalize, as in the book; pass the "
                        f"directory as load_mnist(path={normalize!r})")
    if path is None:
        path = _find_mnist_dir()
    else:
        path = os.fsdecode(path)  # str, bytes or a path object; joined with str names below
        if not os.path.isdir(path):
            raise FileNotFoundError(f"MNIST directory not found: {path} (it must hold "
                                    f"{', '.join(MNIST_FILES.values())})")
    files = _files_in(path)
    missing = [MNIST_FILES[k] for k, f in files.items() if f is None]
    if missing:
        raise FileNotFoundError(
            f"MNIST files missing in {path}: {', '.join(missing)} (or the same names without "
            f".gz); found {len(files) - len(missing)} of 4")
    sets = []
    for img_key, label_key in (("train_img", "train_label"), ("test_img", "test_label")):
        images, labels = _load_pair(files, img_key, label_key)
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
