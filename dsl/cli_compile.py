"""`tdsl compile` and `tdsl cache` (the compiler-side commands)."""

from __future__ import annotations

import argparse


def add_compile_commands(sub: argparse._SubParsersAction) -> None:
    """Register the compile and cache subcommands."""
