"""The language's dtypes as MLIR types, and casts between them as MLIR ops (text): the
`cast` method of `tdsl.to_mlir_ops.ScalarOps`, with the rules of LANGUAGE.md section 10
(float-to-integer casts saturate and send nan to 0; f64 and integers reach f16 / bf16 through
a round-to-odd f32, so they round once)."""

from __future__ import annotations

from tdsl.types import DType

_MLIR_TYPES = {
    DType.BOOL: "i1", DType.I8: "i8", DType.U8: "i8", DType.I16: "i16", DType.I32: "i32",
    DType.I64: "i64", DType.F16: "f16", DType.BF16: "i16", DType.F32: "f32", DType.F64: "f64",
}
_STORAGE_TYPES = {DType.BOOL: "i8", DType.BF16: "i16"}


def value_type(dtype: DType) -> str:
    """The MLIR type of a scalar value of `dtype` (bool is i1; bf16 is its i16 bits: only
    integer ops touch it, since LLVM legalizes `bfloat` values it keeps in registers (a load,
    a select) through libgcc's `__truncsfbf2`, which the JIT cannot resolve)."""
    return _MLIR_TYPES[dtype]


def storage_type(dtype: DType) -> str:
    """The MLIR element type of a tensor of `dtype`: bool is stored as i8 (like numpy), bf16
    as its i16 bits (a `bfloat` load or store that LLVM keeps in a register is legalized on
    x86 through libgcc's `__truncsfbf2`, which the JIT cannot resolve)."""
    return _STORAGE_TYPES.get(dtype, _MLIR_TYPES[dtype])


def compute_dtype(dtype: DType) -> DType:
    """The dtype arithmetic on `dtype` is done in (f32 for f16 and bf16)."""
    return DType.F32 if dtype in (DType.F16, DType.BF16) else dtype


