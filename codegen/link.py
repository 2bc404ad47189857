"""Shared libraries from host objects: the system's C compiler driver links them (`cc -shared`),
and a small object carries the library's metadata (kernel signatures) as a symbol, so a
library describes itself and needs no side file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

METADATA_SYMBOL = "tdsl_metadata"
METADATA_SIZE_SYMBOL = "tdsl_metadata_size"


class LinkError(RuntimeError):
    """Linking failed, or no linker is available."""


def find_linker() -> str | None:
    """The C compiler driver used to link (`$CC`, else `cc`, `gcc` or `clang`), or None."""
    candidates = [os.environ.get("CC", ""), "cc", "gcc", "clang"]
    for name in candidates:
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def metadata_ir(data: bytes) -> str:
    """LLVM IR defining `tdsl_metadata` (the bytes `data`) and `tdsl_metadata_size`."""
    escaped = "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:02X}"
                      for b in data)
    return (f'@{METADATA_SYMBOL} = constant [{len(data)} x i8] c"{escaped}", align 1\n'
            f"@{METADATA_SIZE_SYMBOL} = constant i64 {len(data)}, align 8\n")


def metadata_object(data: bytes) -> bytes:
    """A host object file holding the metadata symbols."""
    from tdsl.codegen import llvm as cg

    return cg.emit_object(cg.parse(metadata_ir(data)))


def _openmp_flags(objects: list[bytes]) -> list[str]:
    """Linker flags for libomp (with an rpath to it) when an object calls it."""
    if not any(b"__kmpc_" in data for data in objects):
        return []
    from tdsl.runtime import threads

    path = threads.libomp_path()
    if path is None:
        raise LinkError("kernels call libomp, but it is not installed (pip install cmeel-libomp)")
    folder = os.path.dirname(path)
    return [f"-L{folder}", "-lomp", f"-Wl,-rpath,{folder}"]


def link_shared(objects: list[bytes], output: str | os.PathLike[str]) -> Path:
    """Link host object files into a shared library at `output` (written atomically)."""
    import subprocess  # here: the runtime imports this module only for find_linker
    import tempfile

    linker = find_linker()
    if linker is None:
        raise LinkError("no C compiler driver (cc, gcc or clang) found to link a shared "
                        "library; install one (e.g. Debian's gcc) or set $CC")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tdsl-link-") as tmp:
        paths = []
        for n, data in enumerate(objects):
            path = Path(tmp) / f"part{n}.o"
            path.write_bytes(data)
            paths.append(str(path))
        staged = Path(tmp) / output.name
        cmd = [linker, "-shared", "-o", str(staged), *paths, "-lm", *_openmp_flags(objects)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise LinkError(f"linking {output.name} failed: {done.stderr.strip()[:2000]}")
        fd, temp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.",
                                    suffix=".tmp")
        os.close(fd)
        shutil.copyfile(staged, temp)
        os.chmod(temp, 0o755)
        os.replace(temp, output)
    return output
