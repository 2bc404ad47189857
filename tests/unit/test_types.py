"""Dtypes, affine forms (arithmetic, floor division, extremes, sign proofs, JSON) and tensor
types."""

from __future__ import annotations

import json
import random

import pytest

from tdsl.types import DTYPE_NAMES, Affine, DType, FloorDiv, TensorType

N, M, K, IDX = Affine.of("N"), Affine.of("M"), Affine.of("K"), Affine.of("i")


# ---- dtypes --------------------------------------------------------------------------------


class TestDType:
    def test_names_and_parse(self):
        assert DTYPE_NAMES == {"bool", "i8", "i16", "i32", "i64", "u8", "f16", "bf16", "f32",
                               "f64"}
        assert all(DType.parse(n).value == n for n in DTYPE_NAMES)
        assert DType.parse("float32") is None and DType.parse("F32") is None
        assert str(DType.BF16) == "bf16"

    def test_kinds(self):
        floats = {d for d in DType if d.is_float}
        ints = {d for d in DType if d.is_int}
        assert floats == {DType.F16, DType.BF16, DType.F32, DType.F64}
        assert ints == {DType.I8, DType.I16, DType.I32, DType.I64, DType.U8}
        assert not DType.BOOL.is_numeric and DType.U8.is_numeric
        assert DType.I8.is_signed and not DType.U8.is_signed and not DType.F32.is_signed

    def test_ranges_bits_and_accumulators(self):
        assert DType.I8.int_range == (-128, 127)
        assert DType.U8.int_range == (0, 255)
        assert DType.I64.int_range == (-(2 ** 63), 2 ** 63 - 1)
        assert DType.BOOL.int_range == (0, 1)
        assert [DType(n).bits for n in ("i16", "bf16", "f64", "bool")] == [16, 16, 64, 8]
        assert DType.F16.accumulator is DType.F32 and DType.BF16.accumulator is DType.F32
        assert DType.I8.accumulator is DType.I8 and DType.F64.accumulator is DType.F64


# ---- affine arithmetic ---------------------------------------------------------------------


class TestArithmetic:
    def test_normal_form(self):
        assert N + M == M + N
        assert hash(N + M) == hash(M + N)
        assert N - N == Affine.of(0) and (N - N).is_const and (N - N).terms == ()
        assert (N + 1) - 1 == N
        assert Affine.of(N) is N
        assert (N + M + N).coef("N") == 2 and (N + M).coef("K") == 0

    @pytest.mark.parametrize("form, text", [
        (N.scale(2) + 1, "2 * N + 1"),
        (N - M, "N - M"),
        (-N, "-N"),
        (M - N.scale(3) - 2, "M - 3 * N - 2"),
        (Affine.of(0), "0"),
        (Affine.of(-5), "-5"),
        (N + M + K - 1, "K + M + N - 1"),
        ((N + 1).floordiv(2), "(N + 1) / 2"),
        ((N + 1).floordiv(2).scale(3), "3 * ((N + 1) / 2)"),
        (N.floordiv(2) + 1, "N / 2 + 1"),
    ])
    def test_text(self, form, text):
        assert str(form) == text

    def test_operators_accept_ints_and_names(self):
        assert N + 2 == 2 + N == N + Affine.of(2)
        assert 5 - N == Affine.of(5) - N
        assert N - "M" == N - M
        assert Affine.of("N") + "N" == N.scale(2)

    def test_mul(self):
        assert N.mul(Affine.of(3)) == Affine.of(3).mul(N) == N.scale(3)
        assert N.mul(M) is None
        assert (N + 1).mul(Affine.of(0)) == Affine.of(0)

    def test_names_and_as_name(self):
        assert (N + M.floordiv(2)).names() == {"N", "M"}
        assert N.as_name() == "N"
        assert N.scale(2).as_name() is None and (N + 1).as_name() is None
        assert Affine.of(3).as_name() is None

    def test_substitute_and_evaluate(self):
        form = N.scale(2) - M + 3
        assert form.substitute({"N": K + 1}) == K.scale(2) - M + 5
        assert form.evaluate({"N": 4, "M": 1}) == 10
        with pytest.raises(KeyError):
            form.evaluate({"N": 4})
        half = (N + 1).floordiv(2)
        assert half.substitute({"N": M.scale(2)}) == M  # floor((2M + 1) / 2) = M
        assert half.evaluate({"N": 6}) == 3 and half.evaluate({"N": 7}) == 4


# ---- floor division ------------------------------------------------------------------------


