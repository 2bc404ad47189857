"""Vector math: transcendental functions as branch-free `arith` / `math` ops (MLIR text).

`math.exp` and friends lowered by `convert-math-to-llvm` become `llvm.exp.v8f32`, which LLVM's
code generator splits into one scalar `expf` call per lane, so a loop calling them does not
really vectorize. Upstream's `math-polynomial-approximation` is not reachable from the Python
bindings, so tdsl emits its own expansions: range reduction, polynomial, reconstruction, and
selects for the special cases. Every op is an element-wise `arith` op (or `math.fma`,
`math.floor`, `math.roundeven`, `math.absf`, `math.copysign`, `math.sqrt`, which become vector
instructions), plus, for the large-argument reduction of sin / cos, a gather from a constant
table. LLVM vectorizes loops of them at the host's full width.

Accuracy (measured by `tests/unit/test_vector_math.py` against numpy / scipy over millions of
points and the IEEE edge cases): within 2 ulp for f32 and 4 ulp for f64 on the whole range;
nan, +-inf, overflow, underflow to denormals and zero, and signed zeros as numpy gives them.
f16 / bf16 are computed in f32 by the caller.

| function | method |
|----------|--------|
| exp      | k = round(x / ln2); r = x - k ln2 (Cody-Waite, two parts); Taylor polynomial; 2^k applied in two steps (no spurious overflow, one rounding into denormals) |
| log      | x = 2^k m, m in [sqrt(1/2), sqrt(2)); log(m) = 2 atanh(s), s = (m-1)/(m+1) (fdlibm's arrangement); denormals scaled first |
| tanh     | odd minimax polynomial for abs(x) < 0.625, else 1 - 2 / (exp(2 abs(x)) + 1); sign copied |
| sigmoid  | emitted by `tdsl.to_mlir_ops` as (x >= 0 ? 1 : e) / (1 + e), e = exp(-abs(x)); in f32 the sum and the quotient are compensated (Fast2Sum, an fma remainder), leaving exp's error |
| erf      | minimax polynomial in x^2 for abs(x) < 1, else 1 - exp(-x^2) R(x) with R minimax (per interval for f64) |
| sin, cos | see `tdsl.vector_math_trig` |
| pow      | f32: exp(b log a) in f64; f64: log in double-double, exp of a double-double; C99 special cases |
| sqrt, rsqrt | `math.sqrt` (a vector instruction), and a division |

Coefficients are in `tdsl.vector_math_coeffs` (fitted with mpmath; see there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tdsl import vector_math_coeffs as C
from tdsl.types import DType

VECTOR_UNARY = frozenset({"exp", "log", "tanh", "erf", "sin", "cos"})


@dataclass(frozen=True)
class FloatFormat:
    """Bit layout of an IEEE binary format."""

    ft: str  # float type: f32 / f64
    it: str  # integer type of the same width
    bits: int
    mant: int  # explicit mantissa bits
    bias: int

    @property
    def dtype(self) -> DType:
        return DType.F32 if self.ft == "f32" else DType.F64


F32 = FloatFormat("f32", "i32", 32, 23, 127)
F64 = FloatFormat("f64", "i64", 64, 52, 1023)


class VecBuilder:
    """Emits scalar ops (one SSA name each) through a `ScalarOps`-like emitter.

    Plain arithmetic carries no fast-math flag (so error-free transformations stay exact);
    `madd` carries `contract`, for polynomial steps that LLVM may turn into FMAs.
    """

    def __init__(self, emit: Callable[..., str], const: Callable[[float, DType], str],
                 raw_int: Callable[[int, str], str], fmt: FloatFormat):
        self.emit = emit
        self._const = const
        self._raw_int = raw_int
        self.f = fmt

    def with_format(self, fmt: FloatFormat) -> VecBuilder:
        """The same emitter for another float format."""
        return type(self)(self.emit, self._const, self._raw_int, fmt)

    # ---- constants --------------------------------------------------------------------------
    def c(self, value: float) -> str:
        """A float constant of this format."""
        return self._const(float(value), self.f.dtype)

    def i(self, value: int) -> str:
        """An integer constant of this format's width."""
        return self._raw_int(int(value), self.f.it)

    # ---- float arithmetic -------------------------------------------------------------------
    def _bin(self, op: str, a: str, b: str, flags: str = "") -> str:
        return self.emit(f"arith.{op} {a}, {b}{flags} : {self.f.ft}")

    def add(self, a: str, b: str) -> str:
        return self._bin("addf", a, b)

    def sub(self, a: str, b: str) -> str:
        return self._bin("subf", a, b)

    def mul(self, a: str, b: str) -> str:
        return self._bin("mulf", a, b)

    def div(self, a: str, b: str) -> str:
        return self._bin("divf", a, b)

    def neg(self, a: str) -> str:
        return self.emit(f"arith.negf {a} : {self.f.ft}")

    def madd(self, a: str, b: str, c: str) -> str:
        """a * b + c, contractible into an FMA."""
        prod = self._bin("mulf", a, b, " fastmath<contract>")
        return self._bin("addf", prod, c, " fastmath<contract>")

    def fma(self, a: str, b: str, c: str) -> str:
        """a * b + c rounded once (for error-free products)."""
        return self.emit(f"math.fma {a}, {b}, {c} : {self.f.ft}")

    def unary(self, op: str, a: str) -> str:
        """A `math` dialect unary op that is a vector instruction (floor, roundeven, absf)."""
        return self.emit(f"math.{op} {a} : {self.f.ft}")

    def copysign(self, a: str, b: str) -> str:
        return self.emit(f"math.copysign {a}, {b} : {self.f.ft}")

    def cmp(self, pred: str, a: str, b: str) -> str:
        return self.emit(f"arith.cmpf {pred}, {a}, {b} : {self.f.ft}")

    def sel(self, cond: str, a: str, b: str, ty: str | None = None) -> str:
        return self.emit(f"arith.select {cond}, {a}, {b} : {ty or self.f.ft}")

    def isnan(self, a: str) -> str:
        return self.cmp("uno", a, a)

    def clamp_below(self, x: str, high: float) -> str:
        """min(x, high), with nan going to `high`."""
        h = self.c(high)
        return self.sel(self.cmp("olt", x, h), x, h)

    def clamp_above(self, x: str, low: float) -> str:
        """max(x, low), with nan going to `low`."""
        lo = self.c(low)
        return self.sel(self.cmp("ogt", x, lo), x, lo)

    def horner(self, t: str, coeffs: tuple[float, ...]) -> str:
        """sum(coeffs[k] * t**k) by Horner's rule."""
        acc = self.c(coeffs[-1])
        for coef in reversed(coeffs[:-1]):
            acc = self.madd(acc, t, self.c(coef))
        return acc

    # ---- integer views ----------------------------------------------------------------------
    def bits(self, a: str) -> str:
        return self.emit(f"arith.bitcast {a} : {self.f.ft} to {self.f.it}")

    def from_bits(self, a: str) -> str:
        return self.emit(f"arith.bitcast {a} : {self.f.it} to {self.f.ft}")

    def ibin(self, op: str, a: str, b: str) -> str:
        return self.emit(f"arith.{op} {a}, {b} : {self.f.it}")

    def exact_int_bits(self, k: str) -> str:
        """The low bits of an integer-valued float `k` (abs(k) < 2^(mant-1)) as an integer of
        the same width, two's complement: `bitcast(k + 1.5 * 2^mant) - bitcast(1.5 * 2^mant)`.
        (No float -> int conversion: AVX2 has none for 64-bit lanes.)"""
        magic = 1.5 * 2.0 ** self.f.mant
        shifted = self.bits(self.add(k, self.c(magic)))
        return self.ibin("subi", shifted, self.i(_float_bits(magic, self.f)))

    def pow2(self, k: str) -> str:
        """2^k for an integer-valued float k in the normal exponent range."""
        kb = self.exact_int_bits(self.add(k, self.c(self.f.bias)))
        return self.from_bits(self.ibin("shli", kb, self.i(self.f.mant)))

    def two_sum(self, a: str, b: str) -> tuple[str, str]:
        """s + e == a + b exactly (Knuth)."""
        s = self.add(a, b)
        bb = self.sub(s, a)
        e = self.add(self.sub(a, self.sub(s, bb)), self.sub(b, bb))
        return s, e

    def fast_two_sum(self, a: str, b: str) -> tuple[str, str]:
        """s + e == a + b exactly, for abs(a) >= abs(b) (Dekker)."""
        s = self.add(a, b)
        return s, self.sub(b, self.sub(s, a))


