"""sin and cos as branch-free arith ops (see `tdsl.vector_math`).

Both compute in f64 (f32 arguments are widened exactly and the result rounded once):

1. Reduction: x = q pi/2 + r, abs(r) <= pi/4 (a little more at quadrant edges), r as a
   double-double. For abs(x) < 2^20 Cody-Waite with pi/2 in three parts (the first two of 33
   bits, so k * p is exact): error about 2^-96. For larger abs(x), Payne-Hanek: x = M 2^E with
   an integer M < 2^53; a constant table holds, per exponent E, the bits of (2^E 2/pi) mod 4
   in seven 24-bit chunks (down to 2^-166); M is split in two halves so that every product
   with a chunk is exact, the large products are reduced mod 4 exactly, and the small ones
   summed as a double-double. Both paths are computed and one is selected per lane (the
   table index is clamped, so every gather stays inside the table).
2. Kernels on r: Taylor polynomials (to r^19 and r^18) in fdlibm's arrangement, which carries
   the low part of r and recovers the rounding of 1 - r^2/2.
3. The quadrant picks sin or cos and the sign; sin is odd (signed zeros kept); inf and nan
   give nan.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import TYPE_CHECKING

from tdsl import vector_math_coeffs as C

if TYPE_CHECKING:
    from tdsl.vector_math import VectorMath

CW_LIMIT = 2.0 ** 20  # Cody-Waite below, Payne-Hanek from here
E_MIN = -32  # exponent of the smallest M 2^E >= CW_LIMIT (M has 53 bits)
E_MAX = 1023 - 52
CHUNKS = 7
CHUNK_BITS = 24
TABLE_ROWS = E_MAX - E_MIN + 1


@lru_cache(maxsize=1)
def reduction_table_hex() -> str:
    """The Payne-Hanek table as MLIR dense hex (little-endian f64, row-major [E][chunk]):
    chunk j of row E is the part of (2^E 2/pi) mod 4 between 2^(1 - 24 j) and 2^(-22 - 24 j)."""
    scale = 22 + CHUNK_BITS * (CHUNKS - 1)  # the last chunk's lowest bit is 2^-scale
    mask = (1 << CHUNK_BITS) - 1
    data = bytearray()
    for e in range(E_MIN, E_MAX + 1):
        shift = e + scale - 1280
        z = C.TWO_OVER_PI_BITS << shift if shift >= 0 else C.TWO_OVER_PI_BITS >> -shift
        z &= (1 << (scale + 2)) - 1  # mod 4
        for j in range(CHUNKS):
            low = 22 + CHUNK_BITS * j
            part = (z >> (scale - low)) & mask
            data += struct.pack("<d", part * 2.0 ** -low)
    return "0x" + data.hex().upper()


def sin_cos(vm: VectorMath, x: str, op: str) -> str:
    """sin(x) or cos(x) for a value of vm's format."""
    from tdsl.vector_math import F64

    if vm.f.bits == 32:
        b = vm.with_format(F64)
        wide = vm.emit(f"arith.extf {x} : f32 to f64")
        return vm.emit(f"arith.truncf {_sin_cos64(b, wide, op)} : f64 to f32")
    return _sin_cos64(vm, x, op)


def _sin_cos64(b: VectorMath, x: str, op: str) -> str:
    ax = b.unary("absf", x)
    cw_h, cw_l, cw_q = _cody_waite(b, ax)
    ph_h, ph_l, ph_q = _payne_hanek(b, ax)
    big = b.cmp("oge", ax, b.c(CW_LIMIT))
    rh, rl, q = b.sel(big, ph_h, cw_h), b.sel(big, ph_l, cw_l), b.sel(big, ph_q, cw_q)
    sin_r, cos_r = _kernels(b, rh, rl)
    quadrant = b.ibin("andi", b.exact_int_bits(q), b.i(3))
    if op == "cos":
        quadrant = b.ibin("andi", b.ibin("addi", quadrant, b.i(1)), b.i(3))
    odd = b.emit(f"arith.cmpi ne, {b.ibin('andi', quadrant, b.i(1))}, {b.i(0)} : i64")
    upper = b.emit(f"arith.cmpi ne, {b.ibin('andi', quadrant, b.i(2))}, {b.i(0)} : i64")
    v = b.sel(odd, cos_r, sin_r)  # cos(x) = sin(x + pi/2): same kernels, quadrant + 1
    v = b.sel(upper, b.neg(v), v)
    if op == "sin":
        negative = b.cmp("olt", b.bits_sign(x), b.c(0.0))
        v = b.sel(negative, b.neg(v), v)
    finite = b.cmp("olt", ax, b.c(float("inf")))
    return b.sel(finite, v, b.sub(x, x))


