"""Shared pieces of the tdsl benchmarks: the machine description printed at the top of every
run, the benchmark environment (BLAS settings, thread counts), timing, and plain-text tables.

`bench/kernels.py`, `bench/kernel_cases.py` and `bench/compile.py` import this module; it
imports nothing heavy at module level (numpy and threadpoolctl are imported where they are
used).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"

CHILD_MARK = "TDSL_BENCH_CHILD"
"""Set in the environment of a benchmark that re-executed itself with the bench settings."""

BLAS_ENV_UNSET = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
"""Set on some machines here for old OpenBLAS builds; they slow a current numpy down, so the
benchmark's own process runs without them (never changed anywhere else)."""

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMBA_NUM_THREADS", "TDSL_NUM_THREADS")
"""Every thread-count knob of numpy's BLAS, Numba and tdsl, set to one value per run."""


# ---- the machine -------------------------------------------------------------------------


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask), else `os.cpu_count()`."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty off Linux)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def _caches() -> str:
    """Cache sizes of cpu0 from sysfs, like `L1d 32K, L2 1024K, L3 32768K`."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    out = []
    for index in sorted(base.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        out.append(f"L{level}{'d' if kind == 'Data' else ''} {size}")
    return ", ".join(out)


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - any failure just means "unknown"
        return "-"


def blas_info() -> list[dict[str, Any]]:
    """numpy's BLAS as threadpoolctl sees it (library, version, kernel = `architecture`,
    threads), else numpy's build configuration. Imports numpy."""
    import numpy as np

    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        np.ones(1) @ np.ones(1)  # make sure the BLAS library is loaded
        return [{k: v for k, v in info.items() if k != "filepath"}
                for info in threadpool_info() if info.get("user_api") == "blas"]
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return [{"name": blas.get("name"), "version": blas.get("version"),
                 "architecture": "? (install threadpoolctl to see the kernel)"}]
    except Exception:  # noqa: BLE001
        return [{"name": "unknown"}]


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """Everything the header of a benchmark run states about the machine and the software."""
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    isa = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                       "avx512_bf16", "amx_tile") if f in flags]
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    info: dict[str, Any] = {
        "cpu": cpu.get("model name", platform.processor() or platform.machine()),
        "cores": usable_cores(),
        "cpu_count": os.cpu_count(),
        "isa": isa,
        "caches": _caches(),
        "memory_gib": _memory_gib(),
        "load_avg": [round(x, 2) for x in load],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {m: _version(m) for m in ("tdsl", "numpy", "numba", "llvmlite", "scipy",
                                                "xtc-mlir-python-bindings")},
        "blas": blas_info(),
        "threads": threads,
        "env": {k: os.environ.get(k) for k in THREAD_VARS + BLAS_ENV_UNSET},
        "env_before_bench": json.loads(os.environ.get("TDSL_BENCH_ORIGINAL_ENV", "{}")),
    }
    return info


def format_machine(info: dict[str, Any]) -> str:
    """The machine header as plain text lines."""
    lines = [
        f"machine : {info['cpu']}, {info['cores']} usable cores (of {info['cpu_count']}), "
        f"{info['memory_gib']:.1f} GiB" if info.get("memory_gib") else
        f"machine : {info['cpu']}, {info['cores']} usable cores",
        f"isa     : {' '.join(info['isa']) or '-'}; caches: {info['caches'] or '-'}",
        f"load    : {' '.join(str(x) for x in info['load_avg'])} (1/5/15 min)"
        + ("  ** the machine is busy: timings are noisy **"
           if info["load_avg"][0] > 0.5 * info["cores"] else ""),
        f"software: python {info['python']}, "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
    ]
    for blas in info["blas"]:
        desc = " ".join(f"{k}={v}" for k, v in blas.items() if k not in ("user_api",))
        lines.append(f"numpy BLAS: {desc}")
    env = info["env"]
    lines.append("threads : " + " ".join(f"{k}={env.get(k)}" for k in THREAD_VARS))
    before = info.get("env_before_bench") or {}
    unset = [f"{k} (was {before[k]})" for k in BLAS_ENV_UNSET if before.get(k) is not None]
    still = [f"{k}={env[k]}" for k in BLAS_ENV_UNSET if env.get(k) is not None]
    if unset:
        lines.append("env     : unset for this run: " + ", ".join(unset))
    if still:
        lines.append("env     : still set (numpy may run a slow BLAS kernel): " + ", ".join(still))
    return "\n".join(lines)


# ---- the benchmark environment -------------------------------------------------------------


def thread_count(spec: str) -> int:
    """`1` or `all` (every usable core) or a number, as an int."""
    return usable_cores() if spec == "all" else max(1, int(spec))


