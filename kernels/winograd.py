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
def _plane_into(src, pad, scratch):
    """Zero ``scratch`` (H2, W2) and copy the plane ``src`` (H, W) into it at (pad, pad)."""
    zero = scratch.dtype.type(0)
    h2, w2 = scratch.shape
    for i in range(h2):
        row = scratch[i]
        for j in range(w2):
            row[j] = zero
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
                row = base + i * tw
                for j in range(tw):
                    y = 2 * j
                    # B^T d: the rows d0 - d2, d1 + d2, d2 - d1, d1 - d3, column by column
                    a0 = r0[y] - r2[y]
                    a1 = r0[y + 1] - r2[y + 1]
                    a2 = r0[y + 2] - r2[y + 2]
                    a3 = r0[y + 3] - r2[y + 3]
                    b0 = r1[y] + r2[y]
                    b1 = r1[y + 1] + r2[y + 1]
                    b2 = r1[y + 2] + r2[y + 2]
                    b3 = r1[y + 3] + r2[y + 3]
                    e0 = r2[y] - r1[y]
                    e1 = r2[y + 1] - r1[y + 1]
                    e2 = r2[y + 2] - r1[y + 2]
                    e3 = r2[y + 3] - r1[y + 3]
                    f0 = r1[y] - r3[y]
                    f1 = r1[y + 1] - r3[y + 1]
                    f2 = r1[y + 2] - r3[y + 2]
                    f3 = r1[y + 3] - r3[y + 3]
                    q = row + j
                    # then (.) B: the same combinations of the columns
                    V[0, q] = a0 - a2
                    V[1, q] = a1 + a2
                    V[2, q] = a2 - a1
                    V[3, q] = a1 - a3
                    V[4, q] = b0 - b2
                    V[5, q] = b1 + b2
                    V[6, q] = b2 - b1
                    V[7, q] = b1 - b3
                    V[8, q] = e0 - e2
                    V[9, q] = e1 + e2
                    V[10, q] = e2 - e1
                    V[11, q] = e1 - e3
                    V[12, q] = f0 - f2
                    V[13, q] = f1 + f2
                    V[14, q] = f2 - f1
                    V[15, q] = f1 - f3


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
                    # A^T m: the rows m0 + m1 + m2 and m1 - m2 - m3, column by column
                    s0 = M[0, q] + M[4, q] + M[8, q]
                    s1 = M[1, q] + M[5, q] + M[9, q]
                    s2 = M[2, q] + M[6, q] + M[10, q]
                    s3 = M[3, q] + M[7, q] + M[11, q]
                    u0 = M[4, q] - M[8, q] - M[12, q]
                    u1 = M[5, q] - M[9, q] - M[13, q]
                    u2 = M[6, q] - M[10, q] - M[14, q]
                    u3 = M[7, q] - M[11, q] - M[15, q]
                    x = 2 * j
                    v = bias + (s0 + s1 + s2)
                    plane[y, x] = v
                    total += v
                    if x + 1 < ow:
                        v = bias + (s1 - s2 - s3)
                        plane[y, x + 1] = v
                        total += v
                    if two_rows:
                        v = bias + (u0 + u1 + u2)
                        plane[y + 1, x] = v
                        total += v
                        if x + 1 < ow:
                            v = bias + (u1 - u2 - u3)
                            plane[y + 1, x + 1] = v
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
                    # A g: the rows g0, g0 + g1, g0 - g1, -g1; then (.) A^T on the columns
                    h0 = g00
                    h1 = g01
                    k0 = g00 + g10
                    k1 = g01 + g11
                    l0 = g00 - g10
                    l1 = g01 - g11
                    m0 = -g10
                    m1 = -g11
                    q = base + i * tw + j
                    dM[0, q] = h0
                    dM[1, q] = h0 + h1
                    dM[2, q] = h0 - h1
                    dM[3, q] = -h1
                    dM[4, q] = k0
                    dM[5, q] = k0 + k1
                    dM[6, q] = k0 - k1
                    dM[7, q] = -k1
                    dM[8, q] = l0
                    dM[9, q] = l0 + l1
                    dM[10, q] = l0 - l1
                    dM[11, q] = -l1
                    dM[12, q] = m0
                    dM[13, q] = m0 + m1
                    dM[14, q] = m0 - m1
                    dM[15, q] = -m1


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
            for i in range(scratch.shape[0]):
                for j in range(scratch.shape[1]):
                    scratch[i, j] = zero
            base = c * cols + n * t_img
            for i in range(th):
                r0 = scratch[2 * i]
                r1 = scratch[2 * i + 1]
                r2 = scratch[2 * i + 2]
                r3 = scratch[2 * i + 3]
                for j in range(tw):
                    q = base + i * tw + j
                    # B dv: the rows v0, v1 - v2 + v3, v1 + v2 - v0, -v3 (v_a: row a of dv)
                    a0 = dV[0, q]
                    a1 = dV[1, q]
                    a2 = dV[2, q]
                    a3 = dV[3, q]
                    b0 = dV[4, q] - dV[8, q] + dV[12, q]
                    b1 = dV[5, q] - dV[9, q] + dV[13, q]
                    b2 = dV[6, q] - dV[10, q] + dV[14, q]
                    b3 = dV[7, q] - dV[11, q] + dV[15, q]
                    e0 = dV[4, q] + dV[8, q] - dV[0, q]
                    e1 = dV[5, q] + dV[9, q] - dV[1, q]
                    e2 = dV[6, q] + dV[10, q] - dV[2, q]
                    e3 = dV[7, q] + dV[11, q] - dV[3, q]
                    f0 = -dV[12, q]
                    f1 = -dV[13, q]
                    f2 = -dV[14, q]
                    f3 = -dV[15, q]
                    y = 2 * j
                    # then (.) B^T: the same combinations of the columns
                    r0[y] += a0
                    r0[y + 1] += a1 - a2 + a3
                    r0[y + 2] += a1 + a2 - a0
                    r0[y + 3] -= a3
                    r1[y] += b0
                    r1[y + 1] += b1 - b2 + b3
                    r1[y + 2] += b1 + b2 - b0
                    r1[y + 3] -= b3
                    r2[y] += e0
                    r2[y + 1] += e1 - e2 + e3
                    r2[y + 2] += e1 + e2 - e0
                    r2[y + 3] -= e3
                    r3[y] += f0
                    r3[y + 1] += f1 - f2 + f3
                    r3[y + 2] += f1 + f2 - f0
                    r3[y + 3] -= f3
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
    for f in range(fn):
        for c in range(c_count):
            g = W[f, c]
            # G g: the rows g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2, column by column
            for r in range(4):
                if r == 0:
                    a0, a1, a2 = g[0, 0], g[0, 1], g[0, 2]
                elif r == 1:
                    a0 = half * (g[0, 0] + g[1, 0] + g[2, 0])
                    a1 = half * (g[0, 1] + g[1, 1] + g[2, 1])
                    a2 = half * (g[0, 2] + g[1, 2] + g[2, 2])
                elif r == 2:
                    a0 = half * (g[0, 0] - g[1, 0] + g[2, 0])
                    a1 = half * (g[0, 1] - g[1, 1] + g[2, 1])
                    a2 = half * (g[0, 2] - g[1, 2] + g[2, 2])
                else:
                    a0, a1, a2 = g[2, 0], g[2, 1], g[2, 2]
                # then (.) G^T: the same combinations of the row's three elements
                U[4 * r, f, c] = a0
                U[4 * r + 1, f, c] = half * (a0 + a1 + a2)
                U[4 * r + 2, f, c] = half * (a0 - a1 + a2)
                U[4 * r + 3, f, c] = a2


