"""Scalar operations of the language as MLIR `arith` / `math` ops (text), one element at a time.

A helper of `tdsl.to_mlir`: it emits the body of one `linalg.generic` region. Values are SSA
names; every value of dtype `d` has the MLIR type `value_type(d)` (bool is `i1`). Tensors store
bool as `i8` (`storage_type`), so numpy's one-byte bools pass through memrefs unchanged.

Numerics follow the language (LANGUAGE.md section 10):
- f16 / bf16 are computed in f32 and rounded to the dtype after every operation;
- integer `/` is floor division and `%` takes the divisor's sign; a zero divisor gives 0, and
  `INT_MIN / -1` wraps; no integer operation can trap;
- float-to-integer casts saturate and send nan to 0 (`arith.fptosi` alone is poison there);
- float `max`/`min` propagate nan (`arith.maximumf` / `arith.minimumf`);
- float arithmetic carries `fastmath<contract>` (FMA contraction is allowed), and reduction
  combiners `fastmath<reassoc,contract>` so that reductions vectorize.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_dtypes
import numpy as np

from tdsl.runtime.signature import f64_to_bf16
from tdsl.to_mlir_casts import (  # noqa: F401 - value_type etc.: used through this module too
    CastOps,
    compute_dtype,
    storage_type,
    value_type,
)
from tdsl.types import DType

CONTRACT = " fastmath<contract>"
REASSOC = " fastmath<reassoc,contract>"

_FLOAT_BITS = {DType.F16: (np.float16, np.uint16), DType.BF16: (ml_dtypes.bfloat16, np.uint16),
               DType.F32: (np.float32, np.uint32), DType.F64: (np.float64, np.uint64)}
_CMPF = {"lt": "olt", "le": "ole", "gt": "ogt", "ge": "oge", "eq": "oeq", "ne": "une"}
_CMPI_SIGNED = {"lt": "slt", "le": "sle", "gt": "sgt", "ge": "sge", "eq": "eq", "ne": "ne"}
_CMPI_UNSIGNED = {"lt": "ult", "le": "ule", "gt": "ugt", "ge": "uge", "eq": "eq", "ne": "ne"}
_MATH_UNARY = {"exp": "math.exp", "log": "math.log", "sqrt": "math.sqrt", "sin": "math.sin",
               "cos": "math.cos", "tanh": "math.tanh", "erf": "math.erf",
               "floor": "math.floor", "ceil": "math.ceil", "abs": "math.absf"}


def float_literal(value: float, dtype: DType) -> str:
    """An exact hexadecimal MLIR float literal (covers inf, nan and signed zeros)."""
    ftype, itype = _FLOAT_BITS[dtype]
    with np.errstate(over="ignore", invalid="ignore"):
        if dtype is DType.BF16:  # rounded once, like the cast at run time
            rounded = f64_to_bf16(np.array(value, dtype=np.float64))
        else:
            rounded = np.array(value, dtype=ftype)
        bits = int(rounded.view(itype))
    width = np.dtype(itype).itemsize * 2
    return f"0x{bits:0{width}X}"


def int_literal(value: int, dtype: DType) -> int:
    """`value` wrapped to the signed range of the dtype's width (MLIR integers are signless)."""
    bits = 1 if dtype is DType.BOOL else dtype.bits
    half = 1 << (bits - 1)
    return ((int(value) + half) % (1 << bits)) - half


