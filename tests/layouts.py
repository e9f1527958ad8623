"""Memory layouts the layers must accept: same values, other strides and flags."""

import numpy as np


def fortran(a):
    return np.asfortranarray(a)


def strided(a):
    wide = np.repeat(a, 2, axis=-1)
    return wide[..., ::2]


def negative_strides(a):
    return a[::-1].copy()[::-1]


def read_only(a):
    a = a.copy()
    a.setflags(write=False)
    return a


LAYOUTS = {"C": lambda a: a, "fortran": fortran, "strided": strided,
           "negative": negative_strides, "read-only": read_only}
