"""Concurrency: many threads calling the same and different kernels at once (results checked,
first calls racing to compile), and several processes compiling into one disk cache at once,
including processes killed (SIGKILL) in the middle of writing an entry: afterwards the cache
still works and no partial entry is ever used."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "support"))
from concurrent_work import run_threads  # noqa: E402

import tdsl  # noqa: E402
from tdsl import api  # noqa: E402
from tdsl.codegen.link import find_linker  # noqa: E402
from tdsl.runtime import cache  # noqa: E402

TARGETS = ["reference"] + [t for t in os.environ.get("TDSL_TEST_TARGETS", "reference,cpu")
                           .split(",") if t not in ("reference", "")]
SOURCE = """
kernel softmax(x: f32[B, N]) -> (y: f32[B, N]) {
    m[b] = max[n](x[b, n])
    e[b, n] = exp(x[b, n] - m[b])
    s[b] = sum[n](e[b, n])
    y[b, n] = e[b, n] / s[b]
}
kernel saxpy(a: f32, x: f32[N], y: f32[N]) -> (z: f32[N]) {
    z = a * x + y
}
kernel rowsum(x: f64[M, N]) -> (s: f64[M]) {
    s[i] = sum[j](x[i, j])
}
kernel wrap(x: i32[N]) -> (y: i32[N]) {
    y = x * 1000003 + x / 7
}
"""


def _inputs(kind: str, seed: int):
    rng = np.random.default_rng(seed)
    n = 8 + seed % 37
    if kind == "softmax":
        return (rng.uniform(-3, 3, (1 + seed % 5, n)).astype(np.float32),)
    if kind == "saxpy":
        return (float(seed % 3), rng.uniform(-1, 1, n).astype(np.float32),
                rng.uniform(-1, 1, n).astype(np.float32))
    if kind == "rowsum":
        return (rng.uniform(-1, 1, (3, n)),)
    return (rng.integers(-2**31, 2**31, n, dtype=np.int64).astype(np.int32),)


@pytest.mark.parametrize("target", TARGETS)
def test_many_threads_same_and_different_kernels(target):
    mod = tdsl.loads(SOURCE, target=target, filename="threads.tdsl")
    ref = tdsl.loads(SOURCE, target="reference", filename="threads.tdsl")
    kinds = ["softmax", "saxpy", "rowsum", "wrap"]
    cases = [(kinds[s % 4], s) for s in range(24)]
    expected = {key: getattr(ref, key[0])(*_inputs(*key)) for key in cases}

    def work(index: int) -> None:
        rng = random.Random(index)
        for _ in range(15):
            kind, seed = cases[rng.randrange(len(cases))] if index % 2 else cases[index % 4]
            args = _inputs(kind, seed)
            if rng.random() < 0.3:  # also into given (and aliased) outputs
                out = np.empty_like(expected[kind, seed])
                got = getattr(mod, kind)(*args, **{mod[kind].signature.outputs[0].name: out})
                assert got is out
            else:
                got = getattr(mod, kind)(*args)
            np.testing.assert_allclose(got, expected[kind, seed], rtol=2e-6,
                                       err_msg=f"{kind} {seed}")

    assert run_threads(work, 8) == []


@pytest.mark.parametrize("target", TARGETS)
def test_first_calls_race_to_compile_once(target, monkeypatch):
    """Threads calling a kernel that is not compiled yet build it exactly once."""
    monkeypatch.setenv("TDSL_CACHE", "0")  # compile in this process, lazily
    mod = tdsl.loads(SOURCE, target=target, filename="race.tdsl")
    builds: list[str] = []
    for kernel in mod:
        make = kernel._make_executable

        def counted(make=make, name=kernel.name):
            builds.append(name)
            time.sleep(0.05)  # widen the window
            return make()

        kernel._make_executable = counted
    ref = tdsl.loads(SOURCE, target="reference")

    def work(index: int) -> None:
        kind = ["softmax", "saxpy", "rowsum", "wrap"][index % 4]
        args = _inputs(kind, index)
        np.testing.assert_allclose(getattr(mod, kind)(*args), getattr(ref, kind)(*args),
                                   rtol=2e-6)

    assert run_threads(work, 12) == []
    assert sorted(builds) == ["rowsum", "saxpy", "softmax", "wrap"]


def test_one_executable_from_many_threads_with_guarded_arrays():
    """Every call builds its own argument block: concurrent calls of one compiled kernel
    with arrays against guard pages never read or write each other's memory."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "support"))
    from guarded import guarded_copy, guarded_empty

    mod = tdsl.loads(SOURCE, target=TARGETS[-1])
    ref = tdsl.loads(SOURCE, target="reference")

    def work(index: int) -> None:
        for step in range(10):
            x = guarded_copy(_inputs("softmax", index * 10 + step)[0], "end")
            out = guarded_empty(x.shape, np.float32, "start")
            mod.softmax(x, y=out)
            np.testing.assert_allclose(out, ref.softmax(np.array(x)), rtol=2e-6)

    assert run_threads(work, 6) == []


