"""The scripts in examples/ run, as a reader runs them: ``python examples/x.py``."""

import os
import pathlib
import re
import subprocess
import sys

import pytest
from test_datasets import write_mnist

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"

pytest.importorskip("sklearn")  # the examples fall back to the digits, which need it


def run_example(name, *args, cwd, env=None):
    environment = {k: v for k, v in os.environ.items() if k != "FASTBP_MNIST_DIR"}
    environment.update(env or {})
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd,
                          env=environment, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_two_layer_net_demo(tmp_path):
    out = run_example("two_layer_net.py", cwd=tmp_path)
    assert "logits shape: (6, 3)" in out
    for key in ("W1", "b1", "W2", "b2"):
        assert f"grad {key}:" in out


def test_gradient_check_agrees(tmp_path):
    out = run_example("gradient_check.py", cwd=tmp_path)
    diffs = dict(re.findall(r"^(W1|b1|W2|b2):(\S+)$", out, flags=re.M))
    assert set(diffs) == {"W1", "b1", "W2", "b2"}
    assert all(float(v) < 1e-7 for v in diffs.values()), diffs
    assert "gradient check passed" in out


def test_training_on_the_digits_without_mnist(tmp_path):
    out = run_example("train_neuralnet.py", "--iters", "300", cwd=tmp_path)
    assert "MNIST not found" in out and "digits: 1500 training" in out
    final = float(re.search(r"final test accuracy: (\S+)", out).group(1))
    assert final > 0.5  # chance is 0.1; 300 steps reach about 0.85


def test_training_finds_the_books_dataset_directory(tmp_path):
    """Run from a chapter directory: ../dataset holds the files (here tiny, made up)."""
    (tmp_path / "dataset").mkdir()
    (tmp_path / "ch05").mkdir()
    write_mnist(tmp_path / "dataset", n_train=200, n_test=40)
    out = run_example("train_neuralnet.py", "--iters", "20", cwd=tmp_path / "ch05")
    assert "mnist: 200 training and 40 test images of 784 pixels" in out
    assert "final test accuracy" in out


def test_readme_two_layer_net_is_complete():
    """README's TwoLayerNet block runs as it stands: predict, loss, accuracy and gradient,
    which agrees with numerical_gradient."""
    import numpy as np

    readme = (EXAMPLES.parent / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
                if "class TwoLayerNet" in b]
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    # The block draws its weights from NumPy's global state, as the book does: seeded, so that
    # no run lands a ReLU input within the finite difference's step of its kink (an unseeded
    # run failed 3 of 9 times here).
    saved = np.random.get_state()  # noqa: NPY002
    np.random.seed(0)  # noqa: NPY002
    try:
        net = namespace["TwoLayerNet"](input_size=6, hidden_size=4, output_size=3)
    finally:
        np.random.set_state(saved)  # noqa: NPY002
    rng = np.random.default_rng(0)
    x, t = rng.random((5, 6)), rng.integers(0, 3, 5)
    assert net.predict(x).shape == (5, 3) and 0 <= net.accuracy(x, t) <= 1
    assert np.isfinite(net.loss(x, t))
    numeric, backprop = net.numerical_gradient(x, t), net.gradient(x, t)
    for key in ("W1", "b1", "W2", "b2"):
        np.testing.assert_allclose(backprop[key], numeric[key], atol=1e-8)