def _cody_waite(b: VectorMath, ax: str) -> tuple[str, str, str]:
    """(r_hi, r_lo, k) with ax = k pi/2 + r, for ax < 2^20."""
    p1, p2, p3 = C.PIO2_CW
    k = b.unary("roundeven", b.mul(ax, b.c(C.TWO_OVER_PI)))
    k = b.clamp_below(k, 2.0 ** 21)  # keeps the products exact on lanes that will not be used
    nk = b.neg(k)
    r1 = b.add(ax, b.mul(nk, b.c(p1)))  # exact: k p1 is exact, and cancels (Sterbenz)
    rh, rl = b.two_sum(r1, b.mul(nk, b.c(p2)))
    rl = b.add(rl, b.mul(nk, b.c(p3)))
    rh, rl = b.fast_two_sum(rh, rl)
    return rh, rl, k


def _payne_hanek(b: VectorMath, ax: str) -> tuple[str, str, str]:
    """(r_hi, r_lo, q) with ax = q pi/2 + r (mod 2 pi), for finite ax >= 2^20."""
    bits = b.bits(ax)
    expo = b.ibin("shrui", bits, b.i(52))
    row = b.ibin("subi", expo, b.i(1075 + E_MIN))
    row = b.emit(f"arith.maxsi {row}, {b.i(0)} : i64")
    row = b.emit(f"arith.minsi {row}, {b.i(TABLE_ROWS - 1)} : i64")
    base = b.ibin("muli", row, b.i(CHUNKS))
    table = b.emit(f'arith.constant dense<"{reduction_table_hex()}"> : '
                   f"tensor<{TABLE_ROWS * CHUNKS}xf64>")
    chunks = []
    for j in range(CHUNKS):
        at = b.emit(f"arith.index_cast {b.ibin('addi', base, b.i(j))} : i64 to index")
        chunks.append(b.emit(f"tensor.extract {table}[{at}] : tensor<{TABLE_ROWS * CHUNKS}xf64>"))
    # M (53-bit integer) = hi + lo, hi a multiple of 2^26 with 27 bits, lo < 2^26.
    two52 = b.c(2.0 ** 52)
    m = b.from_bits(b.ibin("ori", b.ibin("andi", bits, b.i((1 << 52) - 1)), b.bits(two52)))
    m_hi = b.from_bits(b.ibin("andi", b.bits(m), b.i(~((1 << 26) - 1))))
    m_lo = b.sub(m, m_hi)

    def mod4(v: str) -> str:
        return b.sub(v, b.mul(b.c(4.0), b.unary("floor", b.mul(v, b.c(0.25)))))

    # m_hi * c0 is a multiple of 16: it vanishes mod 4. The next four products are exact and
    # below 2^31, with bits no finer than 2^-46: their sum mod 4 is exact.
    s = mod4(b.add(mod4(b.mul(m_lo, chunks[0])), mod4(b.mul(m_hi, chunks[1]))))
    s = mod4(b.add(s, mod4(b.mul(m_lo, chunks[1]))))
    s = mod4(b.add(s, mod4(b.mul(m_hi, chunks[2]))))
    # The rest (below 2^-16), largest first, summed as a double-double.
    small = [b.mul(m_hi, chunks[3]), b.mul(m_lo, chunks[2]), b.mul(m_hi, chunks[4]),
             b.mul(m_lo, chunks[3]), b.mul(m_hi, chunks[5]), b.mul(m_lo, chunks[4]),
             b.mul(m_hi, chunks[6]), b.mul(m_lo, chunks[5]), b.mul(m_lo, chunks[6])]
    mh, ml = small[0], b.c(0.0)
    for k, term in enumerate(small[1:]):
        if k < 5:
            mh, err = b.two_sum(mh, term)
            ml = b.add(ml, err)
        else:
            ml = b.add(ml, term)
    n = b.unary("roundeven", b.add(s, mh))
    fh, fl = b.two_sum(b.sub(s, n), mh)
    fh, fl = b.fast_two_sum(fh, b.add(fl, ml))
    ph, pl = C.PIO2_DD
    rh = b.mul(fh, b.c(ph))
    rl = b.add(b.fma(fh, b.c(ph), b.neg(rh)), b.add(b.mul(fh, b.c(pl)), b.mul(fl, b.c(ph))))
    rh, rl = b.fast_two_sum(rh, rl)
    return rh, rl, n


def _kernels(b: VectorMath, rh: str, rl: str) -> tuple[str, str]:
    """(sin(r), cos(r)) for r = rh + rl, abs(r) <= pi/4 (fdlibm's arrangement)."""
    z = b.mul(rh, rh)
    half = b.c(0.5)
    # sin(r) = rh + (rh z S(z) + rl (1 - z/2))
    ps = b.horner(z, C.SIN_TAYLOR)
    v = b.mul(z, rh)
    sin_tail = b.sub(b.mul(v, ps), b.sub(b.mul(b.mul(half, z), rl), rl))
    sin_r = b.add(rh, sin_tail)
    # cos(r) = w + (((1 - w) - z/2) + (z^2 C(z) - rh rl)), w = 1 - z/2
    hz = b.mul(half, z)
    one = b.c(1.0)
    w = b.sub(one, hz)
    pc = b.horner(z, C.COS_TAYLOR)
    tail = b.sub(b.mul(b.mul(z, z), pc), b.mul(rh, rl))
    cos_r = b.add(w, b.add(b.sub(b.sub(one, w), hz), tail))
    return sin_r, cos_r