class CastOps:
    """The cast emitters of `ScalarOps` (they use its `emit`, `const`, `raw_int`, `select`,
    `widen` and `narrow`)."""

    def cast(self, x: str, src: DType, dst: DType) -> str:
        """Convert a value of `src` to `dst` with the language's rules."""
        if src is dst:
            return x
        if dst is DType.BOOL:
            return self._to_bool(x, src)
        if src is DType.BOOL:
            if dst.is_float:
                f = self.emit(f"arith.uitofp {x} : i1 to f32")
                return self._float_to_float(f, DType.F32, dst)
            return self.emit(f"arith.extui {x} : i1 to {value_type(dst)}")
        if src.is_float and dst.is_float:
            return self._float_to_float(x, src, dst)
        if src.is_float:
            return self._float_to_int(x, src, dst)
        if dst is DType.BF16:
            return self.narrow(self._to_f32_odd(self._int_to_f64_odd(x, src)), dst)
        if dst.is_float:
            # Integers within f16's range are exact in f32: one rounding.
            op = "sitofp" if src.is_signed else "uitofp"
            cd = compute_dtype(dst)
            f = self.emit(f"arith.{op} {x} : {value_type(src)} to {value_type(cd)}")
            return self.narrow(f, dst)
        return self._int_to_int(x, src, dst)

    def _to_bool(self, x: str, src: DType) -> str:
        mt = value_type(src)
        if src.is_float:
            x, src = self.widen(x, src), compute_dtype(src)
            mt = value_type(src)
            return self.emit(f"arith.cmpf une, {x}, {self.const(0.0, src)} : {mt}")
        return self.emit(f"arith.cmpi ne, {x}, {self.const(0, src)} : {mt}")

    def _float_to_float(self, x: str, src: DType, dst: DType) -> str:
        """Float conversions; f16 and bf16 go through f32 (f64 is first rounded to odd, so
        the result is rounded once)."""
        if src is dst:
            return x
        if src in (DType.F16, DType.BF16):
            x, src = self.widen(x, src), DType.F32
            if src is dst:
                return x
        if dst in (DType.F16, DType.BF16):
            if src is DType.F64:
                x = self._to_f32_odd(x)
            return self.narrow(x, dst)
        op = "extf" if src.bits < dst.bits else "truncf"
        return self.emit(f"arith.{op} {x} : {value_type(src)} to {value_type(dst)}")

    # Round-to-odd (truncate, then set the last bit when inexact) to a precision p followed
    # by round-to-nearest-even to a precision q <= p - 2 rounds once: f64 -> f16/bf16 and
    # i64 -> bf16 go through f32 that way instead of rounding twice.
    def _to_f32_odd(self, x: str) -> str:
        """An f64 rounded to f32 with round-to-odd (nan stays nan, overflow stays finite)."""
        near = self.emit(f"arith.truncf {x} : f64 to f32")
        back = self.emit(f"arith.extf {near} : f32 to f64")
        inexact = self.emit(f"arith.cmpf one, {back}, {x} : f64")
        away = self.emit(f"arith.cmpf ogt, {self.emit(f'math.absf {back} : f64')}, "
                         f"{self.emit(f'math.absf {x} : f64')} : f64")
        bits = self.emit(f"arith.bitcast {near} : f32 to i32")
        return self.emit(f"arith.bitcast {self._make_odd(bits, inexact, away, 'i32')} : i32 to f32")

    def _make_odd(self, bits: str, inexact: str, away: str, it: str) -> str:
        """The bits of a rounded float moved one step toward zero when rounding went away
        from zero, with the last bit set when the rounding was inexact."""
        down = self.emit(f"arith.extui {away} : i1 to {it}")
        odd = self.emit(f"arith.extui {inexact} : i1 to {it}")
        toward = self.emit(f"arith.subi {bits}, {down} : {it}")
        return self.emit(f"arith.ori {toward}, {odd} : {it}")

    def _int_to_f64_odd(self, x: str, src: DType) -> str:
        """An integer as f64: exact up to 32 bits, i64 rounded to odd (two exact halves
        summed, the sum's error recovered exactly with TwoSum)."""
        op = "sitofp" if src.is_signed else "uitofp"
        if src.bits <= 32:
            return self.emit(f"arith.{op} {x} : {value_type(src)} to f64")
        i64 = lambda k: self.raw_int(k, "i64")  # noqa: E731
        high = self.emit(f"arith.shrsi {x}, {i64(32)} : i64")
        low = self.emit(f"arith.andi {x}, {i64(0xFFFFFFFF)} : i64")
        a = self.emit(f"arith.mulf {self.emit(f'arith.sitofp {high} : i64 to f64')}, "
                      f"{self.const(2.0 ** 32, DType.F64)} : f64")
        b = self.emit(f"arith.sitofp {low} : i64 to f64")
        total = self.emit(f"arith.addf {a}, {b} : f64")
        b_part = self.emit(f"arith.subf {total}, {a} : f64")
        a_part = self.emit(f"arith.subf {total}, {b_part} : f64")
        error = self.emit(f"arith.addf {self.emit(f'arith.subf {a}, {a_part} : f64')}, "
                          f"{self.emit(f'arith.subf {b}, {b_part} : f64')} : f64")
        zero = self.const(0.0, DType.F64)
        inexact = self.emit(f"arith.cmpf one, {error}, {zero} : f64")
        # Rounding went away from zero when the error's sign differs from the sum's.
        err_neg = self.emit(f"arith.cmpf olt, {error}, {zero} : f64")
        sum_neg = self.emit(f"arith.cmpf olt, {total}, {zero} : f64")
        away = self.emit(f"arith.andi {inexact}, "
                         f"{self.emit(f'arith.xori {err_neg}, {sum_neg} : i1')} : i1")
        bits = self.emit(f"arith.bitcast {total} : f64 to i64")
        return self.emit(f"arith.bitcast {self._make_odd(bits, inexact, away, 'i64')} : i64 to f64")

    def _float_to_int(self, x: str, src: DType, dst: DType) -> str:
        """Saturating float -> int with nan -> 0 (selects around a poison-prone fptosi)."""
        x = self.widen(x, src)
        cd = compute_dtype(src)
        mt, it = value_type(cd), value_type(dst)
        low, high = dst.int_range
        signed = dst.is_signed
        conv = self.emit(f"arith.{'fptosi' if signed else 'fptoui'} {x} : {mt} to {it}")
        # 2**(bits-1) (or 2**8 for u8) is exact in every float type; values below it that
        # are >= low truncate into range.
        too_high = self.emit(f"arith.cmpf oge, {x}, {self.const(float(high + 1), cd)} : {mt}")
        too_low = self.emit(
            f"arith.cmpf olt, {x}, {self.const(float(low) if signed else 0.0, cd)} : {mt}")
        is_nan = self.emit(f"arith.cmpf uno, {x}, {x} : {mt}")
        r = self.select(too_high, self.const(high, dst), conv, dst)
        r = self.select(too_low, self.const(low, dst), r, dst)
        return self.select(is_nan, self.const(0, dst), r, dst)

    def _int_to_int(self, x: str, src: DType, dst: DType) -> str:
        if src.bits == dst.bits:
            return x
        if src.bits > dst.bits:
            return self.emit(f"arith.trunci {x} : {value_type(src)} to {value_type(dst)}")
        op = "extsi" if src.is_signed else "extui"
        return self.emit(f"arith.{op} {x} : {value_type(src)} to {value_type(dst)}")