def bench_env(threads: int) -> dict[str, str]:
    """This process's environment with the BLAS overrides removed and every thread knob set."""
    env = dict(os.environ)
    original = {k: env.pop(k) for k in BLAS_ENV_UNSET if k in env}
    env["TDSL_BENCH_ORIGINAL_ENV"] = json.dumps(original)
    for var in THREAD_VARS:
        env[var] = str(threads)
    env[CHILD_MARK] = "1"
    return env


def is_bench_child() -> bool:
    """True inside a process started by `reexec` (or `run_child`)."""
    return os.environ.get(CHILD_MARK) == "1"


def reexec(threads: int, argv: Sequence[str] | None = None) -> None:
    """Replace this process by the same script under the benchmark environment (thread
    counts must be set before numpy, Numba or tdsl start their thread pools)."""
    args = list(sys.argv if argv is None else argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *args], bench_env(threads))


# ---- timing -------------------------------------------------------------------------------


@dataclass
class Timing:
    """Wall-clock times of repeated calls (seconds) and the process CPU time they used.

    `clock` picks what `median` and `best` report: "wall", or "cpu" (the process's CPU time,
    which a busy machine inflates far less; meaningful for one-thread runs only).
    """

    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    warmup: float = 0.0
    note: str = ""
    clock: str = "wall"

    @property
    def samples(self) -> list[float]:
        """The times of the chosen clock."""
        return self.cpu_times if self.clock == "cpu" else self.times

    @property
    def median(self) -> float:
        """The median call time."""
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        """The fastest call."""
        return min(self.samples)

    @property
    def spread(self) -> float:
        """(max - min) / median, a quick noise indicator."""
        s = self.samples
        return (max(s) - min(s)) / self.median if self.median else 0.0

    @property
    def parallelism(self) -> float:
        """CPU time over wall time: about the number of cores a call kept busy."""
        wall = sum(self.times)
        return sum(self.cpu_times) / wall if wall else 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary."""
        data = asdict(self)
        data.update(median=self.median, best=self.best, reps=len(self.times),
                    wall_median=statistics.median(self.times),
                    cpu_median=statistics.median(self.cpu_times),
                    parallelism=round(self.parallelism, 2))
        return data


@dataclass
class Policy:
    """How many times to call: repeats fill `target_s` within [min_reps, max_reps] (at least
    `slow_min_reps` for a call slower than `slow_s`); a call slower than `single_s` is timed
    once. `clock` is "wall" or "cpu" (see `Timing`)."""

    min_reps: int = 5
    max_reps: int = 30
    target_s: float = 0.5
    single_s: float = 5.0
    slow_s: float = 0.25
    slow_min_reps: int = 3
    clock: str = "wall"


def time_calls(fn: Callable[[], Any], policy: Policy, warm: float | None = None) -> Timing:
    """Time `fn`: median of several repeats, GC off. One warm-up call comes first unless the
    caller already made one and passes its duration as `warm`."""
    gc_was = gc.isenabled()
    gc.disable()
    try:
        if warm is None:
            t0 = time.perf_counter()
            c0 = time.process_time()
            fn()
            warm = time.perf_counter() - t0
            warm_cpu = time.process_time() - c0
            if warm > policy.single_s:
                return Timing([warm], [warm_cpu], warm, "1 call", policy.clock)
        timing = Timing(warmup=warm, clock=policy.clock)
        floor = policy.slow_min_reps if warm > policy.slow_s else policy.min_reps
        reps = max(floor, min(policy.max_reps, int(policy.target_s / max(warm, 1e-9))))
        for _ in range(reps):
            c0 = time.process_time()
            t0 = time.perf_counter()
            fn()
            t1 = time.perf_counter()
            timing.cpu_times.append(time.process_time() - c0)
            timing.times.append(t1 - t0)
        return timing
    finally:
        if gc_was:
            gc.enable()


# ---- output ---------------------------------------------------------------------------------


def fmt_ms(seconds: float | None) -> str:
    """Milliseconds with 3 significant digits (`-` for none)."""
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_ratio(value: float | None) -> str:
    """A speed ratio like `2.31x` (`-` for none)."""
    if value is None:
        return "-"
    return f"{value:.2f}x" if value < 100 else f"{value:.0f}x"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
                 left: Sequence[int] = (0,)) -> str:
    """A plain-text table: columns padded to their widest cell, right-aligned except the
    column indices in `left`."""
    widths = [len(h) for h in headers]
    for row in rows:
        for k, cell in enumerate(row):
            widths[k] = max(widths[k], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if k in left else c.rjust(w)
                         for k, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write `data` as indented JSON."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, default=str)
        f.write("\n")