class TestFloorDiv:
    def test_exact_division_simplifies(self):
        assert (N.scale(4) + 6).floordiv(2) == N.scale(2) + 3
        assert (N.scale(4) + 7).floordiv(2) == N.scale(2) + 3
        assert N.floordiv(1) == N
        assert Affine.of(7).floordiv(2) == Affine.of(3)
        assert Affine.of(-7).floordiv(2) == Affine.of(-4)  # floor, as numpy's //

    def test_inexact_division_is_an_atom(self):
        half = N.floordiv(2)
        assert half.terms == ((FloorDiv(N, 2), 1),)
        assert str(FloorDiv(N.scale(2) + M, 3)) == "(M + 2 * N) / 3"

    @pytest.mark.parametrize("divisor", [0, -2])
    def test_divisor_must_be_positive(self, divisor):
        with pytest.raises(ValueError):
            N.floordiv(divisor)

    def test_agrees_with_python_floor_division(self):
        rng = random.Random(7)
        for _ in range(200):
            a, b, d = rng.randint(-9, 9), rng.randint(-20, 20), rng.randint(1, 7)
            n = rng.randint(0, 50)
            form = (N.scale(a) + b).floordiv(d)
            assert form.evaluate({"N": n}) == (a * n + b) // d


# ---- extremes and sign proofs --------------------------------------------------------------


class TestExtremes:
    @pytest.mark.parametrize("form, low, high", [
        (IDX + 1, "1", "N"),
        (N - 1 - IDX, "0", "N - 1"),
        (IDX.scale(2) + 1, "1", "2 * N - 1"),
        (IDX.floordiv(2), "0", "(N - 1) / 2"),
        (M - IDX.scale(2), "M - 2 * N + 2", "M"),
        (IDX + Affine.of("r"), "0", "N + R - 2"),
        (Affine.of("j") + 3, "j + 3", "j + 3"),  # names without a range stay
    ])
    def test_extremes(self, form, low, high):
        lo, hi = form.extremes({"i": N, "r": Affine.of("R")})
        assert (str(lo), str(hi)) == (low, high)

    def test_extremes_are_attained(self):
        rng = random.Random(3)
        for _ in range(100):
            a, b, d = rng.randint(-4, 4), rng.randint(-5, 5), rng.randint(1, 4)
            n = rng.randint(1, 12)
            form = (IDX.scale(a) + b).floordiv(d)
            lo, hi = form.extremes({"i": N})
            values = [form.evaluate({"i": i}) for i in range(n)]
            assert lo.evaluate({"N": n}) == min(values)
            assert hi.evaluate({"N": n}) == max(values)

    @pytest.mark.parametrize("form, nonneg, negative", [
        (N, True, False),
        (Affine.of(0), True, False),
        (Affine.of(-1), False, True),
        (N - 1, False, False),
        (N + M + 2, True, False),
        (-N - 1, False, True),
        (N - N.floordiv(2), True, False),
        (N.floordiv(2) - N, False, False),
        (N.floordiv(2), True, False),
        ((N + 1).floordiv(2) - 1, False, False),
        (-(N.floordiv(2)) - 1, False, True),
    ])
    def test_sign_proofs(self, form, nonneg, negative):
        assert form.provably_nonneg() is nonneg
        assert form.provably_negative() is negative

    def test_sign_proofs_are_sound(self):
        rng = random.Random(11)
        for _ in range(300):
            form = (N.scale(rng.randint(-3, 3)) + M.scale(rng.randint(-3, 3))
                    + rng.randint(-4, 4))
            if rng.random() < 0.5:
                form = form + (N.scale(rng.randint(-2, 2)) + rng.randint(-3, 3)).floordiv(
                    rng.randint(2, 4)).scale(rng.randint(-2, 2))
            values = [form.evaluate({"N": n, "M": m}) for n in range(8) for m in range(8)]
            if form.provably_nonneg():
                assert min(values) >= 0, form
            if form.provably_negative():
                assert max(values) < 0, form

    def test_sign_bounds(self):
        assert N.sign_bounds() == (0, None)
        assert (-N + 3).sign_bounds() == (None, 3)
        assert Affine.of(4).sign_bounds() == (4, 4)


# ---- JSON ----------------------------------------------------------------------------------


class TestJson:
    @pytest.mark.parametrize("form", [
        Affine.of(0), Affine.of(-3), N, N.scale(2) - M + 7, (N + 1).floordiv(2),
        ((N - K).floordiv(3) + M).floordiv(2).scale(-4) + N,
    ])
    def test_round_trip(self, form):
        data = json.loads(json.dumps(form.to_json()))
        assert Affine.from_json(data) == form
        assert str(Affine.from_json(data)) == str(form)

    def test_shape(self):
        assert (N.scale(2) + 1).to_json() == [1, ["N", 2]]
        assert N.floordiv(2).to_json() == [0, [{"div": [[0, ["N", 1]], 2]}, 1]]


# ---- tensor types --------------------------------------------------------------------------


def test_tensor_type():
    t = TensorType(DType.F32, (N, N - 1))
    assert t.rank == 2 and str(t) == "f32[N, N - 1]"
    assert str(TensorType(DType.F32, ())) == "f32[]"
    scalar = TensorType(DType.I32, (), scalar=True)
    assert scalar.rank == 0 and str(scalar) == "i32"
    assert scalar != TensorType(DType.I32, ())
