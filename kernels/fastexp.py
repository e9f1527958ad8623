"""An ``exp`` that LLVM can vectorise, for float32 and float64.

PyPI's llvmlite has no SVML, so ``math.exp`` in a numba loop is a scalar libm call (about 5 ns
per float64 element on our 2-core reference machine, and NumPy's float64 ``exp`` is scalar libm
too without AVX-512). :func:`exp64` and :func:`exp32` are branch-free straight-line code, so a
loop that calls them vectorises (AVX2: 4 float64 or 8 float32 lanes).

Method: ``exp(x) = 2**n * exp(r)`` with ``n = round(x / ln 2)`` and ``r = x - n ln 2`` in
``[-ln2/2, ln2/2]`` (Cody-Waite: ``ln 2`` split in a high part whose products with ``n`` are exact,
and a low part). ``exp(r) = 1 + r + r**2 q(r)``, ``q`` a Chebyshev fit of degree 9 (float64) or 4
(float32), whose error is under 0.1 ulp. ``2**n`` is built from its bits, as two factors
``2**n1 * 2**n2`` so that neither overflows nor underflows: results that overflow become ``inf``,
and subnormal results are rounded once, correctly, by the last multiplication.

Special values: ``exp(nan) = nan``, ``exp(inf) = inf``, ``exp(-inf) = 0``; large arguments
overflow to ``inf`` and very negative ones underflow to ``0`` or a subnormal. The error is within
2 ulp of the correctly rounded result over the whole range (tests/test_fastexp.py checks it
against NumPy's ``exp`` in a wider type: float64 for float32, long double for float64).

The helpers are compiled with contraction only (FMA), never reassociation, which would merge the
two halves of ``n * ln 2`` and lose the reduction's accuracy. A kernel that calls them keeps its
own flags for its own instructions; the inlined helper keeps these.
"""

import numpy as np
from numba import config, types
from numba.extending import intrinsic, overload

from .jit import CONTRACT, kernel


@intrinsic
def _bits_as_float(typingctx, bits):
    """Reinterpret an int64 (int32) as a float64 (float32): a bitcast, no conversion."""
    target = {types.int64: types.float64, types.int32: types.float32}.get(bits)
    if target is None:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(target))

    return target(bits), codegen


@intrinsic
def _float_as_bits(typingctx, value):
    """Reinterpret a float64 (float32) as an int64 (int32)."""
    target = {types.float64: types.int64, types.float32: types.int32}.get(value)
    if target is None:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(target))

    return target(value), codegen


if config.DISABLE_JIT:  # NUMBA_DISABLE_JIT=1: intrinsics only exist compiled; Python twins

    def _bits_as_float(bits):
        b = np.asarray(bits)
        return b.view(np.float64 if b.dtype.itemsize == 8 else np.float32)[()]

    def _float_as_bits(value):
        v = np.asarray(value)
        return v.view(np.int64 if v.dtype.itemsize == 8 else np.int32)[()]


# float64 constants. SHIFT = 1.5 * 2**52: adding it rounds to an integer, kept in the low bits.
_LOG2E_64 = np.float64(1.4426950408889634)
_SHIFT_64 = np.float64(6755399441055744.0)
_SHIFT_BITS_64 = np.int64(0x4338000000000000)
_LN2_HI_64 = np.float64(0.6931471803691238)  # 32 significant bits: n * _LN2_HI_64 is exact
_LN2_LO_64 = np.float64(1.9082149292705877e-10)
_LO_64 = np.float64(-746.0)  # exp(-746) rounds to 0
_HI_64 = np.float64(710.0)  # exp(710) overflows
_BIAS_64 = np.int64(1023)
_MANT_64 = np.int64(52)
_HALF_64 = np.float64(0.5)
_ONE_64 = np.float64(1.0)
_Q9_64 = np.float64(2.5100385495510319078e-8)
_Q8_64 = np.float64(2.7620088445409748161e-7)
_Q7_64 = np.float64(2.7557268459997064772e-6)
_Q6_64 = np.float64(0.000024801521295954375131)
_Q5_64 = np.float64(0.00019841269863053616878)
_Q4_64 = np.float64(0.0013888888917213716901)
_Q3_64 = np.float64(0.0083333333333300618325)
_Q2_64 = np.float64(0.041666666666624127873)
_Q1_64 = np.float64(0.16666666666666667453)
_Q0_64 = np.float64(0.50000000000000010221)

