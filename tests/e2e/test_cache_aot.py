"""The disk cache (cold, warm, concurrent, corrupted, disabled) and AOT shared libraries
(loaded without the compiler, called from Python and from C)."""

from __future__ import annotations

import json
import marshal
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import tdsl
from tdsl.cli import main
from tdsl.codegen.link import find_linker
from tdsl.runtime import cache
from tdsl.runtime.aot import MARSHAL_MAGIC

pytestmark = pytest.mark.skipif(find_linker() is None, reason="no C compiler driver to link")
SOURCE = """
# z = a x + y
kernel saxpy(a: f32, x: f32[N], y: f32[N]) -> (z: f32[N]) {
    z = a * x + y
}

kernel rowsum(x: f64[M, N]) -> (s: f64[M]) {
    s[i] = sum[j](x[i, j])
}
"""
HEAVY = ("lark", "mlir", "llvmlite")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("TDSL_CACHE_DIR", str(path))
    monkeypatch.delenv("TDSL_CACHE", raising=False)
    return path


def _fresh_python(code: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=300)


def test_cold_then_warm_in_a_fresh_process(cache_dir, tmp_path):
    src = tmp_path / "k.tdsl"
    src.write_text(SOURCE)
    mod = tdsl.load(src)
    x = np.arange(5, dtype=np.float32)
    np.testing.assert_allclose(mod.saxpy(2.0, x, x), 3 * x)
    entries = list(cache_dir.glob("*.record"))
    assert len(entries) == 1 and len(list(cache_dir.glob("*.so"))) == 1
    assert oct(cache_dir.stat().st_mode & 0o777) == "0o700"
    done = _fresh_python(f"""
        import sys, numpy as np, tdsl
        mod = tdsl.load({str(src)!r})
        x = np.arange(6.0).reshape(2, 3)
        assert mod.rowsum(x).tolist() == [3.0, 12.0]
        print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))
        from tdsl.runtime import cache, threads
        print(cache.toolchain_parts())
        """, {"TDSL_CACHE_DIR": str(cache_dir)})
    assert done.returncode == 0, done.stderr
    from tdsl.runtime import cache

    here = cache.toolchain_parts()
    modules, there = done.stdout.strip().splitlines()
    assert modules == "[]", ([p for p in here if p not in there], there, cache.toolchain_id(),
                             done.stderr)


