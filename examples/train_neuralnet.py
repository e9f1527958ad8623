"""Train the two-layer network with mini-batch SGD, as in the book's chapter 5.

It trains on MNIST where you have the files (``$FASTBP_MNIST_DIR``, ``./dataset`` or
``../dataset``, where the book's own loader saves them; fastbp never downloads), and on
scikit-learn's 8x8 digits otherwise. The images are scaled to [0, 1] (``normalize=True``):
raw 0..255 pixels leave the loss stuck near 2.30.

    python examples/train_neuralnet.py                 # MNIST if found, else the digits
    python examples/train_neuralnet.py --data digits --iters 3000
"""

import argparse

import numpy as np
from two_layer_net import TwoLayerNet

from fastbp.datasets import load_digits, load_mnist


def load(data):
    """The data set's name and ``(x_train, t_train), (x_test, t_test)``."""
    if data in ("auto", "mnist"):
        try:
            return "mnist", load_mnist(normalize=True, one_hot_label=True)
        except FileNotFoundError as exc:
            if data == "mnist":
                raise SystemExit(str(exc)) from exc
            print("MNIST not found ($FASTBP_MNIST_DIR, ./dataset, ../dataset): "
                  "using scikit-learn's 8x8 digits")
    return "digits", load_digits(normalize=True, one_hot_label=True)


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", choices=("auto", "mnist", "digits"), default="auto")
parser.add_argument("--iters", type=int, default=2000, help="SGD steps (default 2000)")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

name, ((x_train, t_train), (x_test, t_test)) = load(args.data)
print(f"{name}: {x_train.shape[0]} training and {x_test.shape[0]} test images of "
      f"{x_train.shape[1]} pixels")

network = TwoLayerNet(input_size=x_train.shape[1], hidden_size=50, output_size=10,
                      seed=args.seed)
rng = np.random.default_rng(args.seed)

iters_num = args.iters
train_size = x_train.shape[0]
batch_size = 100
learning_rate = 0.1

train_loss_list = []
train_acc_list = []
test_acc_list = []

iter_per_epoch = max(train_size // batch_size, 1)
# the book prints every epoch; the digits' epochs are 15 steps, so print about ten times
report_every = iter_per_epoch * max(1, iters_num // (10 * iter_per_epoch))

for i in range(iters_num):
    batch_mask = rng.choice(train_size, batch_size)
    x_batch = x_train[batch_mask]
    t_batch = t_train[batch_mask]

    grad = network.gradient(x_batch, t_batch)

    for key in ("W1", "b1", "W2", "b2"):
        network.params[key] -= learning_rate * grad[key]  # in place: the layers see it

    loss = network.lastLayer.loss  # the loss of this batch, from gradient()'s forward pass
    train_loss_list.append(loss)

    if i % report_every == 0 or i == iters_num - 1:
        train_acc = network.accuracy(x_train, t_train)
        test_acc = network.accuracy(x_test, t_test)
        train_acc_list.append(train_acc)
        test_acc_list.append(test_acc)
        print(f"iter {i:5d}  loss {loss:.4f}  train acc {train_acc:.4f}  "
              f"test acc {test_acc:.4f}")

print(f"final test accuracy: {test_acc_list[-1]:.4f}")
