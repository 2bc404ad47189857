"""Checked expressions as readable text (for `tdsl compile --emit checked` and messages)."""

from __future__ import annotations

from tdsl import checked as c

_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "mod": "%", "pow": "**",
          "and": "and", "or": "or", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==",
          "ne": "!="}


def show_expr(e: c.Expr) -> str:
    """Text of a checked expression; literals show their dtype (`2.0:f32`)."""
    if isinstance(e, c.Const):
        return f"{e.value!r}:{e.dtype}"
    if isinstance(e, c.IndexVar):
        return e.name
    if isinstance(e, c.SymbolVal):
        return f"({e.value})"
    if isinstance(e, c.Read):
        subs = ", ".join(str(s) for s in e.subscripts)
        return f"{e.tensor}[{subs}]" if e.subscripts else e.tensor
    if isinstance(e, c.Unary):
        if e.op == "neg":
            return f"-{show_expr(e.x)}"
        if e.op == "not":
            return f"not {show_expr(e.x)}"
        return f"{e.op}({show_expr(e.x)})"
    if isinstance(e, c.Binary):
        if e.op in ("min", "max"):
            return f"{e.op}({show_expr(e.a)}, {show_expr(e.b)})"
        return f"({show_expr(e.a)} {_INFIX[e.op]} {show_expr(e.b)})"
    if isinstance(e, c.Select):
        return f"select({show_expr(e.cond)}, {show_expr(e.a)}, {show_expr(e.b)})"
    if isinstance(e, c.Cast):
        return f"{e.dtype}({show_expr(e.x)})"
    ranges = ", ".join(f"{i}: {x}" for i, x in zip(e.indices, e.extents))
    return f"{e.op}[{ranges}]({show_expr(e.body)})"
