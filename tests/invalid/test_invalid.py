"""The corpus of invalid programs: each file starts with `# expect: LINE:COL: MESSAGE` lines
giving exactly the diagnostics the checker must report (line and column in the whole file,
the message as it follows `error: `), in source order."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from tdsl import cli
from tdsl.check import check_source
from tdsl.source import TdslError

HERE = Path(__file__).parent
FILES = sorted(HERE.glob("*.tdsl"))
EXPECT = re.compile(r"# expect: (\d+):(\d+): (.*)")


def expected(path: Path) -> list[tuple[int, int, str]]:
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = EXPECT.fullmatch(line)
        if match is None:
            break
        found.append((int(match[1]), int(match[2]), match[3]))
    return found


def test_corpus_is_large_enough():
    assert len(FILES) >= 45
    names = [p.name for p in FILES]
    assert all(re.fullmatch(r"\d\d_[a-z0-9_]+\.tdsl", n) for n in names), names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_diagnostics(path: Path):
    want = expected(path)
    assert want, f"{path.name} has no '# expect:' line"
    with pytest.raises(TdslError) as info:
        check_source(path.read_text(encoding="utf-8"), str(path))
    err = info.value
    got = [(*d.location(err.source), d.message) for d in err.diagnostics]
    assert got == want
    assert all(d.severity == "error" for d in err.diagnostics)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_cli_check(path: Path, capsys):
    status = cli.main(["check", str(path)])
    out, err = capsys.readouterr()
    assert status == 1
    assert "Traceback" not in out + err
    for line, col, message in expected(path):
        assert f"{path}:{line}:{col}: error: {message}" in err
    # Each diagnostic quotes its line and puts a caret under the culprit.
    assert err.count("^") >= len(expected(path))


def test_cli_check_all_files_in_a_subprocess():
    proc = subprocess.run([sys.executable, "-m", "tdsl", "check", *map(str, FILES)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "internal error" not in proc.stderr
    total = sum(len(expected(p)) for p in FILES)
    assert proc.stderr.count(": error: ") == total
