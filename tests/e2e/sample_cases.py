"""The table of sample programs (samples/*.tdsl) with inputs and hand-written numpy references.

Each `Case` names a sample file and one kernel in it, a function that makes the kernel's inputs
from a seeded generator (small odd sizes, never zeros, the dtypes the kernel declares), and a
numpy reference computing the expected outputs (one value, or a tuple for several outputs; a
rank-0 output is a numpy scalar). References compute in float64 (`WORK`) where that is clearer,
and cast to the declared output dtype at the end.

`tests/e2e/test_samples.py` runs every case, and checks that every kernel of every sample file
appears here, so a new sample cannot go untested.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from scipy import special

SAMPLES = Path(__file__).resolve().parents[2] / "samples"

#: The working precision of the float references. It is a module global so that a tolerance
#: check can rerun the references in float32 (`sample_cases.WORK = np.float32`) and see that the
#: float32 results stay within each case's tolerance.
WORK: type = np.float64

BF16 = np.dtype(ml_dtypes.bfloat16)
F32, F16, F64 = np.float32, np.float16, np.float64
I8, I32, I64, U8 = np.int8, np.int32, np.int64, np.uint8


@dataclass(frozen=True)
class Case:
    """One kernel of one sample file, with inputs and the expected outputs."""

    file: str  # file name in samples/
    kernel: str
    inputs: Callable[[np.random.Generator], tuple]
    expected: Callable[..., Any]
    rtol: float | None = None  # None: the default for the output dtype (see `tolerance`)
    atol: float | None = None
    tag: str = ""  # tells apart several cases of one kernel

    @property
    def id(self) -> str:
        stem = self.file.removesuffix(".tdsl")
        return f"{stem}.{self.kernel}" + (f"[{self.tag}]" if self.tag else "")

    @property
    def path(self) -> Path:
        return SAMPLES / self.file

    def make_inputs(self) -> tuple:
        """The inputs, the same at every call (seeded by the case's id)."""
        return tuple(self.inputs(np.random.default_rng(zlib.crc32(self.id.encode()))))


def tolerance(dtype: np.dtype) -> tuple[float, float] | None:
    """Default (rtol, atol) for comparing outputs of this dtype; None means exact."""
    dtype = np.dtype(dtype)
    if dtype == BF16:
        return 2e-2, 2e-2
    if dtype == np.float16:
        return 1e-2, 1e-2
    if dtype == np.float32:
        return 1e-5, 1e-5
    if dtype == np.float64:
        return 1e-12, 1e-12
    return None


# ---- input helpers ---------------------------------------------------------------------------

def floats(rng: np.random.Generator, *shape: int, low: float = 0.1, high: float = 2.0,
           signed: bool = True, dtype: Any = F32) -> np.ndarray:
    """Floats with magnitudes in [low, high] (so never zero), of random sign when `signed`."""
    mag = rng.uniform(low, high, size=shape)
    if signed:
        mag = mag * rng.choice([-1.0, 1.0], size=shape)
    return np.asarray(mag).astype(dtype)


def ints(rng: np.random.Generator, *shape: int, low: int, high: int, dtype: Any = I32
         ) -> np.ndarray:
    """Integers in [low, high], never zero."""
    values = rng.integers(low, high, size=shape, endpoint=True)
    while (values == 0).any():
        values = np.where(values == 0, rng.integers(low, high, size=shape, endpoint=True), values)
    return values.astype(dtype)


def w(x: Any) -> np.ndarray:
    """A float input in the references' working precision."""
    return np.asarray(x, dtype=WORK)


def out(x: Any, dtype: Any = F32) -> Any:
    """The expected output in its declared dtype (a numpy scalar for rank 0)."""
    array = np.asarray(x).astype(dtype)
    return array[()] if array.ndim == 0 else array


# ---- shared references -----------------------------------------------------------------------

def softmax(x: Any, axis: int = -1) -> np.ndarray:
    x = w(x)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def logsumexp(x: Any, axis: int | None = -1) -> np.ndarray:
    x = w(x)
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def attention(q: Any, k: Any, v: Any, causal: bool) -> np.ndarray:
    """softmax(q k^T / sqrt(D)) v over the last two axes (any leading batch axes)."""
    q, k, v = w(q), w(k), w(v)
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if causal:
        t = s.shape[-1]
        s = np.where(np.tril(np.ones((t, t), dtype=bool)), s, -np.inf)
    return softmax(s, -1) @ v


def conv2d(x: Any, f: Any) -> np.ndarray:
    """Valid cross-correlation: x [N, C, H, W], f [F, C, R, S] -> [N, F, H-R+1, W-S+1]."""
    x, f = w(x), w(f)
    _, _, h, wd = x.shape
    _, _, r, s = f.shape
    ho, wo = h - r + 1, wd - s + 1
    return sum(np.einsum("nchw,fc->nfhw", x[:, :, i:i + ho, j:j + wo], f[:, :, i, j])
               for i in range(r) for j in range(s))


def layernorm(x: Any, gamma: Any, beta: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = w(x)
    mu = x.mean(axis=1)
    var = ((x - mu[:, None]) ** 2).mean(axis=1)
    rstd = 1.0 / np.sqrt(var + 1e-5)
    return (x - mu[:, None]) * rstd[:, None] * w(gamma) + w(beta), mu, rstd


def rmsnorm(x: Any, g: Any) -> np.ndarray:
    x = w(x)
    return x / np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-6) * w(g)


def gelu_tanh(x: Any) -> np.ndarray:
    x = w(x)
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def softplus(x: Any) -> np.ndarray:
    return np.logaddexp(0.0, w(x))


def laplacian2d(x: Any) -> np.ndarray:
    x = w(x)
    return (x[:-2, 1:-1] + x[2:, 1:-1] + x[1:-1, :-2] + x[1:-1, 2:] - 4.0 * x[1:-1, 1:-1])


def laplacian3d(x: Any) -> np.ndarray:
    x = w(x)
    c = (slice(1, -1),) * 3
    return (x[:-2, 1:-1, 1:-1] + x[2:, 1:-1, 1:-1] + x[1:-1, :-2, 1:-1] + x[1:-1, 2:, 1:-1]
            + x[1:-1, 1:-1, :-2] + x[1:-1, 1:-1, 2:] - 6.0 * x[c])


def pool2x2(x: Any, reduce: Callable) -> np.ndarray:
    x = w(x)
    n, c, h, wd = x.shape
    ho, wo = h // 2, wd // 2
    return reduce(x[:, :, :2 * ho, :2 * wo].reshape(n, c, ho, 2, wo, 2), axis=(3, 5))


def sobel(x: Any) -> np.ndarray:
    x = w(x)
    gx = (x[:-2, 2:] + 2 * x[1:-1, 2:] + x[2:, 2:]) - (x[:-2, :-2] + 2 * x[1:-1, :-2] + x[2:, :-2])
    gy = (x[2:, :-2] + 2 * x[2:, 1:-1] + x[2:, 2:]) - (x[:-2, :-2] + 2 * x[:-2, 1:-1] + x[:-2, 2:])
    return np.sqrt(gx * gx + gy * gy)


def moving_sum(x: Any, weights: Any) -> np.ndarray:
    x, weights = w(x), w(weights)
    length = x.shape[0] - weights.shape[0] + 1
    return sum(weights[r] * x[r:r + length] for r in range(weights.shape[0]))


def rope(x1: Any, x2: Any, base: Any) -> tuple[np.ndarray, np.ndarray]:
    x1, x2 = w(x1), w(x2)
    t_len, p_len = x1.shape
    inv_freq = w(base) ** (-np.arange(p_len) / p_len)
    ang = np.arange(t_len)[:, None] * inv_freq[None, :]
    return x1 * np.cos(ang) - x2 * np.sin(ang), x1 * np.sin(ang) + x2 * np.cos(ang)


def quantize_i8(x: np.ndarray, scale: np.float32) -> np.ndarray:
    # Mirrors the kernel's float32 operations exactly (the result is compared exactly).
    v = np.floor(x.astype(F32) / F32(scale) + F32(0.5))
    return np.clip(v, -128, 127).astype(I8)


def contrast(img: np.ndarray, gain: np.float32) -> np.ndarray:
    # float32 product, then the saturating float-to-u8 cast (truncation toward zero).
    v = np.trunc(img.astype(F32) * F32(gain))
    return np.clip(v, 0, 255).astype(U8)


# ---- the table -------------------------------------------------------------------------------

CASES: list[Case] = [
    # softmax.tdsl
    Case("softmax.tdsl", "softmax", lambda r: (floats(r, 5, 13, high=4.0),),
         lambda x: out(softmax(x, 1))),
    Case("softmax.tdsl", "softmax", lambda r: (floats(r, 3, 7, low=50.0, high=90.0),),
         lambda x: out(softmax(x, 1)), tag="large"),
    Case("softmax.tdsl", "softmax_cols", lambda r: (floats(r, 5, 13, high=4.0),),
         lambda x: out(softmax(x, 0))),
    Case("softmax.tdsl", "log_softmax", lambda r: (floats(r, 5, 13, high=4.0),),
         lambda x: out(w(x) - logsumexp(x, 1)[:, None])),
    Case("softmax.tdsl", "softmax_temperature", lambda r: (floats(r, 5, 13, high=4.0), F32(0.7)),
         lambda x, t: out(softmax(w(x) / w(t), 1))),

    # layernorm.tdsl
    Case("layernorm.tdsl", "layernorm",
         lambda r: (floats(r, 7, 13, high=3.0), floats(r, 13), floats(r, 13)),
         lambda x, g, b: out(layernorm(x, g, b)[0])),
    Case("layernorm.tdsl", "layernorm_stats",
         lambda r: (floats(r, 7, 13, high=3.0), floats(r, 13), floats(r, 13)),
         lambda x, g, b: tuple(out(v) for v in layernorm(x, g, b))),

    # rmsnorm.tdsl
    Case("rmsnorm.tdsl", "rmsnorm", lambda r: (floats(r, 7, 13), floats(r, 13)),
         lambda x, g: out(rmsnorm(x, g))),
    Case("rmsnorm.tdsl", "add_rmsnorm",
         lambda r: (floats(r, 7, 13), floats(r, 7, 13), floats(r, 13)),
         lambda x, res, g: (out(rmsnorm(w(x) + w(res), g)), out(w(x) + w(res)))),

    # gelu.tdsl
    Case("gelu.tdsl", "gelu_tanh", lambda r: (floats(r, 5, 11, high=4.0),),
         lambda x: out(gelu_tanh(x))),
    Case("gelu.tdsl", "gelu_erf", lambda r: (floats(r, 5, 11, high=4.0),),
         lambda x: out(0.5 * w(x) * (1.0 + special.erf(w(x) / np.sqrt(2.0))))),
    Case("gelu.tdsl", "bias_gelu", lambda r: (floats(r, 5, 11, high=3.0), floats(r, 11)),
         lambda x, b: out(gelu_tanh(w(x) + w(b)))),

    # matmul.tdsl
    Case("matmul.tdsl", "matmul", lambda r: (floats(r, 5, 11), floats(r, 11, 7)),
         lambda a, b: out(w(a) @ w(b))),
    Case("matmul.tdsl", "matvec", lambda r: (floats(r, 5, 11), floats(r, 11)),
         lambda a, x: out(w(a) @ w(x))),
    Case("matmul.tdsl", "matmul_tn", lambda r: (floats(r, 11, 5), floats(r, 11, 7)),
         lambda a, b: out(w(a).T @ w(b))),
    Case("matmul.tdsl", "matmul_nt", lambda r: (floats(r, 5, 11), floats(r, 7, 11)),
         lambda a, b: out(w(a) @ w(b).T)),
    Case("matmul.tdsl", "gemm",
         lambda r: (F32(1.5), floats(r, 5, 11), floats(r, 11, 7), F32(-0.75), floats(r, 5, 7)),
         lambda al, a, b, be, c: out(w(al) * (w(a) @ w(b)) + w(be) * w(c))),
    Case("matmul.tdsl", "linear_relu", lambda r: (floats(r, 5, 11), floats(r, 11, 7),
                                                   floats(r, 7)),
         lambda x, wt, b: out(np.maximum(w(x) @ w(wt) + w(b), 0.0))),

    # batched_matmul.tdsl
    Case("batched_matmul.tdsl", "bmm", lambda r: (floats(r, 3, 5, 11), floats(r, 3, 11, 7)),
         lambda a, b: out(w(a) @ w(b))),
    Case("batched_matmul.tdsl", "bmm_shared_weight",
         lambda r: (floats(r, 3, 5, 11), floats(r, 11, 7)),
         lambda a, b: out(w(a) @ w(b))),
    Case("batched_matmul.tdsl", "bmm_nt", lambda r: (floats(r, 3, 5, 9), floats(r, 3, 7, 9)),
         lambda q, k: out(w(q) @ np.swapaxes(w(k), 1, 2))),

    # attention.tdsl
    Case("attention.tdsl", "causal_attention",
         lambda r: (floats(r, 7, 5), floats(r, 7, 5), floats(r, 7, 5)),
         lambda q, k, v: out(attention(q, k, v, causal=True))),
    Case("attention.tdsl", "mha_causal",
         lambda r: (floats(r, 3, 7, 5), floats(r, 3, 7, 5), floats(r, 3, 7, 5)),
         lambda q, k, v: out(attention(q, k, v, causal=True))),
    Case("attention.tdsl", "cross_attention",
         lambda r: (floats(r, 7, 5), floats(r, 9, 5), floats(r, 9, 3)),
         lambda q, k, v: out(attention(q, k, v, causal=False))),

    # conv2d.tdsl
    Case("conv2d.tdsl", "conv2d", lambda r: (floats(r, 2, 3, 9, 7), floats(r, 5, 3, 3, 2)),
         lambda x, f: out(conv2d(x, f))),
    Case("conv2d.tdsl", "conv2d_bias_relu",
         lambda r: (floats(r, 2, 3, 9, 7), floats(r, 5, 3, 3, 2), floats(r, 5)),
         lambda x, f, b: out(np.maximum(conv2d(x, f) + w(b)[None, :, None, None], 0.0))),
    Case("conv2d.tdsl", "conv2d_nhwc", lambda r: (floats(r, 2, 9, 7, 3), floats(r, 3, 2, 3, 5)),
         lambda x, f: out(np.transpose(conv2d(np.transpose(w(x), (0, 3, 1, 2)),
                                              np.transpose(w(f), (3, 2, 0, 1))), (0, 2, 3, 1)))),
    Case("conv2d.tdsl", "depthwise_conv2d", lambda r: (floats(r, 2, 3, 9, 7), floats(r, 3, 3, 2)),
         lambda x, f: out(np.concatenate(
             [conv2d(x[:, c:c + 1], f[None, c:c + 1]) for c in range(x.shape[1])], axis=1))),
    Case("conv2d.tdsl", "conv1d", lambda r: (floats(r, 2, 3, 11), floats(r, 5, 3, 3)),
         lambda x, f: out(conv2d(x[:, :, None, :], f[:, :, None, :])[:, :, 0, :])),

    # maxpool.tdsl
    Case("maxpool.tdsl", "maxpool2x2", lambda r: (floats(r, 2, 3, 7, 9),),
         lambda x: out(pool2x2(x, np.max))),
    Case("maxpool.tdsl", "avgpool2x2", lambda r: (floats(r, 2, 3, 7, 9),),
         lambda x: out(pool2x2(x, np.mean))),
    Case("maxpool.tdsl", "maxpool1d_3", lambda r: (floats(r, 13),),
         lambda x: out(np.maximum(np.maximum(w(x)[:-2], w(x)[1:-1]), w(x)[2:]))),
    Case("maxpool.tdsl", "global_avgpool", lambda r: (floats(r, 2, 3, 7, 9),),
         lambda x: out(w(x).mean(axis=(2, 3)))),

    # stencil2d.tdsl
    Case("stencil2d.tdsl", "laplacian2d", lambda r: (floats(r, 9, 13),),
         lambda x: out(laplacian2d(x))),
    Case("stencil2d.tdsl", "filter3x3", lambda r: (floats(r, 9, 13), floats(r, 3, 3)),
         lambda x, f: out(conv2d(x[None, None], f[None, None])[0, 0])),
    Case("stencil2d.tdsl", "sobel", lambda r: (floats(r, 9, 13),),
         lambda x: out(sobel(x))),

    # stencil3d.tdsl
    Case("stencil3d.tdsl", "laplacian3d", lambda r: (floats(r, 5, 7, 9),),
         lambda x: out(laplacian3d(x))),
    Case("stencil3d.tdsl", "heat_step", lambda r: (floats(r, 5, 7, 9), F32(0.15)),
         lambda u, a: out(w(u)[1:-1, 1:-1, 1:-1] + w(a) * laplacian3d(u))),

    # total.tdsl
    Case("total.tdsl", "total", lambda r: (floats(r, 13),), lambda x: out(w(x).sum())),
    Case("total.tdsl", "mean_of", lambda r: (floats(r, 13),), lambda x: out(w(x).mean())),
    Case("total.tdsl", "average", lambda r: (floats(r, 13),), lambda x: out(w(x).mean())),
    Case("total.tdsl", "total2d", lambda r: (floats(r, 5, 7),), lambda x: out(w(x).sum())),
    Case("total.tdsl", "dot", lambda r: (floats(r, 13), floats(r, 13)),
         lambda x, y: out(w(x) @ w(y))),
    Case("total.tdsl", "norm2", lambda r: (floats(r, 13),),
         lambda x: out(np.sqrt((w(x) ** 2).sum()))),

    # cumsum.tdsl
    Case("cumsum.tdsl", "cumsum", lambda r: (floats(r, 13),), lambda x: out(np.cumsum(w(x)))),
    Case("cumsum.tdsl", "cumsum_reverse", lambda r: (floats(r, 13),),
         lambda x: out(np.cumsum(w(x)[::-1])[::-1])),
    Case("cumsum.tdsl", "cumsum_rows", lambda r: (floats(r, 5, 11),),
         lambda x: out(np.cumsum(w(x), axis=1))),
    Case("cumsum.tdsl", "moving_sum", lambda r: (floats(r, 13), floats(r, 4)),
         lambda x, k: out(moving_sum(x, k))),
    Case("cumsum.tdsl", "moving_average5", lambda r: (floats(r, 13),),
         lambda x: out(moving_sum(x, np.full(5, 0.2)))),

    # diff.tdsl
    Case("diff.tdsl", "diff1", lambda r: (floats(r, 13),), lambda x: out(np.diff(w(x)))),
    Case("diff.tdsl", "diff2", lambda r: (floats(r, 13),), lambda x: out(np.diff(w(x), n=2))),
    Case("diff.tdsl", "reverse", lambda r: (floats(r, 13),), lambda x: x[::-1].copy()),

    # einsum.tdsl
    Case("einsum.tdsl", "transpose", lambda r: (floats(r, 5, 7),), lambda x: x.T.copy()),
    Case("einsum.tdsl", "permute", lambda r: (floats(r, 3, 5, 7),),
         lambda x: np.einsum("ijk->kij", x).copy()),
    Case("einsum.tdsl", "outer", lambda r: (floats(r, 5), floats(r, 7)),
         lambda a, b: out(np.outer(w(a), w(b)))),
    Case("einsum.tdsl", "trace", lambda r: (floats(r, 7, 7),), lambda x: out(np.trace(w(x)))),
    Case("einsum.tdsl", "diagonal", lambda r: (floats(r, 7, 7),),
         lambda x: np.diagonal(x).copy()),
    Case("einsum.tdsl", "row_sum", lambda r: (floats(r, 5, 7),),
         lambda x: out(w(x).sum(axis=1))),
    Case("einsum.tdsl", "col_sum", lambda r: (floats(r, 5, 7),),
         lambda x: out(w(x).sum(axis=0))),
    Case("einsum.tdsl", "chain3", lambda r: (floats(r, 5, 3), floats(r, 3, 9), floats(r, 9, 7)),
         lambda a, b, c: out(w(a) @ w(b) @ w(c))),
    Case("einsum.tdsl", "bilinear", lambda r: (floats(r, 3, 5), floats(r, 5, 7), floats(r, 3, 7)),
         lambda x, a, z: out(np.einsum("bi,ij,bj->b", w(x), w(a), w(z)))),
    Case("einsum.tdsl", "batched_dot", lambda r: (floats(r, 3, 11), floats(r, 3, 11)),
         lambda x, z: out((w(x) * w(z)).sum(axis=1))),

    # int_ops.tdsl
    Case("int_ops.tdsl", "divmod_i32",
         lambda r: (ints(r, 13, low=-100, high=100), ints(r, 13, low=-9, high=9)),
         lambda a, b: (a // b, a % b)),
    Case("int_ops.tdsl", "clamp_i32", lambda r: (ints(r, 5, 7, low=-50, high=50), I32(-20),
                                                 I32(30)),
         lambda x, lo, hi: np.clip(x, lo, hi).astype(I32)),
    Case("int_ops.tdsl", "add_flat_index", lambda r: (ints(r, 5, 7, low=-50, high=50),),
         lambda x: (x + np.arange(x.size).reshape(x.shape)).astype(I32)),
    Case("int_ops.tdsl", "positive_even", lambda r: (ints(r, 13, low=-20, high=20),),
         lambda x: (x > 0) & (x % 2 == 0)),
    Case("int_ops.tdsl", "flip_negative_odd", lambda r: (ints(r, 13, low=-20, high=20),),
         lambda x: np.where((x < 0) & (x % 2 != 0), -x, x).astype(I32)),
    Case("int_ops.tdsl", "brighten", lambda r: (ints(r, 5, 7, 3, low=1, high=255, dtype=U8),
                                                I32(60)),
         lambda img, d: np.clip(img.astype(I32) + d, 0, 255).astype(U8), tag="up"),
    Case("int_ops.tdsl", "brighten", lambda r: (ints(r, 5, 7, 3, low=1, high=255, dtype=U8),
                                                I32(-70)),
         lambda img, d: np.clip(img.astype(I32) + d, 0, 255).astype(U8), tag="down"),
    Case("int_ops.tdsl", "contrast", lambda r: (ints(r, 5, 7, 3, low=1, high=255, dtype=U8),
                                                F32(1.7)),
         contrast, tag="up"),
    Case("int_ops.tdsl", "contrast", lambda r: (ints(r, 5, 7, 3, low=1, high=255, dtype=U8),
                                                F32(0.55)),
         contrast, tag="down"),
    Case("int_ops.tdsl", "row_sum_i32", lambda r: (ints(r, 5, 7, low=-1000, high=1000),),
         lambda x: x.sum(axis=1, dtype=I32)),

    # half.tdsl (positive values, so that sums do not cancel below f16's resolution)
    Case("half.tdsl", "matvec_f16",
         lambda r: (floats(r, 7, 13, high=1.5, signed=False, dtype=F16),
                    floats(r, 13, high=1.5, signed=False, dtype=F16)),
         lambda a, x: out((a * x).astype(F64).sum(axis=1), F16)),
    Case("half.tdsl", "matvec_f16_f32",
         lambda r: (floats(r, 7, 13, high=1.5, dtype=F16), floats(r, 13, high=1.5, dtype=F16)),
         lambda a, x: out(w(a) @ w(x))),
    Case("half.tdsl", "scaled_sum_f16",
         lambda r: (floats(r, 13, high=1.5, signed=False, dtype=F16), F16(0.75)),
         lambda x, a: out(a * x.astype(F64).sum().astype(F16), F16)),
    Case("half.tdsl", "row_rms_f16", lambda r: (floats(r, 5, 13, high=3.0, dtype=F16),),
         lambda x: out(np.sqrt((w(x) ** 2).mean(axis=1)), F16)),
    Case("half.tdsl", "scale_shift_bf16",
         lambda r: (floats(r, 5, 7, dtype=BF16), ml_dtypes.bfloat16(1.25),
                    ml_dtypes.bfloat16(-0.5)),
         lambda x, a, b: out(w(a) * w(x) + w(b), BF16)),

    # multi_output.tdsl
    Case("multi_output.tdsl", "mean_var", lambda r: (floats(r, 5, 13),),
         lambda x: (out(w(x).mean(axis=1)), out(w(x).var(axis=1)))),
    Case("multi_output.tdsl", "min_max_mean", lambda r: (floats(r, 13),),
         lambda x: (out(w(x).min()), out(w(x).max()), out(w(x).mean()))),
    Case("multi_output.tdsl", "max_argmax", lambda r: (floats(r, 5, 13),),
         lambda x: (x.max(axis=1), x.argmax(axis=1).astype(I64))),

    # saxpy.tdsl
    Case("saxpy.tdsl", "saxpy", lambda r: (F32(1.5), floats(r, 13), floats(r, 13)),
         lambda a, x, y: out(w(a) * w(x) + w(y))),
    Case("saxpy.tdsl", "axpby", lambda r: (F32(1.5), floats(r, 13), F32(-0.25), floats(r, 13)),
         lambda a, x, b, y: out(w(a) * w(x) + w(b) * w(y))),
    Case("saxpy.tdsl", "saxpy2d", lambda r: (F32(-2.5), floats(r, 5, 7), floats(r, 5, 7)),
         lambda a, x, y: out(w(a) * w(x) + w(y))),
    Case("saxpy.tdsl", "saxpy_indexed", lambda r: (F32(1.5), floats(r, 13), floats(r, 13)),
         lambda a, x, y: out(w(a) * w(x) + w(y))),
    Case("saxpy.tdsl", "daxpy", lambda r: (F64(1.5), floats(r, 13, dtype=F64),
                                           floats(r, 13, dtype=F64)),
         lambda a, x, y: a * x + y),

    # broadcast.tdsl
    Case("broadcast.tdsl", "center", lambda r: (floats(r, 5, 7), floats(r, 7)),
         lambda x, m: out(w(x) - w(m))),
    Case("broadcast.tdsl", "scale_rows", lambda r: (floats(r, 5, 7), floats(r, 5, 1)),
         lambda x, s: out(w(x) * w(s))),
    Case("broadcast.tdsl", "outer_sum", lambda r: (floats(r, 5, 1), floats(r, 7)),
         lambda a, b: out(w(a) + w(b))),
    Case("broadcast.tdsl", "affine3d", lambda r: (floats(r, 3, 5, 7), floats(r, 7),
                                                  floats(r, 5, 1)),
         lambda x, g, h: out(w(x) * w(g) + w(h))),
    Case("broadcast.tdsl", "rescale", lambda r: (floats(r, 5, 7, high=1.0, signed=False),
                                                 F32(3.0)),
         lambda x, c: out(w(c) * (2.0 * w(x) - 1.0))),

    # relu_bias.tdsl
    Case("relu_bias.tdsl", "relu_bias", lambda r: (floats(r, 5, 7), floats(r, 7)),
         lambda x, b: out(np.maximum(w(x) + w(b), 0.0))),
    Case("relu_bias.tdsl", "relu_bias_whole", lambda r: (floats(r, 5, 7), floats(r, 7)),
         lambda x, b: out(np.maximum(w(x) + w(b), 0.0))),
    Case("relu_bias.tdsl", "leaky_relu_bias", lambda r: (floats(r, 5, 7), floats(r, 7),
                                                         F32(0.1)),
         lambda x, b, a: out(np.where(w(x) + w(b) > 0, w(x) + w(b), w(a) * (w(x) + w(b))))),

    # logsumexp.tdsl
    Case("logsumexp.tdsl", "logsumexp_rows", lambda r: (floats(r, 5, 13, high=5.0),),
         lambda x: out(logsumexp(x, 1))),
    Case("logsumexp.tdsl", "logsumexp_rows", lambda r: (floats(r, 3, 7, low=100.0, high=120.0),),
         lambda x: out(logsumexp(x, 1)), tag="large"),
    Case("logsumexp.tdsl", "logsumexp_all", lambda r: (floats(r, 13, high=5.0),),
         lambda x: out(logsumexp(x, None))),
    Case("logsumexp.tdsl", "logaddexp", lambda r: (floats(r, 13, high=30.0),
                                                   floats(r, 13, high=30.0)),
         lambda a, b: out(np.logaddexp(w(a), w(b)))),

    # cross_entropy.tdsl
    Case("cross_entropy.tdsl", "cross_entropy",
         lambda r: (floats(r, 7, 5, high=3.0), r.integers(0, 5, size=7).astype(I32)),
         lambda x, lab: out((logsumexp(x, 1) - w(x)[np.arange(x.shape[0]), lab]).mean())),
    Case("cross_entropy.tdsl", "cross_entropy_soft",
         lambda r: (floats(r, 7, 5, high=3.0), softmax(floats(r, 7, 5)).astype(F32)),
         lambda x, p: out((w(p) * (logsumexp(x, 1)[:, None] - w(x))).sum(axis=1).mean())),
    Case("cross_entropy.tdsl", "nll",
         lambda r: (np.log(softmax(floats(r, 7, 5))).astype(F32),
                    r.integers(0, 5, size=7).astype(I32)),
         lambda lp, lab: out(-w(lp)[np.arange(lp.shape[0]), lab])),

    # activations.tdsl
    Case("activations.tdsl", "silu", lambda r: (floats(r, 5, 7, high=6.0),),
         lambda x: out(w(x) / (1.0 + np.exp(-w(x))))),
    Case("activations.tdsl", "softplus", lambda r: (floats(r, 5, 7, high=30.0),),
         lambda x: out(softplus(x))),
    Case("activations.tdsl", "mish", lambda r: (floats(r, 5, 7, high=6.0),),
         lambda x: out(w(x) * np.tanh(softplus(x)))),
    Case("activations.tdsl", "hardswish", lambda r: (floats(r, 5, 7, high=5.0),),
         lambda x: out(w(x) * np.clip(w(x) + 3.0, 0.0, 6.0) / 6.0)),
    Case("activations.tdsl", "elu", lambda r: (floats(r, 5, 7, high=4.0), F32(1.3)),
         lambda x, a: out(np.where(w(x) > 0, w(x), w(a) * np.expm1(w(x))))),

    # quantize.tdsl
    Case("quantize.tdsl", "quantize_i8", lambda r: (floats(r, 13, high=3.0), F32(0.02)),
         quantize_i8),
    Case("quantize.tdsl", "dequantize_i8", lambda r: (ints(r, 5, 7, low=-128, high=127, dtype=I8),
                                                      floats(r, 5, high=0.1, signed=False)),
         lambda q, s: out(w(q) * w(s)[:, None])),
    Case("quantize.tdsl", "matmul_i8", lambda r: (ints(r, 5, 11, low=-128, high=127, dtype=I8),
                                                  ints(r, 11, 7, low=-128, high=127, dtype=I8)),
         lambda a, b: a.astype(I32) @ b.astype(I32)),
    Case("quantize.tdsl", "bucket_count", lambda r: (floats(r, 13, high=10.0, signed=False),
                                                     F32(0.7)),
         lambda x, s: np.ceil(x / s).astype(I32)),

    # rope.tdsl
    Case("rope.tdsl", "rope", lambda r: (floats(r, 13, 5), floats(r, 13, 5), F32(10000.0)),
         lambda x1, x2, base: tuple(out(v) for v in rope(x1, x2, base)), rtol=1e-4, atol=2e-5),

    # distance.tdsl
    Case("distance.tdsl", "sqdist", lambda r: (floats(r, 5, 3), floats(r, 7, 3)),
         lambda x, z: out(((w(x)[:, None, :] - w(z)[None, :, :]) ** 2).sum(axis=2))),
    Case("distance.tdsl", "cosine_similarity", lambda r: (floats(r, 5, 3), floats(r, 7, 3)),
         lambda x, z: out((w(x) @ w(z).T) / np.outer(np.linalg.norm(w(x), axis=1),
                                                     np.linalg.norm(w(z), axis=1)))),
]
