"""Dtypes, affine shape expressions and tensor types: plain data shared by every stage.

This module imports nothing heavier than the standard library, so that the runtime can use it
to validate calls without the compiler.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tdsl.runtime.record import Record

if TYPE_CHECKING:
    from fractions import Fraction


class DType(enum.Enum):
    """A scalar element type of the language."""

    BOOL = "bool"
    I8 = "i8"
    I16 = "i16"
    I32 = "i32"
    I64 = "i64"
    U8 = "u8"
    F16 = "f16"
    BF16 = "bf16"
    F32 = "f32"
    F64 = "f64"

    def __str__(self) -> str:
        return self.value

    @property
    def is_float(self) -> bool:
        """True for f16, bf16, f32 and f64."""
        return self in _FLOATS

    @property
    def is_int(self) -> bool:
        """True for the signed and unsigned integer types (not bool)."""
        return self in _INTS

    @property
    def is_signed(self) -> bool:
        """True for the signed integer types."""
        return self in _INTS and self is not DType.U8

    @property
    def is_numeric(self) -> bool:
        """True for every type but bool."""
        return self is not DType.BOOL

    @property
    def bits(self) -> int:
        """Width in bits (bool counts as 8, its storage size)."""
        return _BITS[self]

    @property
    def accumulator(self) -> DType:
        """The type a reduction over this type accumulates in (f16 and bf16 widen to f32)."""
        return DType.F32 if self in (DType.F16, DType.BF16) else self

    @property
    def int_range(self) -> tuple[int, int]:
        """The smallest and largest value of an integer type."""
        if self is DType.U8:
            return 0, 255
        if self is DType.BOOL:
            return 0, 1
        half = 1 << (self.bits - 1)
        return -half, half - 1

    @staticmethod
    def parse(name: str) -> DType | None:
        """The dtype spelled `name`, or None."""
        try:
            return DType(name)
        except ValueError:
            return None


_FLOATS = frozenset({DType.F16, DType.BF16, DType.F32, DType.F64})
_INTS = frozenset({DType.I8, DType.I16, DType.I32, DType.I64, DType.U8})
_BITS = {
    DType.BOOL: 8, DType.I8: 8, DType.U8: 8, DType.I16: 16, DType.I32: 32, DType.I64: 64,
    DType.F16: 16, DType.BF16: 16, DType.F32: 32, DType.F64: 64,
}
DTYPE_NAMES = frozenset(d.value for d in DType)


class FloorDiv(Record):
    """An atom `floor(expr / divisor)` of an affine form, with a positive literal divisor."""

    __slots__ = ("expr", "divisor")
    expr: Affine
    divisor: int

    def __str__(self) -> str:
        inner = str(self.expr)
        if len(self.expr.terms) + (self.expr.const != 0) > 1:
            inner = f"({inner})"
        return f"{inner} / {self.divisor}"


Atom = str | FloorDiv


def _atom_key(atom: Atom) -> tuple[int, str]:
    return (0, atom) if isinstance(atom, str) else (1, str(atom))


class Affine(Record):
    """A normalized affine form `sum(coef * atom) + const` over names and floor divisions.

    Terms are sorted and have non-zero coefficients, so structural equality is equality of
    the forms. Names are shape symbols or index variables, depending on where the form lives.
    """

    __slots__ = ("terms", "const")
    terms: tuple[tuple[Atom, int], ...]
    const: int

    def __init__(self, terms: tuple[tuple[Atom, int], ...] = (), const: int = 0) -> None:
        object.__setattr__(self, "terms", terms)  # the checker makes many: no generic init
        object.__setattr__(self, "const", const)

    # ---- construction -------------------------------------------------------------------
    @staticmethod
    def of(value: int | str | Affine) -> Affine:
        """An affine form for a literal, a name or an existing form."""
        if isinstance(value, Affine):
            return value
        if isinstance(value, str):
            return Affine(((value, 1),), 0)
        return Affine((), int(value))

    @staticmethod
    def _build(coefs: Mapping[Atom, int], const: int) -> Affine:
        items = sorted(((a, c) for a, c in coefs.items() if c != 0), key=lambda t: _atom_key(t[0]))
        return Affine(tuple(items), const)

    # ---- queries --------------------------------------------------------------------------
    @property
    def is_const(self) -> bool:
        """True when the form has no terms."""
        return not self.terms

    def coef(self, atom: Atom) -> int:
        """The coefficient of `atom` (0 when absent)."""
        return dict(self.terms).get(atom, 0)

    def names(self) -> frozenset[str]:
        """Every name the form mentions, inside floor divisions too."""
        found: set[str] = set()
        for atom, _ in self.terms:
            if isinstance(atom, str):
                found.add(atom)
            else:
                found |= atom.expr.names()
        return frozenset(found)

    def as_name(self) -> str | None:
        """The name if the form is exactly one name with coefficient 1, else None."""
        if self.const == 0 and len(self.terms) == 1:
            atom, coef = self.terms[0]
            if coef == 1 and isinstance(atom, str):
                return atom
        return None

    # ---- arithmetic -----------------------------------------------------------------------
    def __add__(self, other: int | str | Affine) -> Affine:
        other = Affine.of(other)
        coefs = dict(self.terms)
        for atom, c in other.terms:
            coefs[atom] = coefs.get(atom, 0) + c
        return Affine._build(coefs, self.const + other.const)

    def __radd__(self, other: int | str) -> Affine:
        return Affine.of(other) + self

    def __neg__(self) -> Affine:
        return self.scale(-1)

    def __sub__(self, other: int | str | Affine) -> Affine:
        return self + (-Affine.of(other))

    def __rsub__(self, other: int | str) -> Affine:
        return Affine.of(other) - self

    def scale(self, factor: int) -> Affine:
        """The form multiplied by an integer."""
        return Affine._build({a: c * factor for a, c in self.terms}, self.const * factor)

    def mul(self, other: Affine) -> Affine | None:
        """The product, or None when neither factor is a constant (not affine)."""
        if other.is_const:
            return self.scale(other.const)
        if self.is_const:
            return other.scale(self.const)
        return None

    def floordiv(self, divisor: int) -> Affine:
        """`floor(self / divisor)` for a positive literal divisor, simplified where exact."""
        if divisor <= 0:
            raise ValueError("floor division of a shape needs a positive literal divisor")
        if divisor == 1:
            return self
        if all(c % divisor == 0 for _, c in self.terms):
            exact = Affine._build({a: c // divisor for a, c in self.terms}, 0)
            return exact + (self.const // divisor)
        return Affine(((FloorDiv(self, divisor), 1),), 0)

    def substitute(self, env: Mapping[str, Affine]) -> Affine:
        """Replace names by forms (names absent from `env` stay)."""
        result = Affine.of(self.const)
        for atom, c in self.terms:
            if isinstance(atom, str):
                part = env.get(atom, Affine.of(atom))
            else:
                part = atom.expr.substitute(env).floordiv(atom.divisor)
            result = result + part.scale(c)
        return result

    def evaluate(self, env: Mapping[str, int]) -> int:
        """The integer value for integer values of every name (KeyError when one is missing)."""
        total = self.const
        for atom, c in self.terms:
            value = env[atom] if isinstance(atom, str) else atom.expr.evaluate(env) // atom.divisor
            total += c * value
        return total

    # ---- bounds ---------------------------------------------------------------------------
    def extremes(self, ranges: Mapping[str, Affine]) -> tuple[Affine, Affine]:
        """The least and greatest values over `name in [0, ranges[name] - 1]` for each name
        in `ranges`, as forms of the remaining names (floor division is monotone)."""
        low = Affine.of(self.const)
        high = Affine.of(self.const)
        for atom, c in self.terms:
            if isinstance(atom, str):
                if atom not in ranges:
                    low, high = low + Affine.of(atom).scale(c), high + Affine.of(atom).scale(c)
                    continue
                a_low, a_high = Affine.of(0), ranges[atom] - 1
            else:
                e_low, e_high = atom.expr.extremes(ranges)
                a_low, a_high = e_low.floordiv(atom.divisor), e_high.floordiv(atom.divisor)
            if c > 0:
                low, high = low + a_low.scale(c), high + a_high.scale(c)
            else:
                low, high = low + a_high.scale(c), high + a_low.scale(c)
        return low, high

    def sign_bounds(self) -> tuple[Fraction | None, Fraction | None]:
        """Rational bounds (lower, upper) on the value for all names >= 0, where each exists.

        Floor divisions are bounded by `(e - d + 1) / d <= e // d <= e / d`. None means
        unbounded on that side.
        """
        from fractions import Fraction  # not at import: the runtime never needs it
        low: Fraction | None = Fraction(self.const)
        high: Fraction | None = Fraction(self.const)
        for atom, c in self.terms:
            if isinstance(atom, str):
                a_low: Fraction | None = Fraction(0)
                a_high: Fraction | None = None
            else:
                e_low, e_high = atom.expr.sign_bounds()
                d = atom.divisor
                a_low = None if e_low is None else (e_low - d + 1) / d
                a_high = None if e_high is None else e_high / d
            lo_part, hi_part = (a_low, a_high) if c > 0 else (a_high, a_low)
            low = None if low is None or lo_part is None else low + c * lo_part
            high = None if high is None or hi_part is None else high + c * hi_part
        return low, high

    def provably_nonneg(self) -> bool:
        """True when the form is >= 0 for every non-negative value of its names."""
        low = self._linear_lower_bound()
        # The form's value is an integer, so a lower bound above -1 proves it >= 0
        # (`N / 2 >= (N - 1) / 2 >= -1/2`).
        return low is not None and low > -1

    def provably_positive(self) -> bool:
        """True when the form is >= 1 for every non-negative value of its names."""
        low = self._linear_lower_bound()
        return low is not None and low > 0

    def provably_negative(self) -> bool:
        """True when the form is < 0 for every non-negative value of its names."""
        _, high = self.sign_bounds()
        return high is not None and high < 0

    def _linear_lower_bound(self) -> Fraction | None:
        from fractions import Fraction  # not at import: the runtime never needs it
        # Replace each floor division by a linear bound, then require every coefficient of
        # the resulting linear form to be >= 0 and its constant >= 0.
        coefs: dict[str, Fraction] = {}
        const = Fraction(self.const)
        for atom, c in self.terms:
            if isinstance(atom, str):
                coefs[atom] = coefs.get(atom, Fraction(0)) + c
                continue
            d = atom.divisor
            # c * (e // d) >= c * (e - d + 1) / d when c > 0, and >= c * e / d when c < 0.
            shift = Fraction(-(d - 1), d) if c > 0 else Fraction(0)
            inner = atom.expr
            inner_low = inner._linear_parts()
            if inner_low is None:
                return None
            inner_coefs, inner_const = inner_low
            for name, ic in inner_coefs.items():
                coefs[name] = coefs.get(name, Fraction(0)) + Fraction(c) * ic / d
            const += Fraction(c) * (Fraction(inner_const, d) + shift)
        if any(v < 0 for v in coefs.values()):
            return None
        return const

    def _linear_parts(self) -> tuple[dict[str, Fraction], Fraction] | None:
        from fractions import Fraction  # not at import: the runtime never needs it
        coefs: dict[str, Fraction] = {}
        for atom, c in self.terms:
            if not isinstance(atom, str):
                return None
            coefs[atom] = Fraction(c)
        return coefs, Fraction(self.const)

    # ---- text -----------------------------------------------------------------------------
    def __str__(self) -> str:
        parts: list[str] = []
        for atom, c in sorted(self.terms, key=lambda t: t[1] < 0):
            text = str(atom)
            if isinstance(atom, FloorDiv) and abs(c) != 1:
                text = f"({text})"
            magnitude = abs(c)
            term = text if magnitude == 1 else f"{magnitude} * {text}"
            if not parts:
                parts.append(term if c > 0 else f"-{term}")
            else:
                parts.append(f"+ {term}" if c > 0 else f"- {term}")
        if self.const or not parts:
            if not parts:
                parts.append(str(self.const))
            else:
                parts.append(f"+ {self.const}" if self.const > 0 else f"- {-self.const}")
        return " ".join(parts)

    def to_json(self) -> list:
        """A JSON-able form: [const, [atom, coef], ...] with atoms as names or
        {"div": [form, divisor]}."""
        out: list = [self.const]
        for atom, c in self.terms:
            key = atom if isinstance(atom, str) else {"div": [atom.expr.to_json(), atom.divisor]}
            out.append([key, c])
        return out

    @staticmethod
    def from_json(data: list) -> Affine:
        """The inverse of `to_json`."""
        coefs: dict[Atom, int] = {}
        for key, c in data[1:]:
            atom: Atom = key if isinstance(key, str) else FloorDiv(
                Affine.from_json(key["div"][0]), int(key["div"][1]))
            coefs[atom] = int(c)
        return Affine._build(coefs, int(data[0]))


class TensorType(Record):
    """A dtype with a shape of affine dimensions; `scalar` marks a parameter declared as
    a bare dtype (`a: f32`) rather than a rank-0 tensor (`a: f32[]`)."""

    __slots__ = ("dtype", "shape", "scalar")
    _defaults = {"shape": (), "scalar": False}
    dtype: DType
    shape: tuple[Affine, ...]
    scalar: bool

    @property
    def rank(self) -> int:
        """The number of dimensions."""
        return len(self.shape)

    def __str__(self) -> str:
        if self.scalar:
            return str(self.dtype)
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"
