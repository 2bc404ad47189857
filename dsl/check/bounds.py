"""Bounds: every subscript must stay inside its dimension over the whole index domain.
Proven from the affine shapes where possible; a provably violated subscript is an error;
what is neither becomes a call-time condition on the shape symbols."""

from __future__ import annotations

from tdsl.check.context import Reporter
from tdsl.check.scope import Access, Scope
from tdsl.runtime.signature import Condition
from tdsl.types import Affine


def check_accesses(scope: Scope, reporter: Reporter, target_hint: str) -> list[Condition]:
    """Prove each recorded access in range; report violations; return call-time conditions."""
    conditions: list[Condition] = []
    for acc in scope.accesses:
        ranges = {name: scope.extents[name] for name in acc.subscript.names()
                  if name in scope.extents}
        low, high = acc.subscript.extremes(ranges)
        guard = tuple(scope.extents[n] for n in acc.enclosing if n in scope.extents)
        room = acc.size - 1 - high
        where = (f"subscript {scope.written_form(acc.subscript)} of '{acc.tensor}' "
                 f"(dimension {acc.dim}, size {acc.size})")
        conditions += _side(low, f"{where} can be negative: its least value is {low}",
                            acc, guard, reporter, _hint_low(acc, low))
        conditions += _side(room, f"{where} can reach {high}, past the last element "
                            f"{acc.size - 1}", acc, guard, reporter,
                            _hint_high(scope, acc, room, target_hint))
    for first, other in scope.equalities:
        conditions.append(Condition(
            "eq", other.size - first.size,
            f"index '{scope.written(first.index)}' runs over dimension {first.dim} of "
            f"'{first.tensor}' ({first.size}) and dimension {other.dim} of '{other.tensor}' "
            f"({other.size}), which must be equal"))
    return conditions


def _side(margin: Affine, message: str, acc: Access, guard: tuple[Affine, ...],
          reporter: Reporter, hint: str) -> list[Condition]:
    if margin.provably_nonneg():
        return []
    if margin.provably_negative():
        reporter.error(acc.span, message, hint)
        return []
    return [Condition("ge", margin, f"{message.replace(' can ', ' would ')} unless "
                      f"{margin} >= 0", guard)]


def _hint_low(acc: Access, low: Affine) -> str:
    return "shift the subscript up so it starts at 0, and shrink the range to match"


def _hint_high(scope: Scope, acc: Access, room: Affine, target_hint: str) -> str:
    over = -room.const if room.is_const else None
    by = f" by {over}" if over else ""
    rising = [n for n, coef in acc.subscript.terms if n in scope.extents and coef > 0]
    reduced = [n for n in rising if n in scope.reduced]
    if reduced and reduced == rising:
        name = scope.written(reduced[0])
        example = f", e.g. [{name}: {scope.extents[reduced[0]] - over}]" if over else ""
        return f"make the range of '{name}' smaller{by}{example}"
    return f"make the index range smaller{by}: {target_hint}"
