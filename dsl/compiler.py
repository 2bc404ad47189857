"""Drives a checked program through the CPU stages: `--emit` output for any stage, host
objects for every kernel, and self-describing shared libraries (AOT and the disk cache)."""

from __future__ import annotations

import marshal
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import tdsl
from tdsl import checked as c

FORMAT = 2
"""Version of the library metadata layout (`tdsl.runtime.aot.MARSHAL_MAGIC`)."""


@dataclass
class CompiledProgram:
    """Host object code for every kernel of a program, and the metadata that describes it."""

    objects: list[bytes]
    metadata: dict

    @property
    def metadata_bytes(self) -> bytes:
        """The metadata as the library carries it (`tdsl.runtime.aot.MARSHAL_MAGIC`)."""
        from tdsl.runtime.aot import MARSHAL_MAGIC

        return MARSHAL_MAGIC + marshal.dumps(self.metadata, 4)


def library_metadata(program: c.Program, target: str = "cpu") -> dict:
    """The JSON-able description of a compiled program's kernels."""
    from tdsl.pipelines import entry_symbol, fast_symbol

    return {
        "format": FORMAT, "tdsl": tdsl.__version__, "target": target,
        "source": os.path.basename(program.filename),
        "kernels": [{"signature": k.signature.to_json(), "entry": entry_symbol(k.name),
                     "fast": fast_symbol(k.name) if target == "cpu" else ""}
                    for k in program.kernels],
    }


@contextmanager
def progress_note(what: str, delay: float = 1.0) -> Iterator[None]:
    """Print a note on stderr when the work inside takes longer than `delay` seconds."""
    timer = threading.Timer(delay, lambda: print(f"tdsl: {what}...", file=sys.stderr,
                                                 flush=True))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def compile_program(program: c.Program) -> CompiledProgram:
    """Compile every kernel of a checked program to host object code."""
    from tdsl.codegen import llvm as cg
    from tdsl.pipelines import compile_to_llvm_ir

    objects = []
    count = len(program.kernels)
    with progress_note(f"compiling {program.filename} ({count} kernel{'s' * (count != 1)})"):
        for kernel in program.kernels:
            module = cg.optimize_ir(compile_to_llvm_ir(kernel))
            objects.append(cg.emit_object(module))
    return CompiledProgram(objects, library_metadata(program))


def build_library(program: c.Program, output: str | os.PathLike[str]) -> Path:
    """Write a shared library holding every kernel and its metadata."""
    from tdsl.codegen.link import link_shared, metadata_object

    compiled = compile_program(program)
    objects = compiled.objects + [metadata_object(compiled.metadata_bytes)]
    return link_shared(objects, output)


def emit(program: c.Program, stage: str, kernel: str | None = None, *,
         print_ir_after_all: bool = False, time_passes: bool = False) -> tuple[str | bytes,
                                                                                list[str]]:
    """The output of `stage` for one kernel (or every kernel), and notes (per-pass IR,
    timings) to print on stderr."""
    from tdsl.pipelines import run_pipeline

    kernels = [program.kernel(kernel)] if kernel else list(program.kernels)
    parts: list[str | bytes] = []
    notes: list[str] = []
    for k in kernels:
        result = run_pipeline(k, until=stage, keep=[stage],
                              print_ir_after_all=print_ir_after_all, time_passes=time_passes)
        parts.append(result.ir[stage])
        for name, ir in result.pass_ir:
            notes.append(f"// ----- IR after {name} ({k.name}) -----\n{ir}")
        if time_passes:
            notes += [f"{k.name}: pass {name}: {sec * 1e3:.3f} ms"
                      for name, sec in result.pass_timings]
            notes += [f"{k.name}: stage {name}: {sec * 1e3:.3f} ms"
                      for name, sec in result.timings.items()]
    if parts and isinstance(parts[0], bytes):
        return b"".join(p for p in parts if isinstance(p, bytes)), notes
    return "\n".join(str(p) for p in parts), notes
