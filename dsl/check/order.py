"""Dependence order: statements may come in any order; they run in an order where every
tensor is written before it is read. A cycle is an error."""

from __future__ import annotations

from tdsl import ast
from tdsl.check.context import Reporter, chain


def names_read(node: object) -> set[str]:
    """Every identifier an AST subtree mentions (tensors, symbols, indices alike)."""
    found: set[str] = set()
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, ast.Name):
            found.add(cur.id)
        elif isinstance(cur, tuple):
            stack.extend(cur)
        elif hasattr(cur, "__dataclass_fields__"):
            stack.extend(getattr(cur, f) for f in cur.__dataclass_fields__ if f != "span")
    return found


def target_of(stmt: ast.Stmt) -> ast.Name:
    """The name a statement defines."""
    return stmt.target if isinstance(stmt, ast.Define) else stmt.name  # type: ignore[union-attr]


def dependence_order(stmts: list[ast.Stmt], reporter: Reporter) -> list[ast.Stmt]:
    """The statements in an order that respects their reads (stable: source order where
    free); statements on a cycle are reported and left out."""
    defined = {target_of(s).id: s for s in stmts}
    deps: dict[int, set[int]] = {}
    index = {id(s): n for n, s in enumerate(stmts)}
    for n, stmt in enumerate(stmts):
        value = stmt.value
        reads = names_read(value) | (names_read(stmt.annotation) if stmt.annotation else set())
        deps[n] = {index[id(defined[r])] for r in reads if r in defined}
    order: list[int] = []
    state: dict[int, int] = {}
    on_cycle: set[int] = set()
    for root in range(len(stmts)):
        if root in state:
            continue
        # Depth-first without recursion (a long chain of statements must not overflow the
        # stack): `path` holds the statements being visited, each with its remaining deps.
        state[root] = 1
        path: list[int] = [root]
        pending = [iter(sorted(deps[root]))]
        while path:
            n = path[-1]
            d = next(pending[-1], None)
            if d is None:
                state[n] = 2
                order.append(n)
                path.pop()
                pending.pop()
            elif state.get(d) == 1:
                cycle = path[path.index(d):]
                on_cycle.update(cycle)
                _report_cycle(stmts, cycle, d, reporter)
            elif state.get(d) is None:
                state[d] = 1
                path.append(d)
                pending.append(iter(sorted(deps[d])))
    return [stmts[n] for n in order if n not in on_cycle]


def _report_cycle(stmts: list[ast.Stmt], cycle: list[int], back: int, reporter: Reporter) -> None:
    first = stmts[cycle[-1]]
    name = target_of(first).id
    if len(cycle) == 1 and back == cycle[0]:
        reporter.error(target_of(first).span, f"'{name}' is read in its own definition",
                       "tdsl has no recursion: express it with a reduction, e.g. "
                       "sum[k](select(k <= i, x[k], 0.0)) for a running sum")
        return
    names = [target_of(stmts[n]).id for n in cycle] + [target_of(stmts[back]).id]
    reporter.error(target_of(first).span, "statements depend on each other in a cycle: "
                   + chain(names), "tdsl has no recursion: compute one of them without "
                   "reading the others")
