"""Compile-time benchmarks: cold compile, cached load and per-call overhead, tdsl against Numba.

    python bench/compile.py [--quick] [--files NAME,...] [--json FILE]

Prints, after the machine:
1. Cold compile per source file (every sample and the bench's own kernels), each in a fresh
   process without the cache: the imports (tdsl, its front end, its MLIR/LLVM back end), the
   one-time compiler start-up (a trivial kernel), checking, compiling the whole file
   (`tdsl.compiler.compile_program`), and each kernel compiled alone.
2. Loads, each in a fresh process: `tdsl.load` with an empty cache directory (what a new user
   waits for: check, compile, link, store), then `tdsl.load` of the cached file (median of
   several processes), per file and per kernel, and whether that load imported lark or the MLIR
   bindings (it should import neither).
3. The kernels of `bench/kernels.py` (its cases, `bench/kernel_cases.py`): tdsl's cold compile
   against Numba's first-call compile (`@njit(fastmath=True)` and
   `@njit(parallel=True, fastmath=True)`), after Numba's own import and start-up, which are
   reported apart.
4. Per-call overhead on 1-element arrays: tdsl, a Numba njit function and numpy ufuncs.

Workers run as `compile.py --worker KIND ARG` and answer one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import compile_tables as tables
import harness as h
from compile_tables import (
    EXTRA,
    format_files,
    format_kernel_summary,
    format_loads,
    format_numba,
    format_overhead,
)

TRIVIAL = "kernel bench_trivial(x: f32[N]) -> (y: f32[N]) {\n    y = x + 1.0\n}\n"
"""The name of the bench's own source (`kernel_cases.TDSL_EXTRA`) among the sample files."""
EXTRA_FILE = "bench/kernel_cases.py"
"""The file that holds `TDSL_EXTRA`, relative to the repository root; also its tdsl filename
(`kernel_cases.EXTRA_FILENAME`)."""



def _source(name: str) -> tuple[str, str]:
    """(text, filename) of a sample file name (`softmax`) or of `bench:extra`."""
    if name == EXTRA:
        return _extra_source(), EXTRA_FILE
    path = h.SAMPLES / f"{name}.tdsl"
    return path.read_text(encoding="utf-8"), str(path)


def _extra_source() -> str:
    """`kernel_cases.TDSL_EXTRA`, read without importing kernel_cases.py (which imports
    Numba)."""
    import ast

    tree = ast.parse((h.REPO / EXTRA_FILE).read_text(encoding="utf-8"))
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == "TDSL_EXTRA"):
            return ast.literal_eval(node.value)
    raise LookupError(f"TDSL_EXTRA not found in {EXTRA_FILE}")


# ---- workers (each runs in a fresh process) -------------------------------------------------


