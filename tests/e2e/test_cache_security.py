"""Security of the disk cache (docs/security.md): an entry is machine code that tdsl loads and
runs, so the directory is private to the user, a directory others could write or that
belongs to someone else is not used, and an entry is loaded only when its files belong to
the user, its record names this very entry, host and compiler, and the library's checksum
matches. Nothing in a source file chooses a path or runs as Python."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import tdsl
from tdsl.codegen.link import find_linker
from tdsl.runtime import cache

pytestmark = pytest.mark.skipif(find_linker() is None, reason="no C compiler driver to link")
ROOT = Path(__file__).resolve().parents[2]
PLUS = "kernel k(x: f32[N]) -> (y: f32[N]) {{\n    y = x + {}\n}}\n"
OTHER_UID = 54321


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("TDSL_CACHE_DIR", str(path))
    monkeypatch.delenv("TDSL_CACHE", raising=False)
    return path


def _run(source: str) -> list[float]:
    return tdsl.loads(source).k(np.zeros(2, np.float32)).tolist()


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _entry(cache_dir: Path) -> tuple[Path, Path]:
    (record,) = cache_dir.glob("*.record")
    return record.with_suffix(".so"), record


def test_created_private_whatever_the_umask(cache_dir):
    old = os.umask(0)
    try:
        assert _run(PLUS.format(1)) == [1.0, 1.0]
    finally:
        os.umask(old)
    lib, record = _entry(cache_dir)
    assert _mode(cache_dir) == 0o700
    assert _mode(lib) & 0o077 == 0 and _mode(record) & 0o077 == 0
    assert re.fullmatch(r"[0-9a-f]{40}", record.stem)  # named by the key, not the source


def test_directory_writable_by_others_is_not_used(cache_dir):
    _run(PLUS.format(1))
    lib, _ = _entry(cache_dir)
    before = lib.stat().st_ino
    cache_dir.chmod(0o777)
    with pytest.warns(RuntimeWarning, match="not using the cache directory .* writable by "
                      "other users"):
        assert _run(PLUS.format(1)) == [1.0, 1.0]  # compiled without the cache
    assert _mode(cache_dir) == 0o777 and lib.stat().st_ino == before  # nothing touched
    assert len(list(cache_dir.glob("*.record"))) == 1
    cache_dir.chmod(0o700)


def test_directory_readable_by_others_is_made_private(cache_dir):
    _run(PLUS.format(1))
    lib, _ = _entry(cache_dir)
    before = lib.stat().st_ino
    cache_dir.chmod(0o755)
    with pytest.warns(RuntimeWarning, match="was readable by other users .* made it private"):
        assert _run(PLUS.format(1)) == [1.0, 1.0]
    assert _mode(cache_dir) == 0o700 and lib.stat().st_ino == before  # the entry was used


def test_directory_of_another_user_is_not_used(cache_dir, monkeypatch):
    if os.getuid() == 0:
        cache_dir.mkdir(mode=0o700)
        os.chown(cache_dir, OTHER_UID, OTHER_UID)
    else:  # a directory of root's
        monkeypatch.setenv("TDSL_CACHE_DIR", "/")
    with pytest.warns(RuntimeWarning, match="not using the cache directory .* belongs to user"):
        assert _run(PLUS.format(2)) == [2.0, 2.0]
    if os.getuid() == 0:
        assert list(cache_dir.iterdir()) == []


def test_a_file_in_place_of_the_directory(tmp_path, monkeypatch):
    path = tmp_path / "file"
    path.write_text("not a directory")
    monkeypatch.setenv("TDSL_CACHE_DIR", str(path))
    monkeypatch.delenv("TDSL_CACHE", raising=False)
    with pytest.warns(RuntimeWarning, match="cannot use the cache directory"):
        assert _run(PLUS.format(3)) == [3.0, 3.0]


@pytest.mark.parametrize("tamper", ["library writable by others", "record writable by others",
                                    "library is a symlink", "library of another user"])
def test_entry_files_must_be_private_regular_files(cache_dir, tamper):
    _run(PLUS.format(4))
    lib, record = _entry(cache_dir)
    if tamper == "library writable by others":
        lib.chmod(0o777)
    elif tamper == "record writable by others":
        record.chmod(0o666)
    elif tamper == "library is a symlink":
        real = cache_dir / "elsewhere.bin"
        shutil.copy(lib, real)
        lib.unlink()
        lib.symlink_to(real)
    else:
        if os.getuid() != 0:
            pytest.skip("needs root to give a file away")
        os.chown(lib, OTHER_UID, OTHER_UID)
    with pytest.warns(RuntimeWarning, match="dropping cache entry .* not trusted"):
        assert _run(PLUS.format(4)) == [4.0, 4.0]
    lib, record = _entry(cache_dir)
    assert lib.is_file() and not lib.is_symlink() and _mode(lib) & 0o022 == 0


def test_an_entry_copied_under_another_key_is_refused(cache_dir):
    """The library of `x + 5` placed (with its valid record) under the key of `x + 6` must
    not run for `x + 6`, though its checksum matches its record."""
    _run(PLUS.format(5))
    lib5, record5 = _entry(cache_dir)
    key6 = cache.key(PLUS.format(6), "cpu")
    shutil.copy(lib5, cache_dir / f"{key6}.so")
    shutil.copy(record5, cache_dir / f"{key6}.record")
    with pytest.warns(RuntimeWarning, match="record names another entry, host or compiler"):
        assert _run(PLUS.format(6)) == [6.0, 6.0]


@pytest.mark.parametrize("field", ["toolchain", "host", "format", "sha256"])
def test_a_record_that_does_not_match_is_refused(cache_dir, field):
    _run(PLUS.format(7))
    _, record = _entry(cache_dir)
    info = cache.parse_record(record.read_text())
    info[field] = "0" * 16 if field != "format" else "99"
    record.write_text(cache.format_record(info))
    with pytest.warns(RuntimeWarning, match="dropping cache entry"):
        assert _run(PLUS.format(7)) == [7.0, 7.0]
    assert cache.parse_record(_entry(cache_dir)[1].read_text())[field] != info[field]


@pytest.mark.parametrize("content", [b"", b"[1, 2]", b"{not json", b"\xff\xfe",
                                     b"format=2\nkey", b"sha256=0\n"])
def test_a_broken_record_is_refused(cache_dir, content):
    _run(PLUS.format(8))
    _entry(cache_dir)[1].write_bytes(content)
    with pytest.warns(RuntimeWarning, match="dropping cache entry"):
        assert _run(PLUS.format(8)) == [8.0, 8.0]


def test_nothing_in_a_source_chooses_a_path_or_runs_as_python(cache_dir, tmp_path):
    marker = tmp_path / "MARK"
    source = (f"# __import__('os').system('touch {marker}') */ \"; rm -rf / ../../..\n"
              "kernel k(x: f32[N]) -> (y: f32[N]) {\n    y = x + 9\n}\n"
              f"# {{{{ eval(\"open('{marker}', 'w')\") }}}} $(touch {marker})\n")
    before = set(tmp_path.rglob("*"))
    mod = tdsl.loads(source, filename=f"../../{marker.name}/../../evil.so")
    assert mod.k(np.zeros(1, np.float32)).tolist() == [9.0]
    assert "__import__" in mod.k.__doc__  # the comment is data
    created = set(tmp_path.rglob("*")) - before
    assert not marker.exists()
    assert all(p.parent == cache_dir and re.fullmatch(r"[0-9a-f]{40}\.(so|record)", p.name)
               for p in created if p != cache_dir), created


PATTERNS = {
    "eval": r"(?<![.\w])(?<!def )eval\(", "exec": r"(?<![.\w])exec\(", "pickle": r"\bpickle\b",
    "marshal": r"\bmarshal\b", "shell=True": r"shell\s*=\s*True", "os.system": r"os\.system",
    "__import__": r"__import__", "import_module": r"import_module\(",
    "os.popen": r"os\.popen",
}


# tdsl/__init__.py imports its lazy attributes' modules from a fixed table; a library's
# metadata is marshal data, written by the compiler, read once the library is loaded
ALLOWED = {("import_module", "__init__.py"), ("marshal", "compiler.py"), ("marshal", "aot.py")}


def test_no_eval_pickle_or_shell_in_the_package():
    """Loading code is `ctypes.CDLL` on a checked cache entry or a library the user names
    (runtime/aot.py); nothing else turns data into code."""
    found = []
    for folder in ("dsl", "runtime", "codegen"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            for name, pattern in PATTERNS.items():
                if re.search(pattern, text) and (name, path.name) not in ALLOWED:
                    found.append(f"{path.relative_to(ROOT)}: {name}")
            if "CDLL(" in text and path.name not in ("aot.py", "cuda_driver.py", "threads.py"):
                found.append(f"{path.relative_to(ROOT)}: CDLL")
    assert found == []
