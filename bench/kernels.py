"""Kernel benchmarks: tdsl against numpy and Numba, measured in the same run.

    python bench/kernels.py [--quick] [--threads 1|all|both] [--only NAME,...] [--json FILE]

For each kernel at realistic sizes (4096 x 4096 f32 rows, 2^24-element vectors, 256^3 grids,
1024 / 2048 matmuls; `--quick` uses small sizes for a smoke run) it prints the median time of
tdsl, numpy, Numba `@njit(fastmath=True)` and Numba `@njit(parallel=True, fastmath=True)`
(hand-written loops with `prange`, in numba_impls.py), the ratios, tdsl's GB/s or GFLOP/s and
its share of the measured roof: a bandwidth roof (copy and triad on arrays of the same size)
and a compute roof (an FMA loop in Numba). Every implementation writes into a preallocated
output; numpy allocates its temporaries as numpy does. The cases (sizes, inputs, numpy
references, the bench's own tdsl source) are in kernel_cases.py.

Every result is checked against numpy (or float64 for the sum) before it is timed: a wrong tdsl
kernel is reported as WRONG, gets no time, and makes the command exit 1.

The script re-executes itself with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE removed and every
thread knob (OPENBLAS/OMP/MKL/NUMBA/TDSL_NUM_THREADS) set to the `--threads` count; `both`
runs 1 thread, then all cores. tdsl kernels come from the disk cache (compiled on a miss).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness as h
import numpy as np
from kernel_cases import (
    BUILDERS,
    EXTRA_FILENAME,
    FULL,
    LOAD_SECONDS,
    QUICK,
    TDSL_EXTRA,
    Case,
    Sizes,
    seeded_rng,
    uniform_f32,
)
from numba_impls import jitted, njit, numba

IMPLS = ("tdsl", "numpy", "numba", "numba-par")
"""The implementations measured, in the order of the table's columns."""


# ---- checking -------------------------------------------------------------------------------


def compare(got: Any, ref: Any, rtol: float, atol: float) -> float:
    """The largest |got - ref| / (atol + rtol |ref|) (nan where both are nan counts as 0);
    <= 1 passes. A shape mismatch or a nan on one side only gives inf."""
    g = np.array(got, dtype=np.float64, ndmin=1)
    r = np.array(ref, dtype=np.float64, ndmin=1)
    if g.shape != r.shape:
        return math.inf
    if g.size == 0:
        return 0.0
    with np.errstate(invalid="ignore"):
        err = np.abs(g - r) / (atol + rtol * np.abs(r))
    same_nan = np.isnan(g) & np.isnan(r)
    same_inf = np.isinf(g) & (g == r)
    err[same_nan | same_inf] = 0.0
    err[np.isnan(err)] = math.inf
    return float(err.max())


# ---- assembly ---------------------------------------------------------------------------

_FP_OPS = r"(add|sub|mul|div|sqrt|min|max|rsqrt|rcp|f[n]?m(add|sub)\d*)"
_VECTOR_FP = re.compile(rf"^v{_FP_OPS}p[sd]$")
_SCALAR_FP = re.compile(rf"^v?{_FP_OPS}s[sd]$")
_CALL = re.compile(r"^\s+(?:call\w*\s+\*?([\w.$]+)|jmp\w*\s+([\w.$]+)@PLT)")  # tail calls too


def asm_summary(source: str, kernel: str) -> dict[str, Any]:
    """Counts over tdsl's host assembly of one kernel (`tdsl compile --emit asm -k`): vector
    floating-point instructions by register width, scalar ones, and the functions called
    (a libm name like `expf` in a hot loop means the math was not vectorized)."""
    from tdsl.check import check_source
    from tdsl.compiler import emit

    if source == "extra":
        text, filename = TDSL_EXTRA, EXTRA_FILENAME
    else:
        path = h.SAMPLES / f"{source}.tdsl"
        text, filename = path.read_text(encoding="utf-8"), str(path)
    asm, _ = emit(check_source(text, filename), "asm", kernel)
    counts = {"xmm": 0, "ymm": 0, "zmm": 0, "scalar": 0}
    calls: dict[str, int] = {}
    for line in str(asm).splitlines():
        parts = line.split(None, 1)
        if not parts or not line[:1].isspace() or parts[0].startswith("."):
            continue
        mnemonic = parts[0]
        if _VECTOR_FP.match(mnemonic):
            width = "zmm" if "%zmm" in line else "ymm" if "%ymm" in line else "xmm"
            counts[width] += 1
        elif _SCALAR_FP.match(mnemonic):
            counts["scalar"] += 1
        if (m := _CALL.match(line)):
            name = (m.group(1) or m.group(2)).split("@")[0]
            calls[name] = calls.get(name, 0) + 1
    return {**counts, "calls": calls}


