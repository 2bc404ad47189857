"""The front end never crashes: whatever the text, `check_source` returns a checked program or
raises TdslError with located diagnostics; nothing else, no hang, no recursion error."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tdsl.check import check_source
from tdsl.source import TdslError

SAMPLES = [p.read_text(encoding="utf-8")
           for p in sorted((Path(__file__).parents[2] / "samples").glob("*.tdsl"))]

FUZZ = settings(max_examples=120, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TOKENS = [
    # keywords and punctuation
    "kernel", "fn", "return", "let", "and", "or", "not", "true", "false",
    "(", ")", "[", "]", "{", "}", ",", ":", ";", "->", "=", "+", "-", "*", "/", "%", "**",
    "<", "<=", ">", ">=", "==", "!=", "\n", "\n", "\\\n", "# comment\n",
    # names of every kind
    "x", "y", "z", "t", "i", "j", "k", "N", "M", "K", "f32", "i32", "u8", "bool", "f16",
    "sum", "max", "min", "mean", "prod", "exp", "sqrt", "select", "pow", "relu", "inf", "nan",
    "pi", "g", "_a1",
    # numbers
    "0", "1", "2", "3", "2.5", ".5", "1e-5", "1e999", "0x1F", "300", "-1",
    "99999999999999999999",
]

KERNEL_HEAD = "kernel k(x: f32[N], w: f32[M, N], s: i32) -> (y: f32[N]) {\n"


def check_never_crashes(text: str) -> None:
    """The one property: a Program, or a TdslError whose diagnostics are located in the text
    and render."""
    try:
        check_source(text, "fuzz.tdsl")
    except TdslError as exc:
        assert exc.diagnostics
        for diag in exc.diagnostics:
            assert 0 <= diag.span.start <= max(diag.span.end, diag.span.start) <= len(text) + 1
            assert diag.message
        rendered = exc.render()
        assert rendered.count(": error: ") >= len(exc.diagnostics)


# ---- random text ---------------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=300))
def test_random_text(text):
    check_never_crashes(text)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data):
    check_never_crashes(data.decode("utf-8", errors="replace"))
    check_never_crashes(data.decode("latin-1"))


soups = st.lists(st.sampled_from(TOKENS), max_size=60).map(" ".join)


@FUZZ
@given(soups)
def test_token_soup(text):
    check_never_crashes(text)


@FUZZ
@given(soups)
def test_token_soup_inside_a_kernel(body):
    check_never_crashes(KERNEL_HEAD + body + "\n}\n")


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=25).map(" ".join),
       st.lists(st.sampled_from(TOKENS), max_size=25).map(" ".join))
def test_token_soup_in_expressions(left, right):
    check_never_crashes(KERNEL_HEAD + f"    y[i] = x[i] + ({left})\n"
                        f"    let c = {right}\n}}\n")


# ---- mutated and truncated samples ---------------------------------------------------------


@st.composite
def mutated_samples(draw):
    text = draw(st.sampled_from(SAMPLES))
    for _ in range(draw(st.integers(1, 3))):
        n = len(text)
        a = draw(st.integers(0, n))
        b = draw(st.integers(a, min(n, a + 40)))
        kind = draw(st.sampled_from(["truncate", "delete", "insert", "replace", "swap_lines",
                                     "duplicate_line"]))
        if kind == "truncate":
            text = text[:a]
        elif kind == "delete":
            text = text[:a] + text[b:]
        elif kind == "insert":
            text = text[:a] + draw(st.sampled_from(TOKENS)) + text[a:]
        elif kind == "replace":
            text = text[:a] + draw(st.sampled_from(TOKENS)) + text[b:]
        else:
            lines = text.split("\n")
            p = draw(st.integers(0, len(lines) - 1))
            q = draw(st.integers(0, len(lines) - 1))
            if kind == "swap_lines":
                lines[p], lines[q] = lines[q], lines[p]
            else:
                lines.insert(q, lines[p])
            text = "\n".join(lines)
    return text


@FUZZ
@given(mutated_samples())
def test_mutated_samples(text):
    check_never_crashes(text)


@pytest.mark.parametrize("cut", [0.1, 0.25, 0.5, 0.75, 0.9])
def test_truncated_samples(cut):
    for text in SAMPLES:
        check_never_crashes(text[:int(len(text) * cut)])


def test_samples_check_clean():
    for text in SAMPLES:
        assert check_source(text).kernels


# ---- deep and large inputs -----------------------------------------------------------------


def body(expr: str) -> str:
    return f"kernel k(x: f32[N]) -> (y: f32[N]) {{\n    y[i] = {expr}\n}}\n"


DEEP = {
    "parentheses": body("(" * 10_000 + "x[i]" + ")" * 10_000),
    "unclosed parentheses": body("(" * 10_000 + "x[i]"),
    "closing parentheses": body("x[i]" + ")" * 10_000),
    "unary minus": body("-" * 10_000 + "x[i]"),
    "not": body("select(" + "not " * 10_000 + "true, x[i], 0.0)"),
    "sum of terms": body(" + ".join(["1"] * 10_000)),
    "sum of reads": body(" + ".join(["x[i]"] * 10_000)),
    "power tower": body(" ** ".join(["x[i]"] * 2_000)),
    "calls": body("exp(" * 10_000 + "x[i]" + ")" * 10_000),
    "subscripts": body("x[" * 10_000 + "i" + "]" * 10_000),
    "reductions": body("".join(f"sum[k{n}](" for n in range(5_000)) + "x[i]" + ")" * 5_000),
    "statements": ("kernel k(x: f32[N]) -> (y: f32[N]) { "
                   + "; ".join(f"let t{n} = {n}" for n in range(10_000)) + "; y = x }\n"),
    "statement chain in reverse order": (
        "kernel k(x: f32[N]) -> (y: f32[N]) {\n    y = x + t0\n"
        + "".join(f"    let t{n} = t{n + 1} + 1.0\n" for n in range(3_000))
        + "    let t3000 = 0.0\n}\n"),
    "statement cycle": (
        "kernel k(x: f32[N]) -> (y: f32[N]) {\n    y = x + t0\n"
        + "".join(f"    let t{n} = t{n + 1} + 1.0\n" for n in range(3_000))
        + "    let t3000 = t0\n}\n"),
    "fn chain": ("".join(f"fn g{n}(v: f32) -> f32 {{ return g{n + 1}(v) }}\n"
                         for n in range(1_500))
                 + "fn g1500(v: f32) -> f32 { return v }\n" + body("g0(x[i])")),
    "fn cycle": ("".join(f"fn g{n}(v: f32) -> f32 {{ return g{(n + 1) % 1_500}(v) }}\n"
                         for n in range(1_500)) + body("g0(x[i])")),
    "fn fan-out": ("".join(f"fn g{n}(v: f32) -> f32 {{ return g{n + 1}(v) * g{n + 1}(v) }}\n"
                           for n in range(40))
                   + "fn g40(v: f32) -> f32 { return v }\n" + body("g0(x[i])")),
    "long line": body(" + ".join(f"x[i] * {n}.0" for n in range(150)) + " " * 100_000),
    "many errors": ("kernel k(x: f32[N]) -> (y: f32[N]) { "
                    + "; ".join(f"let t{n} = nope{n % 7}" for n in range(1_500)) + "; y = x }\n"),
}


CHECKED_BELOW = ("parentheses", "statements", "statement chain in reverse order")


@pytest.mark.parametrize("name", [name for name in DEEP if name not in CHECKED_BELOW])
def test_deep_and_large_inputs(name):
    check_never_crashes(DEEP[name])


def test_deep_inputs_give_the_clean_nesting_error():
    for name in ("unary minus", "not", "sum of terms", "calls", "subscripts"):
        with pytest.raises(TdslError) as info:
            check_source(DEEP[name])
        (diag,) = info.value.diagnostics
        assert diag.message == "expression nested too deeply (more than 200 levels)", name


def test_redundant_parentheses_and_many_statements_are_fine():
    assert check_source(DEEP["parentheses"]).kernels
    (kernel,) = check_source(DEEP["statements"]).kernels
    assert len(kernel.statements) == 10_001
    (kernel,) = check_source(DEEP["statement chain in reverse order"]).kernels
    assert kernel.statements[0].target == "t3000" and kernel.statements[-1].target == "y"
