"""Winograd F(2x2, 3x3) transforms for the ``Convolution`` layer's 3x3, stride-1 filters with
several channels (DeepConvNet's), around products that run in BLAS.

A 2x2 block of outputs (a *tile*) reads a 4x4 block of the padded input ``d``. With
``g`` a 3x3 filter, the four outputs are ``A^T [(G g G^T) * (B^T d B)] A`` (Lavin and Gray, 2015),
where ``*`` multiplies element by element and

* ``B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]``,
* ``G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]``,
* ``A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]``.

Summed over the channels, each of the 16 elements ``k`` of the transformed tiles is a matrix
product ``M[k] (FN, tiles) = U[k] (FN, C) @ V[k] (C, tiles)``: 16 products with 2.25 times fewer
multiplications than the direct correlation, at BLAS's rate. The backward pass is the adjoint of
each step: ``dV[k] = U[k]^T @ dM[k]`` for ``dx`` and ``dU[k] = dM[k] @ V[k]^T`` for ``dW``.

These kernels are the transforms. They work on a chunk of images, serially (the layer spreads
chunks over threads), with the transformed tiles in a buffer ``(16, S)``: element ``k`` of the
tile ``t`` (``t = image * T + row * TW + column`` of the chunk's ``T = TH * TW`` tiles per image)
of channel (or filter) ``c`` is at ``[k, c * cols + t]``, ``cols`` the chunk's tile count. The
layer leaves room at the end of each row of the buffer so that the 16 rows do not start at
the same place in a 4 KiB page (they would evict each other from the cache: 2-4x slower).

Each tile's inputs are read from a zeroed copy of the image plane with the padding around it,
``(2 * TH + 2, 2 * TW + 2)``, so a tile past the output's last odd row or column reads zeros.
"""

import numpy as np

from .jit import kernel