# ---- processes sharing one disk cache ------------------------------------------------------

needs_linker = pytest.mark.skipif(find_linker() is None, reason="no C compiler driver")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("TDSL_CACHE_DIR", str(path))
    monkeypatch.delenv("TDSL_CACHE", raising=False)
    return path


def _env(cache_dir) -> dict[str, str]:
    env = {**os.environ, "TDSL_CACHE_DIR": str(cache_dir)}
    env.pop("TDSL_CACHE", None)
    return env


CHECK = """
import numpy as np, tdsl, sys
src = sys.argv[1]
mod = tdsl.loads(src)
x = np.arange(6, dtype=np.float64).reshape(2, 3)
assert mod.rowsum(x).tolist() == [3.0, 12.0], mod.rowsum(x)
print("ok")
"""


def _variant(n: int) -> str:
    return f"kernel rowsum(x: f64[M, N]) -> (s: f64[M]) {{\n    s[i] = sum[j](x[i, j])\n}}\n# {n}\n"


def _entries_valid(cache_dir) -> int:
    """Every entry of the cache checks out; no temporary file is left. The count."""
    records = sorted(cache_dir.glob("*.record"))
    for record in records:
        assert cache.lookup(record.stem) is not None, record
    return len(records)


@needs_linker
def test_processes_compile_same_and_different_sources_into_one_cache(cache_dir):
    sources = [_variant(n % 2) for n in range(4)]  # two sources, two processes each
    procs = [subprocess.Popen([sys.executable, "-c", CHECK, src], env=_env(cache_dir),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for src in sources]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0 and out.strip() == "ok", err[-2000:]
    assert _entries_valid(cache_dir) == 2
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".")]


KILLED = """
import sys, time, tdsl
from tdsl import compiler
from tdsl.runtime import cache  # noqa: E402
where = sys.argv[2]
build = compiler.build_library
write = cache._atomic_write

def stop(message):
    print(message, flush=True)
    time.sleep(600)  # killed here

def partial_library(program, output):
    build(program, output)
    with open(output, "r+b") as f:  # half written when the kill comes
        f.truncate(f.seek(0, 2) // 2)
    stop("library half written")

def before_record(path, data):
    stop("library in place, no record yet")

def partial_record(path, data):
    with open(path.parent / f".{path.name}.killed.tmp", "wb") as f:
        f.write(data[: len(data) // 2])
    stop("record half written")

if where == "library":
    compiler.build_library = partial_library
elif where == "record":
    cache._atomic_write = before_record
else:
    cache._atomic_write = partial_record
tdsl.loads(sys.argv[1])
"""


@needs_linker
@pytest.mark.parametrize("where", ["library", "record", "partial-record"])
def test_process_killed_while_writing_an_entry(cache_dir, where):
    src = _variant(where)
    proc = subprocess.Popen([sys.executable, "-c", KILLED, src, where], env=_env(cache_dir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # waits until the writer is at the chosen point
    assert line.strip(), proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not list(cache_dir.glob("*.record"))  # no complete record: nothing to use
    done = subprocess.run([sys.executable, "-c", CHECK, src], env=_env(cache_dir),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    assert _entries_valid(cache_dir) == 1


@needs_linker
def test_processes_killed_at_random_moments(cache_dir):
    """Compiles killed after a random delay, some writers racing with them: the cache ends
    up working, with only complete entries."""
    rng = random.Random(7)
    src = _variant("random")
    for _ in range(3):
        procs = [subprocess.Popen([sys.executable, "-c", CHECK, src], env=_env(cache_dir),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for _ in range(2)]
        time.sleep(rng.uniform(0.2, 2.5))
        procs[0].send_signal(signal.SIGKILL)
        for p in procs:
            p.wait(timeout=600)
        for record in cache_dir.glob("*.record"):  # a record is only ever complete
            assert cache.lookup(record.stem) is not None
    done = subprocess.run([sys.executable, "-c", CHECK, src], env=_env(cache_dir),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    assert _entries_valid(cache_dir) == 1


@needs_linker
def test_stale_temporary_files_are_removed(cache_dir):
    tdsl.loads(_variant("stale"))
    stale = cache_dir / ".0123.abcd.so"
    stale.write_bytes(b"left by a killed writer")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    fresh = cache_dir / ".4567.abcd.so"
    fresh.write_bytes(b"a writer at work")
    tdsl.loads(_variant("stale 2"))
    assert not stale.exists() and fresh.exists()


def test_kernel_executable_is_built_once_across_threads():
    builds = []

    def make():
        builds.append(1)
        time.sleep(0.1)
        return object()

    kernel = api.Kernel(tdsl.loads(SOURCE, target="reference").saxpy.signature, "test", make)
    seen = []
    assert run_threads(lambda n: seen.append(kernel.executable()), 10) == []
    assert len(builds) == 1 and len({id(e) for e in seen}) == 1
