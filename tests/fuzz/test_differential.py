"""Differential fuzzing: random well-typed kernels drawn from the whole language
(tests/fuzz/gen.py) give the reference interpreter's results on every compiled target, with
inputs holding inf, nan, -0.0, denormals and extreme integers, placed against guard pages or
passed as strided, reversed, Fortran-ordered or byte-swapped views.

A failing program is shrunk by hypothesis and saved to tests/fuzz/corpus/ (NNN.tdsl and
NNN.json), which test_corpus.py replays on every run. The normal suite runs a short budget;
`make fuzz` runs long (TDSL_FUZZ_EXAMPLES, TDSL_FUZZ_STATS: a file counting the programs).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.control import current_build_context

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen  # noqa: E402

import tdsl  # noqa: E402

EXAMPLES = int(os.environ.get("TDSL_FUZZ_EXAMPLES", "30"))
STATS = os.environ.get("TDSL_FUZZ_STATS")
# The short run of the normal suite draws the same programs every time (a red CI must be
# reproducible); `make fuzz` (TDSL_FUZZ_EXAMPLES set) draws new ones on every run.
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize="TDSL_FUZZ_EXAMPLES" not in os.environ,
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


def _count(case: gen.Case, problems: list[str]) -> None:
    if STATS:
        with open(STATS, "a", encoding="utf-8") as f:
            f.write(f"{'FAIL' if problems else 'ok'} {len(case.source)}\n")


@FUZZ
@given(case=gen.cases())
def test_random_kernels_match_the_reference(case: gen.Case) -> None:
    problems = gen.run_case(case)
    _count(case, problems)
    if not problems or gen.known(case, problems):
        return
    saved = None
    if getattr(current_build_context(), "is_final", True):  # the shrunk example
        saved = gen.save_case(case, problems)
    raise AssertionError(
        f"{len(problems)} problem(s) with this kernel (symbols {case.symbols}, seed "
        f"{case.seed}, special {case.special}, layout {gen.LAYOUTS[case.layout][0]}, "
        f"levels { {k: gen.LEVEL_NAMES[v] for k, v in case.levels.items()} }); saved as "
        f"{saved}\n{case.source}\n" + "\n".join(problems))


# ---- constant folding agrees with the same operation at run time ----------------------------

INT_LITERALS = [0, 1, -1, 127, 128, 255, 256, -129, 300, 65504, 65520, 70000, 2**31,
                -(2**31) - 1, 2**24 + 1, 2**30 + 2**22 + 1, 2**40 + 2**32 + 1,
                2**53 + 1, 2**60 + 2**36 + 1, 2**62 + 2**54 + 1, 2**63 - 1, -(2**63 - 1)]
FLOAT_LITERALS = ["0.0", "-0.0", "1.5", "-2.5", "2.9", "-2.9", "127.5", "255.9", "1e10",
                  "-1e10", "1e300", "inf", "nan", "1e-40", "5e-324", "65519.99",
                  "1.0004882812500002", "1.0039062500000002", "1.0000000596046449",
                  "9.3e18", "-9.3e18", "2147483647.5"]


@pytest.mark.parametrize("target", ["reference"] + gen.api_targets())
@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(gen.DTYPES),
       literal=st.sampled_from([str(v) for v in INT_LITERALS] + FLOAT_LITERALS))
def test_cast_of_a_literal_matches_the_cast_at_run_time(target, dtype, literal):
    """`T(literal)` is folded by the checker; `T(x)` with x holding the same value (an i64 or
    f64 input) is computed by the target. Both follow the cast rules of §10."""
    is_float = any(c in literal for c in ".en")
    src_dtype = "f64" if is_float else "i64"
    if ("cast", src_dtype, dtype) in gen.KNOWN_BUGS and target != "reference" and \
            not gen._known_allowed():
        return
    source = (f"kernel k(x: {src_dtype}[N]) -> (a: {dtype}[N], b: {dtype}[N]) {{\n"
              f"    a[i] = {dtype}({literal})\n    b = {dtype}(x)\n}}\n")
    value = float(literal) if is_float else int(literal)
    mod = tdsl.loads(source, target=target)
    x = np.array([value], dtype=np.float64 if is_float else np.int64)
    a, b = mod.k(x)
    assert a.tobytes() == b.tobytes() or np.isnan(a.astype(np.float64)).all() and np.isnan(
        b.astype(np.float64)).all(), f"{dtype}({literal}): folded {a[0]!r}, run {b[0]!r}"


@pytest.mark.parametrize("target", ["reference"] + gen.api_targets())
@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from([d for d in gen.DTYPES if d != "bool"]),
       a=st.sampled_from(INT_LITERALS[:12]), b=st.sampled_from(INT_LITERALS[:12]),
       op=st.sampled_from(["+", "-", "*", "/", "%", "min", "max"]))
def test_folded_integer_arithmetic_matches_run_time(target, dtype, a, b, op):
    """An integer expression of literals is folded exactly; with operands and result in i64
    it equals the same i64 operation at run time, cast the same way."""
    text = f"{op}({a}, {b})" if op in ("min", "max") else f"({a}) {op} ({b})"
    x_text = f"{op}(x[0], x[1])" if op in ("min", "max") else f"x[0] {op} x[1]"
    source = (f"kernel k(x: i64[N]) -> (p: {dtype}[], q: {dtype}[]) {{\n"
              f"    p = {dtype}({text})\n    q = {dtype}({x_text})\n}}\n")
    if ("cast", "i64", dtype) in gen.KNOWN_BUGS and target != "reference" and \
            not gen._known_allowed():
        return
    mod = tdsl.loads(source, target=target)
    p, q = mod.k(np.array([a, b, 0], dtype=np.int64))
    assert np.asarray(p).tobytes() == np.asarray(q).tobytes(), f"{source}: {p!r} != {q!r}"


# ---- the comparison itself ------------------------------------------------------------------


def test_comparison_rules():
    exact, loose = gen.EXACT, gen.LOOSE
    w = np.array([1.0, np.nan, -0.0, np.inf], np.float32)
    assert gen.compare("y", "f32", exact, w, w.copy(), None, False) is None
    assert gen.compare("y", "f32", exact, w, np.array([1, np.nan, 0.0, np.inf], np.float32),
                       None, False) is None  # -0.0 matches 0.0
    off = np.nextafter(w, np.float32(2)).astype(np.float32)
    assert "1 of 4 elements differ" in gen.compare("y", "f32", exact, w[:1], off[:1], None,
                                                   False).replace("1 of 1", "1 of 4")
    assert gen.compare("y", "f32", loose, w, np.where(np.isfinite(w), off, w), None,
                       False) is None
    assert gen.compare("y", "f32", loose, w[:1], w[:1] * 1.01, None, False) is not None
    assert gen.compare("y", "f32", loose, w[:1], np.array([np.nan], np.float32), None,
                       False) is not None
    assert gen.compare("y", "i32", exact, np.array([1]), np.array([2]), None, False)
    # a result as unstable as the reference under 1-ulp input noise is accepted
    assert gen.compare("y", "f64", loose, np.array([1e-3]), np.array([2e-3]),
                       np.array([1e-3]), False) is None


def test_loose_tolerance_grows_with_the_terms_of_a_sum():
    # corpus 026: 4,356 copies of one f32 value summed in order (the compiled targets) and
    # pairwise (the reference) differ by 3e-5 relative, about 250 ulp
    want, got = np.array([-518.2882], np.float32), np.array([-518.30365], np.float32)
    assert gen.compare("y", "f32", gen.LOOSE, want, got, None, False) is not None
    assert gen.compare("y", "f32", gen.LOOSE, want, got, None, False, terms=4356) is None
    assert gen.compare("y", "f32", gen.LOOSE, want, got * 1.01, None, False,
                       terms=4356) is not None  # a dropped term is still found
    assert gen.compare("y", "f32", gen.ULP, want, got, None, False, terms=4356) is not None


def test_generated_cases_count_the_terms_of_their_sums():
    case = gen.Case.from_json("", {"symbols": {}, "seed": 0, "special": False, "levels": {},
                                   "terms": 12})
    assert case.terms == 12 and case.to_json()["terms"] == 12
    assert "terms" not in gen.Case("", {}, 0, False, 0, {}).to_json()


@pytest.mark.skipif(not gen.FORK, reason="needs fork")
def test_crashes_and_hangs_in_the_child_are_reported(monkeypatch):
    import signal
    import time

    assert gen._in_child("cpu", lambda: ["cpu: a problem"], ()) == ["cpu: a problem"]
    crash = gen._in_child("cpu", lambda: os.kill(os.getpid(), signal.SIGSEGV), ())
    assert crash == ["cpu: the process crashed with signal 11 (SIGSEGV)"]
    monkeypatch.setattr(gen, "CHILD_SECONDS", 1)
    assert gen._in_child("cpu", lambda: time.sleep(30), ()) == [
        "cpu: the process hung (killed) (SIGKILL)"]
