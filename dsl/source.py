"""Source text, spans and diagnostics rendered with the line and a caret."""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Source:
    """A named source text; computes line and column of offsets."""

    text: str
    filename: str = "<string>"
    _line_starts: tuple[int, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        starts = [0]
        starts.extend(i + 1 for i, ch in enumerate(self.text) if ch == "\n")
        object.__setattr__(self, "_line_starts", tuple(starts))

    def line_col(self, offset: int) -> tuple[int, int]:
        """1-based line and column of a character offset."""
        offset = max(0, min(offset, len(self.text)))
        line = bisect.bisect_right(self._line_starts, offset) - 1
        return line + 1, offset - self._line_starts[line] + 1

    def line_text(self, line: int) -> str:
        """The text of a 1-based line, without its newline."""
        if line < 1 or line > len(self._line_starts):
            return ""
        start = self._line_starts[line - 1]
        end = self.text.find("\n", start)
        return self.text[start:] if end < 0 else self.text[start:end]

    def offset(self, line: int, col: int) -> int:
        """The character offset of a 1-based line and column."""
        line = max(1, min(line, len(self._line_starts)))
        return self._line_starts[line - 1] + col - 1


@dataclass(frozen=True)
class Span:
    """A half-open range of character offsets in one source text."""

    start: int
    end: int

    def merge(self, other: Span) -> Span:
        """The smallest span covering both."""
        return Span(min(self.start, other.start), max(self.end, other.end))


NO_SPAN = Span(0, 0)
QUOTED_WIDTH = 160
"""The longest part of a source line a diagnostic quotes."""


@dataclass(frozen=True)
class Diagnostic:
    """One located message: an error (or note) with an optional hint."""

    span: Span
    message: str
    hint: str | None = None
    severity: str = "error"

    def render(self, source: Source) -> str:
        """`file:line:col: error: message`, the source line, a caret under the span, a hint."""
        line, col = source.line_col(self.span.start)
        text = source.line_text(line)
        end_line, end_col = source.line_col(max(self.span.start, self.span.end - 1))
        width = (end_col - col + 1) if end_line == line and self.span.end > self.span.start else 1
        width = max(1, min(width, max(1, len(text) - col + 1)))
        before, shown = col - 1, text
        if len(text) > QUOTED_WIDTH:  # quote a window of a long line around the culprit
            start = max(0, before - QUOTED_WIDTH // 2)
            end = min(len(text), start + QUOTED_WIDTH)
            shown = ("..." if start else "") + text[start:end] + ("..." if end < len(text) else "")
            before = before - start + (3 if start else 0)
            width = max(1, min(width, end - (col - 1)))
        prefix = re.sub(r"[^\t]", " ", shown[:before])
        caret = "^" + "~" * (width - 1)
        out = [f"{source.filename}:{line}:{col}: {self.severity}: {self.message}", f"    {shown}",
               f"    {prefix}{caret}"]
        if self.hint:
            out.append(f"    hint: {self.hint}")
        return "\n".join(out)

    def location(self, source: Source) -> tuple[int, int]:
        """1-based line and column of the span's start."""
        return source.line_col(self.span.start)


class TdslError(Exception):
    """A user error: one or more diagnostics about one source. The CLI prints them."""

    def __init__(self, source: Source, diagnostics: list[Diagnostic]):
        self.source = source
        self.diagnostics = sorted(diagnostics, key=lambda d: (d.span.start, d.message))
        super().__init__(self.render())

    def render(self) -> str:
        """Every diagnostic, rendered, one after the other in source order."""
        return "\n".join(d.render(self.source) for d in self.diagnostics)


class TooComplexError(TdslError):
    """A program too large or too deeply nested to compile."""
