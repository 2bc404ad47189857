"""Item-level checks: unique item names, reserved names, parameter types and shape symbols,
and the call graph of `fn`s (recursion is an error, since fns are inlined)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tdsl import ast
from tdsl.check.affine import to_affine
from tdsl.check.context import Reporter, StatementError, chain, nearest, reserved_kind
from tdsl.check.order import names_read
from tdsl.runtime.signature import Param, SymbolSource
from tdsl.source import Span
from tdsl.types import DTYPE_NAMES, Affine, DType, TensorType


@dataclass
class Header:
    """A kernel's checked parameter list: inputs, outputs and where each symbol is bound."""

    inputs: list[Param]
    outputs: list[Param]
    symbols: list[SymbolSource]
    symbol_spans: dict[str, Span]
    ok: bool = True
    # Parameters whose declaration has an error, and the names their dimensions mention:
    # later uses of them are not reported again.
    lost: set[str] = field(default_factory=set)
    lost_symbols: set[str] = field(default_factory=set)

    @property
    def bound(self) -> set[str]:
        """The names of the symbols bound by inputs."""
        return {s.symbol for s in self.symbols}


def check_name_free(name: ast.Name, reporter: Reporter, what: str) -> bool:
    """Report a reserved name used as `what`; True when the name is free."""
    kind = reserved_kind(name.id)
    if kind is None:
        return True
    reporter.error(name.span, f"'{name.id}' is {kind} and cannot name {what}",
                   "choose another name")
    return False


def check_items(module: ast.Module, reporter: Reporter) -> tuple[dict[str, ast.Fn], set[str]]:
    """Report duplicate or reserved item names and recursive fns; return the fns by name and
    the names of the recursive ones."""
    seen: dict[str, ast.Kernel | ast.Fn] = {}
    for item in module.items:
        what = "a kernel" if isinstance(item, ast.Kernel) else "a fn"
        if not check_name_free(item.name, reporter, what):
            continue
        first = seen.get(item.name.id)
        if first is not None:
            line, _ = reporter.source.line_col(first.span.start)
            reporter.error(item.name.span, f"'{item.name.id}' is already defined at line {line}")
            continue
        seen[item.name.id] = item
    fns = {name: item for name, item in seen.items() if isinstance(item, ast.Fn)}
    return fns, _check_recursion(fns, reporter)


def _calls(node: object) -> list[ast.Name]:
    found: list[ast.Name] = []
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, ast.Call):
            found.append(cur.func)
        if isinstance(cur, tuple):
            stack.extend(cur)
        elif hasattr(cur, "__dataclass_fields__") and not isinstance(cur, ast.Name):
            stack.extend(getattr(cur, f) for f in cur.__dataclass_fields__)
    return found


def _check_recursion(fns: dict[str, ast.Fn], reporter: Reporter) -> set[str]:
    """Report each call that closes a cycle of fn calls; return the names of fns on a cycle.
    Depth-first without recursion, so a long chain of fns cannot overflow the stack."""
    graph = {name: [c for c in _calls(fn.body) if c.id in fns] for name, fn in fns.items()}
    state: dict[str, int] = {}
    recursive: set[str] = set()
    for root in fns:
        if root in state:
            continue
        state[root] = 1
        path = [root]
        pending = [iter(graph[root])]
        while path:
            call = next(pending[-1], None)
            if call is None:
                state[path.pop()] = 2
                pending.pop()
            elif state.get(call.id) == 1:
                cycle = path[path.index(call.id):]
                recursive.update(cycle)
                reporter.error(call.span, f"fn '{call.id}' is called recursively "
                               f"({chain([*cycle, call.id])})",
                               "fns are inlined at every use and cannot recurse")
            elif state.get(call.id) is None:
                state[call.id] = 1
                path.append(call.id)
                pending.append(iter(graph[call.id]))
    return recursive


def tensor_type(texpr: ast.TypeExpr, reporter: Reporter, symbol_ok) -> TensorType:
    """Convert a type annotation; `symbol_ok(name)` reports and raises on an unusable symbol."""
    dtype = DType.parse(texpr.dtype.id)
    if dtype is None:
        hint = nearest(texpr.dtype.id, DTYPE_NAMES) or f"dtypes are {', '.join(sorted(DTYPE_NAMES))}"
        raise reporter.fail(texpr.dtype.span, f"unknown dtype '{texpr.dtype.id}'", hint)
    if texpr.dims is None:
        return TensorType(dtype, (), scalar=True)

    def resolve(name: ast.Name) -> Affine:
        symbol_ok(name)
        return Affine.of(name.id)

    dims = tuple(to_affine(d, resolve, reporter, "a dimension") for d in texpr.dims)
    return TensorType(dtype, dims)


def check_header(kernel: ast.Kernel, reporter: Reporter) -> Header:
    """Check a kernel's inputs and outputs and bind every shape symbol to an input dimension."""
    header = Header([], [], [], {})
    names: dict[str, Span] = {}

    def symbol_ok(name: ast.Name) -> None:
        kind = reserved_kind(name.id)
        if kind is not None:
            raise reporter.fail(name.span, f"'{name.id}' is {kind} and cannot be a shape symbol")
        header.symbol_spans.setdefault(name.id, name.span)

    for group, params in (("input", kernel.params), ("output", kernel.outputs)):
        for p in params:
            try:
                param = _param(p, names, reporter, symbol_ok)
            except StatementError:
                header.ok = False
                header.lost.add(p.name.id)
                if group == "input":
                    header.lost_symbols |= names_read(p.type.dims or ())
                continue
            (header.inputs if group == "input" else header.outputs).append(param)
    for index, param in enumerate(header.inputs):
        for dim, size in enumerate(param.type.shape):
            name = size.as_name()
            if name is not None and name not in header.bound:
                header.symbols.append(SymbolSource(name, index, dim))
    _check_symbols(kernel, header, names, reporter)
    return header


def _param(p: ast.Param, names: dict[str, Span], reporter: Reporter, symbol_ok) -> Param:
    if not check_name_free(p.name, reporter, "a parameter"):
        raise StatementError(p.name.id)
    if p.name.id in names:
        raise reporter.fail(p.name.span, f"parameter '{p.name.id}' is declared twice")
    names[p.name.id] = p.name.span
    return Param(p.name.id, tensor_type(p.type, reporter, symbol_ok))


def _check_symbols(kernel: ast.Kernel, header: Header, names: dict[str, Span],
                   reporter: Reporter) -> None:
    for symbol, span in header.symbol_spans.items():
        if symbol in names:
            reporter.error(span, f"'{symbol}' names both a parameter and a shape symbol")
            header.ok = False
        elif symbol not in header.bound and symbol not in header.lost_symbols:
            header.ok = False
            reporter.error(span, f"shape symbol '{symbol}' is not bound: no input has a "
                           f"dimension that is exactly '{symbol}'",
                           "give an input a dimension named by the symbol alone")