# float32 constants. SHIFT = 1.5 * 2**23.
_LOG2E_32 = np.float32(1.4426950408889634)
_SHIFT_32 = np.float32(12582912.0)
_SHIFT_BITS_32 = np.int32(0x4B400000)
_LN2_HI_32 = np.float32(0.693359375)  # 9 significant bits: n * _LN2_HI_32 is exact
_LN2_LO_32 = np.float32(-2.12194440e-4)
_LO_32 = np.float32(-104.0)  # exp(-104) rounds to 0 in float32
_HI_32 = np.float32(89.0)  # exp(89) overflows float32
_BIAS_32 = np.int32(127)
_MANT_32 = np.int32(23)
_HALF_32 = np.float32(0.5)
_ONE_32 = np.float32(1.0)
_Q4_32 = np.float32(0.0013926183587713494542)
_Q3_32 = np.float32(0.0083631790527225773704)
_Q2_32 = np.float32(0.041666554617204574203)
_Q1_32 = np.float32(0.16666576989698775683)
_Q0_32 = np.float32(0.5)


@kernel(fastmath=CONTRACT)
def exp64(x):
    """``exp(x)`` for a float64 ``x``, vectorisable, within 2 ulp; NaN and inf as ``math.exp``.
    A scalar function, inlined into the kernels that call it: it writes nothing."""
    xc = x if x > _LO_64 else _LO_64  # NaN goes to _LO_64 here and is put back at the end
    xc = xc if xc < _HI_64 else _HI_64
    nf = (xc * _LOG2E_64 + _SHIFT_64) - _SHIFT_64
    r = (xc - nf * _LN2_HI_64) - nf * _LN2_LO_64
    q = _Q9_64
    q = q * r + _Q8_64
    q = q * r + _Q7_64
    q = q * r + _Q6_64
    q = q * r + _Q5_64
    q = q * r + _Q4_64
    q = q * r + _Q3_64
    q = q * r + _Q2_64
    q = q * r + _Q1_64
    q = q * r + _Q0_64
    p = _ONE_64 + (r + (r * r) * q)
    n1 = (nf * _HALF_64 + _SHIFT_64) - _SHIFT_64
    n2 = nf - n1
    s1 = _bits_as_float((_float_as_bits(n1 + _SHIFT_64) - _SHIFT_BITS_64 + _BIAS_64) << _MANT_64)
    s2 = _bits_as_float((_float_as_bits(n2 + _SHIFT_64) - _SHIFT_BITS_64 + _BIAS_64) << _MANT_64)
    y = (p * s1) * s2
    return y if x == x else x


@kernel(fastmath=CONTRACT)
def exp32(x):
    """``exp(x)`` for a float32 ``x``, computed in float32, vectorisable, within 2 ulp.
    A scalar function, inlined into the kernels that call it: it writes nothing."""
    xc = x if x > _LO_32 else _LO_32
    xc = xc if xc < _HI_32 else _HI_32
    nf = (xc * _LOG2E_32 + _SHIFT_32) - _SHIFT_32
    r = (xc - nf * _LN2_HI_32) - nf * _LN2_LO_32
    q = _Q4_32
    q = q * r + _Q3_32
    q = q * r + _Q2_32
    q = q * r + _Q1_32
    q = q * r + _Q0_32
    p = _ONE_32 + (r + (r * r) * q)
    n1 = (nf * _HALF_32 + _SHIFT_32) - _SHIFT_32
    n2 = nf - n1
    # numba widens int32 arithmetic to int64; the cast back is exact (|n| <= 76)
    s1 = _bits_as_float(
        np.int32((_float_as_bits(n1 + _SHIFT_32) - _SHIFT_BITS_32 + _BIAS_32) << _MANT_32))
    s2 = _bits_as_float(
        np.int32((_float_as_bits(n2 + _SHIFT_32) - _SHIFT_BITS_32 + _BIAS_32) << _MANT_32))
    y = (p * s1) * s2
    return y if x == x else x


def fast_exp(x):
    """``exp`` of a float32 or float64 scalar, in its own dtype: :func:`exp32` or :func:`exp64`.

    Call it from numba code; the dtype picks the implementation at compile time. Called from
    Python (or under ``NUMBA_DISABLE_JIT=1``) it is NumPy's ``exp``.
    """
    with np.errstate(over="ignore", under="ignore"):
        return np.exp(x)


@overload(fast_exp)
def _fast_exp_overload(x):
    if x == types.float64:
        return lambda x: exp64(x)
    if x == types.float32:
        return lambda x: exp32(x)
    return None
