"""Every sample program in samples/ runs on every target and matches its numpy reference.

The cases (inputs and hand-written references) are in `sample_cases.py`; these tests also make
sure that table covers every kernel of every sample file, and that every kernel carries the
comment above it as its docstring.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sample_cases import CASES, SAMPLES, Case, tolerance  # noqa: E402

import tdsl  # noqa: E402

# The samples run on every target named in TDSL_TEST_TARGETS (default: the reference
# interpreter and the CPU compiler).
TARGETS = os.environ.get("TDSL_TEST_TARGETS", "reference,cpu").split(",")

_KERNEL = re.compile(r"^\s*kernel\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(", re.MULTILINE)


@functools.cache
def load(file: str, target: str = "reference"):
    """The compiled module of a sample file (compiled once per test session)."""
    return tdsl.load(str(SAMPLES / file), target=target)


def sample_files() -> list[str]:
    return sorted(p.name for p in SAMPLES.glob("*.tdsl"))


def kernels_in(file: str) -> list[str]:
    """The kernel names declared in a sample file, in order."""
    return _KERNEL.findall((SAMPLES / file).read_text(encoding="utf-8"))


def doc_comment(file: str, kernel: str) -> list[str]:
    """The text of the `#` comment lines directly above a kernel's `kernel` line."""
    lines = (SAMPLES / file).read_text(encoding="utf-8").splitlines()
    at = next(i for i, line in enumerate(lines)
              if re.match(rf"\s*kernel\s+{kernel}\s*\(", line))
    comment: list[str] = []
    for line in reversed(lines[:at]):
        if not line.lstrip().startswith("#"):
            break
        comment.insert(0, line.lstrip()[1:].strip())
    return comment


ALL_KERNELS = [(f, k) for f in sample_files() for k in kernels_in(f)]


# ---- the samples compute what their references say -------------------------------------------

def _as_tuple(value, n: int) -> tuple:
    if n == 1:
        return (value,)
    assert isinstance(value, tuple), f"expected a tuple of {n} outputs, got {type(value).__name__}"
    assert len(value) == n, f"expected {n} outputs, got {len(value)}"
    return value


def _check_output(case: Case, index: int, got, want) -> None:
    where = f"{case.id}: output {index}"
    want_array = np.asarray(want)
    if want_array.ndim == 0:
        assert isinstance(got, np.generic), (
            f"{where}: a rank-0 output should come back as a numpy scalar, got "
            f"{type(got).__name__}")
    else:
        assert isinstance(got, np.ndarray), f"{where}: expected an array, got {type(got)}"
    got_array = np.asarray(got)
    assert got_array.dtype == want_array.dtype, (
        f"{where}: dtype {got_array.dtype}, expected {want_array.dtype}")
    assert got_array.shape == want_array.shape, (
        f"{where}: shape {got_array.shape}, expected {want_array.shape}")
    tol = tolerance(want_array.dtype)
    if tol is None:
        np.testing.assert_array_equal(got_array, want_array, err_msg=where)
        return
    rtol = case.rtol if case.rtol is not None else tol[0]
    atol = case.atol if case.atol is not None else tol[1]
    np.testing.assert_allclose(got_array.astype(np.float64), want_array.astype(np.float64),
                               rtol=rtol, atol=atol, err_msg=where)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_sample_matches_reference(case: Case, target: str) -> None:
    inputs = case.make_inputs()
    saved = [np.array(x, copy=True) for x in inputs]
    expected = case.expected(*[np.array(x, copy=True) if isinstance(x, np.ndarray) else x
                               for x in inputs])
    n = len(expected) if isinstance(expected, tuple) else 1

    kernel = getattr(load(case.file, target), case.kernel)
    got = _as_tuple(kernel(*inputs), n)

    for index, (g, e) in enumerate(zip(got, _as_tuple(expected, n))):
        _check_output(case, index, g, e)
    for before, after in zip(saved, inputs):  # inputs are read, never written
        np.testing.assert_array_equal(np.asarray(after), before)


# ---- the table covers the samples, and the samples document themselves -------------------------

def test_there_are_samples() -> None:
    assert len(sample_files()) >= 18


def test_every_sample_kernel_has_a_case() -> None:
    covered = {(c.file, c.kernel) for c in CASES}
    missing = [f"{f}: {k}" for f, k in ALL_KERNELS if (f, k) not in covered]
    assert not missing, "sample kernels without a case in sample_cases.py: " + ", ".join(missing)
    untested_files = [f for f in sample_files() if not kernels_in(f)]
    assert not untested_files, f"sample files without a kernel: {untested_files}"


def test_every_case_names_a_sample_kernel() -> None:
    declared = set(ALL_KERNELS)
    stale = [c.id for c in CASES if (c.file, c.kernel) not in declared]
    assert not stale, f"cases naming no kernel of samples/: {stale}"
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique (give repeated kernels a tag)"


@pytest.mark.parametrize("file", sample_files())
def test_sample_starts_with_a_comment(file: str) -> None:
    first = (SAMPLES / file).read_text(encoding="utf-8").lstrip("\ufeff").splitlines()[0]
    assert first.startswith("#"), f"{file} should start with '#' lines saying what it computes"


@pytest.mark.parametrize("file,kernel", ALL_KERNELS, ids=[f"{f}:{k}" for f, k in ALL_KERNELS])
def test_kernel_docstring(file: str, kernel: str) -> None:
    comment = doc_comment(file, kernel)
    assert comment and comment[0], f"{file}: kernel {kernel} has no comment directly above it"
    doc = getattr(load(file), kernel).__doc__
    assert doc and doc.strip(), f"{file}: kernel {kernel} has an empty __doc__"
    assert comment[0] in doc, f"{file}: {kernel}.__doc__ = {doc!r} lacks {comment[0]!r}"