class Laps:
    """Wall-clock and process CPU seconds between successive `lap()` calls."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def lap(self) -> dict[str, float]:
        """{"wall": s, "cpu": s} since the previous lap (or the start)."""
        wall, cpu = time.perf_counter(), time.process_time()
        out = {"wall": wall - self.wall, "cpu": cpu - self.cpu}
        self.wall, self.cpu = wall, cpu
        return out


def worker_cold(name: str, repeat: int) -> dict[str, Any]:
    """Imports, compiler start-up, check, whole-file compile and per-kernel compiles."""
    import dataclasses

    out: dict[str, Any] = {}
    laps = Laps()
    import tdsl  # noqa: F401

    out["import_tdsl"] = laps.lap()
    from tdsl.check import check_source
    from tdsl.compiler import compile_program

    out["import_front"] = laps.lap()
    _import_backend()
    out["import_backend"] = laps.lap()
    compile_program(check_source(TRIVIAL, "trivial.tdsl"))
    out["startup"] = laps.lap()
    text, filename = _source(name)
    laps.lap()
    program = check_source(text, filename)
    out["check"] = laps.lap()
    compile_program(program)
    out["compile_file"] = laps.lap()
    kernels: dict[str, list[dict[str, float]]] = {}
    for kernel in program.kernels:
        single = dataclasses.replace(program, kernels=(kernel,))
        kernels[kernel.name] = []
        for _ in range(repeat):
            laps.lap()
            compile_program(single)
            kernels[kernel.name].append(laps.lap())
    out["kernels"] = kernels
    return out


def _import_backend() -> None:
    """Import the modules the compiler loads lazily (MLIR bindings, llvmlite, passes)."""
    import importlib
    import importlib.util

    for module in ("mlir.ir", "mlir.passmanager", "llvmlite.binding", "tdsl.to_mlir",
                   "tdsl.pipelines", "tdsl.codegen.llvm"):
        try:
            if importlib.util.find_spec(module) is not None:
                importlib.import_module(module)
        except ImportError:
            pass


def worker_load(name: str) -> dict[str, Any]:
    """`tdsl.load` in this fresh process (cold or cached, as TDSL_CACHE_DIR has it), after
    importing numpy (which any caller has) and tdsl; then a second load in the same process."""
    out: dict[str, Any] = {}
    laps = Laps()
    import numpy  # noqa: F401

    out["import_numpy"] = laps.lap()
    import tdsl

    out["import_tdsl"] = laps.lap()
    text, filename = _source(name)
    laps.lap()
    module = tdsl.loads(text, filename=filename)
    out["load"] = laps.lap()
    out["imported"] = sorted(m for m in ("lark", "mlir", "tdsl.check", "tdsl.parser")
                             if m in sys.modules)
    out["hit"] = "tdsl.check" not in sys.modules
    out["kernels"] = len(module.kernels)
    laps.lap()
    tdsl.loads(text, filename=filename)
    out["second_load"] = laps.lap()
    return out


def worker_numba(repeat: int) -> dict[str, Any]:
    """Numba's import, start-up and first-call compile of each bench kernel (serial and
    parallel), on tiny inputs: the first call minus the fastest of `repeat` later calls."""
    out: dict[str, Any] = {"kernels": {}}
    laps = Laps()
    import numba

    out["import_numba"] = laps.lap()
    import kernel_cases
    import numpy as np

    out["import_bench"] = laps.lap()

    def trivial(x):
        return x + 1.0

    numba.njit(trivial)(np.float32(1.0))
    out["startup"] = laps.lap()
    want = {"numba", "numba-par"}
    for _names, builder in kernel_cases.BUILDERS:
        for case in builder(kernel_cases.TINY, want):
            entry = {}
            for impl in ("numba", "numba-par"):
                fn = case.impls.get(impl)
                if fn is None:
                    continue
                laps.lap()
                fn()
                first = laps.lap()
                again = []
                for _ in range(max(1, repeat)):
                    fn()
                    again.append(laps.lap())
                entry[impl] = {k: max(0.0, first[k] - min(a[k] for a in again))
                               for k in ("wall", "cpu")}
            out["kernels"][case.name] = {"compile": entry, "tdsl": case.tdsl}
    return out


def worker_overhead(quick: bool, clock: str) -> dict[str, Any]:
    """Microseconds per call on 1-element arrays (best and median of several timeit runs), by
    wall clock or process CPU time."""
    import timeit

    import numba_impls
    import numpy as np

    import tdsl

    saxpy = tdsl.load(h.SAMPLES / "saxpy.tdsl").saxpy
    total = tdsl.load(h.SAMPLES / "total.tdsl").total
    layernorm = tdsl.load(h.SAMPLES / "layernorm.tdsl").layernorm
    x, y, z = (np.ones(1, np.float32) for _ in range(3))
    x2, o2 = np.ones((1, 1), np.float32), np.empty((1, 1), np.float32)
    a = np.float32(2.0)
    nb = numba_impls.jitted("nb_saxpy", False)
    nbp = numba_impls.jitted("nb_saxpy", True)
    nb(a, x, y, z)
    nbp(a, x, y, z)
    calls = {
        "empty Python lambda (timing floor)": lambda: None,
        "tdsl saxpy(a, x, y, z=out)": lambda: saxpy(a, x, y, z=z),
        "tdsl saxpy(a, x, y) (allocates z)": lambda: saxpy(a, x, y),
        "tdsl saxpy(2.0, x, y, z=out) (Python float)": lambda: saxpy(2.0, x, y, z=z),
        "tdsl total(x) (rank-0 output)": lambda: total(x),
        "tdsl layernorm(x, g, b, y=out) (1x1)": lambda: layernorm(x2, x, y, y=o2),
        "numba njit saxpy(a, x, y, out)": lambda: nb(a, x, y, z),
        "numba njit(parallel) saxpy(a, x, y, out)": lambda: nbp(a, x, y, z),
        "numpy ufunc np.add(x, y, out=out)": lambda: np.add(x, y, out=z),
        "numpy a * x + y (2 ufuncs, allocates)": lambda: a * x + y,
    }
    result = {}
    runs = 3 if quick else 7
    for label, fn in calls.items():
        timer = timeit.Timer(fn, timer=time.process_time if clock == "cpu" else time.perf_counter)
        number, _ = timer.autorange()
        number = max(number, 1000)
        per = [t / number for t in timer.repeat(repeat=runs, number=number)]
        result[label] = {"best_us": min(per) * 1e6, "median_us": statistics.median(per) * 1e6}
    return result


# ---- the driver -------------------------------------------------------------------------------


def spawn(args: list[str], env: dict[str, str], timeout: float = 600) -> dict[str, Any]:
    """Run a worker of this script in a fresh process and return its JSON answer (or an
    `error` entry)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", *args]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:200]}"}
    return json.loads(lines[-1])


