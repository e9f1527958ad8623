"""The command line: ``fastbp --help`` and ``fastbp verify``."""

import subprocess
import sys

from fastbp import cli, verify


def test_help_lists_the_subcommands():
    out = subprocess.run([sys.executable, "-m", "fastbp", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for name in cli.SUBCOMMANDS:
        assert name in out


def test_verify_refuses_a_negative_seed(capsys):
    args = cli.build_parser().parse_args(["verify", "--seed", "-1"])
    assert verify.run(args) == 2
    assert "--seed must be at least 0" in capsys.readouterr().err


def test_verify_passes_here(capsys):
    args = cli.build_parser().parse_args(["verify"])
    assert verify.run(args) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "all" in out
    for name in ("Relu", "Sigmoid", "Affine", "SoftmaxWithLoss[labels]"):
        assert name in out
    assert "float32" in out and "finite diff" in out


def test_verify_fails_on_a_broken_kernel(monkeypatch, capsys):
    from fastbp.kernels import activations

    def broken(dout, mask, dx):
        dx[:] = dout  # ignores the mask
    monkeypatch.setattr(activations, "relu_backward", broken)
    args = cli.build_parser().parse_args(["verify"])
    assert verify.run(args) == 1
    assert "FAIL" in capsys.readouterr().out