def format_asm(rows: list[Row]) -> tuple[str, dict[str, Any]]:
    """The assembly table of the tdsl kernels measured, and its data by kernel."""
    headers = ["kernel", "tdsl kernel", "fp vector ops zmm/ymm/xmm", "fp scalar ops", "calls"]
    table = []
    seen = set()
    data: dict[str, Any] = {}
    for row in rows:
        ref = row.case.tdsl
        if not ref or ref in seen:
            continue
        seen.add(ref)
        try:
            a = data[":".join(ref)] = asm_summary(*ref)
        except Exception as exc:  # noqa: BLE001 - reported in the table
            table.append([row.case.name, ":".join(ref), f"error: {exc}"[:60], "-", "-"])
            continue
        calls = " ".join(f"{k}x{v}" for k, v in sorted(a["calls"].items())) or "-"
        table.append([row.case.name, ":".join(ref), f"{a['zmm']}/{a['ymm']}/{a['xmm']}",
                      str(a["scalar"]), calls])
    title = ("tdsl's assembly (tdsl compile --emit asm -k KERNEL): floating-point "
             "instructions by register width; calls name libm functions left in the code")
    return "\n".join([title, h.format_table(headers, table, left=(0, 1, 4))]), data


# ---- running ------------------------------------------------------------------------------


@dataclass
class Result:
    """The measurements of one implementation of one case."""

    timing: h.Timing | None = None
    error: float | None = None  # compare() against the reference
    ok: bool = True
    failure: str = ""  # an exception, a wrong result, or why it was skipped

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {"timing": self.timing.to_json() if self.timing else None, "error": self.error,
                "ok": self.ok, "failure": self.failure}


@dataclass
class Row:
    """A measured case."""

    case: Case
    results: dict[str, Result] = field(default_factory=dict)

    def median(self, impl: str) -> float | None:
        """The median time of `impl`, when it ran and was right."""
        r = self.results.get(impl)
        return r.timing.median if r and r.ok and r.timing else None


SETTLE_S = 0.3
"""Pause before each implementation: the worker threads of the one before (OpenBLAS, Numba's
OpenMP, libomp) spin for up to ~200 ms after their last call and took a core from the next
one (tdsl's attention on 2 threads: 1.8 ms alone, 3.5 ms with a noise of 250 % right after
Numba parallel)."""


def run_case(case: Case, policy: h.Policy, rates: dict[tuple[str, str], float],
             max_call_s: float) -> Row:
    """Check then time every implementation of `case`. `rates` holds work per second of each
    (family, impl) measured so far; an implementation predicted to take more than
    `max_call_s` per call is skipped."""
    row = Row(case)
    work = case.flops if case.bound == "flop" and case.flops else case.nbytes
    try:
        reference = case.ref() if case.ref else case.impls["numpy"]()
        reference = np.array(reference, copy=True)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        reference = None
        print(f"  {case.name}: no reference: {exc!r}", file=sys.stderr)
    for impl in IMPLS:
        fn = case.impls.get(impl)
        if fn is None:
            continue
        time.sleep(SETTLE_S)
        res = Result()
        row.results[impl] = res
        rate = rates.get((case.family, impl))
        if rate and work / rate > max_call_s:
            res.ok = False
            res.failure = (f"skipped: ~{work / rate:.0f} s per call predicted from the smaller "
                           f"size (limit --max-call {max_call_s:g} s)")
            continue
        try:
            t0 = time.perf_counter()
            c0 = time.process_time()
            got = fn()
            first = time.perf_counter() - t0
            first_cpu = time.process_time() - c0
            if reference is not None:
                res.error = compare(got, reference, case.rtol, case.atol)
                if case.ref is None and np.asarray(got).dtype != reference.dtype:
                    res.ok = False
                    res.failure = (f"WRONG: dtype {np.asarray(got).dtype}, numpy gives "
                                   f"{reference.dtype}")
                    continue
                if not res.error <= 1.0:
                    res.ok = False
                    res.failure = (f"WRONG: max |err| / (atol + rtol |ref|) = {res.error:.3g} "
                                   f"(rtol {case.rtol:g}, atol {case.atol:g})")
                    continue
            compiles = impl.startswith("numba")  # the first call compiled: warm up again
            if first > policy.single_s and not compiles:
                res.timing = h.Timing([first], [first_cpu], first, "1 call (its first)",
                                      policy.clock)
            else:
                res.timing = h.time_calls(fn, policy, None if compiles else first)
            rates[(case.family, impl)] = work / res.timing.median
        except Exception as exc:  # noqa: BLE001 - reported in the table
            res.ok = False
            res.failure = f"error: {type(exc).__name__}: {exc}".splitlines()[0][:200]
    return row


