"""Whether inductor's CPU code comes out right with this machine's C++ compiler.

Inductor compiles its CPU kernels with the host's C++ compiler. Where one expression reads
16-bit float tensors (bfloat16, float16) in two memory layouts, a channels-last tensor against
a contiguous one say, the AVX-512 kernel transposes 32 × 32 tiles with torch's
``at::vec::transpose_mxn``; with two such tiles in one loop, g++ 12.2 (Debian 12, torch 2.11)
keeps that function out of line, clones it for the constant sizes, turns the clone's 32 row
stores into one copy from a stack buffer it never fills (``-ftree-loop-distribute-patterns``),
and the kernel reads garbage: finite values, or NaN. Whether it does depends on how
inductor's ``-march=native`` tunes: it did on an Intel CPU (AVX-512 with AMX), and does on an
AMD EPYC (Zen 4) with ``-mtune=generic`` added, not with that CPU's own tuning (``znver3``).
Inductor's layout optimisation makes such expressions in a UNet's backward (a group norm's
gradient on channels-last tensors added to a contiguous one), which is how a SteerMusic+
gradient compiled in bfloat16 on that Intel CPU came out all NaN.

:func:`wrong_values` compiles the smallest such expression, ``c + a·b``, and counts the values
it gets wrong; :class:`~steer.performance.Performance` asks it before compiling a 16-bit path
for the CPU, and where any value is wrong has inductor write AVX2 code (:data:`AVX2`), which
came out right here (0 of 4096 values wrong; the real-size SteerMusic+ gradient finite again,
``benchmarks/README.md``).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

#: the shape of :func:`wrong_values`' tensors: 64 × 64 (2 × 2 tiles; a single tile came out right)
SHAPE = (1, 64, 64, 1)
#: inductor's setting for AVX2 code on an AVX-512 CPU: ``torch.compile(options=AVX2)``
AVX2: dict[str, Any] = {"cpp.simdlen": 256}


def candidates() -> list[str]:
    """The C++ compilers inductor tries, in order: ``torch._inductor.config.cpp.cxx`` (``CXX``,
    else ``g++``)."""
    from torch._inductor import config

    cxx = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
    return [c for c in cxx if c]


def compiler() -> str | None:
    """The C++ compiler inductor builds CPU kernels with: the first of :func:`candidates` that
    runs, ``None`` where none does."""
    from torch._inductor import cpp_builder, exc

    try:
        return cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        return None


def _mix(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    return c + a * b


@functools.cache
def wrong_values(dtype: torch.dtype, simdlen: int | None = None) -> int:
    """How many of :data:`SHAPE`'s 4096 values inductor's CPU code gets wrong in ``c + a·b``,
    with ``a`` and ``b`` channels-last and ``c`` contiguous, all ``dtype``.

    The inputs are small integers, so every dtype computes the sum exactly and any difference
    from eager is the compiled code's fault. Compiles once per process and setting (about 20 s
    on 2 cores, less from inductor's on-disk cache).

    Args:
        dtype: the tensors' dtype.
        simdlen: inductor's ``cpp.simdlen`` (``None``: its own choice, AVX-512 where the CPU
            has it; 256: AVX2).
    """
    generator = torch.Generator().manual_seed(0)
    a, b, c = (torch.randint(-4, 5, SHAPE, generator=generator).to(dtype) for _ in range(3))
    a, b = (t.contiguous(memory_format=torch.channels_last) for t in (a, b))
    options = None if simdlen is None else {"cpp.simdlen": simdlen}
    compiled = torch.compile(_mix, backend="inductor", fullgraph=True, dynamic=False, options=options)
    with torch.no_grad():
        return int((compiled(a, b, c) != _mix(a, b, c)).sum())
