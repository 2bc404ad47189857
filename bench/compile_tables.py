"""The tables of `bench/compile.py` (compile, load, Numba, per-call overhead) from its report,
and the clock they show."""

from __future__ import annotations

import statistics
from typing import Any

import harness as h

EXTRA = "bench:extra"
"""The name of the bench's own tdsl source (`kernel_cases.TDSL_EXTRA`) among the files."""
CONTRACTION_HINTS = ("matmul", "bmm", "gemm", "linear", "attention", "conv", "chain3", "einsum",
                     "matvec", "sqdist", "cosine", "bilinear", "mha")


CLOCK = "wall"
"""The clock the tables show: "wall" or "cpu" (`--clock`); the JSON keeps both."""


def sec(lap: dict[str, float] | list[dict[str, float]] | None) -> float | None:
    """Seconds of a lap on the chosen clock (the fastest of a list of laps)."""
    if lap is None:
        return None
    if isinstance(lap, list):
        return min(x[CLOCK] for x in lap) if lap else None
    return lap[CLOCK]


def ms(lap: dict[str, float] | list[dict[str, float]] | float | None) -> str:
    """Milliseconds for a table cell, from seconds or a lap."""
    seconds = lap if isinstance(lap, float) or lap is None else sec(lap)
    return "-" if seconds is None else h.fmt_ms(seconds)


def is_contraction(name: str) -> bool:
    """A kernel whose name suggests a contraction (held to the 1 s compile target, not 150 ms)."""
    return any(hint in name for hint in CONTRACTION_HINTS)


def format_files(files: dict[str, Any]) -> str:
    """Table 1: cold compile per file."""
    headers = ["file", "kernels", "import tdsl", "+front", "+backend", "startup", "check",
               "compile file", "per kernel (median)", "slowest kernel"]
    rows, notes = [], []
    for name, entry in files.items():
        cold = entry["cold"]
        if "error" in cold:
            rows.append([name, "-", *["-"] * 8])
            notes.append(f"  {name}: {cold['error']}")
            continue
        ks = {k: sec(v) for k, v in cold["kernels"].items()}
        slowest = max(ks, key=lambda k: ks[k]) if ks else None
        rows.append([name, str(len(ks)), ms(cold["import_tdsl"]), ms(cold["import_front"]),
                     ms(cold["import_backend"]), ms(cold["startup"]), ms(cold["check"]),
                     ms(cold["compile_file"]),
                     ms(statistics.median(ks.values())) if ks else "-",
                     f"{ms(ks[slowest])} {slowest}" if slowest else "-"])
    title = ("cold compile per file, ms (fresh process per file, TDSL_CACHE=0; startup = the "
             "first compile in the process, a trivial kernel; per kernel = each kernel "
             "compiled alone afterwards, best of the repeats)")
    return "\n".join([title, h.format_table(headers, rows, left=(0, 9)), *notes])


def format_kernel_summary(files: dict[str, Any]) -> str:
    """Per-kernel compile times: distribution, the slowest, and the targets."""
    plain, contraction = [], []
    for name, entry in files.items():
        for kernel, laps in entry["cold"].get("kernels", {}).items():
            group = contraction if is_contraction(kernel) else plain
            group.append((sec(laps), f"{name}:{kernel}"))
    lines = ["per-kernel cold compile (warm process), ms:"]
    for label, group, target in (("without a contraction", plain, 0.150),
                                 ("with a contraction (by name)", contraction, 1.0)):
        if not group:
            continue
        secs = sorted(t for t, _ in group)
        over = [f"{n} {ms(t)}" for t, n in sorted(group, reverse=True) if t > target]
        lines.append(f"  {label}: {len(secs)} kernels, median {ms(statistics.median(secs))}, "
                     f"p90 {ms(secs[int(0.9 * (len(secs) - 1))])}, max {ms(secs[-1])}; "
                     f"target <= {ms(target)} median: "
                     f"{'met' if statistics.median(secs) <= target else 'NOT met'}"
                     + (f"; over {ms(target)}: {', '.join(over[:8])}"
                        + (" ..." if len(over) > 8 else "") if over else ""))
    slowest = sorted(plain + contraction, reverse=True)[:10]
    lines.append("  slowest: " + ", ".join(f"{n} {ms(t)}" for t, n in slowest))
    return "\n".join(lines)