def test_concurrent_processes_share_one_entry(cache_dir, tmp_path):
    src = tmp_path / "k.tdsl"
    src.write_text(SOURCE)
    code = f"""
        import numpy as np, tdsl
        mod = tdsl.load({str(src)!r})
        x = np.ones(4, np.float32)
        assert mod.saxpy(3.0, x, x).tolist() == [4.0] * 4
        """
    env = {**os.environ, "TDSL_CACHE_DIR": str(cache_dir)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert len(list(cache_dir.glob("*.record"))) == 1
    assert not list(cache_dir.glob(".*"))


def test_corrupted_entry_is_dropped_and_rebuilt(cache_dir):
    tdsl.loads(SOURCE)
    (lib,) = cache_dir.glob("*.so")
    data = lib.read_bytes()
    lib.unlink()  # a new file: the loaded library keeps its pages
    lib.write_bytes(data[:100])
    with pytest.warns(RuntimeWarning, match="dropping cache entry .* checksum"):
        mod = tdsl.loads(SOURCE)
    x = np.ones(3, np.float32)
    np.testing.assert_array_equal(mod.saxpy(1.0, x, x), 2 * x)
    (record,) = cache_dir.glob("*.record")
    assert cache.parse_record(record.read_text())["sha256"]


def test_cache_disabled(cache_dir, monkeypatch):
    monkeypatch.setenv("TDSL_CACHE", "0")
    mod = tdsl.loads(SOURCE)
    x = np.ones(3, np.float32)
    np.testing.assert_array_equal(mod.saxpy(1.0, x, x), 2 * x)
    assert not cache_dir.exists()


def test_different_sources_different_entries(cache_dir):
    tdsl.loads(SOURCE)
    tdsl.loads(SOURCE + "\n# another comment\n")
    assert len(list(cache_dir.glob("*.record"))) == 2


def test_cache_cli(cache_dir, capsys):
    tdsl.loads(SOURCE)
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(cache_dir) in out and "entries: 1" in out
    assert main(["cache", "clear"]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert not list(cache_dir.glob("*.so"))


def test_aot_library_from_python_without_compiler(tmp_path):
    src = tmp_path / "k.tdsl"
    src.write_text(SOURCE)
    lib = tmp_path / "libk.so"
    assert main(["compile", str(src), "-o", str(lib)]) == 0
    done = _fresh_python(f"""
        import sys, numpy as np, tdsl
        mod = tdsl.load_library({str(lib)!r})
        assert mod.saxpy.__doc__.startswith("z = a x + y")
        x = np.arange(4, dtype=np.float32)
        assert mod.saxpy(2.0, x, x).tolist() == [0.0, 3.0, 6.0, 9.0]
        try:
            mod.saxpy(2.0, x, x[:3])
        except ValueError as e:
            print("error:", e)
        print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))
        """, {})
    assert done.returncode == 0, done.stderr
    assert "error: saxpy(): argument 'y' has N = 3" in done.stdout
    assert done.stdout.strip().endswith("[]")


def test_load_library_rejects_other_files(tmp_path):
    bogus = tmp_path / "bogus.so"
    bogus.write_bytes(b"not a library")
    with pytest.raises(ValueError, match="cannot load"):
        tdsl.load_library(bogus)


def _library_with_metadata(tmp_path, data: bytes) -> Path:
    from tdsl.check import check_source
    from tdsl.codegen.link import link_shared, metadata_object
    from tdsl.compiler import compile_program

    compiled = compile_program(check_source(SOURCE, "k.tdsl"))
    return link_shared(compiled.objects + [metadata_object(data)], tmp_path / "libk.so")


def test_libraries_with_json_metadata_still_load(tmp_path):
    """Libraries written before the metadata moved to marshal (format 1: JSON) load."""
    from tdsl.check import check_source
    from tdsl.compiler import library_metadata

    meta = dict(library_metadata(check_source(SOURCE, "k.tdsl")), format=1)
    lib = _library_with_metadata(tmp_path, json.dumps(meta).encode())
    x = np.arange(4, dtype=np.float32)
    assert tdsl.load_library(lib).saxpy(2.0, x, x).tolist() == [0.0, 3.0, 6.0, 9.0]


@pytest.mark.parametrize("data", [MARSHAL_MAGIC + b"\x00garbage", MARSHAL_MAGIC,
                                  MARSHAL_MAGIC + marshal.dumps([1, 2], 4), b"{not json",
                                  b"\xff\xfe"])
def test_corrupt_library_metadata_is_refused(tmp_path, data):
    lib = _library_with_metadata(tmp_path, data)
    with pytest.raises(ValueError, match="corrupt tdsl metadata"):
        tdsl.load_library(lib)


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_aot_library_from_c(tmp_path):
    src = tmp_path / "k.tdsl"
    src.write_text(SOURCE)
    lib = tmp_path / "libk.so"
    header = tmp_path / "k.h"
    assert main(["compile", str(src), "-o", str(lib)]) == 0
    assert main(["compile", str(src), "--emit", "header", "-o", str(header)]) == 0
    assert "#define TDSL_SAXPY_SLOTS 18" in header.read_text()
    prog = tmp_path / "main.c"
    prog.write_text(textwrap.dedent("""
        #include <stdio.h>
        #include "k.h"
        int main(void) {
            float a = 2.0f, x[4] = {1, 2, 3, 4}, y[4] = {10, 20, 30, 40}, z[4];
            int64_t args[TDSL_SAXPY_SLOTS] = {
                (int64_t)&a, (int64_t)&a, 0,
                (int64_t)x, (int64_t)x, 0, 4, 1,
                (int64_t)y, (int64_t)y, 0, 4, 1,
                (int64_t)z, (int64_t)z, 0, 4, 1};
            tdsl_entry_saxpy(args);
            printf("%g %g %g %g\\n", z[0], z[1], z[2], z[3]);
            return 0;
        }
        """))
    exe = tmp_path / "main"
    subprocess.run(["cc", str(prog), "-I", str(tmp_path), "-L", str(tmp_path), "-lk",
                    f"-Wl,-rpath,{tmp_path}", "-o", str(exe)], check=True, timeout=120)
    done = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["12", "24", "36", "48"]


def test_compile_emit_stages(tmp_path, capsys):
    src = tmp_path / "k.tdsl"
    src.write_text(SOURCE)
    expected = {"ast": "Kernel", "checked": "kernel saxpy", "mlir": "linalg.generic",
                "bufferized": "memref", "loops": "scf.parallel", "llvm-dialect": "llvm.func",
                "llvm": "define", "asm": "tdsl_entry_saxpy"}
    for stage, marker in expected.items():
        assert main(["compile", str(src), "--emit", stage, "-k", "saxpy"]) == 0, stage
        assert marker in capsys.readouterr().out, stage
    obj = tmp_path / "saxpy.o"
    assert main(["compile", str(src), "--emit", "obj", "-k", "saxpy", "-o", str(obj)]) == 0
    assert obj.read_bytes()[:4] == b"\x7fELF"
    assert main(["compile", str(src), "--emit", "obj"]) == 1
    assert "--emit obj writes one kernel" in capsys.readouterr().err


def test_fresh_compile_paths_exist():
    assert Path(tdsl.__file__).exists()
