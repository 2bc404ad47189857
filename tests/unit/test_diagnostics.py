"""Diagnostics: `file:line:col: error: message`, the quoted line, a caret (`^~~` over the
span), tabs kept so the caret lines up, an optional hint line, and several errors sorted by
position."""

from __future__ import annotations

import pytest

from tdsl.check import check_source
from tdsl.source import Diagnostic, Source, Span, TdslError, TooComplexError

TEXT = "ab\n\tx = 1 +\tfoo\nlast"
SRC = Source(TEXT, "f.tdsl")


def render(start: int, end: int, message: str = "m", hint: str | None = None) -> list[str]:
    return Diagnostic(Span(start, end), message, hint).render(SRC).split("\n")


class TestSource:
    def test_line_col(self):
        assert [SRC.line_col(n) for n in (0, 2, 3, 4, 16)] == [(1, 1), (1, 3), (2, 1), (2, 2),
                                                                (3, 1)]
        assert SRC.line_col(-5) == (1, 1)
        assert SRC.line_col(10 ** 6) == (3, 5)  # clamped to the end

    def test_line_text_and_offset(self):
        assert [SRC.line_text(n) for n in (1, 2, 3)] == ["ab", "\tx = 1 +\tfoo", "last"]
        assert SRC.line_text(0) == "" and SRC.line_text(4) == ""
        assert SRC.offset(2, 2) == 4 and SRC.line_col(SRC.offset(3, 3)) == (3, 3)

    def test_crlf_and_empty(self):
        src = Source("a\r\nbc\r\n")
        assert src.line_col(3) == (2, 1)
        assert Source("").line_col(0) == (1, 1) and Source("").line_text(1) == ""


class TestRender:
    def test_caret_under_one_character(self):
        assert render(0, 1) == ["f.tdsl:1:1: error: m", "    ab", "    ^"]

    def test_span_is_underlined(self):
        assert render(0, 2) == ["f.tdsl:1:1: error: m", "    ab", "    ^~"]

    def test_tabs_are_kept_so_the_caret_lines_up(self):
        start = TEXT.index("foo")
        assert render(start, start + 3) == [
            "f.tdsl:2:10: error: m", "    \tx = 1 +\tfoo", "    \t       \t^~~"]

    def test_hint_line(self):
        assert render(0, 1, "bad", "do this") == [
            "f.tdsl:1:1: error: bad", "    ab", "    ^", "    hint: do this"]

    def test_empty_span_and_end_of_file(self):
        end = len(TEXT)
        assert render(end, end) == ["f.tdsl:3:5: error: m", "    last", "        ^"]
        assert render(1, 1) == ["f.tdsl:1:2: error: m", "    ab", "     ^"]

    def test_span_over_several_lines_shows_one_caret(self):
        assert render(1, 10) == ["f.tdsl:1:2: error: m", "    ab", "     ^"]

    def test_width_is_clipped_to_the_line(self):
        src = Source("abc\n")
        assert Diagnostic(Span(1, 3), "m").render(src).split("\n")[-1] == "     ^~"

    def test_severity(self):
        diag = Diagnostic(Span(0, 2), "n", severity="note")
        assert diag.render(SRC).split("\n")[0] == "f.tdsl:1:1: note: n"
        assert diag.location(SRC) == (1, 1)


class TestErrors:
    def test_sorted_by_position_then_message(self):
        diags = [Diagnostic(Span(16, 17), "c"), Diagnostic(Span(0, 1), "b"),
                 Diagnostic(Span(0, 1), "a"), Diagnostic(Span(4, 5), "d")]
        err = TdslError(SRC, diags)
        assert [d.message for d in err.diagnostics] == ["a", "b", "d", "c"]
        lines = err.render().split("\n")
        assert [line for line in lines if ": error: " in line] == [
            "f.tdsl:1:1: error: a", "f.tdsl:1:1: error: b", "f.tdsl:2:2: error: d",
            "f.tdsl:3:1: error: c"]
        assert str(err) == err.render()

    def test_too_complex_is_a_tdsl_error(self):
        assert issubclass(TooComplexError, TdslError)

    def test_language_reference_example(self):
        text = ("# Row-wise softmax.\n"
                "kernel softmax(x: f32[B, N]) -> (y: f32[B, N]) {\n"
                "    m[b]    = max[n](x[b, n])\n"
                "    e[b, n] = exp(x[b, k] - m[b])\n"
                "    s[b]    = sum[n](e[b, n])\n"
                "    y[b, n] = e[b, n] / s[b]\n"
                "}\n")
        with pytest.raises(TdslError) as info:
            check_source(text, "softmax.tdsl")
        assert info.value.render() == (
            "softmax.tdsl:4:24: error: index 'k' is not defined on the left side and is not "
            "reduced\n"
            "        e[b, n] = exp(x[b, k] - m[b])\n"
            "                           ^\n"
            "    hint: add 'k' to the left side, or reduce over it: sum[k](...)")

    def test_checker_errors_come_sorted_and_all_rendered(self):
        text = ("kernel b(x: i32[N]) -> (y: i32[N]) {\n"
                "    y[i] = sqrt(x[i])\n"
                "}\n"
                "kernel a(x: f32[N]) -> (y: f32[N]) {\n"
                "\ty[i] = x[i] +\tundefined_thing\n"
                "}\n")
        with pytest.raises(TdslError) as info:
            check_source(text, "two.tdsl")
        lines = info.value.render().split("\n")
        assert lines == [
            "two.tdsl:2:17: error: 'sqrt' needs a float argument, got i32",
            "        y[i] = sqrt(x[i])",
            "                    ^~~~",
            "    hint: cast it: f32(x[i])",
            "two.tdsl:5:16: error: unknown name 'undefined_thing'",
            "    \ty[i] = x[i] +\tundefined_thing",
            "    \t             \t^~~~~~~~~~~~~~~",
        ]
