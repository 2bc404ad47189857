"""Golden IR tests: each `tests/golden/<stage>/<name>.tdsl` holds one kernel and FileCheck
`CHECK` lines (as `#` comments) that the IR printed at `<stage>` must match, checked with the
`filecheck` package (a Python clone of LLVM's FileCheck).

To see the IR a file is checked against: `tdsl compile FILE --emit STAGE`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tdsl.check import check_source
from tdsl.pipelines import STAGE_NAMES, run_pipeline

HERE = Path(__file__).resolve().parent
CASES = sorted(p for p in HERE.glob("*/*.tdsl"))


def test_every_golden_directory_is_a_stage():
    assert CASES
    for path in CASES:
        assert path.parent.name in STAGE_NAMES, path


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_golden(path: Path) -> None:
    stage = path.parent.name
    program = check_source(path.read_text(encoding="utf-8"), str(path))
    assert len(program.kernels) == 1, "one kernel per golden file"
    ir = run_pipeline(program.kernels[0], until=stage, keep=[stage]).ir[stage]
    done = subprocess.run([sys.executable, "-m", "filecheck", str(path)], input=ir,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n--- IR at {stage} ---\n{ir}"
