"""Source text -> syntax tree. The grammar lives in grammar/tdsl.lark; a lark Transformer,
applied during the LALR parse (no recursion, so deep nesting cannot overflow the stack),
builds the frozen dataclasses of `tdsl.ast`. Syntax errors become diagnostics."""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
from collections.abc import Iterator

import lark
from lark import Token, Transformer
from lark.lexer import PatternStr

from tdsl import ast
from tdsl.source import Diagnostic, Source, Span, TdslError, TooComplexError

MAX_DEPTH = 200
"""Deepest expression nesting accepted; deeper programs get a clean 'too deep' error."""
MAX_SOURCE_CHARS = 10_000_000
"""Longest source text accepted."""
_TOO_LARGE = 1 << 64
"""The value given to an integer literal of over 1000 digits (an error when checked)."""


class _TooDeep(Exception):
    def __init__(self, span: Span):
        self.span = span


def _span(children: object) -> Span:
    """The span from the first to the last positioned child (tokens, nodes, tuples)."""
    first = _edge(children, 0)
    last = _edge(children, -1)
    if first is None or last is None:
        return Span(0, 0)
    return Span(first.start, last.end)


def _edge(node: object, which: int) -> Span | None:
    if isinstance(node, Token):
        return None if node.start_pos is None else _tok_span(node)
    if isinstance(node, (list, tuple)):
        ordered = node if which == 0 else list(reversed(node))
        for child in ordered:
            found = _edge(child, which)
            if found is not None:
                return found
        return None
    return getattr(node, "span", None)


def _tok_span(tok: Token) -> Span:
    return Span(tok.start_pos or 0, tok.end_pos or 0)


def _depth(*children: object) -> int:
    depth = 1 + max((getattr(c, "depth", 0) for c in children), default=0)
    if depth > MAX_DEPTH:
        first = next(c for c in children if hasattr(c, "span"))
        raise _TooDeep(first.span)  # type: ignore[attr-defined]
    return depth


_KEPT_TOKENS = frozenset({"NAME", "NUMBER", "COMPARE"})


def _keep(children: list) -> list:
    """Drop punctuation tokens (the parser keeps every token so operators have spans)."""
    return [c for c in children if not (isinstance(c, Token) and c.type not in _KEPT_TOKENS)]


def _operator(children: list) -> Token:
    return next(c for c in children if isinstance(c, Token) and c.type not in ("NAME", "NUMBER"))


class _ToAst(Transformer):
    """Builds AST nodes bottom-up; applied inside the LALR parser, so it keeps no state."""

    # ---- items ----------------------------------------------------------------------------
    def start(self, items):
        return ast.Module(tuple(items), _span(items))

    def kernel(self, ch):
        name, params, outputs, body = _keep(ch)
        return ast.Kernel(_name(name), params or (), outputs, body, "", _span(ch))

    def fn(self, ch):
        name, params, result, body = _keep(ch)
        return ast.Fn(_name(name), params or (), result, body, "", _span(ch))

    def outputs_paren(self, ch):
        return _keep(ch)[0]

    def outputs_bare(self, ch):
        return (_keep(ch)[0],)

    def params(self, ch):
        return tuple(p for p in _keep(ch) if p is not None)

    def param(self, ch):
        name, type_ = _keep(ch)
        return ast.Param(_name(name), type_, _span(ch))

    def scalar_type(self, ch):
        return ast.TypeExpr(_name(_keep(ch)[0]), None, _span(ch))

    def tensor_type(self, ch):
        name, dims = _keep(ch)
        return ast.TypeExpr(_name(name), dims or (), _span(ch))

    def block(self, ch):
        return tuple(s for s in _keep(ch) if s is not None)

    # ---- statements -----------------------------------------------------------------------
    def let_stmt(self, ch):
        name, annotation, value = _keep(ch)
        return ast.Let(_name(name), annotation, value, _span(ch))

    def return_stmt(self, ch):
        return ast.Return(_keep(ch)[0], _span(ch))

    def def_stmt(self, ch):
        target, indices, annotation, value = _keep(ch)
        return ast.Define(_name(target), indices, annotation, value, _span(ch))

    def annotation(self, ch):
        return _keep(ch)[0]

    def extent(self, ch):
        return _keep(ch)[0]

    def lhs_indices(self, ch):
        return _keep(ch)[0] or ()

    def exprs(self, ch):
        return tuple(e for e in _keep(ch) if e is not None)

    def subscripts(self, ch):
        return tuple(e for e in _keep(ch) if e is not None)

    def subscript(self, ch):
        expr, extent = _keep(ch)
        return ast.Subscript(expr, extent, _span(ch))

    # ---- expressions ----------------------------------------------------------------------
    def number(self, ch):
        tok = ch[0]
        text = str(tok)
        span = _tok_span(tok)
        if text[:2].lower() == "0x":
            return ast.Number(int(text, 16), False, span)
        if any(c in text for c in ".eE"):
            return ast.Number(float(text), True, span)
        if len(text.lstrip("0")) > 1000:  # far beyond i64 (the checker says so); Python
            return ast.Number(_TOO_LARGE, False, span)  # refuses int() of 4300+ digits
        return ast.Number(int(text.lstrip("0") or "0"), False, span)

    def true(self, ch):
        return ast.BoolLit(True, _span(ch))

    def false(self, ch):
        return ast.BoolLit(False, _span(ch))

    def paren(self, ch):
        return _keep(ch)[0]

    def name(self, ch):
        return _name(ch[0])

    def index(self, ch):
        base, subs = _keep(ch)
        subs = subs or ()
        return ast.Index(_name(base), subs, _span(ch), _depth(*[s.expr for s in subs]))

    def reduce(self, ch):
        op, indices, body = _keep(ch)
        return ast.Reduce(_name(op), indices, body, _span(ch), _depth(body))

    def call(self, ch):
        func, args = _keep(ch)
        args = args or ()
        return ast.Call(_name(func), args, _span(ch), _depth(*args))

    def neg(self, ch):
        return _unary("-", ch, _keep(ch)[0])

    def pos(self, ch):
        return _unary("+", ch, _keep(ch)[0])

    def not_op(self, ch):
        return _unary("not", ch, _keep(ch)[0])

    def compare(self, ch):
        left, op, right = _keep(ch)
        return _binary(str(op), ch, left, right, _tok_span(op))


