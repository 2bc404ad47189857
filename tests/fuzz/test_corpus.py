"""The regression corpus: every kernel that once made a target disagree with the reference
(tests/fuzz/corpus/NNN.tdsl, with NNN.json giving its symbols, inputs and what went wrong)
runs again on every target.

An entry whose status is "open" records a bug not fixed yet: it is expected to fail, and
strictly so, so that the fix is noticed (then set its status to "fixed").
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen  # noqa: E402


def _params():
    params = []
    for path in gen.corpus_entries():
        _, record = gen.load_case(path)
        marks = []
        if record.get("status") == "open":
            marks.append(pytest.mark.xfail(
                strict=True, reason=f"open: {record.get('title', record.get('problems'))}"))
        params.append(pytest.param(path, marks=marks, id=path.stem))
    return params


@pytest.mark.parametrize("path", _params())
def test_corpus_entry(path: Path) -> None:
    case, record = gen.load_case(path)
    available = gen.available_targets()
    wanted = [t for t in record.get("targets", available) if t in available]
    if not wanted:
        pytest.skip(f"none of the targets {record.get('targets')} is available here")
    problems = gen.run_case(case, wanted)
    assert not problems, f"{path.name}:\n{case.source}\n" + "\n".join(problems)


def test_corpus_records_are_complete():
    for path in gen.corpus_entries():
        case, record = gen.load_case(path)
        assert record.get("status") in ("open", "fixed"), path
        assert set(case.levels) and case.kernel, path
