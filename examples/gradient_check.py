"""Gradient check, as in the book's chapter 5: backpropagation against numerical gradients.

The two must agree to about 1e-10 on average; the script exits with status 1 if any parameter
is further apart than 1e-7 (a wrong backward pass is off by far more than that).

    python examples/gradient_check.py
"""

import sys

import numpy as np
from two_layer_net import TwoLayerNet

from fastbp.datasets import load_digits

TOLERANCE = 1e-7

(x_train, t_train), (x_test, t_test) = load_digits(normalize=True, one_hot_label=True)

network = TwoLayerNet(input_size=64, hidden_size=10, output_size=10, seed=0)

x_batch = x_train[:3]
t_batch = t_train[:3]

grad_numerical = network.numerical_gradient(x_batch, t_batch)
grad_backprop = network.gradient(x_batch, t_batch)

worst = 0.0
for key in grad_numerical.keys():
    diff = np.average(np.abs(grad_backprop[key] - grad_numerical[key]))
    print(key + ":" + str(diff))
    worst = max(worst, diff)

if worst > TOLERANCE:
    print(f"gradient check FAILED: {worst:.3e} > {TOLERANCE}")
    sys.exit(1)
print("gradient check passed")