def measure_roofs(n: int, threads: int, policy: h.Policy) -> dict[str, float]:
    """Measured limits: copy (numpy) and triad (Numba, 1 and `threads` threads) GB/s on
    `n`-element f32 arrays, and an FMA loop's GFLOP/s on `threads` threads."""
    rng = seeded_rng()
    a, b, c = np.empty(n, np.float32), uniform_f32(rng, n), uniform_f32(rng, n)
    roofs: dict[str, float] = {}
    t = h.time_calls(lambda: np.copyto(a, b), policy)
    roofs["copy GB/s (numpy)"] = 8 * n / t.median / 1e9
    if njit is None:
        roofs["bandwidth GB/s"] = roofs["copy GB/s (numpy)"]
        return roofs
    s = np.float32(1.5)
    for parallel in (False, True):
        fn = jitted("nb_triad", parallel)
        fn(a, b, c, s)
        t = h.time_calls(lambda fn=fn: fn(a, b, c, s), policy)
        label = f"triad GB/s ({threads} thr)" if parallel else "triad GB/s (1 thr)"
        roofs[label] = 12 * n / t.median / 1e9
    roofs["bandwidth GB/s"] = max(v for k, v in roofs.items() if "GB/s" in k)
    fma = jitted("nb_fma", True)
    x = uniform_f32(rng, (4 * threads, 512), 0.0, 1.0)
    ca, cb = np.float32(0.999), np.float32(0.001)
    fma(x, ca, cb, 1)
    reps = 64
    while True:  # calibrate to about 50 ms a call
        t0 = time.perf_counter()
        fma(x, ca, cb, reps)
        if time.perf_counter() - t0 > 0.05 or reps > 1 << 24:
            break
        reps *= 4
    t = h.time_calls(lambda: fma(x, ca, cb, reps), policy)
    roofs[f"FMA GFLOP/s ({threads} thr)"] = x.size * reps * 4 * 2 / t.median / 1e9
    roofs["compute GFLOP/s"] = roofs[f"FMA GFLOP/s ({threads} thr)"]
    return roofs


