"""What limits a path: a profiled edit's device time next to its wall time, and its top kernels.

On CUDA a step is host-bound when its kernels' time is well below its wall time (the GPU waits
for launches, guard checks and Python between the calls), and compute- or memory-bound when they
are close; the top kernels say which work dominates. The profiler slows the host, so the wall
time here is an upper bound; the step benchmarks time the same edits unprofiled.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile


def profile_summary(edit: Callable[[], object], *, steps: int, device: torch.device, rows: int = 15) -> str:
    """Run ``edit`` (``steps`` steps) once under ``torch.profiler`` and describe it: wall and
    device (kernel) milliseconds a step, and the ``rows`` ops with the most self device time
    (self CPU time where ``device`` is not CUDA)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, acc_events=True) as profiled:  # one cycle; no warning of cycles cleared
        start = time.perf_counter()
        edit()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
    events = profiled.events()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    lines = [f"profiled wall {wall / steps * 1e3:.3f} ms a step"]
    if device.type == "cuda":
        kernels = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)  # µs
        lines[0] += f", kernels {kernels / steps / 1e3:.3f} ms a step ({kernels / 1e6 / wall:.0%} of the wall time)"
    lines.append(profiled.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=70))
    return "\n".join(lines)