class ScalarOps(CastOps):
    """Emits scalar ops through `emit(op_text) -> ssa_name`; constants are memoized per region."""

    def __init__(self, emit: Callable[..., str], fresh: Callable[[], str]):
        self.emit = emit  # emit(op_text, results=1) -> the new SSA name
        self.fresh = fresh  # a new unique suffix for names the caller spells itself
        self._consts: dict[tuple[str, str], str] = {}

    # ---- constants ------------------------------------------------------------------------
    def const(self, value: bool | int | float, dtype: DType) -> str:
        """A constant of `dtype` (value type)."""
        mt = value_type(dtype)
        if dtype is DType.BOOL:
            text = "true" if value else "false"
        elif dtype is DType.BF16:  # its bits (bf16 values are i16, see value_type)
            text = f"{int_literal(int(float_literal(float(value), dtype), 16), DType.I16)} : {mt}"
        elif dtype.is_float:
            text = f"{float_literal(float(value), dtype)} : {mt}"
        else:
            text = f"{int_literal(int(value), dtype)} : {mt}"
        return self._const_text(text, mt)

    def _const_text(self, text: str, mt: str) -> str:
        key = (text, mt)
        if key not in self._consts:
            self._consts[key] = self.emit(f"arith.constant {text}")
        return self._consts[key]

    def raw_int(self, value: int, mt: str) -> str:
        """An integer constant of an MLIR type given by name (index, i8, ...)."""
        return self._const_text(f"{value} : {mt}", mt)

    # ---- storage and f16/bf16 widening ----------------------------------------------------
    def from_storage(self, v: str, dtype: DType) -> str:
        """A loaded tensor element as a value (i8 -> i1 for bool)."""
        if dtype is not DType.BOOL:
            return v
        return self.emit(f"arith.cmpi ne, {v}, {self.raw_int(0, 'i8')} : i8")

    def to_storage(self, v: str, dtype: DType) -> str:
        """A value as a tensor element (i1 -> i8 for bool)."""
        if dtype is not DType.BOOL:
            return v
        return self.emit(f"arith.extui {v} : i1 to i8")

    def widen(self, v: str, dtype: DType) -> str:
        """f16/bf16 -> f32 (exact); other dtypes unchanged. bf16 uses integer ops: x86 has
        no bf16 conversion instructions before AVX512-BF16, and LLVM would call a libgcc
        helper."""
        if dtype is DType.BF16:
            wide = self.emit(f"arith.extui {v} : i16 to i32")
            shifted = self.emit(f"arith.shli {wide}, {self.raw_int(16, 'i32')} : i32")
            return self.emit(f"arith.bitcast {shifted} : i32 to f32")
        if dtype is DType.F16:
            return self.emit(f"arith.extf {v} : f16 to f32")
        return v

    def narrow(self, v: str, dtype: DType) -> str:
        """f32 -> f16/bf16, rounding to nearest even; other dtypes unchanged."""
        if dtype is DType.F16:
            return self.emit(f"arith.truncf {v} : f32 to f16")
        if dtype is not DType.BF16:
            return v
        i32 = lambda k: self.raw_int(k, "i32")  # noqa: E731
        bits = self.emit(f"arith.bitcast {v} : f32 to i32")
        high = self.emit(f"arith.shrui {bits}, {i32(16)} : i32")
        lsb = self.emit(f"arith.andi {high}, {i32(1)} : i32")
        bias = self.emit(f"arith.addi {lsb}, {i32(0x7FFF)} : i32")
        rounded = self.emit(f"arith.addi {bits}, {bias} : i32")
        top = self.emit(f"arith.shrui {rounded}, {i32(16)} : i32")
        quiet = self.emit(f"arith.ori {high}, {i32(0x40)} : i32")  # nan: keep sign, quiet
        is_nan = self.emit(f"arith.cmpf uno, {v}, {v} : f32")
        top = self.emit(f"arith.select {is_nan}, {quiet}, {top} : i32")
        return self.emit(f"arith.trunci {top} : i32 to i16")

    # ---- operations -----------------------------------------------------------------------
    def select(self, cond: str, a: str, b: str, dtype: DType) -> str:
        """`a` where `cond` else `b`."""
        return self.emit(f"arith.select {cond}, {a}, {b} : {value_type(dtype)}")

    def unary(self, op: str, x: str, dtype: DType) -> str:
        """`op(x)` for a unary op of the language; the result has `dtype`."""
        if dtype is DType.BOOL:
            if op != "not":
                raise NotImplementedError(f"unary '{op}' on bool")
            return self.emit(f"arith.xori {x}, {self.const(True, DType.BOOL)} : i1")
        if dtype.is_float:
            cd = compute_dtype(dtype)
            return self.narrow(self._unary_float(op, self.widen(x, dtype), cd), dtype)
        return self._unary_int(op, x, dtype)

    def _unary_float(self, op: str, x: str, cd: DType) -> str:
        mt = value_type(cd)
        if op == "neg":
            return self.emit(f"arith.negf {x} : {mt}")
        if op in _MATH_UNARY:
            return self.emit(f"{_MATH_UNARY[op]} {x} : {mt}")
        one = self.const(1.0, cd)
        if op == "relu":
            return self.emit(f"arith.maximumf {x}, {self.const(0.0, cd)} : {mt}")
        if op == "rsqrt":
            root = self.emit(f"math.sqrt {x} : {mt}")
            return self.emit(f"arith.divf {one}, {root}{CONTRACT} : {mt}")
        if op == "sigmoid":
            return self._sigmoid(x, cd)
        raise NotImplementedError(f"unary '{op}' on floats")

    def _sigmoid(self, x: str, cd: DType) -> str:
        """(x >= 0 ? 1 : e) / (1 + e) with e = exp(-|x|): never overflows, exact tails, 0 and 1
        at -+inf. In f32 the sum and the quotient are compensated (`_compensated_quotient`),
        so only exp's error remains: 1.44 ulp at most on 9 million points (a plain quotient
        reached 2.3). f64 is plain (its bound is 4 ulp)."""
        mt, one = value_type(cd), self.const(1.0, cd)
        ax = self.emit(f"math.absf {x} : {mt}")
        neg = self.emit(f"arith.negf {ax} : {mt}")
        e = self.emit(f"math.exp {neg} : {mt}")
        nonneg = self.emit(f"arith.cmpf oge, {x}, {self.const(0.0, cd)} : {mt}")
        num = self.select(nonneg, one, e, cd)
        den = self.emit(f"arith.addf {one}, {e} : {mt}")
        if cd is not DType.F32:
            return self.emit(f"arith.divf {num}, {den} : {mt}")
        return self._compensated_quotient(num, den, e, mt, one)

    def _compensated_quotient(self, num: str, den: str, e: str, mt: str, one: str) -> str:
        """num / (1 + e) for 0 <= e <= 1, where `den` is 1 + e rounded: its rounding error
        (Fast2Sum: e - (den - 1), exact) and the quotient's remainder (exact with FMA) correct
        the quotient, which is then within about half an ulp of num / (1 + e). No op here may be
        contracted (none carries `contract`)."""
        low = self.emit(f"arith.subf {e}, {self.emit(f'arith.subf {den}, {one} : {mt}')} : {mt}")
        rcp = self.emit(f"arith.divf {one}, {den} : {mt}")
        q0 = self.emit(f"arith.mulf {num}, {rcp} : {mt}")
        neg_q0 = self.emit(f"arith.negf {q0} : {mt}")
        rest = self.emit(f"math.fma {neg_q0}, {den}, {num} : {mt}")
        rest = self.emit(f"math.fma {neg_q0}, {low}, {rest} : {mt}")
        return self.emit(f"math.fma {rest}, {rcp}, {q0} : {mt}")

    def _unary_int(self, op: str, x: str, dtype: DType) -> str:
        mt = value_type(dtype)
        zero = self.const(0, dtype)
        if op in ("floor", "ceil") or (op in ("abs", "relu") and not dtype.is_signed):
            return x
        if op == "neg":
            return self.emit(f"arith.subi {zero}, {x} : {mt}")
        if op == "abs":
            return self.emit(f"math.absi {x} : {mt}")
        if op == "relu":
            return self.emit(f"arith.maxsi {x}, {zero} : {mt}")
        raise NotImplementedError(f"unary '{op}' on {dtype}")

    def binary(self, op: str, a: str, b: str, dtype: DType) -> str:
        """`a op b` with operands of `dtype`; comparisons give bool, the rest `dtype`."""
        if dtype is DType.BOOL:
            return self._binary_bool(op, a, b)
        if dtype.is_float:
            cd = compute_dtype(dtype)
            result = self._binary_float(op, self.widen(a, dtype), self.widen(b, dtype), cd)
            return result if op in _CMPF else self.narrow(result, dtype)
        return self._binary_int(op, a, b, dtype)

    def _binary_bool(self, op: str, a: str, b: str) -> str:
        simple = {"and": "andi", "or": "ori", "min": "andi", "max": "ori", "ne": "xori"}
        if op in simple:
            return self.emit(f"arith.{simple[op]} {a}, {b} : i1")
        if op in _CMPI_UNSIGNED:
            return self.emit(f"arith.cmpi {_CMPI_UNSIGNED[op]}, {a}, {b} : i1")
        raise NotImplementedError(f"binary '{op}' on bool")

    def _binary_float(self, op: str, a: str, b: str, cd: DType) -> str:
        mt = value_type(cd)
        simple = {"add": "addf", "sub": "subf", "mul": "mulf", "div": "divf"}
        if op in simple:
            return self.emit(f"arith.{simple[op]} {a}, {b}{CONTRACT} : {mt}")
        if op in _CMPF:
            return self.emit(f"arith.cmpf {_CMPF[op]}, {a}, {b} : {mt}")
        if op == "max":
            return self.emit(f"arith.maximumf {a}, {b} : {mt}")
        if op == "min":
            return self.emit(f"arith.minimumf {a}, {b} : {mt}")
        if op == "pow":
            return self.emit(f"math.powf {a}, {b} : {mt}")
        if op == "mod":
            return self._float_mod(a, b, cd)
        raise NotImplementedError(f"binary '{op}' on floats")

    def _float_mod(self, a: str, b: str, cd: DType) -> str:
        """numpy's remainder: fmod, moved to the divisor's sign; zero takes the divisor's sign."""
        mt = value_type(cd)
        zero = self.const(0.0, cd)
        r = self.emit(f"arith.remf {a}, {b} : {mt}")
        nonzero = self.emit(f"arith.cmpf une, {r}, {zero} : {mt}")
        r_neg = self.emit(f"arith.cmpf olt, {r}, {zero} : {mt}")
        b_neg = self.emit(f"arith.cmpf olt, {b}, {zero} : {mt}")
        differ = self.emit(f"arith.xori {r_neg}, {b_neg} : i1")
        fix = self.emit(f"arith.andi {nonzero}, {differ} : i1")
        shifted = self.emit(f"arith.addf {r}, {b} : {mt}")
        r = self.select(fix, shifted, r, cd)
        is_zero = self.emit(f"arith.cmpf oeq, {r}, {zero} : {mt}")
        signed_zero = self.emit(f"math.copysign {zero}, {b} : {mt}")
        return self.select(is_zero, signed_zero, r, cd)

    def _binary_int(self, op: str, a: str, b: str, dtype: DType) -> str:
        mt = value_type(dtype)
        signed = dtype.is_signed
        simple = {"add": "addi", "sub": "subi", "mul": "muli",
                  "max": "maxsi" if signed else "maxui", "min": "minsi" if signed else "minui"}
        if op in simple:
            return self.emit(f"arith.{simple[op]} {a}, {b} : {mt}")
        if op in _CMPI_SIGNED:
            pred = (_CMPI_SIGNED if signed else _CMPI_UNSIGNED)[op]
            return self.emit(f"arith.cmpi {pred}, {a}, {b} : {mt}")
        if op in ("div", "mod"):
            return self._int_divmod(op, a, b, dtype)
        if op == "pow":
            return self._int_pow(a, b, dtype)
        raise NotImplementedError(f"binary '{op}' on {dtype}")

    def _int_divmod(self, op: str, a: str, b: str, dtype: DType) -> str:
        """Floor division / sign-of-divisor remainder; zero divisor gives 0; never traps."""
        mt = value_type(dtype)
        zero, one = self.const(0, dtype), self.const(1, dtype)
        b_zero = self.emit(f"arith.cmpi eq, {b}, {zero} : {mt}")
        if not dtype.is_signed:
            safe = self.select(b_zero, one, b, dtype)
            q = self.emit(f"arith.{'divui' if op == 'div' else 'remui'} {a}, {safe} : {mt}")
            return self.select(b_zero, zero, q, dtype)
        # -1 is special-cased too: INT_MIN / -1 traps on x86.
        b_minus1 = self.emit(f"arith.cmpi eq, {b}, {self.const(-1, dtype)} : {mt}")
        special = self.emit(f"arith.ori {b_zero}, {b_minus1} : i1")
        safe = self.select(special, one, b, dtype)
        # Truncating division, then one step towards -inf where the remainder's sign differs
        # from the divisor's (remainder 0 for the special divisors).
        r = self.emit(f"arith.remsi {a}, {safe} : {mt}")
        r_nonzero = self.emit(f"arith.cmpi ne, {r}, {zero} : {mt}")
        r_neg = self.emit(f"arith.cmpi slt, {r}, {zero} : {mt}")
        b_neg = self.emit(f"arith.cmpi slt, {b}, {zero} : {mt}")
        differ = self.emit(f"arith.xori {r_neg}, {b_neg} : i1")
        fix = self.emit(f"arith.andi {r_nonzero}, {differ} : i1")
        if op == "mod":
            shifted = self.emit(f"arith.addi {r}, {b} : {mt}")
            return self.select(fix, shifted, r, dtype)
        q = self.emit(f"arith.divsi {a}, {safe} : {mt}")
        q_down = self.emit(f"arith.subi {q}, {one} : {mt}")
        q = self.select(fix, q_down, q, dtype)
        neg_a = self.emit(f"arith.subi {zero}, {a} : {mt}")
        q = self.select(b_minus1, neg_a, q, dtype)
        return self.select(b_zero, zero, q, dtype)

    def _int_pow(self, a: str, b: str, dtype: DType) -> str:
        """Square-and-multiply over the exponent's bits (wrapping). A negative exponent gives
        the integer part of 1 / a**-b: 1 for a == 1, +-1 for a == -1, else 0."""
        mt = value_type(dtype)
        c0, c1, bits = self.raw_int(0, "index"), self.raw_int(1, "index"), self.raw_int(
            dtype.bits, "index")
        one, zero = self.const(1, dtype), self.const(0, dtype)
        n = self.fresh()
        it, acc, base, exp = f"%it{n}", f"%acc{n}", f"%base{n}", f"%exp{n}"
        body = [
            f"%bit{n} = arith.andi {exp}, {one} : {mt}",
            f"%odd{n} = arith.cmpi ne, %bit{n}, {zero} : {mt}",
            f"%mul{n} = arith.muli {acc}, {base} : {mt}",
            f"%acc2{n} = arith.select %odd{n}, %mul{n}, {acc} : {mt}",
            f"%sq{n} = arith.muli {base}, {base} : {mt}",
            f"%exp2{n} = arith.shrui {exp}, {one} : {mt}",
            f"scf.yield %acc2{n}, %sq{n}, %exp2{n} : {mt}, {mt}, {mt}",
        ]
        loop = self.emit(
            f"scf.for {it} = {c0} to {bits} step {c1} iter_args({acc} = {one}, {base} = {a}, "
            f"{exp} = {b}) -> ({mt}, {mt}, {mt}) {{\n  " + "\n  ".join(body) + "\n}", results=3)
        result = f"{loop}#0"
        if not dtype.is_signed:
            return result
        neg_exp = self.emit(f"arith.cmpi slt, {b}, {zero} : {mt}")
        a_one = self.emit(f"arith.cmpi eq, {a}, {one} : {mt}")
        a_minus1 = self.emit(f"arith.cmpi eq, {a}, {self.const(-1, dtype)} : {mt}")
        odd = self.emit(f"arith.andi {b}, {one} : {mt}")
        is_odd = self.emit(f"arith.cmpi ne, {odd}, {zero} : {mt}")
        minus_one_pow = self.select(is_odd, self.const(-1, dtype), one, dtype)
        small = self.select(a_minus1, minus_one_pow, zero, dtype)
        small = self.select(a_one, one, small, dtype)
        return self.select(neg_exp, small, result, dtype)

    # ---- reductions -----------------------------------------------------------------------
    def reduce_identity(self, op: str, acc: DType) -> str:
        """The identity of a reduction in its accumulator dtype (bool accumulates as i8)."""
        if acc is DType.BOOL:
            return self.raw_int(0 if op == "max" else 1, "i8")
        if acc.is_float:
            value = {"sum": 0.0, "mean": 0.0, "prod": 1.0, "max": float("-inf"),
                     "min": float("inf")}[op]
            return self.const(value, acc)
        low, high = acc.int_range
        value = {"sum": 0, "mean": 0, "prod": 1, "max": low, "min": high}[op]
        return self.const(value, acc)

    def reduce_combine(self, op: str, acc: str, v: str, acc_dtype: DType) -> str:
        """One step `acc = acc (op) v` of a reduction, in the accumulator dtype."""
        if acc_dtype is DType.BOOL:  # i8 storage of 0 / 1: max is or, min is and
            if op not in ("max", "min"):
                raise NotImplementedError(f"'{op}' reduction over bool")
            v8 = self.emit(f"arith.extui {v} : i1 to i8")
            return self.emit(f"arith.{'maxui' if op == 'max' else 'minui'} {acc}, {v8} : i8")
        mt = value_type(acc_dtype)
        if acc_dtype.is_float:
            name = {"sum": "addf", "mean": "addf", "prod": "mulf", "max": "maximumf",
                    "min": "minimumf"}[op]
            # A product is taken in order: reassociated, partial products of the non-zero
            # terms overflow and `0 * inf` makes nan where the ordered product is 0.
            flags = "" if op == "prod" else REASSOC
            return self.emit(f"arith.{name} {acc}, {v}{flags} : {mt}")
        signed = acc_dtype.is_signed
        name = {"sum": "addi", "mean": "addi", "prod": "muli",
                "max": "maxsi" if signed else "maxui",
                "min": "minsi" if signed else "minui"}[op]
        return self.emit(f"arith.{name} {acc}, {v} : {mt}")
