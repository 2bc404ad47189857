"""`schedule_rewrites.align_vector_buffers`: a stack buffer read and written as whole vectors is
aligned to its vectors' size (LLVM assumes that alignment for the accesses; AVX-512 code crashed
on a 32-byte-aligned buffer of `<32 x float>` rows)."""

from __future__ import annotations

import pytest

from tdsl.pipelines import mlir_context
from tdsl.schedule_rewrites import align_vector_buffers

MODULE = """
func.func @f(%v: vector<{rows}x{lanes}x{elem}>) -> vector<{rows}x{lanes}x{elem}> {{
  %a = memref.alloca() {{alignment = {align} : i64}} : memref<{rows}x{lanes}x{elem}>
  %t = vector.type_cast %a : memref<{rows}x{lanes}x{elem}> to memref<vector<{rows}x{lanes}x{elem}>>
  memref.store %v, %t[] : memref<vector<{rows}x{lanes}x{elem}>>
  %r = memref.load %t[] : memref<vector<{rows}x{lanes}x{elem}>>
  return %r : vector<{rows}x{lanes}x{elem}>
}}
"""


@pytest.mark.parametrize("lanes, elem, align, want", [
    (32, "f32", 32, 128), (16, "f32", 32, 64), (8, "f32", 32, 32), (8, "f64", 16, 64),
    (6, "f32", 32, 32), (32, "f16", 64, 64), (16, "f32", 256, 256)])
def test_type_cast_buffers_get_their_vectors_alignment(lanes, elem, align, want):
    from mlir import ir

    with mlir_context(), ir.Location.unknown():
        module = ir.Module.parse(MODULE.format(rows=8, lanes=lanes, elem=elem, align=align))
        align_vector_buffers(module)
        text = str(module)
    assert f"alignment = {want} : i64" in text
