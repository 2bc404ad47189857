"""`tdsl compile` (any stage with --emit, shared libraries with -o) and `tdsl cache`."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from tdsl.runtime.signature import Signature

EMIT_CHOICES = ("ast", "checked", "mlir", "vector-math", "fused", "bufferized", "loops",
                "openmp", "llvm-dialect", "llvm", "asm", "obj", "header", "so")
GPU_EMIT_CHOICES = ("mapped", "gpu", "nvvm", "ptx", "host", "bundle")  # --target cuda only


def add_compile_commands(sub: argparse._SubParsersAction) -> None:
    """Register the compile and cache subcommands."""
    comp = sub.add_parser(
        "compile", help="compile a file: print a stage (--emit) or write a library (-o)",
        description="Print any stage of the CPU pipeline, or write a shared library holding "
        "every kernel and its signatures (load it with tdsl.load_library). Stages in order: "
        + ", ".join(EMIT_CHOICES[:-2]) + "; 'header' is a C header for the library.")
    comp.add_argument("file", metavar="FILE")
    comp.add_argument("--emit", "-e", choices=EMIT_CHOICES + GPU_EMIT_CHOICES, default=None,
                      help="what to produce (default: 'so' with -o, else 'llvm'; 'ptx' for "
                      "--target cuda, whose stages are mlir, fused, bufferized, loops, "
                      "mapped, gpu, nvvm, ptx, host, llvm; 'bundle' with -o writes every "
                      "kernel's PTX and host code, loadable with tdsl.load_library where the "
                      "compiler is not installed)")
    comp.add_argument("--target", "-t", choices=("cpu", "cuda"), default="cpu",
                      help="compile for the host CPU (default) or for CUDA GPUs")
    comp.add_argument("--arch", default=None,
                      help="GPU architecture for --target cuda (default sm_80)")
    comp.add_argument("--kernel", "-k", help="only this kernel (default: every kernel)")
    comp.add_argument("-o", "--output", help="write to this file instead of stdout")
    comp.add_argument("--print-ir-after-all", action="store_true",
                      help="print the IR after every pass on stderr")
    comp.add_argument("--time-passes", action="store_true",
                      help="print the time of every pass and stage on stderr")
    comp.set_defaults(func=cmd_compile)

    cache = sub.add_parser("cache", help="inspect or clear the cache of compiled kernels",
                           description="TDSL_CACHE_DIR moves the cache; TDSL_CACHE=0 turns it "
                           "off.")
    cache.add_argument("action", choices=("info", "clear"))
    cache.set_defaults(func=cmd_cache)


def cmd_compile(args: argparse.Namespace) -> int:
    """`tdsl compile FILE`."""
    from tdsl.check import check_source
    from tdsl.cli import UsageError, _read
    from tdsl.parser import parse
    from tdsl.source import Source

    text = _read(args.file)
    emit = args.emit or ("ptx" if args.target == "cuda" else "so" if args.output else "llvm")
    if args.target != "cuda" and (emit in GPU_EMIT_CHOICES or args.arch):
        raise UsageError(f"--emit {emit} and --arch need --target cuda")
    if emit == "ast":
        return _write(args.output, dump_ast(parse(Source(text, args.file))))
    program = check_source(text, args.file)
    if args.kernel and args.kernel not in {k.name for k in program.kernels}:
        raise UsageError(f"no kernel '{args.kernel}' in {args.file}; kernels: "
                         f"{', '.join(k.name for k in program.kernels)}")
    if emit == "checked":
        kernels = [k for k in program.kernels if not args.kernel or k.name == args.kernel]
        return _write(args.output, "\n\n".join(dump_checked(k) for k in kernels))
    if emit == "header":
        return _write(args.output, c_header([k.signature for k in program.kernels]))
    if args.target == "cuda" and emit == "bundle":
        return _write_bundle(program, args)
    if args.target == "cuda":
        from tdsl.gpu_pipeline import DEFAULT_ARCH, emit_cuda

        return _write(args.output, emit_cuda(program, emit, args.kernel, args.arch or
                                             DEFAULT_ARCH))
    if emit == "so":
        if not args.output:
            raise UsageError("--emit so needs -o LIBRARY.so")
        from tdsl.compiler import build_library

        path = build_library(program, args.output)
        print(f"wrote {path} ({len(program.kernels)} kernels)", file=sys.stderr)
        return 0
    if emit == "obj" and not args.kernel and len(program.kernels) != 1:
        raise UsageError("--emit obj writes one kernel's object: choose it with --kernel, or "
                         "write a library with -o LIBRARY.so")
    from tdsl.compiler import emit as run_emit

    output, notes = run_emit(program, emit, args.kernel,
                             print_ir_after_all=args.print_ir_after_all,
                             time_passes=args.time_passes)
    for note in notes:
        print(note, file=sys.stderr)
    return _write(args.output, output)


def _write_bundle(program, args: argparse.Namespace) -> int:
    """`--target cuda --emit bundle -o FILE`: the kernels' PTX and host code in one file."""
    from tdsl.cli import UsageError
    from tdsl.gpu_pipeline import DEFAULT_ARCH
    from tdsl.runtime.cuda import compile_kernel
    from tdsl.runtime.cuda_bundle import write_bundle

    if not args.output:
        raise UsageError("--emit bundle needs -o FILE.tdslcuda")
    arch = args.arch or DEFAULT_ARCH
    kernels = [k for k in program.kernels if not args.kernel or k.name == args.kernel]
    write_bundle(args.output, [compile_kernel(k, arch) for k in kernels])
    print(f"wrote {args.output} ({len(kernels)} kernels, {arch})", file=sys.stderr)
    return 0


