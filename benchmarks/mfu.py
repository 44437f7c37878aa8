"""Model FLOP utilisation: FLOPs counted by ``torch.utils.flop_counter`` over the measured time,
divided by the matmul peak measured on the same machine in the same run.

On CUDA the peak is a bf16 matmul's; on the CPU it is a float32 matmul's (CPU bf16 matmuls are
not the CPU's peak), and results say which.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Peak:
    """A measured matmul throughput.

    Attributes:
        flops_per_s: FLOP/s of the best timed repetition.
        dtype: the matmul dtype it was measured in.
        label: what it is, for reports (``"bf16 matmul peak (cuda)"``).
    """

    flops_per_s: float
    dtype: torch.dtype
    label: str


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, *, size: int | None = None, repeats: int = 5) -> Peak:
    """The best FLOP/s of a square matmul of ``size`` (8192 on CUDA, 1024 on the CPU).

    Example:
        >>> peak = matmul_peak(torch.device("cpu"), size=64, repeats=2)
        >>> peak.dtype, peak.flops_per_s > 0
        (torch.float32, True)
    """
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up: kernel selection
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    name = "bf16" if dtype == torch.bfloat16 else "fp32"
    return Peak(2 * size**3 / best, dtype, f"{name} matmul peak ({device.type})")


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matmuls, convolutions and attention ``fn`` runs (forward and backward).

    Example:
        >>> count_flops(lambda: torch.ones(2, 3) @ torch.ones(3, 4))  # 2 · 2 · 3 · 4
        48
    """
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def mfu(flops: float, seconds: float, peak: Peak) -> float:
    """Fraction of ``peak`` achieved by ``flops`` in ``seconds``."""
    return flops / seconds / peak.flops_per_s