def format_loads(files: dict[str, Any]) -> str:
    """Table 2: cold load (empty cache) and cached load in fresh processes."""
    headers = ["file", "kernels", "cold load (empty cache)", "cached load", "per kernel",
               "2nd load same process", "import numpy", "import tdsl", "imported"]
    rows, notes = [], []
    for name, entry in files.items():
        cold = entry["cold_load"]
        cached = [c for c in entry["cached_load"] if c.get("hit")]
        if "error" in cold:
            notes.append(f"  {name}: cold load: {cold['error']}")
        for c in entry["cached_load"]:
            if "error" in c:
                notes.append(f"  {name}: cached load: {c['error']}")
            elif not c["hit"]:
                notes.append(f"  {name}: a cached load missed the cache ({ms(c['load'])} ms; "
                             "the compiler's files changed during the run?), left out")
        if not cached:
            rows.append([name, "-", ms(cold.get("load")), *["-"] * 6])
            continue
        load = statistics.median(sec(c["load"]) for c in cached)
        n = cached[0]["kernels"]
        rows.append([name, str(n), ms(cold.get("load")), ms(load), ms(load / max(n, 1)),
                     ms(statistics.median(sec(c["second_load"]) for c in cached)),
                     ms(statistics.median(sec(c["import_numpy"]) for c in cached)),
                     ms(statistics.median(sec(c["import_tdsl"]) for c in cached)),
                     ",".join(cached[0]["imported"]) or "no compiler"])
    title = ("loads in fresh processes, ms (cold = tdsl.load with an empty TDSL_CACHE_DIR: "
             "check, compile, link, store; cached = median over the processes; neither "
             "includes `import numpy` or `import tdsl`, shown apart; imported = whether the "
             "cached load imported lark / MLIR / the checker)")
    return "\n".join([title, h.format_table(headers, rows, left=(0, 8)), *notes])


def format_numba(numba: dict[str, Any], files: dict[str, Any]) -> str:
    """Table 3: tdsl cold compile against Numba's first-call compile, per bench kernel."""
    if not numba or "error" in numba:
        return f"Numba compile: {numba.get('error') if numba else 'not measured'}"
    headers = ["bench kernel", "tdsl kernel", "tdsl compile", "numba", "numba parallel"]
    rows = []
    for case, entry in numba["kernels"].items():
        tdsl_ref = entry.get("tdsl")
        tdsl_s = None
        label = "-"
        if tdsl_ref:
            src = EXTRA if tdsl_ref[0] == "extra" else tdsl_ref[0]
            label = f"{src}:{tdsl_ref[1]}"
            tdsl_s = sec(files.get(src, {}).get("cold", {}).get("kernels", {}).get(tdsl_ref[1]))
        comp = entry["compile"]
        rows.append([case, label, ms(tdsl_s), ms(comp.get("numba")), ms(comp.get("numba-par"))])
    title = (f"compile: tdsl (cold, per kernel) against Numba's first call minus a second call, "
             f"ms; Numba's own costs: import {ms(numba['import_numba'])}, first function "
             f"{ms(numba['startup'])}")
    return "\n".join([title, h.format_table(headers, rows, left=(0, 1))])


def format_overhead(overhead: dict[str, Any]) -> str:
    """Table 4: per-call overhead."""
    if not overhead or "error" in overhead:
        return f"call overhead: {overhead.get('error') if overhead else 'not measured'}"
    headers = ["call on 1-element arrays", "best us", "median us"]
    rows = [[k, f"{v['best_us']:.2f}", f"{v['median_us']:.2f}"] for k, v in overhead.items()]
    clock = "process CPU time" if CLOCK == "cpu" else "wall clock"
    title = f"per-call overhead, microseconds ({clock}, timeit: best and median of the runs)"
    return "\n".join([title, h.format_table(headers, rows, left=(0,))])
