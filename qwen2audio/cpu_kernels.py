"""AVX-512 decode kernels for x86 CPUs (cpu_kernels.cpp): x @ W.T for up to MAX_ROWS rows of x that stream the
weights at the machine's read bandwidth, for bf16 and fp32 weights and for int8 weights with one scale per row.

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
    """x [..., in] (float32 or bfloat16) @ (q * scale[:, None]).T + bias, q int8 [out, in], scale [out]; x enters as
    16-bit fixed point (one scale per row: error at most 2^-16 of the row's largest value). At most MAX_ROWS rows."""
    y = torch.ops.qwen2audio.gemv_int8(_as_rows(x), q, scale, bias)
    return y.view(*x.shape[:-1], q.shape[0])
