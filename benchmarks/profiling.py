"""What limits a path: a profiled edit's device time next to its wall time, and its top kernels;
and where a host-bound step's host time goes.

On CUDA a step is host-bound when its kernels' time is well below its wall time (the GPU waits
for launches, guard checks and Python between the calls), and compute- or memory-bound when they
are close; the top kernels say which work dominates. The profiler slows the host, so the wall
time here is an upper bound; the step benchmarks time the same edits unprofiled.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile

#: what CUPTI records of its own work on the device timeline (the names of CUPTI's overhead
#: kinds, CUpti_ActivityOverheadKind): not the edit's kernels. A profiled SteerMusic+ edit on an
#: H100 counted 19.8 ms a step of "Activity Buffer Request" and "Buffer Flush" beside 37.9 ms of
#: kernels.
PROFILER_OVERHEAD = frozenset({
    "Activity Buffer Request", "Buffer Flush", "Command Buffer Full", "Driver Compiler",
    "Instrumentation", "Lazy Function Loading", "Resource", "Runtime Triggered Module Loading",
    "UVM Activity Init", "Unknown",
})


def device_time_us(events: Iterable[FunctionEvent]) -> float:
    """Microseconds the device spent in the events' kernels, copies and memsets: their self
    device time, less the profiler's own activities (:data:`PROFILER_OVERHEAD`)."""
    return sum(
        e.self_device_time_total
        for e in events
        if e.device_type == DeviceType.CUDA and e.name not in PROFILER_OVERHEAD
    )


def per_step(edit: float, fixed: float, *, steps: int, fixed_steps: int = 0) -> tuple[float, float]:
    """A figure of an edit (seconds, ops) split into a step's share and the edit's fixed part
    (prompts, the weights' cast and fingerprint, set-up), from an edit of ``steps`` steps
    (``edit``) and one of ``fixed_steps`` (``fixed``: 0 steps; with a step graph, those it does
    not replay): a step's share is what each step past ``fixed_steps`` adds, and the fixed part
    the shorter edit's figure less its steps' shares. Dividing a whole edit by its steps would
    count the fixed part in every step. On a noisy machine a few short steps can come out
    negative: time more steps."""
    if steps <= fixed_steps:
        raise ValueError(f"the longer edit's steps ({steps}) must exceed the shorter's ({fixed_steps})")
    step = (edit - fixed) / (steps - fixed_steps)
    return step, fixed - fixed_steps * step


#: what :func:`profile_summary` and :func:`host_summary` run: an edit, given the callback an
#: editor calls after each step (``edit_latent(callback=...)``), or ``None``
Edit = Callable[[Callable[[Any], None] | None], object]


def _from_step(edit: Edit, *, after: int, device: torch.device, begin: Callable[[], None], end: Callable[[], None]) -> float:
    """Run ``edit`` once, calling ``begin`` once its first ``after`` steps have run (before it
    with 0) and ``end`` when it returns: the seconds in between, the device's queue emptied at
    both ends so that neither side's work is counted on the other."""
    started: list[float] = []

    def open_window() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        begin()
        started.append(time.perf_counter())

    def step_done(state: Any) -> None:
        if state.step == after - 1:
            open_window()

    if after == 0:
        open_window()
    try:
        edit(step_done if after else None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if not started:
            raise ValueError(f"the edit ran fewer than after={after} steps: profile after fewer steps or edit more")
        return time.perf_counter() - started[0]
    finally:
        if started:
            end()


def profile_summary(edit: Edit, *, steps: int, device: torch.device, after: int = 0, rows: int = 15) -> str:
    """Run ``edit`` once, its last ``steps`` steps under ``torch.profiler`` (those after its
    first ``after``; with 0, the whole edit, its set-up included), and describe them: wall and
    device (kernel) milliseconds a step (:func:`device_time_us`), and the ``rows`` ops with the
    most self device time (self CPU time where ``device`` is not CUDA)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    profiled = profile(activities=activities, acc_events=True)  # one cycle; no warning of cycles cleared
    wall = _from_step(edit, after=after, device=device, begin=profiled.start, end=profiled.stop)
    events = profiled.events()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    lines = [f"profiled wall {wall / steps * 1e3:.3f} ms a step"]
    if device.type == "cuda":
        kernels = device_time_us(events)
        lines[0] += f", kernels {kernels / steps / 1e3:.3f} ms a step ({kernels / 1e6 / wall:.0%} of the wall time)"
    lines.append(profiled.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=70))
    return "\n".join(lines)


def host_summary(edit: Edit, *, steps: int, device: torch.device, after: int = 0, rows: int = 12) -> str:
    """Run ``edit`` once, its last ``steps`` steps under ``cProfile`` (those after its first
    ``after``; with 0, the whole edit): the host's milliseconds a step, and the ``rows`` Python
    functions with the most own time, with their calls a step. Where a step is host-bound
    (kernels well below its time), this says which Python takes the time: CUDA-graph trees'
    bookkeeping, dynamo's guards, the editor's own code. ``cProfile`` slows Python-heavy code,
    so the figures are upper bounds, for ranking."""
    profiler = cProfile.Profile()
    wall = _from_step(edit, after=after, device=device, begin=profiler.enable, end=profiler.disable)
    stats = pstats.Stats(profiler).stats  # (file, line, function) -> (primitive calls, calls, own s, cumulative s, callers)
    top = sorted(stats.items(), key=lambda entry: entry[1][2], reverse=True)[:rows]
    lines = [f"host under cProfile {wall / steps * 1e3:.3f} ms a step; own ms a step, calls a step, function:"]
    for (file, line, function), (_, calls, own, _, _) in top:
        where = f"{Path(file).name}:{line}" if line else file  # built-ins have no file
        lines.append(f"{own / steps * 1e3:10.3f} {calls / steps:10.1f}  {where}({function})")
    return "\n".join(lines)