def format_rows(rows: list[Row], roofs: dict[str, float]) -> tuple[str, list[str]]:
    """The results table and its notes."""
    headers = ["kernel", "size", "dtype", "tdsl ms", "numpy ms", "numba ms", "nb-par ms",
               "np/tdsl", "nb/tdsl", "nbp/tdsl", "tdsl rate", "%roof", "cores", "noise",
               "check"]
    table = []
    notes: list[str] = []
    for row in rows:
        case = row.case
        tdsl_t = row.median("tdsl")
        tr = row.results.get("tdsl")

        def ratio(impl: str, row: Row = row, tdsl_t: float | None = tdsl_t) -> str:
            other = row.median(impl)
            return h.fmt_ratio(other / tdsl_t) if other and tdsl_t else "-"

        rate = roof_pct = par = noise = "-"
        if tdsl_t:
            if case.bound == "flop" and case.flops:
                value = case.flops / tdsl_t / 1e9
                rate = f"{value:.1f} GFLOP/s"
                roof = roofs.get("compute GFLOP/s")
            else:
                value = case.nbytes / tdsl_t / 1e9
                rate = f"{value:.1f} GB/s"
                roof = roofs.get("bandwidth GB/s")
            roof_pct = f"{100 * value / roof:.0f}%" if roof else "-"
            assert tr is not None and tr.timing is not None
            par = f"{tr.timing.parallelism:.1f}"
            noise = f"{100 * tr.timing.spread:.0f}%"
        if tr is None:
            check = "-"
        elif tr.ok:
            check = "ok" if tr.error is not None else "unchecked"
        else:
            check = "WRONG" if tr.failure.startswith("WRONG") else (
                "skipped" if tr.failure.startswith("skipped") else "ERROR")
        table.append([case.name, case.size, case.dtype,
                      *(h.fmt_ms(row.median(i)) for i in IMPLS),
                      ratio("numpy"), ratio("numba"), ratio("numba-par"),
                      rate, roof_pct, par, noise, check])
        for impl, res in row.results.items():
            if res.failure:
                notes.append(f"{case.name} [{impl}]: {res.failure}")
            elif res.timing and res.timing.note:
                notes.append(f"{case.name} [{impl}]: {res.timing.note}")
        if case.note:
            notes.append(f"{case.name}: {case.note}")
    return h.format_table(headers, table, left=(0, 1, 2)), notes


def selected(name: str, only: list[str]) -> bool:
    """True when the case `name` matches one of the `--only` prefixes (or there are none)."""
    return not only or any(name.startswith(o) or o.startswith(name) for o in only)