def _float_bits(value: float, fmt: FloatFormat) -> int:
    import struct

    if fmt.bits == 32:
        return struct.unpack("<i", struct.pack("<f", value))[0]
    return struct.unpack("<q", struct.pack("<d", value))[0]


class VectorMath(VecBuilder):
    """The functions; each takes and returns a value of this builder's format."""

    # ---- exp --------------------------------------------------------------------------------
    def exp(self, x: str, low: str | None = None, series: tuple[float, ...] | None = None) -> str:
        """e^x; `low` is an optional small addend of the argument (double-double input);
        `series` replaces the format's Taylor polynomial (a shorter one when less accuracy
        is needed)."""
        f = self.f
        lo_clamp, hi_clamp = (-104.0, 89.0) if f.bits == 32 else (-746.0, 710.0)
        xc = self.clamp_above(self.clamp_below(x, hi_clamp), lo_clamp)
        k, p = self._exp_parts(xc, low, series)
        # 2^k as 2^a 2^(k - a), both normal: a = k clamped to the normal exponents (k is never
        # nan: plain min and max), k - a in [-(mant + 1), 1] (denormal results and e^88.7)
        low, high = float(1 - f.bias), float(f.bias)
        a = self._bin("minimumf", self._bin("maximumf", k, self.c(low), " fastmath<nnan>"),
                      self.c(high), " fastmath<nnan>")
        result = self.mul(self.mul(p, self.pow2(a)), self.pow2(self.sub(k, a)))
        return self.sel(self.isnan(x), x, result)

    def exp_in_range(self, x: str) -> str:
        """e^x for x known to lie in [-60, 60] and not nan (tanh's and erf's arguments): the
        same reduction and polynomial as `exp`, without its clamps, its nan test and its
        split scale (one 2^k suffices while k stays in the normal exponent range): about a
        quarter fewer operations, all of them on the multiply pipes' critical share."""
        k, p = self._exp_parts(x)
        return self.mul(p, self.pow2(k))

    def _exp_parts(self, x: str, low: str | None = None,
                   series: tuple[float, ...] | None = None) -> tuple[str, str]:
        """(k, p) with e^(x + low) = 2^k p: k = round(x log2 e), p the polynomial (`series`,
        else the format's Taylor one) of the remainder r = x - k ln 2 (+ low), abs(r) <=
        ln2/2. Cody-Waite: k ln 2 in two parts, the first product exact (Sterbenz)."""
        f = self.f
        k = self.unary("roundeven", self.mul(x, self.c(C.LOG2E)))
        ln2_hi, ln2_lo = C.LN2_F32 if f.bits == 32 else C.LN2_F64
        r = self.madd(self.neg(k), self.c(ln2_hi), x)
        r = self.madd(self.neg(k), self.c(ln2_lo), r)
        if low is not None:
            r = self.add(r, low)
        p = self.horner(r, series or (C.EXP_TAYLOR_F32 if f.bits == 32 else C.EXP_TAYLOR_F64))
        return k, p

    # ---- log --------------------------------------------------------------------------------
    def _log_parts(self, x: str) -> tuple[str, str, str, str]:
        """x = 2^k (1 + f) with 1 + f in [sqrt(1/2), sqrt(2)); returns (k, f, s, R) where
        s = f / (2 + f) and log(1 + f) = f - (f^2/2 - s (f^2/2 + R)). Valid for finite
        x > 0 (denormals included)."""
        f = self.f
        tiny = self.cmp("olt", x, self.c(2.0 ** (1 - f.bias)))
        scaled = self.sel(tiny, self.mul(x, self.c(2.0 ** 60)), x)
        bits = self.bits(scaled)
        one_bits, sqrt_half_bits = _float_bits(1.0, f), _float_bits(0.5 ** 0.5, f)
        shifted = self.ibin("addi", bits, self.i(one_bits - sqrt_half_bits))
        mant_mask = (1 << f.mant) - 1
        m = self.from_bits(self.ibin("addi", self.ibin("andi", shifted, self.i(mant_mask)),
                                     self.i(sqrt_half_bits)))
        # The exponent field as a float: OR it into the mantissa of 2^mant and subtract.
        expo = self.ibin("shrui", shifted, self.i(f.mant))
        magic = self.c(2.0 ** f.mant)
        ef = self.sub(self.from_bits(self.ibin("ori", expo, self.bits(magic))), magic)
        k = self.sub(ef, self.sel(tiny, self.c(f.bias + 60), self.c(f.bias)))
        frac = self.sub(m, self.c(1.0))
        s = self.div(frac, self.add(self.c(2.0), frac))
        z = self.mul(s, s)
        series = C.LOG_ATANH_F32 if f.bits == 32 else C.LOG_ATANH_F64
        big_r = self.mul(z, self.horner(z, series))
        return k, frac, s, big_r

    def log(self, x: str) -> str:
        """Natural logarithm."""
        k, frac, s, big_r = self._log_parts(x)
        ln2_hi, ln2_lo = C.LN2_F32 if self.f.bits == 32 else C.LN2_F64
        hfsq = self.mul(self.c(0.5), self.mul(frac, frac))
        inner = self.madd(k, self.c(ln2_lo), self.mul(s, self.add(hfsq, big_r)))
        body = self.sub(frac, self.sub(hfsq, inner))
        result = self.madd(k, self.c(ln2_hi), body)
        # Special cases: 0 -> -inf, < 0 -> nan, +inf -> +inf, nan -> nan.
        zero = self.c(0.0)
        result = self.sel(self.cmp("oeq", x, self.c(float("inf"))), x, result)
        result = self.sel(self.cmp("oeq", x, zero), self.c(float("-inf")), result)
        return self.sel(self.cmp("ult", x, zero), self.c(float("nan")), result)

    def log_dd(self, x: str) -> tuple[str, str]:
        """log(x) as a double-double (hi, lo), about 2^-66 relative; finite x > 0 only.

        log(1 + f) = 2 s + (2/3) s^3 + s^5 P(s^2): s, s^3 and 2/3 are carried as
        double-doubles (error-free products by FMA), the rest is below 2^-14 of the result."""
        k, frac, s, _ = self._log_parts(x)
        # s to double-double: s_lo = (f - s (2 + f)) / (2 + f), with 2 + f = t + tl exactly.
        two = self.c(2.0)
        t = self.add(two, frac)
        tl = self.add(self.sub(two, t), frac)
        s_lo = self.div(self.sub(self.fma(self.neg(s), t, frac), self.mul(s, tl)), t)
        # s^3 = (zh + zl) s exactly enough; (2/3) s^3 as (th, tl3).
        zh = self.mul(s, s)
        zl = self.fma(s, s, self.neg(zh))
        ch = self.mul(zh, s)
        cl = self.add(self.fma(zh, s, self.neg(ch)), self.mul(zl, s))
        c_hi, c_lo = C.TWO_THIRDS_DD
        th = self.mul(ch, self.c(c_hi))
        tl3 = self.add(self.fma(ch, self.c(c_hi), self.neg(th)),
                       self.add(self.mul(cl, self.c(c_hi)), self.mul(ch, self.c(c_lo))))
        series = C.LOG_ATANH_F64[1:]  # 2/5, 2/7, ...
        rest = self.mul(self.mul(ch, zh), self.horner(zh, series))
        # k ln2 + 2 s + th + (2 s_lo + tl3 + rest + k ln2 lower parts)
        hi = self.mul(k, self.c(C.LN2_DD[0]))  # exact: 42-bit constant, abs(k) < 2^11
        hi, lo = self.two_sum(hi, self.add(s, s))
        hi, lo2 = self.two_sum(hi, th)
        small = self.add(self.add(s_lo, s_lo), self.add(tl3, rest))
        small = self.add(small, self.mul(k, self.c(C.LN2_DD[1])))
        small = self.add(small, self.mul(k, self.c(C.LN2_DD[2])))
        lo = self.add(self.add(lo, lo2), small)
        return self.fast_two_sum(hi, lo)

    # ---- tanh, sigmoid, erf -----------------------------------------------------------------
    def tanh(self, x: str) -> str:
        """Hyperbolic tangent (odd: computed on abs(x), sign copied, signed zeros kept)."""
        f = self.f
        ax = self.unary("absf", x)
        small = self.cmp("ult", ax, self.c(0.625))  # nan takes this path and stays nan
        z = self.mul(ax, ax)
        p = self.horner(z, C.TANH_F32 if f.bits == 32 else C.TANH_F64)
        near = self.madd(self.mul(ax, z), p, ax)
        e = self.exp_in_range(self.mul(self.c(2.0), self.clamp_below(ax, 10.0 if f.bits == 32
                                                                      else 20.0)))
        far = self.sub(self.c(1.0), self.div(self.c(2.0), self.add(e, self.c(1.0))))
        return self.copysign(self.sel(small, near, far), x)

    def erf(self, x: str) -> str:
        """The error function (odd: computed on abs(x), sign copied)."""
        f = self.f
        ax = self.unary("absf", x)
        small = self.cmp("ult", ax, self.c(1.0))
        z = self.mul(ax, ax)
        q = self.horner(z, C.ERF_SMALL_F32 if f.bits == 32 else C.ERF_SMALL_F64)
        near = self.madd(ax, q, ax)
        top = C.ERF_ONE_F32 if f.bits == 32 else C.ERF_ONE_F64
        xt = self.clamp_above(self.clamp_below(ax, top), 1.0)
        if f.bits == 32:
            rx = self.horner(self.sub(xt, self.c(C.ERFC_F32_CENTER)), C.ERFC_F32)
        else:
            rx = self._piecewise_horner(xt, C.ERFC_F64_PIECES)
        e = self.exp_in_range(self.neg(self.mul(xt, xt)))
        far = self.sub(self.c(1.0), self.mul(e, rx))
        return self.copysign(self.sel(small, near, far), x)

    def _piecewise_horner(self, x: str, pieces: tuple[tuple[float, float, tuple[float, ...]],
                                                        ...]) -> str:
        """Evaluate the polynomial of the interval holding x (pieces: (start, center,
        coefficients), sorted, same degree); coefficients are chosen by selects per lane."""
        conds = [self.cmp("oge", x, self.c(start)) for start, _, _ in pieces[1:]]

        def pick(values: list[float]) -> str:
            acc = self.c(values[0])
            for cond, v in zip(conds, values[1:]):
                acc = self.sel(cond, self.c(v), acc)
            return acc

        t = self.sub(x, pick([center for _, center, _ in pieces]))
        degree = len(pieces[0][2]) - 1
        acc = pick([coefs[degree] for _, _, coefs in pieces])
        for k in range(degree - 1, -1, -1):
            acc = self.madd(acc, t, pick([coefs[k] for _, _, coefs in pieces]))
        return acc

    # ---- pow --------------------------------------------------------------------------------
    def pow(self, a: str, b: str) -> str:
        """a ** b with C99 / numpy special cases."""
        if self.f.bits == 32:
            wide = self.with_format(F64)
            assert isinstance(wide, VectorMath)
            a64 = self.emit(f"arith.extf {a} : f32 to f64")
            b64 = self.emit(f"arith.extf {b} : f32 to f64")
            y = wide.mul(b64, wide.log(wide.unary("absf", a64)))
            r64 = wide.exp(wide.sel(wide.isnan(y), wide.c(0.0), y))
            r = self.emit(f"arith.truncf {r64} : f64 to f32")
        else:
            lh, ll = self.log_dd(self.sel_positive_finite(self.unary("absf", a)))
            yh = self.mul(b, lh)
            yl = self.add(self.fma(b, lh, self.neg(yh)), self.mul(b, ll))
            in_range = self.cmp("olt", self.unary("absf", yh), self.c(2048.0))
            yl = self.sel(in_range, yl, self.c(0.0))  # beyond, exp saturates: no nan from yl
            r = self.exp(self.sel(self.isnan(yh), self.c(0.0), yh), low=yl)
            r = self._pow_log_specials(a, b, r)
        return self._pow_specials(a, b, r)

    def sel_positive_finite(self, ax: str) -> str:
        """ax where it is finite and > 0, else 1 (so that log_dd sees a valid input)."""
        ok = self.emit(f"arith.andi {self.cmp('ogt', ax, self.c(0.0))}, "
                       f"{self.cmp('olt', ax, self.c(float('inf')))} : i1")
        return self.sel(ok, ax, self.c(1.0))

    def _pow_log_specials(self, a: str, b: str, r: str) -> str:
        """f64: results for abs(a) in {0, inf} (log_dd saw 1 there): 0 or inf by b's sign."""
        ax = self.unary("absf", a)
        zero, inf = self.c(0.0), self.c(float("inf"))
        b_pos = self.cmp("ogt", b, zero)
        at_zero = self.sel(b_pos, zero, inf)
        at_inf = self.sel(b_pos, inf, zero)
        r = self.sel(self.cmp("oeq", ax, zero), at_zero, r)
        return self.sel(self.cmp("oeq", ax, inf), at_inf, r)

    def _pow_specials(self, a: str, b: str, r: str) -> str:
        """Sign for negative bases, nan for a negative finite base and a non-integer exponent,
        and the cases where C99 gives 1."""
        zero, one, nan = self.c(0.0), self.c(1.0), self.c(float("nan"))
        ab = self.unary("absf", b)
        is_int = self.cmp("oeq", self.unary("floor", b), b)
        half = self.mul(b, self.c(0.5))
        odd = self.emit(f"arith.andi {is_int}, {self.cmp('une', self.unary('floor', half), half)}"
                        " : i1")
        neg_base = self.cmp("olt", self.bits_sign(a), zero)
        flip = self.emit(f"arith.andi {neg_base}, {odd} : i1")
        r = self.sel(flip, self.neg(r), r)
        neg_finite = self.emit(f"arith.andi {self.cmp('olt', a, zero)}, "
                               f"{self.cmp('ogt', a, self.c(float('-inf')))} : i1")
        not_int = self.emit(f"arith.xori {is_int}, {self.emit('arith.constant true')} : i1")
        r = self.sel(self.emit(f"arith.andi {neg_finite}, {not_int} : i1"), nan, r)
        r = self.sel(self.emit(f"arith.ori {self.isnan(a)}, {self.isnan(b)} : i1"), nan, r)
        # (-1) ** +-inf == 1, 1 ** anything == 1, anything ** 0 == 1.
        minus_one_inf = self.emit(
            f"arith.andi {self.cmp('oeq', a, self.c(-1.0))}, "
            f"{self.cmp('oeq', ab, self.c(float('inf')))} : i1")
        r = self.sel(minus_one_inf, one, r)
        r = self.sel(self.cmp("oeq", a, one), one, r)
        return self.sel(self.cmp("oeq", b, zero), one, r)

    def bits_sign(self, a: str) -> str:
        """-1.0 where a's sign bit is set (also -0 and -nan), else +1.0."""
        return self.copysign(self.c(1.0), a)

    # ---- dispatch ---------------------------------------------------------------------------
    def apply(self, op: str, x: str) -> str:
        """The unary function `op` (one of VECTOR_UNARY) of x."""
        from tdsl import vector_math_trig as trig

        if op not in VECTOR_UNARY:
            raise ValueError(f"no vector expansion of '{op}'")
        if op in ("sin", "cos"):
            return trig.sin_cos(self, x, op)
        return getattr(self, op)(x)


def vector_math(emit: Callable[..., str], const: Callable[[float, DType], str],
                raw_int: Callable[[int, str], str], dtype: DType) -> VectorMath:
    """A builder of vector math for the compute dtype `dtype` (f32 or f64)."""
    if dtype not in (DType.F32, DType.F64):
        raise ValueError(f"vector math computes in f32 or f64, not {dtype}")
    return VectorMath(emit, const, raw_int, F32 if dtype is DType.F32 else F64)
