"""Numerical gradients and the chapter-5 gradient check.

:func:`numerical_gradient` is the book's ``common/gradient.py`` version, and
:func:`gradient_check` is ``ch05/gradient_check.py`` as a function.
"""

import numpy as np

__all__ = ["gradient_check", "numerical_gradient", "numerical_gradient_2d"]


def numerical_gradient(f, x):
    """Central-difference gradient of ``f`` at ``x``, one element at a time.

    As in the book, ``x`` is perturbed in place (so a network whose layers hold ``x`` sees the
    change) and every element is restored afterwards, also when ``f`` raises.

    Parameters
    ----------
    f : callable
        ``f(x)`` returns a scalar.
    x : ndarray
        A float array, modified during the call and restored.

    Returns
    -------
    grad : ndarray
        ``(f(x + h) - f(x - h)) / 2h`` per element, ``h = 1e-4``, in ``x``'s shape and dtype.
    """
    h = 1e-4
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=[["readwrite"]])
    while not it.finished:
        idx = it.multi_index
        tmp_val = x[idx]
        try:
            x[idx] = float(tmp_val) + h
            fxh1 = f(x)
            x[idx] = tmp_val - h
            fxh2 = f(x)
        finally:
            x[idx] = tmp_val
        grad[idx] = (fxh1 - fxh2) / (2 * h)
        it.iternext()
    return grad


def numerical_gradient_2d(f, X):
    """The book's row-by-row central-difference gradient (``common/gradient.py``).

    For a 1-d ``X``, the same as :func:`numerical_gradient`. For a 2-d ``X``, each row is
    done in turn, and ``f`` is called with **the row** (a view of ``X``, perturbed in place),
    not with ``X``: ``grad[i]`` is the gradient of ``f`` at row ``i``. ``f`` that ignores its
    argument and reads ``X`` (the book's ``lambda W: net.loss(x, t)``) gets the gradient with
    respect to ``X``, as from :func:`numerical_gradient`. Every element is restored, also when
    ``f`` raises.

    Raises
    ------
    ValueError
        ``X`` is not 1-d or 2-d (the book's function fails on other shapes).
    """
    ndim = np.ndim(X)
    if ndim not in (1, 2):
        raise ValueError(f"numerical_gradient_2d takes a 1-d or 2-d array; got shape "
                         f"{np.shape(X)} (numerical_gradient takes any shape)")
    if ndim == 1:
        return numerical_gradient(f, X)
    grad = np.zeros_like(X)
    for idx, row in enumerate(X):
        grad[idx] = numerical_gradient(f, row)  # f gets the row
    return grad


def gradient_check(net, x, t, *, verbose=True):
    """Compare backprop with numerical gradients, as ``ch05/gradient_check.py`` does.

    Parameters
    ----------
    net : TwoLayerNet or MultiLayerNet
        Anything with ``numerical_gradient(x, t)`` and ``gradient(x, t)``.
    x, t : ndarray
        A small batch (the book uses 3 samples): the numerical gradient costs two forward
        passes per parameter element.
    verbose : bool
        Print ``key:diff`` per parameter, like the book.

    Returns
    -------
    dict of str to float
        The mean absolute difference per parameter.
    """
    grad_numerical = net.numerical_gradient(x, t)
    grad_backprop = net.gradient(x, t)
    diffs = {}
    for key in grad_numerical:
        diffs[key] = float(np.average(np.abs(grad_backprop[key] - grad_numerical[key])))
        if verbose:
            print(key + ":" + str(diffs[key]))
    return diffs