def run(args: argparse.Namespace) -> int:
    """Measure everything for one thread count and print the tables."""
    threads = h.thread_count(args.threads)
    sizes = QUICK if args.quick else FULL
    policy = (h.Policy(min_reps=3, max_reps=10, target_s=0.1, clock=args.clock) if args.quick
              else h.Policy(min_reps=5, max_reps=30, target_s=0.5, clock=args.clock))
    only = [o for o in (args.only or "").split(",") if o]
    info = h.machine_info(threads)
    mode = "quick" if args.quick else "full"
    print(f"== tdsl kernel benchmarks ({mode}, {threads} thread{'s' * (threads != 1)}) ==")
    print(h.format_machine(info))
    if numba is not None:
        print(f"numba   : {numba.__version__}, NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}")
    clock = "process CPU time" if args.clock == "cpu" else "wall clock"
    print(f"times   : median of repeated calls after a warm-up, ms ({clock}); ratios > 1 mean "
          "tdsl is faster; cores = CPU time / wall time of the tdsl calls; noise = (max - min) "
          "/ median")
    if args.clock == "cpu" and threads > 1:
        print("  ** --clock cpu adds up the CPU time of every thread: use it with --threads 1 **")
    sys.stdout.flush()

    t_start = time.perf_counter()
    n_roof = sizes.rows * sizes.cols
    roofs_start = measure_roofs(n_roof, threads, policy)
    print("\nroofs (measured on f32 arrays of the 2-D kernels' size, before and after the "
          "kernels; the better of the two is the roof):")
    print("  before: " + "   ".join(f"{k}: {v:.1f}" for k, v in roofs_start.items()))
    if numba is not None:
        print(f"  (Numba threading layer: {_threading_layer()})")
    sys.stdout.flush()

    want = set(IMPLS)
    if njit is None:
        print("  Numba is not installed (pip install -e '.[bench]'): no Numba columns")
    rows: list[Row] = []
    rates: dict[tuple[str, str], float] = {}
    for names, builder in BUILDERS:
        if not any(selected(n, only) for n in names):
            continue
        try:
            cases = builder(sizes, want)
        except Exception as exc:  # noqa: BLE001 - e.g. a tdsl source that does not compile
            print(f"  {builder.__name__}: could not set up: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            cases = _without_tdsl(builder, sizes, want, exc)
        for case in cases:
            if not selected(case.name, only):
                continue
            print(f"  running {case.name} {case.size} ...", file=sys.stderr, flush=True)
            rows.append(run_case(case, policy, rates, args.max_call))
        del cases
    roofs_end = measure_roofs(n_roof, threads, policy)
    roofs = {k: max(v, roofs_end.get(k, v)) for k, v in roofs_start.items()}
    print("  after:  " + "   ".join(f"{k}: {v:.1f}" for k, v in roofs_end.items()))
    elapsed = time.perf_counter() - t_start

    table, notes = format_rows(rows, roofs)
    print()
    print(table)
    if LOAD_SECONDS:
        notes.append("tdsl module loads (cache, or compile on a miss): "
                     + ", ".join(f"{k} {v:.2f} s" for k, v in LOAD_SECONDS.items()))
    for note in notes:
        print(f"  note: {note}")
    wrong = [r.case.name for r in rows
             if (res := r.results.get("tdsl")) and res.failure.startswith(("WRONG", "error"))]
    print(f"\n{len(rows)} cases in {elapsed:.0f} s; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if wrong:
        print(f"tdsl FAILED on: {', '.join(wrong)}")
    asm_data: dict[str, Any] = {}
    if args.asm:
        asm_text, asm_data = format_asm(rows)
        print()
        print(asm_text)
    if args.json:
        h.write_json(args.json, {
            "machine": info, "mode": mode, "threads": threads, "clock": args.clock,
            "roofs": roofs, "roofs_before": roofs_start, "roofs_after": roofs_end,
            "numba_threading_layer": _threading_layer(),
            "cases": [{"name": r.case.name, "family": r.case.family, "size": r.case.size,
                       "dtype": r.case.dtype, "bytes": r.case.nbytes, "flops": r.case.flops,
                       "bound": r.case.bound, "note": r.case.note,
                       "results": {k: v.to_json() for k, v in r.results.items()}}
                      for r in rows],
            "tdsl_load_seconds": LOAD_SECONDS, "elapsed_s": elapsed, "asm": asm_data,
        })
    return 1 if wrong else 0


def _without_tdsl(builder: Callable[[Sizes, set[str]], list[Case]], sizes: Sizes,
                  want: set[str], exc: Exception) -> list[Case]:
    """The builder's cases without tdsl (after tdsl failed to load), tdsl marked as failed."""
    cases = builder(sizes, want - {"tdsl"})
    for case in cases:
        case.impls["tdsl"] = _raiser(exc)
    return cases


def _raiser(exc: Exception) -> Callable[[], Any]:
    def fail() -> Any:
        raise exc
    return fail


def _threading_layer() -> str | None:
    try:
        return numba.threading_layer() if numba is not None else None
    except Exception:  # noqa: BLE001 - no parallel function ran
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats (smoke run)")
    p.add_argument("--threads", default="all",
                   help="1, all (every usable core; the default), a number, or both")
    p.add_argument("--only", help="comma-separated kernel name prefixes, e.g. softmax,matmul")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="time by wall clock (default) or by the process's CPU time, which a "
                        "busy machine disturbs less (one-thread runs only)")
    p.add_argument("--no-asm", dest="asm", action="store_false",
                   help="skip the table of tdsl's assembly (it compiles each kernel again)")
    p.add_argument("--max-call", type=float, default=30.0,
                   help="skip an implementation predicted (from a smaller size of the same "
                        "kernel) to need more than this many seconds per call (default 30)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: re-execute under the bench environment, then run."""
    args = parse_args(argv)
    if args.threads == "both":
        return _run_both(args)
    if not h.is_bench_child():
        h.reexec(h.thread_count(args.threads))
    return run(args)


def _run_both(args: argparse.Namespace) -> int:
    """Run 1 thread then all cores, each in its own process; merge the JSON files."""
    code = 0
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in ("1", "all"):
            out = Path(tmp) / f"{spec}.json"
            cmd = [sys.executable, os.path.abspath(__file__), "--threads", spec,
                   "--max-call", str(args.max_call), "--json", str(out)]
            cmd += ["--quick"] if args.quick else []
            cmd += ["--only", args.only] if args.only else []
            cmd += ["--no-asm"] if not args.asm or spec == "1" else []
            cmd += ["--clock", args.clock]
            sys.stdout.flush()
            rc = subprocess.run(cmd, env=h.bench_env(h.thread_count(spec))).returncode
            code = code or rc
            print()
            if out.exists():
                import json

                runs.append(json.loads(out.read_text()))
    if args.json:
        h.write_json(args.json, {"runs": runs})
    return code


if __name__ == "__main__":
    sys.exit(main())
