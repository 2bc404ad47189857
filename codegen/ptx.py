"""PTX: extraction from `gpu.binary`, kernel entries, and checks with NVIDIA's `ptxas`.

`ptxas` is found on PATH, under `$CUDA_HOME/bin` or `$CUDA_PATH/bin`, in `/usr/local/cuda/bin`,
or in the `nvidia-cuda-nvcc` wheel (`nvidia/cu13/bin/ptxas`, `nvidia/cuda_nvcc/bin/ptxas`).
Nothing here needs a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

# The lowest PTX ISA version that supports each arch (ptxas of CUDA 12+ accepts all of them).
_PTX_FOR_ARCH = {80: 70, 86: 71, 87: 74, 89: 78, 90: 78, 100: 86, 101: 86, 103: 88, 120: 87,
                 121: 88}
MIN_PTX = 80  # what our LLVM's NVPTX backend is tested with


class PtxError(RuntimeError):
    """PTX that `ptxas` rejects, or an arch that cannot be targeted."""


def arch_number(arch: str) -> int:
    """70 for `sm_70`, 90 for `sm_90a`; ValueError for anything else."""
    m = re.fullmatch(r"sm_(\d+)[af]?", arch)
    if m is None:
        raise ValueError(f"unknown GPU arch '{arch}'; expected sm_NN such as sm_80 or sm_90")
    number = int(m.group(1))
    if number < 50:
        raise ValueError(f"GPU arch '{arch}' is too old; tdsl supports sm_50 and newer")
    return number


def arch_features(arch: str) -> str:
    """The LLVM NVPTX feature string for `arch`: the PTX ISA version to emit (`+ptx80`)."""
    number = arch_number(arch)
    ptx = max(MIN_PTX, _PTX_FOR_ARCH.get(number, 0 if number < 100 else 88))
    return f"+ptx{ptx}"


def extract_ptx(module) -> str:
    """The PTX of the (single) `gpu.binary` in a module after `gpu-module-to-binary`."""
    from mlir.dialects import gpu

    texts = []
    for op in module.body.operations:
        if op.operation.name != "gpu.binary":
            continue
        for obj in op.attributes["objects"]:
            data = gpu.ObjectAttr(obj).object
            texts.append(data.decode() if isinstance(data, bytes) else str(data))
    if not texts:
        raise PtxError("no gpu.binary in the module")
    return "\n".join(texts)


def ptx_entries(ptx: str) -> list[str]:
    """The names of the `.entry` functions (kernels) of a PTX text, in order."""
    return re.findall(r"^\s*\.visible\s+\.entry\s+([\w$]+)\s*\(", ptx, flags=re.MULTILINE)


def ptx_functions(ptx: str) -> list[str]:
    """The names of non-kernel `.func` definitions and declarations of a PTX text."""
    return re.findall(r"^\s*(?:\.visible\s+|\.extern\s+)?\.func\s+(?:\([^)]*\)\s*)?([\w$]+)",
                      ptx, flags=re.MULTILINE)


def find_ptxas() -> str | None:
    """The path of a `ptxas` executable, or None."""
    found = shutil.which("ptxas")
    if found:
        return found
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    for root in roots:
        if root and (Path(root) / "bin" / "ptxas").is_file():
            return str(Path(root) / "bin" / "ptxas")
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        spec = None
    for base in (spec.submodule_search_locations or []) if spec else []:
        for candidate in sorted(Path(base).glob("*/bin/ptxas"), reverse=True):
            if os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def ptxas(ptx: str, arch: str, *, ptxas_path: str | None = None, timeout: float = 120) -> str:
    """Assemble `ptx` for `arch` with ptxas (to a temporary cubin); returns ptxas's report
    (`-v`: registers, shared memory, spills). Raises PtxError when ptxas rejects it."""
    path = ptxas_path or find_ptxas()
    if path is None:
        raise PtxError("ptxas was not found (install the CUDA toolkit or the nvidia-cuda-nvcc "
                       "wheel, or set CUDA_HOME)")
    arch_number(arch)
    with tempfile.TemporaryDirectory(prefix="tdsl-ptx-") as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        proc = subprocess.run([path, f"-arch={arch}", "-v", str(src), "-o",
                               str(Path(tmp) / "kernel.cubin")], capture_output=True, text=True,
                              timeout=timeout)
    if proc.returncode != 0:
        raise PtxError(f"ptxas -arch={arch} rejected the PTX:\n{proc.stderr.strip()}")
    return proc.stderr + proc.stdout
