"""Every sample kernel runs on compiled targets with its inputs and outputs placed against
guard pages, so an out-of-bounds read or write crashes the test instead of passing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from guarded import guarded_copy, guarded_empty  # noqa: E402
from sample_cases import CASES, Case  # noqa: E402
from test_samples import _as_tuple, _check_output  # noqa: E402

import tdsl  # noqa: E402

TARGETS = [t for t in os.environ.get("TDSL_TEST_TARGETS", "reference,cpu").split(",")
           if t not in ("reference",)]


@pytest.mark.parametrize("at", ["end", "start"])
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_sample_against_guard_pages(case: Case, target: str, at: str) -> None:
    inputs = case.make_inputs()
    expected = case.expected(*[np.array(x, copy=True) if isinstance(x, np.ndarray) else x
                               for x in inputs])
    kernel = getattr(tdsl.load(str(case.path), target=target), case.kernel)
    outputs = {}
    for param, want in zip(kernel.signature.outputs, _as_tuple(expected, len(
            kernel.signature.outputs))):
        shape = np.shape(want)
        outputs[param.name] = guarded_empty(shape, np.asarray(want).dtype, at)
    guarded = [guarded_copy(x, at) for x in inputs]
    got = _as_tuple(kernel(*guarded, **outputs), len(outputs))
    for index, (g, e) in enumerate(zip(got, _as_tuple(expected, len(outputs)))):
        _check_output(case, index, g[()] if np.ndim(g) == 0 else g, e)


def test_guard_pages_fault_past_the_end(tmp_path):
    """The guard really faults: reading one element past a guarded array kills the process."""
    import subprocess
    import textwrap

    code = textwrap.dedent(f"""
        import ctypes, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / "support")!r})
        import numpy as np
        from guarded import guarded_empty
        a = guarded_empty((10,), np.float32, "end")
        a[:] = 1
        print(ctypes.c_float.from_address(a.ctypes.data + 40).value)
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == -11  # SIGSEGV
