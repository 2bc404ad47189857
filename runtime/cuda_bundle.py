"""CUDA bundles: kernels compiled for the cuda target, saved to run on another machine.

A bundle is a gzip-compressed JSON file holding, for each kernel, its signature, its PTX, its
host code (LLVM IR, JIT-compiled where it is loaded) and the `gpu` stage the emulator runs. It
is written by
`tdsl compile FILE --target cuda --emit bundle -o FILE.tdslcuda` and loaded by
`tdsl.load_library`, which needs neither the parser nor the MLIR bindings: compile on a
build machine, run on a GPU machine that has only the runtime (numpy, llvmlite, the driver).

`TDSL_CUDA_BUNDLES=DIR` keeps one bundle per kernel and arch in DIR: a cuda compile first
looks there (key: the kernel's canonical text, the arch and tdsl's version) and stores what
it compiles. A machine without the compiler then runs every kernel that a machine with it
compiled into the same folder. The key does not cover the compiler's own files: empty the
folder after changing tdsl. A bundle is code that this process runs: load only your own
(docs/security.md).
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import zlib
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING

from tdsl.runtime.cuda import CudaError, CudaExecutable
from tdsl.runtime.signature import Signature

if TYPE_CHECKING:
    from tdsl.checked import Kernel

MAGIC = "tdsl-cuda-bundle"
FORMAT = 1
SUFFIX = ".tdslcuda"
FOLDER_VARIABLE = "TDSL_CUDA_BUNDLES"
GZIP_MAGIC = b"\x1f\x8b"


class BundleError(ValueError):
    """A file that is not a loadable CUDA bundle."""


def bundle_json(executables: list[CudaExecutable]) -> str:
    """The text of a bundle holding these kernels."""
    import tdsl

    kernels = [{"signature": ex.signature.to_json(), "arch": ex.arch, "ptx": ex.ptx,
                "host_llvm": ex.host_llvm, "entries": list(ex.entries), "gpu_ir": ex.gpu_ir}
               for ex in executables]
    return json.dumps({"magic": MAGIC, "format": FORMAT, "tdsl": tdsl.__version__,
                       "kernels": kernels})


def write_bundle(path: str | os.PathLike[str], executables: list[CudaExecutable]) -> None:
    """Write a bundle atomically (a reader never sees half of one)."""
    target = Path(path)
    staged = str(target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(gzip.compress(bundle_json(executables).encode("utf-8"), mtime=0))
        os.replace(staged, target)
    except BaseException:
        if os.path.exists(staged):
            os.unlink(staged)
        raise


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """True when the file starts like a bundle (gzip or JSON), not like a shared library."""
    try:
        with open(path, "rb") as f:
            start = f.read(2)
            return start == GZIP_MAGIC or start[:1] == b"{"
    except OSError:
        return False


def read_bundle(path: str | os.PathLike[str]) -> dict[str, CudaExecutable]:
    """The kernels of a bundle by name (loaded on their first call)."""
    try:
        raw = Path(path).read_bytes()
        data = json.loads(gzip.decompress(raw) if raw[:2] == GZIP_MAGIC else raw)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"cannot read the CUDA bundle {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("magic") != MAGIC:
        raise BundleError(f"{path} is not a tdsl CUDA bundle")
    if data.get("format") != FORMAT:
        raise BundleError(f"{path}: unsupported CUDA bundle format {data.get('format')!r}")
    executables = {}
    try:
        for entry in data["kernels"]:
            signature = Signature.from_json(entry["signature"])
            executables[signature.name] = CudaExecutable(
                signature, entry["ptx"], entry["host_llvm"], entry["arch"],
                list(entry["entries"]), {}, entry.get("gpu_ir", ""))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}: corrupt CUDA bundle ({type(exc).__name__}: {exc})") from None
    return executables


def kernel_key(kernel: Kernel, arch: str) -> str:
    """What names a kernel's bundle in a `TDSL_CUDA_BUNDLES` folder."""
    import tdsl

    text = kernel.fingerprint or repr((kernel.signature.to_json(), kernel.locals,
                                       kernel.statements))
    h = sha256()
    for part in (f"format={FORMAT}", tdsl.__version__, arch, text):
        h.update(part.encode("utf-8") + b"\0")
    return h.hexdigest()[:32]


def folder() -> Path | None:
    """The `TDSL_CUDA_BUNDLES` folder, or None when it is not set."""
    configured = os.environ.get(FOLDER_VARIABLE, "").strip()
    return Path(configured).expanduser() if configured else None


def compile_through_folder(kernel: Kernel, arch: str, where: Path,
                           build: Callable[[], CudaExecutable]) -> CudaExecutable:
    """The kernel's bundle from `where`, or `build()` stored there. Without the compiler a
    miss raises `CudaError` saying so."""
    path = where / f"{kernel.name}-{kernel_key(kernel, arch)}{SUFFIX}"
    if path.is_file():
        found = read_bundle(path).get(kernel.name)
        if found is not None and found.arch == arch:
            return found
    try:
        executable = build()
    except ImportError as exc:
        raise CudaError(f"no bundle of kernel '{kernel.name}' for {arch} in {where} "
                        f"({FOLDER_VARIABLE}), and the compiler cannot run here: {exc}") from None
    where.mkdir(parents=True, exist_ok=True)
    write_bundle(path, [executable])
    return executable
