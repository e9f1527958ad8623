"""``fastbp train``: the command line, its JSON line, its options and its targets."""

import gzip
import io
import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from fastbp import cli, training

TINY = ["--epochs", "2", "--hidden", "8", "--batch-size", "50", "--no-progress"]


def train(capsys, *argv):
    """Run ``fastbp train`` in this process; return (status, stdout lines, stderr)."""
    status = cli.main(["train", *argv])
    captured = capsys.readouterr()
    return status, captured.out.splitlines(), captured.err


def last_json(lines):
    """The JSON document, checked to be all that stdout holds (one line)."""
    assert len(lines) == 1, lines
    return json.loads(lines[0])


def test_help():
    out = subprocess.run([sys.executable, "-m", "fastbp", "train", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for option in ("--data", "--mnist-dir", "--hidden", "--epochs", "--batch-size", "--lr",
                   "--optimizer", "--seed", "--backend", "--compare", "--plot", "--json"):
        assert option in out


def test_tiny_json_run_piped_into_json_tool():
    """`fastbp train --json | python -m json.tool` works: stdout is the JSON and only that."""
    train_proc = subprocess.Popen([sys.executable, "-m", "fastbp", "train", "--epochs", "1",
                                   "--hidden", "8", "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tool = subprocess.run([sys.executable, "-m", "json.tool"], stdin=train_proc.stdout,
                          capture_output=True, text=True)
    train_proc.stdout.close()
    err = train_proc.stderr.read().decode()
    assert train_proc.wait() == 0, err
    assert tool.returncode == 0, tool.stderr
    result = json.loads(tool.stdout)
    for key in ("test_accuracy", "train_accuracy", "epochs", "seconds", "steps_per_second",
                "backend"):
        assert key in result
    assert result["epochs"] == 1 and result["backend"] == "kernel"
    assert result["steps"] == 15  # 1500 training images, batches of 100
    assert 0 <= result["test_accuracy"] <= 1 and result["steps_per_second"] > 0
    # the lines for people went to stderr
    assert "fastbp train: digits" in err and "epoch 1/1" in err and "test accuracy" in err


def test_default_run_reaches_the_target(capsys):
    """The issue's target: the defaults reach >= 0.95 test accuracy on the digits."""
    status, lines, err = train(capsys, "--json", "--no-progress")
    result = last_json(lines)
    assert status == 0
    assert result["epochs"] == training.DEFAULTS["epochs"]
    assert result["optimizer"] == "sgd" and result["hidden"] == 100
    assert result["test_accuracy"] >= 0.95
    epoch_lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == result["epochs"]
    assert "train acc" in epoch_lines[0] and "test acc" in epoch_lines[0]


def test_compare_trains_both_backends_alike(capsys):
    status, lines, err = train(capsys, *TINY, "--compare", "--json")
    result = last_json(lines)
    assert status == 0
    assert result["backend"] == "kernel" and result["reference"]["backend"] == "reference"
    assert result["accuracies_match"] is True and result["test_samples_apart"] <= 1
    assert result["speedup"] > 0
    assert result["reference"]["steps"] == result["steps"] == 60
    assert "speedup:" in err and "test accuracies match" in err
    # the reference compiles nothing: no "warm-up (JIT compile ...) 0.00 s" for it
    assert "reference: plain NumPy, no compilation" in err
    assert "kernel: warm-up (JIT compile or cache load)" in err
    assert "reference: warm-up" not in err


def test_compare_exits_1_when_the_accuracies_differ(capsys, monkeypatch):
    real = training.TrainingRun.test_correct

    def skewed(run):  # the reference backend two test samples worse
        return real.fget(run) - 2 * (run.backend == "reference")

    monkeypatch.setattr(training.TrainingRun, "test_correct", property(skewed))
    status, lines, err = train(capsys, *TINY, "--compare", "--json")
    result = last_json(lines)
    assert status == 1
    assert result["accuracies_match"] is False and result["test_samples_apart"] == 2
    assert "test accuracies DIFFER" in err


@pytest.mark.parametrize("backend", ["kernel", "reference"])
@pytest.mark.parametrize("optimizer", sorted(training.DEFAULT_LR))
def test_every_optimizer_and_backend_learns(capsys, optimizer, backend):
    status, lines, _ = train(capsys, "--epochs", "10", "--hidden", "32", "--optimizer",
                             optimizer, "--backend", backend, "--dtype", "float32",
                             "--no-progress", "--json")
    result = last_json(lines)
    assert status == 0 and result["backend"] == backend and result["dtype"] == "float32"
    assert result["train_accuracy"] > 0.3  # chance is 0.1


def test_seed_decides_the_run(capsys):
    runs = [last_json(train(capsys, *TINY, "--json", "--seed", seed)[1])
            for seed in ("3", "3", "4")]
    assert runs[0]["loss"] == runs[1]["loss"]
    assert runs[0]["loss"] != runs[2]["loss"]


def test_plot_without_matplotlib_fails_clearly(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status, lines, err = train(capsys, *TINY, "--plot", str(tmp_path / "x.png"))
    assert status == 2 and not lines
    assert "matplotlib" in err and 'pip install "fastbp[data]"' in err


def test_without_tqdm_there_is_no_bar(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert training._progress_bar(10, disable=False) is None
    status, lines, _ = train(capsys, "--epochs", "1", "--hidden", "8")
    assert status == 0 and any(line.startswith("epoch 1/1") for line in lines)


def write_idx(path, array, magic):
    array = np.asarray(array, dtype=np.uint8)
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(f">i{array.ndim}i", magic, *array.shape) + array.tobytes())


def write_mnist(directory, n_train=300, n_test=60):
    """A tiny MNIST whose label is readable from the image: class c lights row 2c."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 40, (n, 28, 28))
        images[np.arange(n), 2 * labels] = 255
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images, 2051)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels, 2049)


def test_mnist_from_a_directory(capsys, tmp_path):
    """--mnist-dir alone implies --data mnist."""
    write_mnist(tmp_path)
    status, lines, err = train(capsys, "--mnist-dir", str(tmp_path),
                               "--epochs", "3", "--hidden", "16", "--optimizer", "adam",
                               "--no-progress", "--json")
    result = last_json(lines)
    assert status == 0 and result["data"] == "mnist" and result["test_size"] == 60
    assert "fastbp train: mnist" in err and "784 features" in err
    assert result["test_accuracy"] > 0.5


def test_mnist_dir_with_digits_is_refused(capsys, tmp_path):
    status, lines, err = train(capsys, "--data", "digits", "--mnist-dir", str(tmp_path))
    assert status == 2 and not lines and "--mnist-dir" in err


def test_data_mnist_finds_the_books_dataset_directory(capsys, tmp_path, monkeypatch):
    """Run from a chapter directory of the book's clone: ../dataset is found."""
    (tmp_path / "dataset").mkdir()
    (tmp_path / "ch05").mkdir()
    write_mnist(tmp_path / "dataset", n_train=100, n_test=20)
    monkeypatch.chdir(tmp_path / "ch05")
    monkeypatch.delenv("FASTBP_MNIST_DIR", raising=False)
    status, lines, _ = train(capsys, "--data", "mnist", "--epochs", "1", "--hidden", "8",
                             "--json")
    assert status == 0 and last_json(lines)["test_size"] == 20


def test_mnist_errors(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FASTBP_MNIST_DIR", raising=False)
    status, lines, err = train(capsys, "--data", "mnist")
    assert status == 1 and not lines
    for place in ("$FASTBP_MNIST_DIR", "./dataset", "../dataset", "--mnist-dir DIR"):
        assert place in err
    status, _, err = train(capsys, "--data", "mnist", "--mnist-dir", str(tmp_path))
    assert status == 1 and "train-images-idx3-ubyte.gz" in err and "t10k-labels" in err
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    status, _, err = train(capsys, "--data", "mnist", "--mnist-dir", str(tmp_path))
    assert status == 1 and "t10k-labels-idx1-ubyte.gz" in err


@pytest.mark.parametrize("option", ["--epochs", "--hidden", "--batch-size"])
def test_sizes_must_be_positive(capsys, option):
    status, _, err = train(capsys, option, "0")
    assert status == 2 and option in err


@pytest.mark.parametrize("argv", [["--seed", "-1"], ["--lr", "nan"], ["--lr", "inf"]],
                         ids=["seed", "nan lr", "inf lr"])
def test_a_negative_seed_or_a_non_finite_lr_is_refused(capsys, argv):
    status, lines, err = train(capsys, *argv)
    assert status == 2 and not lines and argv[0] in err and "Traceback" not in err


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_a_diverged_run_still_prints_strict_json(capsys):
    """A loss that overflows is null in the JSON: strict parsers reject Python's NaN."""
    def no_constants(name):
        raise AssertionError(f"{name} in the JSON")

    status, lines, _ = train(capsys, "--lr", "1e30", "--dtype", "float32", "--epochs", "1",
                             "--hidden", "8", "--json")
    (line,) = lines
    result = json.loads(line, parse_constant=no_constants)
    assert status == 0 and result["loss"] is None and result["lr"] == 1e30


@pytest.mark.parametrize("empty", ["train", "t10k"])
def test_mnist_files_with_no_images_are_refused(capsys, tmp_path, empty):
    write_mnist(tmp_path)
    write_idx(tmp_path / f"{empty}-images-idx3-ubyte.gz", np.zeros((0, 28, 28)), 2051)
    write_idx(tmp_path / f"{empty}-labels-idx1-ubyte.gz", np.zeros(0), 2049)
    status, lines, err = train(capsys, "--mnist-dir", str(tmp_path), "--epochs", "1")
    part = "training" if empty == "train" else "test"
    assert status == 1 and not lines and f"{part} set holds no images" in err


def test_warm_up_changes_nothing():
    data = training.load_data("digits")
    a = training.TrainingRun(data, "kernel", hidden=8, batch_size=100, optimizer="adam",
                             lr=0.01, seed=1, dtype=np.float64)
    b = training.TrainingRun(data, "kernel", hidden=8, batch_size=100, optimizer="adam",
                             lr=0.01, seed=1, dtype=np.float64)
    a.warm_up()
    assert a.optimizer.iter == 0
    assert a.epoch() == b.epoch()


# --- progress modes -------------------------------------------------------------------------


class _Terminal:
    def isatty(self):
        return True


def test_progress_mode_auto():
    pytest.importorskip("tqdm")
    assert training.progress_mode("auto", _Terminal()) == "bar"
    assert training.progress_mode("auto", _Terminal(), no_progress=True) == "epochs"
    assert training.progress_mode("auto", object()) == "sparse"  # no isatty at all
    assert training.progress_mode("auto", io.StringIO()) == "sparse"
    assert training.progress_mode("quiet", _Terminal()) == "quiet"


def test_progress_mode_without_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert training.progress_mode("auto", _Terminal()) == "epochs"
    assert training.progress_mode("bar", _Terminal()) == "epochs"


def test_sparse_shows_about_ten_epochs():
    shown = [e for e in range(1, 101) if training._epoch_shown(e, 100, "sparse")]
    assert shown == [1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert [e for e in range(1, 4) if training._epoch_shown(e, 3, "sparse")] == [1, 2, 3]
    assert not any(training._epoch_shown(e, 100, "quiet") for e in range(1, 101))
    assert all(training._epoch_shown(e, 100, "epochs") for e in range(1, 101))


@pytest.mark.parametrize(("mode", "expected"), [("sparse", [1, 2, 4, 6, 8, 10, 12]),
                                                 ("quiet", []), ("epochs", list(range(1, 13)))])
def test_progress_lines(capsys, mode, expected):
    status, lines, _ = train(capsys, "--epochs", "12", "--hidden", "4", "--batch-size", "500",
                             "--progress", mode)
    assert status == 0
    epochs = [int(line.split()[1].split("/")[0]) for line in lines if line.startswith("epoch ")]
    assert epochs == expected
    assert any(line.startswith("kernel: test accuracy") for line in lines)


def test_progress_defaults_to_sparse_off_a_terminal(capsys):
    status, lines, _ = train(capsys, "--epochs", "30", "--hidden", "4", "--batch-size", "500")
    assert status == 0
    assert len([line for line in lines if line.startswith("epoch ")]) == 11


def test_progress_bar_on_request(capsys):
    pytest.importorskip("tqdm")
    status, lines, _ = train(capsys, "--epochs", "2", "--hidden", "4", "--batch-size", "500",
                             "--progress", "bar")
    text = "\n".join(lines)
    assert status == 0 and "epoch 1/2" in text and "epoch 2/2" in text and "step" in text


# --- the plot -------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["missing dir", "is a dir", "parent is a file"])
def test_plot_target_is_checked_before_training(capsys, tmp_path, where):
    pytest.importorskip("matplotlib")
    target = {"missing dir": tmp_path / "no" / "curves.png",
              "is a dir": tmp_path / "d.png",
              "parent is a file": tmp_path / "file" / "curves.png"}[where]
    (tmp_path / "d.png").mkdir()
    (tmp_path / "file").write_text("x")
    status, lines, err = train(capsys, *TINY, "--plot", str(target))
    assert status == 2 and not lines and "--plot" in err and str(target) in err
    assert "epoch" not in err


def test_plot_in_an_unwritable_directory_fails_before_training(capsys, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(training.tempfile, "TemporaryFile", refuse)
    status, lines, err = train(capsys, *TINY, "--plot", str(tmp_path / "curves.png"))
    assert status == 2 and not lines
    assert f"cannot write in {tmp_path}: Permission denied" in err


def test_plot_title_and_both_backends(capsys, tmp_path, monkeypatch):
    """--compare: both backends drawn, told apart by style; the title says what was run."""
    pytest.importorskip("matplotlib")
    figures = []
    real = training.curves_figure

    def keep(runs, title=None):
        figures.append(real(runs, title))
        return figures[-1]

    monkeypatch.setattr(training, "curves_figure", keep)
    path = tmp_path / "curves.png"
    status, lines, _ = train(capsys, "--epochs", "4", "--hidden", "16", "--no-progress",
                             "--compare", "--dtype", "float32", "--optimizer", "adam",
                             "--plot", str(path))
    assert status == 0 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"saved the curves to {path}" in lines
    (fig,) = figures
    title = fig._suptitle.get_text()
    for part in ("TwoLayerNet on digits", "adam", "lr 0.002", "float32"):
        assert part in title
    ax_loss, ax_acc = fig.axes
    lines_by_label = {line.get_label(): line for line in ax_acc.get_lines()}
    assert set(lines_by_label) == {"train (kernel)", "test (kernel)", "train (reference)",
                                   "test (reference)"}
    kernel, ref = lines_by_label["test (kernel)"], lines_by_label["test (reference)"]
    assert kernel.get_linestyle() != ref.get_linestyle()
    assert ref.get_marker() not in (None, "None", "")
    assert kernel.get_linewidth() > ref.get_linewidth()
    assert len(ax_loss.get_lines()) == 2
    # accuracy axis zoomed to the data, not 0..1
    values = np.concatenate([line.get_ydata() for line in lines_by_label.values()])
    low, high = ax_acc.get_ylim()
    assert low <= values.min() and values.max() <= high <= 1.005
    assert low >= values.min() - 0.1 and low > 0
