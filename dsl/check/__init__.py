"""The checker: a parsed module -> a checked `Program`, or a TdslError listing every
independent error. One module per concern:

- items.py       item names, reserved names, parameter types, shape symbols, fn recursion
- order.py       dependence order of statements, cycles
- exprs.py       name resolution, dtypes and weak literals, builtins and casts
- inline.py      fn inlining
- reduce.py      reductions and the inference of index ranges
- bounds.py      subscripts proven in range, or call-time conditions
- statements.py  single assignment, index and whole-tensor statements, the checked kernel
"""

from __future__ import annotations

from tdsl import ast
from tdsl import checked as c
from tdsl.check.context import Reporter, StatementError
from tdsl.check.exprs import ExprLowering
from tdsl.check.inline import param_dtype, run_body
from tdsl.check.items import check_items, check_name_free
from tdsl.check.scope import Scope, Typed
from tdsl.check.statements import check_kernel
from tdsl.parser import parse
from tdsl.source import Source, TdslError


def check_source(text: str, filename: str = "<string>") -> c.Program:
    """Parse and check a source text; raise TdslError with every diagnostic on failure."""
    source = Source(text, filename)
    return check_module(parse(source), source)


def check_module(module: ast.Module, source: Source) -> c.Program:
    """Check a parsed module."""
    reporter = Reporter(source)
    fns, recursive = check_items(module, reporter)
    usable = {name: fn for name, fn in fns.items() if name not in recursive}
    for fn in fns.values():
        _check_fn(fn, usable, recursive, reporter)
    kernels = []
    for item in module.items:
        if isinstance(item, ast.Kernel):
            kernel = check_kernel(item, usable, reporter, recursive)
            if kernel is not None:
                kernels.append(kernel)
    if reporter.diagnostics:
        raise TdslError(source, reporter.diagnostics)
    return c.Program(tuple(kernels), source.filename, source.text)


def _check_fn(fn: ast.Fn, fns: dict[str, ast.Fn], broken: set[str],
              reporter: Reporter) -> None:
    """Check a fn's parameters and body once on its own, so an unused fn still gets its
    errors (calls of the recursive fns in `broken` are already reported)."""
    scope = Scope({}, set(), fns, set(), broken_fns=broken, opaque_fns=True)
    low = ExprLowering(scope, reporter)
    try:
        values = {}
        for p in fn.params:
            check_name_free(p.name, reporter, "a parameter")
            if p.name.id in values:
                reporter.error(p.name.span, f"parameter '{p.name.id}' is declared twice")
                continue
            dtype = param_dtype(low, p)
            values[p.name.id] = Typed(c.Read(p.name.id, (), dtype), dtype, p.span)
        run_body(low, fn, values)
    except StatementError:
        pass
