"""Start-up and compile time, each in a fresh interpreter (asv ``timeraw_``).

``timeraw_cold_compile``: an empty numba cache, so every kernel the layers use compiles (for one
dtype). ``timeraw_warm_start``: the cache filled by ``setup`` (in a subprocess), so the kernels load
from it.
Both import fastbp and run one forward and one backward of every layer.
"""

import os
import subprocess
import sys
import tempfile

FIRST_USE = """
import numpy as np
from fastbp import layers
dtype = np.{dtype}
x = np.linspace(-2, 2, 600, dtype=dtype).reshape(20, 30)
for layer in (layers.Relu(), layers.Sigmoid()):
    layer.backward(layer.forward(x))
affine = layers.Affine(np.ones((30, 10), dtype), np.zeros(10, dtype))
affine.backward(affine.forward(x))
loss = layers.SoftmaxWithLoss()
loss.forward(x, np.arange(20) % 30)
loss.backward()
"""


class StartUp:
    params = [["float32", "float64"]]  # noqa: RUF012 (asv reads it)
    param_names = ["dtype"]  # noqa: RUF012
    timeout = 300
    repeat = 1
    number = 1

    def setup(self, dtype):
        self.cache = tempfile.mkdtemp(prefix="fastbp-asv-numba-")
        env = dict(os.environ, NUMBA_CACHE_DIR=self.cache)
        subprocess.run([sys.executable, "-c", FIRST_USE.format(dtype=dtype)], env=env,
                       check=True)

    def timeraw_cold_compile(self, dtype):
        fresh = tempfile.mkdtemp(prefix="fastbp-asv-cold-")
        return f"import os\nos.environ['NUMBA_CACHE_DIR'] = {fresh!r}\n" + FIRST_USE.format(
            dtype=dtype)

    def timeraw_warm_start(self, dtype):
        prefix = f"import os\nos.environ['NUMBA_CACHE_DIR'] = {self.cache!r}\n"
        return prefix + FIRST_USE.format(dtype=dtype)
