"""AVX-512 decode kernels for x86 CPUs (cpu_kernels.cpp): x @ W.T for up to MAX_ROWS rows of x that stream the
weights at the machine's read bandwidth, for bf16 and fp32 weights and for int8 weights with a symmetric scale per
row or per group of inputs.

Built once per machine at first use (a C++ compiler and ninja are needed; torch.utils.cpp_extension caches the build
under ~/.cache/torch_extensions) and registered as the torch ops `qwen2audio::gemv` and `qwen2audio::gemv_int8`,
which `torch.compile` calls as they are. Where they cannot run (another CPU, no compiler), `available()` is False and
the callers keep their portable paths.
"""

from __future__ import annotations

import functools
import platform
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
MAX_ROWS = 8  # rows of x per call (MAX_ROWS in the C++ source)
# the instruction sets the kernels use, as /proc/cpuinfo names them
REQUIRED_CPU_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "avx512_vnni", "fma"})
ISA_FLAGS = ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mavx512vnni", "-mfma")  # gcc


def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            line = next(line for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        return frozenset()
    return frozenset(line.split(":", 1)[1].split())


@functools.cache
def available() -> bool:
    """Whether the kernels run on this machine (built and loaded on the first call)."""
    if platform.machine() not in ("x86_64", "AMD64") or not REQUIRED_CPU_FLAGS <= cpu_flags():
        return False
    try:
        from torch.utils.cpp_extension import load

        load(name="qwen2audio_cpu_kernels", sources=[str(SOURCE)], extra_cflags=["-O3", "-fopenmp", *ISA_FLAGS],
             extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)  # OpenMP: at::parallel_for
    except Exception as e:  # no compiler or ninja, or a failed build: the portable paths still work
        warnings.warn(f"qwen2audio: the AVX-512 decode kernels could not be built ({type(e).__name__}: "
                      f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}); using the portable path")
        return False
    _register_fakes()
    return True


def _register_fakes() -> None:
    """Output shapes for torch.compile's tracing."""
    @torch.library.register_fake("qwen2audio::gemv")
    def _(x, w, bias=None):
        return x.new_empty(x.shape[0], w.shape[0])

    @torch.library.register_fake("qwen2audio::gemv_int8")
    def _(x, q, scale, bias=None):
        return x.new_empty(x.shape[0], q.shape[0])


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).contiguous()


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] @ weight[out, in].T + bias, x and weight both float32 or both bfloat16 (products summed in
    fp32), at most MAX_ROWS rows of x."""
    y = torch.ops.qwen2audio.gemv(_as_rows(x), weight, bias)
    return y.view(*x.shape[:-1], weight.shape[0])


def gemv_int8(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] (float32 or bfloat16) @ W.T + bias, W = q * scale over each group of G inputs, q int8 [out, in],
    scale [out] (per row) or [out, in / G] (G a multiple of 32). At most MAX_ROWS rows.

    Error: x enters as 16-bit fixed point (one scale per row of x): each input off by at most max|x| / 65534, so the
    result by at most max|x| / 65534 * sum|W[n]|. Each group's integer products are summed exactly in int32 (split
    every 2048 inputs), then converted to fp32 and added times the group's scale: a further error of at most
    (2 C + 6) * 2^-24 of sum_k |x[k] W[n, k]|, C the number of int32 sums per row (K / G groups, each split every
    2048 inputs; one rounding per conversion and per fp32 addition, 16 lanes summed in 4 steps, x's scale applied):
    2e-5 of it for K = 4864 in groups of 32, 1e-6 per row (K / 2048 sums)."""
    y = torch.ops.qwen2audio.gemv_int8(_as_rows(x), q, scale, bias)
    return y.view(*x.shape[:-1], q.shape[0])
