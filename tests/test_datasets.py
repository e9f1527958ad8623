"""The data loaders: MNIST from small IDX files written here, and the embedded digits."""

import gzip
import pathlib
import struct
import subprocess
import sys

import numpy as np
import pytest

from fastbp.datasets import MNIST_DIR_ENV, MNIST_FILES, load_digits, load_mnist, read_idx

N_TRAIN, N_TEST = 5, 3


def idx_bytes(array, magic):
    array = np.asarray(array, dtype=np.uint8)
    return struct.pack(f">i{array.ndim}i", magic, *array.shape) + array.tobytes()


def write_gz(path, payload):
    with gzip.open(path, "wb") as f:
        f.write(payload)


def write_mnist(directory, n_train=N_TRAIN, n_test=N_TEST, seed=0, gz=True):
    """Four valid IDX files of random images (gzipped, or not); returns the arrays written."""
    rng = np.random.default_rng(seed)
    data = {
        "train_img": rng.integers(0, 256, (n_train, 28, 28)),
        "train_label": rng.integers(0, 10, n_train),
        "test_img": rng.integers(0, 256, (n_test, 28, 28)),
        "test_label": rng.integers(0, 10, n_test),
    }
    for key, array in data.items():
        magic = 2051 if key.endswith("img") else 2049
        if gz:
            write_gz(directory / MNIST_FILES[key], idx_bytes(array, magic))
        else:
            (directory / MNIST_FILES[key].removesuffix(".gz")).write_bytes(idx_bytes(array, magic))
    return data


@pytest.fixture
def mnist_dir(tmp_path):
    return tmp_path, write_mnist(tmp_path)


def test_load_mnist_book_defaults(mnist_dir):
    path, data = mnist_dir
    (x_train, t_train), (x_test, t_test) = load_mnist(path=path)
    assert x_train.shape == (N_TRAIN, 784) and x_test.shape == (N_TEST, 784)
    assert x_train.dtype == np.float32
    np.testing.assert_allclose(x_train, data["train_img"].reshape(N_TRAIN, 784) / 255.0,
                               rtol=1e-7)
    assert t_train.dtype == np.uint8 and t_train.shape == (N_TRAIN,)
    np.testing.assert_array_equal(t_test, data["test_label"])
    assert 0 <= x_test.min() and x_test.max() <= 1


def test_load_mnist_options(mnist_dir):
    path, data = mnist_dir
    (x_train, t_train), (x_test, _) = load_mnist(normalize=False, flatten=False,
                                                 one_hot_label=True, path=str(path))
    assert x_train.dtype == np.uint8 and x_train.shape == (N_TRAIN, 1, 28, 28)
    np.testing.assert_array_equal(x_test[:, 0], data["test_img"])
    assert x_train.flags.writeable
    assert t_train.shape == (N_TRAIN, 10) and t_train.dtype.kind == "f"
    np.testing.assert_array_equal(t_train.argmax(axis=1), data["train_label"])
    np.testing.assert_array_equal(t_train.sum(axis=1), 1)


def test_missing_directory_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST directory not found"):
        load_mnist(path=tmp_path / "nowhere")
    write_mnist(tmp_path)
    (tmp_path / MNIST_FILES["test_label"]).unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte\.gz"):
        load_mnist(path=tmp_path)


def test_a_directory_that_cant_be_searched_says_permission_not_missing(mnist_dir, monkeypatch):
    """Without search permission every file looked missing ("MNIST files missing in ...").
    (os.stat is made to refuse, as a chmod 000 directory would for a user who is not root.)"""
    import fastbp.datasets

    directory, _ = mnist_dir
    real_stat = fastbp.datasets.os.stat

    def refuse(path, *args, **kwargs):  # inside the directory; the directory itself is seen
        if str(path).startswith(str(directory / "x")[:-1]):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)
    monkeypatch.setattr(fastbp.datasets.os, "stat", refuse)
    with pytest.raises(PermissionError, match=r"cannot look for MNIST in .*Permission denied"):
        load_mnist(path=directory)


def test_every_missing_file_is_named_at_once(tmp_path):
    write_mnist(tmp_path)
    for key in ("train_img", "test_label"):
        (tmp_path / MNIST_FILES[key]).unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(path=tmp_path)
    message = str(info.value)
    assert MNIST_FILES["train_img"] in message and MNIST_FILES["test_label"] in message
    assert MNIST_FILES["train_label"] not in message and "found 2 of 4" in message


