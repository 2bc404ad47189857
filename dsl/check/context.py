"""What every checker pass shares: the diagnostics collected so far, reserved names, and the
exception that abandons one statement while the others go on being checked."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from tdsl.source import Diagnostic, Source, Span
from tdsl.types import DTYPE_NAMES

UNARY_BUILTINS = frozenset({
    "exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "erf", "floor", "ceil",
    "abs", "relu",
})
FLOAT_ONLY_BUILTINS = UNARY_BUILTINS - {"abs", "relu"}
BINARY_BUILTINS = frozenset({"pow", "min", "max"})
REDUCTIONS = frozenset({"sum", "prod", "max", "min", "mean"})
CONSTANTS = frozenset({"inf", "nan", "pi"})
KEYWORDS = frozenset({"kernel", "fn", "return", "let", "and", "or", "not", "true", "false"})
RESERVED = (UNARY_BUILTINS | BINARY_BUILTINS | REDUCTIONS | CONSTANTS | KEYWORDS
            | DTYPE_NAMES | {"select"})


class StatementError(Exception):
    """Abandons the statement being checked; its diagnostic is already reported."""


class Reporter:
    """Collects diagnostics for one source."""

    def __init__(self, source: Source):
        self.source = source
        self.diagnostics: list[Diagnostic] = []
        self._seen: set[Diagnostic] = set()

    def error(self, span: Span, message: str, hint: str | None = None) -> None:
        """Record an error (identical duplicates are dropped)."""
        diag = Diagnostic(span, message, hint)
        if diag not in self._seen:
            self._seen.add(diag)
            self.diagnostics.append(diag)

    def fail(self, span: Span, message: str, hint: str | None = None) -> StatementError:
        """Record an error and return the exception that abandons the current statement."""
        self.error(span, message, hint)
        return StatementError(message)

    def text(self, span: Span) -> str:
        """The source text of a span."""
        return self.source.text[span.start:span.end]


def nearest(name: str, candidates: Iterable[str]) -> str | None:
    """A hint naming the closest candidate, if any is close."""
    match = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'?" if match else None


def chain(names: list[str], limit: int = 8) -> str:
    """`a -> b -> c`, shortened in the middle when long."""
    if len(names) > limit:
        names = names[:limit - 3] + [f"... ({len(names) - limit + 1} more)"] + names[-2:]
    return " -> ".join(names)


def reserved_kind(name: str) -> str | None:
    """What a reserved name is, for a message, or None when the name is free."""
    if name in KEYWORDS:
        return "a keyword"
    if name in DTYPE_NAMES:
        return "a dtype name"
    if name in CONSTANTS:
        return "a built-in constant"
    if name in REDUCTIONS and name not in BINARY_BUILTINS:
        return "a reduction"
    if name in RESERVED:
        return "a built-in function"
    return None
