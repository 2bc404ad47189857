"""The on-disk cache of compiled kernels.

An entry is a self-describing shared library (`KEY.so`) and a record (`KEY.record`, lines of
`name=value`: read without importing `json`, which costs a cached load 3 ms) holding the
library's SHA-256 and the versions that made it. The key needs no parsing: it hashes the
source bytes, the target, the host CPU (model and feature flags), the versions of tdsl, the
MLIR bindings and llvmlite, and a fingerprint of the compiler's own files. Writes are atomic
(temporary file + rename; the record last), so concurrent processes never see half an entry;
an entry whose library does not match its record is dropped with a warning and rebuilt.

`TDSL_CACHE_DIR` moves the cache (default `$XDG_CACHE_HOME/tdsl` or `~/.cache/tdsl`);
`TDSL_CACHE=0` turns it off. An entry is machine code that this process loads and runs, so
the directory is created private to the user (mode 0700); one owned by another user or
writable by others is not used (with a warning), one that others may read is made private,
and an entry is loaded only when both its files are regular files of this user that others
cannot write, its record names this entry, host and compiler, and the library's SHA-256
matches the record (see docs/security.md).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import stat
import time
import warnings
from pathlib import Path

FORMAT = 2
RECORD = ".record"
_PACKAGE_DIRS = ("dsl", "dsl/check", "codegen", "grammar")


def enabled() -> bool:
    """False when `TDSL_CACHE=0` (or `off`, `false`, `no`)."""
    return os.environ.get("TDSL_CACHE", "1").strip().lower() not in ("0", "off", "false", "no")


def cache_dir() -> Path:
    """The cache directory (not created)."""
    configured = os.environ.get("TDSL_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tdsl"


_STALE_SECONDS = 3600  # a temporary file this old was left by a killed writer
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _uid() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None


def usable() -> bool:
    """True when the cache directory exists or can be created, and can be trusted (else a
    warning says why, and kernels are compiled without the cache)."""
    return _trusted_root() is not None


def _trusted_root() -> Path | None:
    """The cache directory (created private when missing), or None with a warning when it
    cannot be trusted: not a directory, owned by another user, or writable by others (who
    could have replaced entries; nothing in it is changed). One that others may only read is
    made private."""
    root = cache_dir()
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(root)
    except OSError as exc:
        _warn_once(f"tdsl: cannot use the cache directory {root} ({exc}); compiling "
                   "without the cache")
        return None
    uid = _uid()
    mode = stat.S_IMODE(st.st_mode)
    problem = ("is not a directory" if not stat.S_ISDIR(st.st_mode) else
               f"belongs to user id {st.st_uid}, not to you" if uid is not None and
               st.st_uid != uid else
               f"is writable by other users (mode {oct(mode)}; `chmod 700 {root}` after "
               "checking its contents)" if mode & 0o022 else None)
    if problem:
        _warn_once(f"tdsl: not using the cache directory {root}: it {problem}; its entries "
                   "are machine code that this process would run (TDSL_CACHE_DIR chooses "
                   "another directory); compiling without the cache")
        return None
    if mode & 0o077:
        try:
            os.chmod(root, 0o700)
        except OSError as exc:
            _warn_once(f"tdsl: cannot make the cache directory {root} private ({exc})")
        else:
            _warn_once(f"tdsl: the cache directory {root} was readable by other users (mode "
                       f"{oct(mode)}); made it private (0700)")
    return root


def _untrusted(path: Path) -> str | None:
    """Why a file of an entry must not be loaded, or None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"{path.name} is missing"
    uid = _uid()
    if not stat.S_ISREG(st.st_mode):
        return f"{path.name} is not a regular file"
    if uid is not None and st.st_uid != uid:
        return f"{path.name} belongs to user id {st.st_uid}"
    if st.st_mode & 0o022:
        return f"{path.name} is writable by other users"
    return None


def _remove_stale(root: Path) -> None:
    """Remove the temporary files of writers killed long ago."""
    now = time.time()
    for path in root.glob(".*"):
        try:
            if path.suffix in (".so", ".tmp") and now - path.lstat().st_mtime > _STALE_SECONDS:
                path.unlink()
        except OSError:
            pass


# SHA-256 from CPython's own small module: hashlib's import loads OpenSSL (~6 ms).
try:
    from _sha2 import sha256  # Python 3.12+
except ImportError:
    try:
        from _sha256 import sha256
    except ImportError:
        from hashlib import sha256


@functools.lru_cache(maxsize=1)
def host_id() -> str:
    """The host CPU model and feature flags, its usable cores and its data caches, read
    without LLVM."""
    uname = os.uname()
    parts = [uname.machine, uname.sysname]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features", "CPU part"):
                    parts.append(line.strip())
                if line.strip() == "":
                    break
    except OSError:
        parts.append(uname.version)
    from tdsl.runtime.hostinfo import cache_sizes, usable_cores

    # the schedules split loops per core and size their tiles by the caches
    parts.append(f"cores={usable_cores()} caches={sorted(cache_sizes().items())}")
    return sha256("\n".join(parts).encode()).hexdigest()[:16]


def _installed(package: str, file: str) -> str:
    """A stamp of a file of an installed top-level package (path, size and mtime: a reinstall
    or an upgrade changes it), found without importing the package or `importlib.metadata`
    (slow)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        # a namespace package may have several folders (a test folder named `mlir` too)
        path = os.path.join(folder, file)
        if os.path.isfile(path):
            return _file_stamp(path)
    return f"{package}:none"


def _file_stamp(path: str | None) -> str:
    """A file's path, size and modification time."""
    try:
        st = os.stat(path) if path else None
    except OSError:
        st = None
    return f"{path}:{st.st_size}:{st.st_mtime_ns}" if st else f"{path}:none"