@kernel
def _bt(d0, d1, d2, d3):
    """``B^T`` times the column (d0, d1, d2, d3)."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@kernel
def _b(v0, v1, v2, v3):
    """``B`` times the column (v0, v1, v2, v3): the adjoint of :func:`_bt`."""
    return v0, v1 - v2 + v3, v1 + v2 - v0, -v3


@kernel
def _at(m0, m1, m2, m3):
    """``A^T`` times the column (m0, m1, m2, m3)."""
    return m0 + m1 + m2, m1 - m2 - m3


@kernel
def _a(g0, g1):
    """``A`` times the column (g0, g1): the adjoint of :func:`_at`."""
    return g0, g0 + g1, g0 - g1, -g1


@kernel
def _g(g0, g1, g2, half):
    """``G`` times the column (g0, g1, g2); ``half`` is 0.5 in the dtype."""
    return g0, half * (g0 + g1 + g2), half * (g0 - g1 + g2), g2


@kernel
def _gt(u0, u1, u2, u3, half):
    """``G^T`` times the column (u0, u1, u2, u3): the adjoint of :func:`_g`."""
    return u0 + half * (u1 + u2), half * (u1 - u2), half * (u1 + u2) + u3


@kernel
def _plane_into(src, pad, scratch):
    """Zero ``scratch`` (H2, W2) and copy the plane ``src`` (H, W) into it at (pad, pad)."""
    scratch[:, :] = scratch.dtype.type(0)
    h, w = src.shape
    for i in range(h):
        dst = scratch[pad + i, pad:pad + w]
        s = src[i]
        for j in range(w):
            dst[j] = s[j]


@kernel
def transform_input(x, pad, th, tw, cols, V):
    """``V[k, c * cols + t]`` = element ``k`` (row-major in 4x4) of ``B^T d B`` for each tile
    ``t`` and channel ``c`` of the images ``x`` (n, C, H, W); ``d`` is the tile's 4x4 block of
    the image padded with ``pad`` zeros. Writes ``V`` (16, >= C * cols)."""
    n_img, c_count = x.shape[0], x.shape[1]
    t_img = th * tw
    scratch = np.empty((2 * th + 2, 2 * tw + 2), dtype=x.dtype)
    for n in range(n_img):
        for c in range(c_count):
            _plane_into(x[n, c], pad, scratch)
            base = c * cols + n * t_img
            for i in range(th):
                r0 = scratch[2 * i]
                r1 = scratch[2 * i + 1]
                r2 = scratch[2 * i + 2]
                r3 = scratch[2 * i + 3]
                for j in range(tw):
                    y = 2 * j
                    q = base + i * tw + j
                    # B^T d, a column at a time: (a, b, e, f) are its rows
                    a0, b0, e0, f0 = _bt(r0[y], r1[y], r2[y], r3[y])
                    a1, b1, e1, f1 = _bt(r0[y + 1], r1[y + 1], r2[y + 1], r3[y + 1])
                    a2, b2, e2, f2 = _bt(r0[y + 2], r1[y + 2], r2[y + 2], r3[y + 2])
                    a3, b3, e3, f3 = _bt(r0[y + 3], r1[y + 3], r2[y + 3], r3[y + 3])
                    # then (.) B: each row times B
                    V[0, q], V[1, q], V[2, q], V[3, q] = _bt(a0, a1, a2, a3)
                    V[4, q], V[5, q], V[6, q], V[7, q] = _bt(b0, b1, b2, b3)
                    V[8, q], V[9, q], V[10, q], V[11, q] = _bt(e0, e1, e2, e3)
                    V[12, q], V[13, q], V[14, q], V[15, q] = _bt(f0, f1, f2, f3)


@kernel
def transform_output(M, cols, th, tw, b, out):
    """``out`` (n, FN, OH, OW) = ``A^T m A`` plus ``b[f]`` for each tile of each filter ``f``,
    ``m`` the tile's 16 elements ``M[:, f * cols + t]``. Returns the sum of the outputs (not
    finite if any output is not)."""
    n_img, fn, oh, ow = out.shape
    t_img = th * tw
    total = out.dtype.type(0)
    for n in range(n_img):
        for f in range(fn):
            bias = b[f]
            plane = out[n, f]
            base = f * cols + n * t_img
            for i in range(th):
                y = 2 * i
                two_rows = y + 1 < oh
                for j in range(tw):
                    q = base + i * tw + j
                    # A^T m, a column at a time: (s, u) are its rows
                    s0, u0 = _at(M[0, q], M[4, q], M[8, q], M[12, q])
                    s1, u1 = _at(M[1, q], M[5, q], M[9, q], M[13, q])
                    s2, u2 = _at(M[2, q], M[6, q], M[10, q], M[14, q])
                    s3, u3 = _at(M[3, q], M[7, q], M[11, q], M[15, q])
                    x = 2 * j
                    two_cols = x + 1 < ow
                    for r in range(2 if two_rows else 1):  # then (.) A, and the bias
                        left, right = _at(s0, s1, s2, s3) if r == 0 else _at(u0, u1, u2, u3)
                        v = bias + left
                        plane[y + r, x] = v
                        total += v
                        if two_cols:
                            v = bias + right
                            plane[y + r, x + 1] = v
                            total += v
    return total


@kernel
def transform_output_grad(dout, th, tw, cols, dM, db):
    """The adjoint of :func:`transform_output`: ``dM[:, f * cols + t]`` = ``A g A^T`` (4x4,
    row-major) for the 2x2 gradient ``g`` of each tile (zero past the last odd row or column)
    of ``dout`` (n, FN, OH, OW); ``db[f] += `` the plane sums of filter ``f``, images in order,
    each plane row by row. Writes ``dM`` (16, >= FN * cols) and adds into ``db`` (FN,)."""
    n_img, fn, oh, ow = dout.shape
    t_img = th * tw
    zero = dM.dtype.type(0)
    for n in range(n_img):
        for f in range(fn):
            plane = dout[n, f]
            total = zero
            for y in range(oh):
                for x in range(ow):
                    total += plane[y, x]
            db[f] += total
            base = f * cols + n * t_img
            for i in range(th):
                y = 2 * i
                two_rows = y + 1 < oh
                for j in range(tw):
                    x = 2 * j
                    two_cols = x + 1 < ow
                    g00 = plane[y, x]
                    g01 = plane[y, x + 1] if two_cols else zero
                    g10 = plane[y + 1, x] if two_rows else zero
                    g11 = plane[y + 1, x + 1] if two_rows and two_cols else zero
                    # A g, a column at a time: (h, k, l, m) are its rows; then (.) A^T
                    h0, k0, l0, m0 = _a(g00, g10)
                    h1, k1, l1, m1 = _a(g01, g11)
                    q = base + i * tw + j
                    dM[0, q], dM[1, q], dM[2, q], dM[3, q] = _a(h0, h1)
                    dM[4, q], dM[5, q], dM[6, q], dM[7, q] = _a(k0, k1)
                    dM[8, q], dM[9, q], dM[10, q], dM[11, q] = _a(l0, l1)
                    dM[12, q], dM[13, q], dM[14, q], dM[15, q] = _a(m0, m1)


@kernel
def transform_input_grad(dV, cols, th, tw, pad, dx):
    """The adjoint of :func:`transform_input`: ``dx`` (n, C, H, W) = the tiles' ``B dv B^T``
    (``dv`` the 16 elements ``dV[:, c * cols + t]``) added at their places, tiles in order
    (each input element receives its terms in the same order at any thread count), the
    padding dropped. Returns the sum of ``dx`` (not finite if any element is not)."""
    n_img, c_count, h, w = dx.shape
    t_img = th * tw
    scratch = np.empty((2 * th + 2, 2 * tw + 2), dtype=dx.dtype)
    zero = dx.dtype.type(0)
    total = zero
    for n in range(n_img):
        for c in range(c_count):
            scratch[:, :] = zero
            base = c * cols + n * t_img
            for i in range(th):
                for j in range(tw):
                    q = base + i * tw + j
                    # B dv, a column at a time
                    by_column = (_b(dV[0, q], dV[4, q], dV[8, q], dV[12, q]),
                                 _b(dV[1, q], dV[5, q], dV[9, q], dV[13, q]),
                                 _b(dV[2, q], dV[6, q], dV[10, q], dV[14, q]),
                                 _b(dV[3, q], dV[7, q], dV[11, q], dV[15, q]))
                    y = 2 * j
                    for r in range(4):  # then (.) B^T, a row at a time, added at its place
                        e = _b(by_column[0][r], by_column[1][r], by_column[2][r],
                               by_column[3][r])
                        dst = scratch[2 * i + r]
                        dst[y] += e[0]
                        dst[y + 1] += e[1]
                        dst[y + 2] += e[2]
                        dst[y + 3] += e[3]
            plane = dx[n, c]
            for i in range(h):
                src = scratch[pad + i, pad:pad + w]
                dst = plane[i]
                for j in range(w):
                    dst[j] = src[j]
                    total += src[j]
    return total


@kernel
def filter_transform(W, U):
    """``U[k, f, c]`` = element ``k`` (row-major in 4x4) of ``G g G^T`` for each 3x3 filter
    ``g = W[f, c]`` of ``W`` (FN, C, 3, 3). Writes ``U`` (16, FN, C)."""
    fn, c_count = W.shape[0], W.shape[1]
    half = W.dtype.type(0.5)
    rows = np.empty((4, 3), dtype=W.dtype)  # G g: row r, column c
    for f in range(fn):
        for c in range(c_count):
            g = W[f, c]
            for col in range(3):  # G g, a column at a time
                rows[0, col], rows[1, col], rows[2, col], rows[3, col] = _g(
                    g[0, col], g[1, col], g[2, col], half)
            for r in range(4):  # then (.) G^T
                U[4 * r, f, c], U[4 * r + 1, f, c], U[4 * r + 2, f, c], U[4 * r + 3, f, c] = _g(
                    rows[r, 0], rows[r, 1], rows[r, 2], half)


@kernel
def filter_transform_grad(dU, dW):
    """The adjoint of :func:`filter_transform`: ``dW[f, c]`` (3x3) = ``G^T du G`` for the 4x4
    ``du = dU[:, f, c]``. Writes ``dW`` (FN, C, 3, 3)."""
    fn, c_count = dW.shape[0], dW.shape[1]
    half = dW.dtype.type(0.5)
    rows = np.empty((4, 3), dtype=dW.dtype)  # du G: row r, column c
    for f in range(fn):
        for c in range(c_count):
            out = dW[f, c]
            for r in range(4):  # (.) G on each row of du
                rows[r, 0], rows[r, 1], rows[r, 2] = _gt(
                    dU[4 * r, f, c], dU[4 * r + 1, f, c], dU[4 * r + 2, f, c],
                    dU[4 * r + 3, f, c], half)
            for col in range(3):  # then G^T (.)
                out[0, col], out[1, col], out[2, col] = _gt(
                    rows[0, col], rows[1, col], rows[2, col], rows[3, col], half)