def _write(path: str | None, data: str | bytes) -> int:
    if path:
        mode = "wb" if isinstance(data, bytes) else "w"
        with open(path, mode) as f:
            f.write(data)
        return 0
    if isinstance(data, bytes):
        sys.stdout.buffer.write(data)
    else:
        sys.stdout.write(data if data.endswith("\n") else data + "\n")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """`tdsl cache info|clear`."""
    from tdsl.runtime import cache

    if args.action == "clear":
        print(f"removed {cache.clear()} entries from {cache.cache_dir()}")
        return 0
    info = cache.info()
    state = "on" if info["enabled"] else "off (TDSL_CACHE=0)"
    print(f"cache: {info['dir']}\nstate: {state}\nentries: {info['entries']}\n"
          f"size: {info['bytes'] / 1e6:.2f} MB")
    return 0


def dump_ast(node: object, indent: int = 0) -> str:
    """An indented outline of a syntax tree (spans left out)."""
    pad = "  " * indent
    if isinstance(node, tuple):
        return "\n".join(dump_ast(n, indent) for n in node) if node else f"{pad}()"
    if not dataclasses.is_dataclass(node):
        return f"{pad}{node!r}"
    fields = [f for f in dataclasses.fields(node) if f.name not in ("span", "op_span", "depth")]
    simple = [f"{f.name}={getattr(node, f.name)!r}" for f in fields
              if not dataclasses.is_dataclass(getattr(node, f.name))
              and not isinstance(getattr(node, f.name), tuple)]
    if type(node).__name__ == "Name":
        return f"{pad}Name {node.id}"  # type: ignore[attr-defined]
    lines = [f"{pad}{type(node).__name__} {' '.join(simple)}".rstrip()]
    for f in fields:
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value) or isinstance(value, tuple):
            lines.append(f"{pad}  {f.name}:")
            lines.append(dump_ast(value, indent + 2))
    return "\n".join(lines)


def dump_checked(kernel) -> str:
    """A readable listing of a checked kernel: signature, conditions, locals, statements."""
    from tdsl.check.show import show_expr

    lines = [f"kernel {kernel.signature}"]
    lines += [f"  requires {cond.expr} {'>=' if cond.kind == 'ge' else '=='} 0   "
              f"# {cond.message}" for cond in kernel.signature.conditions]
    lines += [f"  local {loc.name}: {loc.type}" for loc in kernel.locals]
    for st in kernel.statements:
        ranges = ", ".join(f"{i} < {e}" for i, e in zip(st.indices, st.extents))
        lhs = f"{st.target}[{', '.join(st.indices)}]" if st.indices else st.target
        lines.append(f"  {lhs} = {show_expr(st.expr)}" + (f"   for {ranges}" if ranges else ""))
    return "\n".join(lines)


def c_header(signatures: list[Signature]) -> str:
    """A C header declaring every kernel entry point of a library, with its argument layout."""
    from tdsl.pipelines import entry_symbol

    out = ["/* Generated by tdsl. Each kernel takes one array of int64 slots: for every input",
           " * then every output, its memref descriptor: allocated pointer, aligned pointer,",
           " * offset, sizes[rank], strides[rank] (in elements). Scalars are rank-0 memrefs",
           " * (3 slots: pointer, pointer, 0). Outputs must not overlap inputs. */",
           "#pragma once", "#include <stdint.h>", "#ifdef __cplusplus", 'extern "C" {',
           "#endif", ""]
    for sig in signatures:
        slots = sum(3 + 2 * p.type.rank for p in sig.inputs + sig.outputs)
        out.append(f"/* {sig} */")
        offset = 0
        for p in sig.inputs + sig.outputs:
            out.append(f"/*   {p.name}: {p.type}: slots {offset}..{offset + 2 + 2 * p.type.rank}"
                       " */")
            offset += 3 + 2 * p.type.rank
        out.append(f"#define TDSL_{sig.name.upper()}_SLOTS {slots}")
        out.append(f"void {entry_symbol(sig.name)}(int64_t *args);")
        out.append("")
    out += ["#ifdef __cplusplus", "}", "#endif", ""]
    return "\n".join(out)
