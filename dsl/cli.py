"""The `tdsl` command: check, run, compile and cache."""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Sequence

import numpy as np

import tdsl
from tdsl.api import TARGETS
from tdsl.source import TdslError


class UsageError(Exception):
    """A mistake on the command line (bad option value, missing file)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 user error, 2 usage, 3 bug)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except TdslError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    except (UsageError, OSError, ValueError, TypeError, MemoryError) as exc:
        if os.environ.get("TDSL_DEBUG"):
            traceback.print_exc()
        print(f"tdsl: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception:  # noqa: BLE001 - a bug in tdsl; say so instead of a bare traceback
        if os.environ.get("TDSL_DEBUG"):
            traceback.print_exc()
        else:
            exc_type, exc, _ = sys.exc_info()
            print(f"tdsl: internal error ({exc_type.__name__}: {exc}); this is a bug in tdsl. "
                  "Run again with TDSL_DEBUG=1 for the traceback.", file=sys.stderr)
        return 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tdsl", description="Compile and run kernels written in the tdsl tensor language.",
        epilog="Run 'tdsl COMMAND --help' for the options of one command.")
    parser.add_argument("--version", action="version", version=f"tdsl {tdsl.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = sub.add_parser("check", help="check .tdsl files and report every error",
                           description="Parse and check files; exit 0 when all are clean, "
                           "1 otherwise (diagnostics on stderr).")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(func=cmd_check)

    run = sub.add_parser("run", help="run a kernel on random inputs",
                         description="Make random inputs of the given sizes, run a kernel, "
                         "print each output's summary, the time taken and, for a compiled "
                         "target, the largest difference from the reference interpreter.")
    run.add_argument("file", metavar="FILE")
    run.add_argument("--kernel", "-k", help="kernel to run (default: the first)")
    run.add_argument("--target", "-t", default=None, choices=TARGETS,
                     help="where to run (default: cpu)")
    run.add_argument("--size", "-s", action="append", default=[], metavar="SYM=N",
                     help="value of a shape symbol (repeatable; default 64, R and S 3)")
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument("--repeat", type=int, default=5, help="timed runs (default 5)")
    run.set_defaults(func=cmd_run)

    from tdsl.cli_compile import add_compile_commands

    add_compile_commands(sub)
    return parser


def cmd_check(args: argparse.Namespace) -> int:
    """`tdsl check FILE...`."""
    from tdsl.check import check_source

    status = 0
    for path in args.files:
        try:
            program = check_source(_read(path), path)
        except TdslError as exc:
            print(exc.render(), file=sys.stderr)
            status = 1
            continue
        names = ", ".join(k.name for k in program.kernels) or "no kernels"
        print(f"{path}: ok ({names})")
    return status


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def cmd_run(args: argparse.Namespace) -> int:
    """`tdsl run FILE`."""
    from tdsl.runtime.inputs import random_inputs

    target = args.target or "cpu"
    start = time.perf_counter()
    module = tdsl.loads(_read(args.file), target=target, filename=args.file)
    loaded = time.perf_counter() - start
    kernel = _pick_kernel(module, args.kernel)
    sizes = _parse_sizes(args.size)
    inputs = random_inputs(kernel.signature, sizes, args.seed)
    print(f"{kernel.signature}   [{target}]")
    print("inputs: " + ", ".join(f"{p.name} {_shape_text(v)}" for p, v in
                                 zip(kernel.signature.inputs, inputs)))
    start = time.perf_counter()
    outputs = _as_tuple(kernel(*inputs))
    first = time.perf_counter() - start
    best = first
    for _ in range(max(0, args.repeat)):
        start = time.perf_counter()
        kernel(*inputs)
        best = min(best, time.perf_counter() - start)
    for param, value in zip(kernel.signature.outputs, outputs):
        print(f"  {param.name}: {_summary(np.asarray(value))}")
    print(f"time: load {loaded * 1e3:.1f} ms (check and compile, or the cache), first call "
          f"{first * 1e3:.3f} ms, best of {args.repeat} {best * 1e3:.3f} ms")
    if target != "reference":
        reference = tdsl.loads(_read(args.file), "reference", args.file)[kernel.name]
        expected = _as_tuple(reference(*inputs))
        for param, got, want in zip(kernel.signature.outputs, outputs, expected):
            print(f"  {param.name}: largest difference from the reference "
                  f"{_difference(np.asarray(got), np.asarray(want))}")
    return 0


def _pick_kernel(module, name: str | None):
    if not module.kernels:
        raise UsageError(f"{module.filename} has no kernel")
    if name is None:
        return next(iter(module.kernels.values()))
    if name not in module.kernels:
        raise UsageError(f"no kernel '{name}' in {module.filename}; kernels: "
                         f"{', '.join(module.kernels)}")
    return module.kernels[name]


def _parse_sizes(items: list[str]) -> dict[str, int]:
    sizes = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip().lstrip("-").isdigit():
            raise UsageError(f"--size expects SYMBOL=INTEGER, got '{item}'")
        sizes[name.strip()] = int(value)
    return sizes


def _as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _shape_text(value) -> str:
    array = np.asarray(value)
    return f"{array.dtype}{list(array.shape)}" if array.ndim else f"{array.dtype} {array}"


def _summary(array: np.ndarray) -> str:
    head = f"{array.dtype}{list(array.shape)}"
    if array.size == 0:
        return f"{head} (empty)"
    data = array.astype(np.float64) if array.dtype.kind in "fcV" or str(array.dtype) == \
        "bfloat16" else array
    with np.errstate(all="ignore"):
        stats = (f"min {np.nanmin(data):.6g}, max {np.nanmax(data):.6g}, "
                 f"mean {np.nanmean(data.astype(np.float64)):.6g}")
    nans = int(np.isnan(data.astype(np.float64)).sum()) if data.dtype.kind == "f" else 0
    return f"{head} {stats}" + (f", {nans} nan" if nans else "")


def _difference(got: np.ndarray, want: np.ndarray) -> str:
    """The largest difference, also relative to the reference's largest finite magnitude (an
    element-wise ratio would blow up wherever a sum cancels to nearly zero)."""
    a, b = got.astype(np.float64), want.astype(np.float64)
    if a.size == 0:
        return "0 (empty)"
    both_nan = np.isnan(a) & np.isnan(b)
    with np.errstate(all="ignore"):
        diff = np.where(both_nan | (a == b), 0.0, np.abs(a - b))
    largest = float(np.nanmax(diff))
    scale = float(np.max(np.abs(b[np.isfinite(b)]), initial=0.0))
    if largest == 0.0:
        return "0"
    relative = f"{largest / scale:.3g}" if scale > 0 and np.isfinite(largest) else "inf"
    return f"{largest:.3g} ({relative} of the largest reference value)"