def _name(tok: Token) -> ast.Name:
    return ast.Name(str(tok), _tok_span(tok))


def _unary(op: str, ch: list, operand: ast.Expr) -> ast.Unary:
    return ast.Unary(op, operand, _span(ch), _depth(operand))


def _binary(op: str, ch: list, left: ast.Expr, right: ast.Expr, op_span: Span) -> ast.Binary:
    return ast.Binary(op, left, right, _span(ch), op_span, _depth(left, right))


def _binop(op: str):
    def method(self, ch):
        left, right = _keep(ch)
        return _binary(op, ch, left, right, _tok_span(_operator(ch)))
    return method


for _rule, _op in [("add", "+"), ("sub", "-"), ("mul", "*"), ("div", "/"), ("mod", "%"),
                   ("pow", "**"), ("and_op", "and"), ("or_op", "or")]:
    setattr(_ToAst, _rule, _binop(_op))


def _with_docs(module: ast.Module, source: Source) -> ast.Module:
    """Attach to each item the comment lines directly above its first line."""
    items = []
    for item in module.items:
        line, _ = source.line_col(item.span.start)
        lines: list[str] = []
        for n in range(line - 1, 0, -1):
            text = source.line_text(n).strip()
            if not text.startswith("#"):
                break
            lines.append(text[1:].strip())
        items.append(dataclasses.replace(item, doc="\n".join(reversed(lines))))
    return dataclasses.replace(module, items=tuple(items))


class _Separators:
    """Post-lexer: a newline or ';' ends a statement only inside `{ }` and outside `( )` and
    `[ ]`; runs of separators merge into one."""

    always_accept = ("_SEP",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        nesting = 0
        braces = 0
        after_sep = True
        for tok in stream:
            if tok.type == "_SEP":
                if nesting == 0 and braces > 0 and not after_sep:
                    after_sep = True
                    yield tok
                continue
            after_sep = False
            value = tok.value
            if value in ("(", "["):
                nesting += 1
            elif value in (")", "]"):
                nesting = max(0, nesting - 1)
            elif value == "{":
                braces += 1
                nesting = 0
                after_sep = True
            elif value == "}":
                braces = max(0, braces - 1)
            yield tok


@functools.lru_cache(maxsize=1)
def _grammar_text() -> str:
    return importlib.resources.files("tdsl.grammar").joinpath("tdsl.lark").read_text("utf-8")


@functools.lru_cache(maxsize=1)
def _terminal_words() -> dict[str, str]:
    parser = lark.Lark(_grammar_text(), parser="lalr", postlex=_Separators())
    words = {t.name: f"'{t.pattern.value}'" for t in parser.terminals
             if isinstance(t.pattern, PatternStr)}
    words.update({"NAME": "a name", "NUMBER": "a number", "_SEP": "end of statement",
                  "COMPARE": "a comparison", "$END": "end of file"})
    return words


_EXPR_START = {"NAME", "NUMBER", "LPAR", "MINUS", "PLUS", "NOT", "TRUE", "FALSE"}
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "PERCENT", "__ANON_0", "COMPARE", "AND", "OR"}


def _expected_text(expected: set[str]) -> str:
    words = _terminal_words()
    items: list[str] = []
    rest = set(expected)
    if {"NAME", "NUMBER", "LPAR"} <= rest:
        items.append("an expression")
        rest -= _EXPR_START
    operators = {t for t in rest if words.get(t, "") in
                 ("'+'", "'-'", "'*'", "'/'", "'%'", "'**'", "'and'", "'or'", "a comparison")}
    if len(operators) >= 3:
        items.append("an operator")
        rest -= operators
    items.extend(sorted(words.get(t, t.lower()) for t in rest))
    if not items:
        return "something else"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _unexpected_text(tok: Token) -> str:
    if tok.type == "$END":
        return "unexpected end of file"
    if tok.type == "_SEP":
        return "unexpected end of statement"
    return f"unexpected '{tok.value}'"