def cached_loads(name: str, env: dict[str, str], count: int) -> list[dict[str, Any]]:
    """`count` cached loads, each in a fresh process. A load that missed the cache (it had to
    compile: the cache key fingerprints the compiler's files, which may change while someone
    edits them) is retried, up to `count` extra times; misses are kept, marked."""
    out: list[dict[str, Any]] = []
    misses = 0
    while sum(1 for r in out if r.get("hit")) < count and misses <= count:
        result = spawn(["load", name], env)
        if "error" in result:
            out.append(result)
            break
        out.append(result)
        misses += not result["hit"]
    return out


def run(args: argparse.Namespace) -> int:
    """Measure and print everything."""
    tables.CLOCK = args.clock
    all_files = sorted(p.stem for p in h.SAMPLES.glob("*.tdsl")) + [EXTRA]
    if args.files:
        files = [f for f in args.files.split(",") if f]
    elif args.quick:
        files = ["saxpy", "softmax", "matmul", EXTRA]
    else:
        files = all_files
    repeat = args.repeat
    loads = args.loads or (1 if args.quick else 2)
    base_env = h.bench_env(h.usable_cores())
    for var in h.BLAS_ENV_UNSET:  # this process runs no benchmark: describe the workers' env
        os.environ.pop(var, None)
    os.environ.update(base_env)
    info = h.machine_info(h.usable_cores())
    print(f"== tdsl compile-time benchmarks ({'quick' if args.quick else 'full'}) ==")
    print(h.format_machine(info))
    print(f"times   : ms ({'process CPU time' if tables.CLOCK == 'cpu' else 'wall clock'}); every "
          "row's numbers come from fresh processes (see the header of bench/compile.py)")
    sys.stdout.flush()
    t_start = time.perf_counter()
    report: dict[str, Any] = {"machine": info, "clock": tables.CLOCK, "files": {}, "numba": None,
                              "overhead": None}

    cold_env = dict(base_env, TDSL_CACHE="0")
    for name in files:
        print(f"  compiling {name} ...", file=sys.stderr, flush=True)
        report["files"][name] = {"cold": spawn(["cold", name, str(repeat)], cold_env)}
    with tempfile.TemporaryDirectory(prefix="tdsl-bench-cache-") as cache:
        load_env = dict(base_env, TDSL_CACHE_DIR=cache)
        load_env.pop("TDSL_CACHE", None)
        # Installed packages have bytecode; with PYTHONDONTWRITEBYTECODE (set on some CI
        # machines) every fresh process would compile tdsl's sources again (~60 ms).
        load_env.pop("PYTHONDONTWRITEBYTECODE", None)
        for name in files:
            print(f"  loading {name} ...", file=sys.stderr, flush=True)
            entry = report["files"][name]
            entry["cold_load"] = spawn(["load", name], load_env)
            entry["cached_load"] = cached_loads(name, load_env, loads)
    print("  numba ...", file=sys.stderr, flush=True)
    report["numba"] = spawn(["numba", str(repeat)], base_env)
    print("  call overhead ...", file=sys.stderr, flush=True)
    report["overhead"] = spawn(["overhead", "quick" if args.quick else "full", tables.CLOCK], base_env)
    report["elapsed_s"] = time.perf_counter() - t_start

    print()
    print(format_files(report["files"]))
    print()
    print(format_kernel_summary(report["files"]))
    print()
    print(format_loads(report["files"]))
    print()
    print(format_numba(report["numba"], report["files"]))
    print()
    print(format_overhead(report["overhead"]))
    print(f"\n{len(files)} files in {report['elapsed_s']:.0f} s; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        h.write_json(args.json, report)
    failed = [n for n, e in report["files"].items()
              if "error" in e["cold"] or "error" in e["cold_load"]]
    if failed:
        print(f"tdsl FAILED to compile or load: {', '.join(failed)}")
    return 1 if failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a few files, one repeat (smoke run)")
    p.add_argument("--files", help="comma-separated sample names (and/or bench:extra)")
    p.add_argument("--repeat", type=int, default=1,
                   help="compiles of each kernel alone, the best counts (default 1)")
    p.add_argument("--loads", type=int,
                   help="fresh processes per cached load (default 2; 1 with --quick)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="show wall-clock times (default) or process CPU times, which a busy "
                        "machine disturbs less (the JSON keeps both)")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point (or a worker)."""
    args = parse_args(argv)
    if args.worker:
        kind, *rest = args.worker
        if kind == "cold":
            result = worker_cold(rest[0], int(rest[1]))
        elif kind == "load":
            result = worker_load(rest[0])
        elif kind == "numba":
            result = worker_numba(int(rest[0]))
        elif kind == "overhead":
            result = worker_overhead(rest[0] == "quick", rest[1])
        else:
            raise SystemExit(f"unknown worker {kind}")
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