@kernel
def filter_transform_grad(dU, dW):
    """The adjoint of :func:`filter_transform`: ``dW[f, c]`` (3x3) = ``G^T du G`` for the 4x4
    ``du = dU[:, f, c]``. Writes ``dW`` (FN, C, 3, 3)."""
    fn, c_count = dW.shape[0], dW.shape[1]
    half = dW.dtype.type(0.5)
    for f in range(fn):
        for c in range(c_count):
            out = dW[f, c]
            # (.) G on each row of du: (u0 + (u1 + u2) / 2, (u1 - u2) / 2, (u1 + u2) / 2 + u3)
            h = np.empty((4, 3), dtype=dW.dtype)
            for r in range(4):
                u0 = dU[4 * r, f, c]
                u1 = dU[4 * r + 1, f, c]
                u2 = dU[4 * r + 2, f, c]
                u3 = dU[4 * r + 3, f, c]
                h[r, 0] = u0 + half * (u1 + u2)
                h[r, 1] = half * (u1 - u2)
                h[r, 2] = half * (u1 + u2) + u3
            # then G^T (.): the same combinations of the rows
            for j in range(3):
                out[0, j] = h[0, j] + half * (h[1, j] + h[2, j])
                out[1, j] = half * (h[1, j] - h[2, j])
                out[2, j] = half * (h[1, j] + h[2, j]) + h[3, j]