@functools.lru_cache(maxsize=1)
def toolchain_id() -> str:
    """Versions of tdsl, the MLIR bindings and llvmlite, and a fingerprint of the compiler's
    files (so a changed compiler never reuses stale code)."""
    return sha256("\n".join(toolchain_parts()).encode()).hexdigest()[:16]


def toolchain_parts() -> list[str]:
    """What `toolchain_id` hashes (not cached: for diagnostics)."""
    import tdsl

    root = os.path.dirname(os.path.dirname(os.path.realpath(tdsl.__file__)))
    stamp = []
    for folder in _PACKAGE_DIRS:
        try:
            files = sorted(os.scandir(os.path.join(root, folder)), key=lambda e: e.name)
        except OSError:
            continue
        for file in files:
            if file.name.endswith((".py", ".lark")) and file.is_file():
                st = file.stat()
                stamp.append(f"{folder}/{file.name}:{st.st_size}:{st.st_mtime_ns}")
    from tdsl.runtime.threads import libomp_path

    versions = [tdsl.__version__, _installed("mlir", "_mlir_libs/__init__.py"),
                _installed("llvmlite", "__init__.py"),
                _file_stamp(libomp_path())]
    return versions + stamp


def key(source: str, target: str) -> str:
    """The cache key of a source text compiled for a target on this host."""
    h = sha256()
    for part in (f"format={FORMAT}", target, host_id(), toolchain_id()):
        h.update(part.encode() + b"\0")
    h.update(source.encode("utf-8"))
    return h.hexdigest()[:40]


def _paths(entry: str) -> tuple[Path, Path]:
    root = cache_dir()
    return root / f"{entry}.so", root / f"{entry}{RECORD}"


def lookup(entry: str) -> Path | None:
    """The library of a valid entry, or None (a corrupt entry is removed with a warning)."""
    lib, record = _paths(entry)
    if not record.exists() or _trusted_root() is None:
        return None
    problem = _untrusted(record) or _untrusted(lib)
    if problem:
        _drop(entry, f"not trusted: {problem}")
        return None
    try:
        info = parse_record(record.read_text(encoding="utf-8"))
        digest = sha256(lib.read_bytes()).hexdigest()
    except (OSError, ValueError) as exc:
        _drop(entry, f"unreadable ({exc})")
        return None
    if info.get("sha256") != digest:
        _drop(entry, "its library does not match its checksum")
        return None
    if (info.get("format"), info.get("key"), info.get("host"), info.get("toolchain")) != (
            str(FORMAT), entry, host_id(), toolchain_id()):
        _drop(entry, "its record names another entry, host or compiler")
        return None
    return lib


def drop(entry: str, why: str) -> None:
    """Remove an entry, warning why."""
    _drop(entry, why)


def _drop(entry: str, why: str) -> None:
    warnings.warn(f"tdsl: dropping cache entry {entry[:12]}: {why}; recompiling",
                  RuntimeWarning, stacklevel=3)
    for path in _paths(entry):
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def store(entry: str, build) -> Path:
    """Build a library with `build(path)` into the cache and record it atomically."""
    root = _trusted_root()
    if root is None:
        raise OSError(f"the cache directory {cache_dir()} cannot be used")
    _remove_stale(root)
    lib, record = _paths(entry)
    import tempfile

    fd, staged = tempfile.mkstemp(dir=root, prefix=f".{entry}.", suffix=".so")
    os.close(fd)
    try:
        build(staged)
        os.chmod(staged, 0o700)  # the linker may have made it readable by all
        digest = sha256(Path(staged).read_bytes()).hexdigest()
        os.replace(staged, lib)
    finally:
        if os.path.exists(staged):
            os.unlink(staged)
    info = {"format": FORMAT, "key": entry, "sha256": digest, "created": f"{time.time():.3f}",
            "host": host_id(), "toolchain": toolchain_id()}
    _atomic_write(record, format_record(info).encode())
    return lib


def format_record(info: dict) -> str:
    """A record's text: one `name=value` line per field (no value holds a line break)."""
    return "".join(f"{name}={value}\n" for name, value in info.items())


def parse_record(text: str) -> dict[str, str]:
    """The fields of a record's text (ValueError when it is not one)."""
    lines = text.splitlines()
    fields = dict(line.split("=", 1) for line in lines if "=" in line)
    if not fields or len(fields) != len(lines):
        raise ValueError("not a record")
    return fields


def _atomic_write(path: Path, data: bytes) -> None:
    import tempfile

    fd, staged = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staged, path)
    except BaseException:
        if os.path.exists(staged):
            os.unlink(staged)
        raise


def info() -> dict:
    """Where the cache is, how many entries it holds and their size in bytes."""
    root = cache_dir()
    entries = list(root.glob(f"*{RECORD}")) if root.exists() else []
    size = sum(p.stat().st_size for p in root.glob("*") if p.is_file()) if root.exists() else 0
    return {"dir": str(root), "entries": len(entries), "bytes": size, "enabled": enabled()}


def clear() -> int:
    """Remove every entry; return how many were removed."""
    root = cache_dir()
    if not root.exists():
        return 0
    count = 0
    for path in root.glob("*"):
        if path.suffix == RECORD:
            count += 1
        if path.is_file() and (path.suffix in (RECORD, ".json", ".so", ".tmp")):
            path.unlink(missing_ok=True)
    return count