def test_a_test_set_only_directory_names_both_training_files(tmp_path):
    """Only the t10k files (as some mirrors ship): no silent half data set."""
    write_mnist(tmp_path)
    for key in ("train_img", "train_label"):
        (tmp_path / MNIST_FILES[key]).unlink()
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\.gz, "
                                                r"train-labels-idx1-ubyte\.gz"):
        load_mnist(path=tmp_path)


def test_uncompressed_idx_files_read_the_same(tmp_path):
    gz_dir, raw_dir = tmp_path / "gz", tmp_path / "raw"
    gz_dir.mkdir()
    raw_dir.mkdir()
    write_mnist(gz_dir, seed=3)
    write_mnist(raw_dir, seed=3, gz=False)
    assert not list(raw_dir.glob("*.gz"))
    for a, b in zip(load_mnist(path=gz_dir), load_mnist(path=raw_dir), strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    # a mixture: two files gzipped, two not
    for key in ("train_img", "test_label"):
        (raw_dir / MNIST_FILES[key]).write_bytes((gz_dir / MNIST_FILES[key]).read_bytes())
        (raw_dir / MNIST_FILES[key].removesuffix(".gz")).unlink()
    np.testing.assert_array_equal(load_mnist(path=raw_dir)[0][0], load_mnist(path=gz_dir)[0][0])


def test_uncompressed_name_holding_gzip_says_so(tmp_path):
    write_mnist(tmp_path, gz=False)
    name = MNIST_FILES["train_label"].removesuffix(".gz")
    (tmp_path / name).write_bytes(gzip.compress((tmp_path / name).read_bytes()))
    with pytest.raises(ValueError, match=f"{name}: this is a gzip file"):
        load_mnist(path=tmp_path)


def test_corrupt_uncompressed_file_is_named(tmp_path):
    write_mnist(tmp_path, gz=False)
    name = MNIST_FILES["test_img"].removesuffix(".gz")
    (tmp_path / name).write_bytes((tmp_path / name).read_bytes()[:-5])
    with pytest.raises(ValueError, match=f"{name}: header gives dimensions"):
        load_mnist(path=tmp_path)


def test_a_directory_as_first_argument_says_to_pass_path(tmp_path):
    with pytest.raises(TypeError, match=r"load_mnist\(path="):
        load_mnist(str(tmp_path))
    with pytest.raises(TypeError, match="normalize"):
        load_mnist(tmp_path)


# --- load_mnist without a path: where the book's readers already have the files ------------


@pytest.fixture
def book_layout(tmp_path, monkeypatch):
    """A clone of the book's repository: dataset/ beside ch05/, the script run from ch05/."""
    (tmp_path / "dataset").mkdir()
    (tmp_path / "ch05").mkdir()
    monkeypatch.chdir(tmp_path / "ch05")
    monkeypatch.delenv(MNIST_DIR_ENV, raising=False)
    return tmp_path


def test_book_call_finds_dataset_beside_the_chapter(book_layout):
    data = write_mnist(book_layout / "dataset")
    (x_train, t_train), (_, t_test) = load_mnist(normalize=True, one_hot_label=True)
    assert x_train.shape == (N_TRAIN, 784) and t_train.shape == (N_TRAIN, 10)
    np.testing.assert_array_equal(t_test.argmax(axis=1), data["test_label"])


def test_search_order_env_then_dot_then_dotdot(book_layout, tmp_path, monkeypatch):
    write_mnist(book_layout / "dataset", seed=1)
    (book_layout / "ch05" / "dataset").mkdir()
    here = write_mnist(book_layout / "ch05" / "dataset", seed=2)
    np.testing.assert_array_equal(load_mnist()[1][1], here["test_label"])
    env_dir = tmp_path / "elsewhere"
    env_dir.mkdir()
    there = write_mnist(env_dir, seed=4, gz=False)
    monkeypatch.setenv(MNIST_DIR_ENV, str(env_dir))
    np.testing.assert_array_equal(load_mnist()[1][1], there["test_label"])


def test_a_partial_directory_found_first_is_reported_not_skipped(book_layout):
    """./dataset with a half-finished download: name what it lacks, do not quietly read
    ../dataset instead."""
    write_mnist(book_layout / "dataset")
    (book_layout / "ch05" / "dataset").mkdir()
    write_mnist(book_layout / "ch05" / "dataset")
    (book_layout / "ch05" / "dataset" / MNIST_FILES["train_img"]).unlink()
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\.gz") as info:
        load_mnist()
    assert str(book_layout / "ch05" / "dataset") in str(info.value)


def test_nothing_found_names_every_place_searched(book_layout, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as info:
        load_mnist()
    message = str(info.value)
    assert f"${MNIST_DIR_ENV} (not set)" in message
    assert f"./dataset = {book_layout / 'ch05' / 'dataset'} (no such directory)" in message
    assert f"../dataset = {book_layout / 'dataset'} (no MNIST files)" in message
    assert "never downloads" in message and "path=" in message
    monkeypatch.setenv(MNIST_DIR_ENV, str(tmp_path / "typo"))
    with pytest.raises(FileNotFoundError, match=rf"\${MNIST_DIR_ENV} = .*typo \(no such"):
        load_mnist()


def test_nothing_is_downloaded(book_layout, monkeypatch):
    import socket
    import urllib.request

    def refuse(*args, **kwargs):
        raise AssertionError("load_mnist tried the network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(FileNotFoundError):
        load_mnist()
    assert not any((book_layout / "dataset").iterdir())


def _shared_mnist():
    for parent in pathlib.Path(__file__).resolve().parents:
        candidate = parent / "shared" / "data" / "mnist"
        if candidate.is_dir():
            return candidate
    return None


@pytest.mark.skipif(_shared_mnist() is None, reason="no real MNIST files here")
def test_real_test_set_files(monkeypatch):
    """The real t10k files: they read; a directory of only them names the training files."""
    directory = _shared_mnist()
    images = read_idx(directory / MNIST_FILES["test_img"], 2051)
    labels = read_idx(directory / MNIST_FILES["test_label"], 2049)
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert set(np.unique(labels)) == set(range(10))
    monkeypatch.setenv(MNIST_DIR_ENV, str(directory))
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\.gz, "
                                                r"train-labels-idx1-ubyte\.gz"):
        load_mnist()


def good_gz(key):
    return gzip.compress(idx_bytes(np.zeros((N_TRAIN, 28, 28) if key.endswith("img")
                                            else N_TRAIN), 2051 if key.endswith("img") else 2049))


@pytest.mark.parametrize(("key", "make", "message"), [
    ("train_img", lambda: good_gz("train_img")[:-20], "truncated or corrupt"),
    ("train_label", lambda: b"this is not gzip at all", "not a readable gzip"),
    ("test_img", lambda: good_gz("test_img")[:14] + b"\xff" * 30, "truncated or corrupt"),
    ("train_img", lambda: gzip.compress(idx_bytes(np.zeros((N_TRAIN, 28, 28)), 2049)),
     "magic number 2049, expected 2051"),
    ("train_label", lambda: gzip.compress(idx_bytes(np.zeros(N_TRAIN), 2051)),
     "magic number 2051, expected 2049"),
    ("train_img", lambda: gzip.compress(idx_bytes(np.zeros((N_TRAIN, 28, 28)), 2051)[:-1]),
     r"header gives dimensions \(5, 28, 28\) \(3920 bytes of data\) but the file holds 3919"),
    ("test_label", lambda: gzip.compress(idx_bytes(np.zeros(N_TEST), 2049) + b"\x01"),
     "holds more than 3 bytes after the header"),
    ("test_label", lambda: gzip.compress(struct.pack(">i", 2049)),
     "too short for an IDX header"),
    ("test_label", lambda: gzip.compress(struct.pack(">ii", 2049, -1)),
     "negative dimension"),
    ("train_label", lambda: gzip.compress(idx_bytes(np.zeros(N_TRAIN + 1), 2049)),
     "holds 5 images but .*train-labels-idx1-ubyte.gz holds 6 labels"),
    ("test_img", lambda: gzip.compress(idx_bytes(np.zeros((N_TEST, 8, 8)), 2051)),
     "images are 8x8"),
    ("test_label", lambda: gzip.compress(idx_bytes(np.full(N_TEST, 10), 2049)),
     "label 10 is not a digit"),
], ids=["truncated-gzip", "not-gzip", "corrupt-deflate", "images-magic", "labels-magic",
        "short-payload", "long-payload", "short-header", "negative-dim", "count-mismatch",
        "not-28x28", "bad-label"])
def test_corrupt_files_raise_a_value_error_naming_the_file(mnist_dir, key, make, message):
    path, _ = mnist_dir
    (path / MNIST_FILES[key]).write_bytes(make())
    with pytest.raises(ValueError, match=message) as info:
        load_mnist(path=path)
    assert MNIST_FILES[key] in str(info.value)


def test_nothing_is_read_at_import():
    """Importing the module reads no data and imports no scikit-learn."""
    code = ("import sys, fastbp.datasets; "
            "assert 'sklearn' not in sys.modules, 'sklearn imported'; "
            "assert not any(type(v).__name__ == 'ndarray' "
            "for v in vars(fastbp.datasets).values())")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_digits_split_and_values():
    (x_train, t_train), (x_test, t_test) = load_digits()
    assert x_train.shape == (1500, 64) and x_test.shape == (297, 64)
    assert x_train.dtype == np.float32
    assert x_train.min() == 0 and x_train.max() == 1 and x_test.max() <= 1
    assert t_train.dtype.kind == "u" and set(np.unique(t_train)) == set(range(10))
    # Raw digits pixels are 0..16: normalised values are multiples of 1/16.
    np.testing.assert_array_equal(x_train * 16, np.round(x_train * 16))
    (x2, t2), (x3, t3) = load_digits()
    for a, b in ((x_train, x2), (t_train, t2), (x_test, x3), (t_test, t3)):
        np.testing.assert_array_equal(a, b)


def test_load_digits_is_a_shuffle_of_sklearn():
    from sklearn.datasets import load_digits as sklearn_digits

    raw = sklearn_digits()
    (x_train, t_train), (x_test, t_test) = load_digits(normalize=False)
    x = np.concatenate([x_train, x_test]).astype(np.float64)
    t = np.concatenate([t_train, t_test])
    # The same 1797 rows, in another order: sort both by content and compare.
    ours = np.lexsort(np.column_stack([x, t]).T)
    theirs = np.lexsort(np.column_stack([raw.data, raw.target]).T)
    np.testing.assert_array_equal(x[ours], raw.data[theirs])
    np.testing.assert_array_equal(t[ours], raw.target[theirs])
    assert not np.array_equal(t[:100], raw.target[:100])  # shuffled, not the file's order


def test_load_digits_options():
    (x_train, t_train), _ = load_digits(normalize=False, flatten=False, one_hot_label=True)
    assert x_train.dtype == np.uint8 and x_train.shape == (1500, 1, 8, 8)
    assert x_train.max() == 16
    assert t_train.shape == (1500, 10)
    np.testing.assert_array_equal(t_train.sum(axis=1), 1)


def test_load_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r'pip install "fastbp\[data\]"'):
        load_digits()


def test_a_small_gzip_that_inflates_past_its_header_is_read_only_that_far(tmp_path):
    """A 0.4 MB gzip whose header promises 3 images but that inflates to 400 MB: read_idx stops
    one byte past the promise (it inflated the whole file first: 0.9 GB of memory)."""
    import tracemalloc

    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(struct.pack(">iiii", 2051, 3, 28, 28))
        for _ in range(400):
            f.write(bytes(1 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"\(2352 bytes of data\) but the file holds more "
                                             r"than 2352 bytes"):
            read_idx(path, 2051)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_header_dimensions_beyond_int64_are_named_exactly(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(struct.pack(">iiii", 2051, 2**30, 2**30, 16))
    with pytest.raises(ValueError, match=f"({2**64} bytes of data) but the file holds 0 bytes"
                       .replace("(", r"\(").replace(")", r"\)")):
        read_idx(path, 2051)


def test_a_bytes_path_works(mnist_dir):
    path, _ = mnist_dir
    (x, t), _ = load_mnist(path=bytes(path))
    assert x.shape == (N_TRAIN, 784) and t.shape == (N_TRAIN,)