@functools.lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    return lark.Lark(_grammar_text(), parser="lalr", postlex=_Separators(),
                     propagate_positions=True, maybe_placeholders=True, keep_all_tokens=True,
                     transformer=_ToAst())


def parse(source: Source) -> ast.Module:
    """Parse a whole source text; raise TdslError with a located diagnostic on a syntax error."""
    if len(source.text) > MAX_SOURCE_CHARS:
        raise TooComplexError(source, [Diagnostic(
            Span(0, 1), f"source too large ({len(source.text)} characters; the limit is "
            f"{MAX_SOURCE_CHARS})")])
    try:
        return _with_docs(_parser().parse(source.text), source)
    except _TooDeep as exc:
        raise TooComplexError(source, [Diagnostic(
            exc.span, f"expression nested too deeply (more than {MAX_DEPTH} levels)",
            "split it into several statements with `let` or local tensors")]) from None
    except RecursionError:
        raise TooComplexError(source, [Diagnostic(
            Span(0, 1), "program nested too deeply to parse")]) from None
    except lark.exceptions.UnexpectedToken as exc:
        raise TdslError(source, [_token_error(source, exc)]) from None
    except lark.exceptions.UnexpectedCharacters as exc:
        raise TdslError(source, [_char_error(source, exc)]) from None
    except lark.exceptions.UnexpectedEOF as exc:
        end = len(source.text)
        expected = set(exc.expected)
        raise TdslError(source, [Diagnostic(
            Span(end, end), f"unexpected end of file; expected {_expected_text(expected)}",
            _unclosed_hint(source, end, "$END", expected))]) from None


def _token_error(source: Source, exc: lark.exceptions.UnexpectedToken) -> Diagnostic:
    tok = exc.token
    start = tok.start_pos if tok.start_pos is not None else len(source.text)
    end = tok.end_pos if tok.end_pos is not None else start
    if tok.type == "$END":
        start = end = len(source.text.rstrip())
    accepted = set(exc.expected)
    try:
        accepted = set(exc.interactive_parser.accepts()) or accepted
    except Exception:  # noqa: BLE001 - the precise set is a refinement only
        pass
    if "KERNEL" in accepted:
        accepted.discard("_SEP")
    if tok.type != "$END":
        accepted.discard("$END")
    expected = _expected_text(accepted)
    hint = None
    if tok.type == "_SEP" and "RBRACE" not in exc.expected:
        hint = "a statement ends at the end of its line; continue it inside ( ) or after '\\'"
    elif tok.type == "COMPARE" and "COMPARE" not in accepted:
        hint = "comparisons do not chain: write 'a < b and b < c'"
    elif tok.type == "NUMBER" and "NAME" in accepted and \
            source.text[end:end + 1].isalpha():
        hint = "a name starts with a letter or '_'"
    else:
        hint = _unclosed_hint(source, start, tok.type, accepted)
    return Diagnostic(Span(start, max(end, start + 1)),
                      f"{_unexpected_text(tok)}; expected {expected}", hint)


_CLOSERS = {"(": ("RPAR", ")"), "[": ("RSQB", "]"), "{": ("RBRACE", "}")}


def _unclosed_hint(source: Source, pos: int, tok_type: str, accepted: set[str]) -> str | None:
    """A hint about brackets when they explain the error: a closer with no opener, or the
    innermost bracket open at `pos` whose closer is expected where the parser stopped (at the
    end of the file, at another closing bracket, or for ( and [ on a later line)."""
    stack: list[int] = []
    text = source.text
    n = 0
    while n < pos:
        ch = text[n]
        if ch == "#":
            end = text.find("\n", n)
            n = pos if end < 0 else end
            continue
        if ch in _CLOSERS:
            stack.append(n)
        elif ch in ")]}" and stack:
            stack.pop()
        n += 1
    closing = tok_type in ("RPAR", "RSQB", "RBRACE")
    top = text[stack[-1]] if stack else None
    if closing and (top is None or (top == "{" and text[pos] != "}")):
        opener = next(o for o, (_, c) in _CLOSERS.items() if c == text[pos])
        return f"this '{text[pos]}' has no matching '{opener}'"
    if top is None or _CLOSERS[top][0] not in accepted:
        return None
    opener = stack[-1]
    line, col = source.line_col(opener)
    later = source.line_col(pos)[0] > line and text[opener] != "{"
    if tok_type == "$END" or closing or later:
        return f"the '{text[opener]}' at line {line}, column {col} is never closed"
    return None


def _char_error(source: Source, exc: lark.exceptions.UnexpectedCharacters) -> Diagnostic:
    pos = exc.pos_in_stream
    char = source.text[pos] if pos < len(source.text) else ""
    hint = None
    if char.isalpha() or (ord(char or " ") > 127):
        hint = "names use ASCII letters, digits and '_' only"
    shown = char if char.isprintable() else repr(char)[1:-1]
    return Diagnostic(Span(pos, pos + 1), f"unexpected character '{shown}'", hint)
