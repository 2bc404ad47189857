"""The GPU check for a lent device machine, in two halves.

    python tools/device_check.py prepare [--batch N]   # here: compile everything, pack wheels
    python tools/device_check.py run                   # there: tests, fuzz batch, benchmarks

The device machine has a GPU, Python 3.12, numpy, PyTorch and CuPy, but neither the MLIR
bindings (too large to carry) nor lark nor this llvmlite. `prepare` therefore compiles, on
this machine, every kernel the GPU run needs into `.gpu/bundles` (the `TDSL_CUDA_BUNDLES`
folder, for sm_90): the sample cases and hand-built kernels of tests/e2e/test_cuda.py, the
fuzz corpus, a fresh batch of generated programs (tests/fuzz/batch.py) and bench/gpu.py. It
also puts the wheels that `run` installs in `.whl` (tdsl itself, lark, llvmlite).

`run` writes its logs and a JSON of the benchmark to `$OUT` and prints a summary last. Call it
from the device tool with `carry: [".gpu", ".whl"]` and the command
`mkdir -p /tmp/site && tar -xJf .whl/llvmlite.tar.xz -C /tmp/site && python3 -m pip install
-q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site python3
tools/device_check.py run`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / ".gpu"
BUNDLES = GPU / "bundles"
BATCH = GPU / "batch.jsonl"
WHEELS = ROOT / ".whl"
ARCH = "sm_90"


def _environment() -> dict[str, str]:
    env = dict(os.environ, TDSL_CUDA_BUNDLES=str(BUNDLES), TDSL_CUDA_ARCH=ARCH,
               PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests" / "e2e"),
                                                      str(ROOT / "tests" / "fuzz"),
                                                      env.get("PYTHONPATH")]))
    return env


def _compile_test_kernels() -> None:
    """Compile (into BUNDLES, through TDSL_CUDA_BUNDLES) every kernel test_cuda.py and
    bench/gpu.py run."""
    import handbuilt_kernels as hk
    import test_cuda
    from sample_cases import CASES

    import tdsl
    from tdsl.runtime.cuda import compile_kernel

    sys.path.insert(0, str(ROOT / "bench"))
    import gpu as bench_gpu

    paths = sorted({str(case.path) for case in CASES})
    for path in paths:
        for kernel in tdsl.load(path, target="cuda"):
            kernel.executable()
    for name, _ in test_cuda.HANDBUILT_ON_GPU:
        compile_kernel(getattr(hk, name)())
    for source in (test_cuda.TWICE, bench_gpu.SOURCE):
        for kernel in tdsl.loads(source, target="cuda"):
            kernel.executable()
    print(f"compiled {len(paths)} sample files, {len(test_cuda.HANDBUILT_ON_GPU)} hand-built "
          "kernels and the benchmark")


def _compile_corpus() -> None:
    import gen

    for path in gen.corpus_entries():
        case, record = gen.load_case(path)
        if "cuda" in record.get("targets", ["cuda"]):
            problems = gen.run_case(case, ["cuda"])
            for problem in problems:
                if "compiling raised" in problem:
                    print(f"corpus {path.name}: {problem[:400]}")


def prepare(batch: int) -> int:
    """Compile every kernel of the GPU run and pack the wheels."""
    env = _environment()
    os.environ.update(env)
    sys.path[:0] = env["PYTHONPATH"].split(os.pathsep)[:2]
    shutil.rmtree(BUNDLES, ignore_errors=True)  # the key does not cover compiler changes
    BUNDLES.mkdir(parents=True)
    start = time.perf_counter()
    _compile_test_kernels()
    _compile_corpus()
    draw = [sys.executable, str(ROOT / "tests/fuzz/batch.py"), "draw", str(batch), str(BATCH)]
    subprocess.run(draw, check=True, env=env)
    shards = [subprocess.Popen([sys.executable, str(ROOT / "tests/fuzz/batch.py"), "run",
                                str(BATCH), "--targets", "cuda", "--compile-only",
                                "--shard", f"{i}/2"], env=env) for i in range(2)]
    failed = sum(1 for p in shards if p.wait() != 0)
    print(f"{len(list(BUNDLES.iterdir()))} bundles in {time.perf_counter() - start:.0f} s"
          + (f"; {failed} batch shards had compile failures (above)" if failed else ""))
    _pack_wheels()
    size = sum(p.stat().st_size for p in WHEELS.iterdir()) >> 20
    print(f"wheels in {WHEELS} ({size} MiB)")
    return 0


def _pack_wheels() -> None:
    """tdsl's and lark's wheels, and llvmlite's unpacked into an xz tarball: its wheel alone
    (57 MiB) would leave no room for the bundles in the 64 MiB that travel."""
    WHEELS.mkdir(exist_ok=True)
    for old in WHEELS.glob("*.whl"):
        old.unlink()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(WHEELS), str(ROOT)], check=True)
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' leftovers
    download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64"]
    subprocess.run(download + ["-d", str(WHEELS), "lark==1.3.1"], check=True)
    tarball = WHEELS / "llvmlite.tar.xz"
    if tarball.exists():
        return
    scratch = GPU / "llvmlite"
    shutil.rmtree(scratch, ignore_errors=True)
    subprocess.run(download + ["-d", str(scratch), "llvmlite==0.50.0"], check=True)
    wheel = next(scratch.glob("*.whl"))
    shutil.unpack_archive(wheel, scratch / "site", format="zip")
    subprocess.run(["tar", "-cJf", str(tarball), "-C", str(scratch / "site"), "."], check=True)
    shutil.rmtree(scratch)


def _step(name: str, command: list[str], out: Path, env: dict[str, str], limit: int) -> str:
    """Run one step with a time limit, its output to OUT/name.log; a summary line."""
    start = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        try:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  cwd=ROOT, timeout=limit).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    lines = (out / f"{name}.log").read_text(errors="replace").splitlines()
    return f"{name}: exit {code} in {time.perf_counter() - start:.0f} s; last: " + (
        lines[-1] if lines else "")


def run() -> int:
    """The device half: every step, then a summary."""
    out = Path(os.environ.get("OUT", "/tmp/device-out"))
    out.mkdir(parents=True, exist_ok=True)
    env = _environment()
    python = sys.executable
    pytest = [python, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider",
              "-n", "4", "-rfE"]
    summary = [
        _step("device", ["nvidia-smi", "-L"], out, env, 30),
        _step("info", [python, "-c", "import tdsl.cuda as c; print(c.device_info())"], out,
              env, 60),
        _step("tests", pytest + ["tests/e2e/test_cuda.py", "tests/fuzz/test_corpus.py"], out,
              env, 200),
        _step("batch", [python, "tests/fuzz/batch.py", "run", str(BATCH), "--targets", "cuda"],
              out, env, 120),
        _step("bench", [python, "bench/gpu.py", "--json", str(out / "bench.json")], out, env,
              130),
        _step("profile", ["ncu", "--clock-control", "none", "--target-processes", "all",
                          "--kernel-name", "regex:tdsl_", "--launch-count", "8",
                          "--section", "SpeedOfLight", "--section", "LaunchStats",
                          "--section", "Occupancy", python, "bench/gpu.py", "--only",
                          "softmax,row_sum", "--repeat", "1"], out, env, 120),
    ]
    print((out / "bench.log").read_text(errors="replace")[-3000:])
    print("\n".join(summary))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="compile the GPU run's kernels and pack the wheels")
    p.add_argument("--batch", type=int, default=300, help="generated programs to draw")
    sub.add_parser("run", help="on the device machine: tests, fuzz batch, benchmarks")
    args = parser.parse_args()
    return prepare(args.batch) if args.command == "prepare" else run()


if __name__ == "__main__":
    sys.exit(main())
