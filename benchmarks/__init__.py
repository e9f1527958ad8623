"""fastbp's asv benchmarks: one file per layer family, plus the training step and compile time.

Every layer class has ``params = [backend, dtype, size]``. ``backend`` is ``reference`` (the
NumPy oracle, :mod:`fastbp.reference.layers`), ``kernel`` (:mod:`fastbp.layers`) or ``torch``
(PyTorch eager with autograd, skipped where it is not installed). ``size`` is ``book`` or
``medium``; ``large`` joins them when ``FASTBP_BENCH_FULL=1`` (it takes seconds per call for
Affine). The shapes are ``fastbp bench``'s (:data:`fastbp.bench.SIZES`), so both time the same
cases. ``setup`` builds seeded data and warms the JIT (and the caches of first use), so no
``time_*`` includes a compilation; :mod:`.bench_compile` times those separately.

``asv continuous`` runs this suite, as it is in the working tree, against older commits too: it
imports only names that those have (``fastbp.nets.BACKENDS``, ``fastbp.bench.SIZES``).
"""

import os

import numpy as np

from fastbp.bench import SIZES as SHAPES  # noqa: F401 (the benchmark modules read it)
from fastbp.nets import BACKENDS as FASTBP_BACKENDS

BACKENDS = [*FASTBP_BACKENDS, "torch"]
DTYPES = ["float32", "float64"]
SIZES = ["book", "medium"] + (["large"] if os.environ.get("FASTBP_BENCH_FULL") == "1" else [])


def torch_or_skip():
    """``torch``, or ``NotImplementedError`` (asv's way to skip a parameter combination)."""
    try:
        import torch
    except ImportError as exc:
        raise NotImplementedError("PyTorch is not installed") from exc
    return torch


def rng():
    return np.random.default_rng(0)


class _LayerTimings:
    """The timed methods every layer benchmark shares; ``setup`` sets ``forward`` and
    ``backward`` (closures over the layer and its seeded data). The leading underscore keeps asv
    from collecting this base class itself."""

    params = [BACKENDS, DTYPES, SIZES]  # noqa: RUF012 (asv reads it)
    param_names = ["backend", "dtype", "size"]  # noqa: RUF012

    def use_layer(self, layer):
        """Time ``layer``: ``forward`` on ``self.x``, ``backward`` on ``self.dout``."""
        self.layer = layer
        self.forward = lambda: layer.forward(self.x)
        self.backward = lambda: layer.backward(self.dout)

    def warm_up(self, *calls):
        """Run ``forward``, ``backward`` (and ``calls``) twice: the kernel backend compiles, and
        the first buffers are faulted in, before anything is timed."""
        for _ in range(2):
            for call in (self.forward, self.backward, *calls):
                call()

    def time_forward(self, backend, dtype, size):
        self.forward()

    def time_backward(self, backend, dtype, size):
        self.backward()

    def time_forward_backward(self, backend, dtype, size):
        self.forward()
        self.backward()

    def peakmem_forward_backward(self, backend, dtype, size):
        self.forward()
        self.backward()


class _StepTimings:
    """``time_step`` and ``peakmem_step`` of one training step: ``setup`` sets ``self.step``
    and calls :meth:`warm_steps`. (The leading underscore keeps asv from collecting it.)"""

    def warm_steps(self, count=3):
        """Run the step ``count`` times: JIT compilation, caches and pages of first use."""
        for _ in range(count):
            self.step()

    def time_step(self, *params):
        self.step()

    def peakmem_step(self, *params):
        self.step()
