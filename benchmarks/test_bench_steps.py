"""Milliseconds per step, peak memory and MFU of SteerMusic and SteerMusic+ on every path
(issue 5), batch 1 and 8. Run on a GPU with ``pytest benchmarks --real-size``; see README.md.

Each case starts from a fresh dynamo (no graphs, CUDA-graph pools or recompilations left by
earlier cases), warms up (prompt encoding, compilation, kernel selection), then times
``--rounds`` edits of ``--steps`` steps and keeps the fastest, less an edit's fixed cost
(prompts, the weights' cast, set-up: the fastest of 0-step edits), which a 400-step edit's time
counts once. A compiled case whose graphs break fails once its figures are recorded: part of it
ran eagerly, so they are not the compiled path's. With ``--warm-only`` a case stops after its
warm-up edit: run in other processes beforehand, the compiles fill inductor's on-disk cache,
and a case then compiles in a fraction of the time (``gpu_figures.sh``'s ``prewarm`` plan).
FLOPs are counted once per recipe and batch on the batched fp32 path (the work the maths
needs): the reference's redundant forward does not raise its MFU.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from typing import TYPE_CHECKING

import pytest
import torch
from torch._dynamo.utils import counters

from benchmarks.mfu import count_flops, mfu
from benchmarks.models import make_editor
from benchmarks.profiling import host_summary, per_step, profile_summary
from steer.performance import Performance
from steer.step_graph import WARMUP

if TYPE_CHECKING:
    from collections.abc import Callable

    from benchmarks.conftest import Settings
    from steer.editor import EditResult, EditState

RECIPES = ("steermusic", "steermusic_plus")
#: paths the benchmarks time besides the presets, each for a ratio measured in the same run:
#: bf16 before ``cast_weights``; ``fused`` on the backends that replay dynamo's graphs as CUDA
#: graphs without generating code (torch's, which copies the parameters into the graphs on every
#: replay, and steer's, which reads them in place); and ``fused-checkpointed`` on steer's, for
#: SteerMusic+'s memory against SteerMusic's ``fused-steer-cudagraphs`` in a run too short for
#: inductor's compile; ``fused`` with inductor's kernels tuned (``autotune``) against ``fused``;
#: and ``bf16``, ``fused`` and ``fused-checkpointed`` with each step after the third replayed as
#: one CUDA graph (``step_graph``; on the CPU they run as without it); ``fused`` and
#: ``fused-step-graph`` with each attention's projections of one input as one matmul
#: (``fuse_projections``); ``fused-checkpointed`` and its step graph with SteerMusic+'s LoRA
#: merged into ε′'s weights (``merge_lora``; SteerMusic runs them as without it), and that step
#: graph with the merged projections fused too. Compiled, they follow ``--compile-backend`` but
#: those of :data:`OWN_BACKEND`
VARIANTS = {
    "bf16-autocast": dataclasses.replace(Performance.preset("bf16"), cast_weights=False),
    "fused-cudagraphs": dataclasses.replace(Performance.preset("fused"), compile_backend="cudagraphs"),
    "fused-steer-cudagraphs": dataclasses.replace(Performance.preset("fused"), compile_backend="steer-cudagraphs"),
    "fused-checkpointed-steer-cudagraphs": dataclasses.replace(
        Performance.preset("fused-checkpointed"), compile_backend="steer-cudagraphs"
    ),
    "fused-autotune": dataclasses.replace(Performance.preset("fused"), autotune=True),
    **{
        f"{preset}-step-graph": dataclasses.replace(Performance.preset(preset), step_graph=True)
        for preset in ("bf16", "fused", "fused-checkpointed")
    },
    "fused-projections": dataclasses.replace(Performance.preset("fused"), fuse_projections=True),
    "fused-projections-step-graph": dataclasses.replace(
        Performance.preset("fused"), fuse_projections=True, step_graph=True
    ),
    "fused-checkpointed-merge-lora": dataclasses.replace(Performance.preset("fused-checkpointed"), merge_lora=True),
    "fused-checkpointed-merge-lora-step-graph": dataclasses.replace(
        Performance.preset("fused-checkpointed"), merge_lora=True, step_graph=True
    ),
    "fused-checkpointed-merge-lora-fuse-projections-step-graph": dataclasses.replace(
        Performance.preset("fused-checkpointed"), merge_lora=True, fuse_projections=True, step_graph=True
    ),
}
#: variants compiled with their own backend whatever ``--compile-backend`` says: the CUDA-graph
#: backends', and inductor for ``fused-autotune`` (``max-autotune`` is an inductor mode)
OWN_BACKEND = frozenset({
    "fused-cudagraphs", "fused-steer-cudagraphs", "fused-checkpointed-steer-cudagraphs", "fused-autotune",
})
PATHS = (
    "reference", "batched", "bf16-autocast", "bf16", "fp16", "checkpointed",
    "fused", "fused-autotune", "fused-cudagraphs", "fused-steer-cudagraphs", "fused-checkpointed",
    "fused-checkpointed-steer-cudagraphs", "bf16-step-graph", "fused-step-graph", "fused-checkpointed-step-graph",
    "fused-projections", "fused-projections-step-graph", "fused-checkpointed-merge-lora",
    "fused-checkpointed-merge-lora-step-graph", "fused-checkpointed-merge-lora-fuse-projections-step-graph",
)
BATCHES = (1, 8)
#: steps ``--profile-file`` profiles (the profiler keeps every op of them): a whole edit's, or a
#: step graph's replays after its steps that are not
PROFILED_STEPS = 3
#: shortest edits timed per case for an edit's fixed cost (0 steps; a step graph's: up to its
#: recording); the fastest counts
SET_UP_ROUNDS = 3
PROMPTS = {
    "steermusic": {"source": "a piano melody", "target": "a violin melody"},
    "steermusic_plus": {"source": "a piano melody", "target": "a sks guitar melody"},
}


def performance(path: str, settings: Settings) -> Performance:
    """The path's preset or variant, compiled with the session's backend (a variant of
    :data:`OWN_BACKEND` with its own); not compiled where compiling is off (the CPU by default).
    Raises ``ValueError`` where the path cannot take the session's backend (a step graph holds no
    CUDA-graph backend's graphs)."""
    preset = VARIANTS[path] if path in VARIANTS else Performance.preset(path)
    if not preset.compile:
        return preset
    if not settings.compile:
        return dataclasses.replace(preset, compile=False, autotune=False)
    if path in OWN_BACKEND:
        return preset
    return dataclasses.replace(preset, compile_backend=settings.compile_backend)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fresh_dynamo() -> None:
    """Drop every compiled graph (and with it CUDA-graph memory pools) and dynamo's counts."""
    torch._dynamo.reset()
    counters.clear()
    gc.collect()


def _say(request: pytest.FixtureRequest, line: str) -> None:
    """Write a line to the terminal at once, past pytest's capture: a run stopped by a time limit
    keeps each case's progress and figures."""
    plugins = request.config.pluginmanager
    with plugins.get_plugin("capturemanager").global_and_fixture_disabled():
        plugins.get_plugin("terminalreporter").write_line(line)


@pytest.fixture(scope="module")
def model_flops(settings, bench_backbone):
    """FLOPs of one batched fp32 step, by (recipe, batch), counted on first use."""
    cache: dict[tuple[str, int], int] = {}

    def flops(recipe: str, batch: int) -> int:
        if (recipe, batch) not in cache:
            latent = torch.zeros(batch, *settings.latent_shape, device=settings.device)
            editor = make_editor(recipe, bench_backbone, Performance(), steps=1)
            try:
                editor.edit_latent(latent, **PROMPTS[recipe])  # encodes the prompts outside the count
                cache[recipe, batch] = count_flops(lambda: editor.edit_latent(latent, **PROMPTS[recipe]))
            finally:
                editor.close()
        return cache[recipe, batch]

    return flops


@pytest.mark.filterwarnings("ignore:fused kernels need triton")
@pytest.mark.filterwarnings("ignore:step_graph records CUDA graphs")
@pytest.mark.filterwarnings("ignore:Benchmark fixture was not used")  # --warm-only
@pytest.mark.filterwarnings("ignore:merge_lora merges a LoRA concept")  # SteerMusic runs those paths as without
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("recipe", RECIPES)
def test_step_time(request, benchmark, settings, bench_backbone, model_flops, recipe, path, batch):
    device = settings.device
    try:
        perf = performance(path, settings)
    except ValueError as error:  # a combination that does not exist, e.g. a step graph on cudagraphs
        pytest.skip(f"{path} cannot compile with --compile-backend {settings.compile_backend}: {error}")
    flops = None if settings.warm_only else model_flops(recipe, batch)  # before this case's editor holds memory
    _fresh_dynamo()
    latent = torch.randn(batch, *settings.latent_shape, generator=torch.Generator().manual_seed(0)).to(device)
    fixed_steps = WARMUP + 1 if perf.step_graphs(device) else 0  # steps not replayed
    if settings.steps <= fixed_steps:  # before the editor (SteerMusic+'s adapter) is made
        pytest.fail(f"a step graph replays from step {fixed_steps + 1} on: give --steps > {fixed_steps}")
    editor = make_editor(recipe, bench_backbone, perf, steps=settings.steps)
    times: list[float] = []

    def edit():
        _sync(device)
        start = time.perf_counter()
        result = editor.edit_latent(latent, **PROMPTS[recipe])
        _sync(device)
        times.append(time.perf_counter() - start)
        return result

    case = f"{recipe} B={batch} {path}"
    try:
        # a recompilation past dynamo's limit would time eager code: fail instead
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
            warming = "warm-up edit (compiling)" if perf.compile else "warm-up edit"
            _say(request, f"{case}: {warming} from {time.strftime('%H:%M:%S')}")
            result = edit()  # warm-up
            warm_up = times.pop()
            _say(request, f"{case}: warm-up edit took {warm_up:.1f} s")
            if settings.warm_only:  # compiled: inductor's cache holds what a timed run needs
                _check(result, latent, sum(counters["graph_break"].values()))
                return
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            result = benchmark.pedantic(edit, rounds=settings.rounds, iterations=1)
            graph_breaks = sum(counters["graph_break"].values())
            # graphs a CUDA-graph backend could not capture (they run kernel by kernel from the host)
            uncaptured = counters["inductor"]["cudagraph_skips"] if perf.cuda_graphs(device) else None
            edit_s = min(times)
            # what an edit costs besides its steps (prompts, the weights' cast, set-up; with a
            # step graph its first steps' excess and the capture too), from the shortest edits
            # (0 steps; a step graph's, those that record it): a step's time leaves it out, and
            # a 400-step edit counts it once
            times.clear()
            editor.steps = fixed_steps
            for _ in range(SET_UP_ROUNDS):
                edit()
            fixed = min(times)
            # a step graph's edit runs its first steps as they are and records the next: the
            # replayed steps' time is what an edit longer by one step takes longer
            seconds, set_up = per_step(edit_s, fixed, steps=settings.steps, fixed_steps=fixed_steps)
            figures = {
                "ms_per_step": seconds * 1e3,
                "set_up_ms": set_up * 1e3,
                "edit_400_s": set_up + 400 * seconds,
                "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
                "mfu": mfu(flops, seconds, settings.peak),
                "graph_breaks": graph_breaks if perf.compile else None,
                "uncaptured_graphs": uncaptured,
                "warm_up_s": warm_up,
            }
            settings.results.setdefault((recipe, batch), {})[path] = figures
            benchmark.extra_info.update(figures, performance=repr(perf), peak=settings.peak.label)
            # each case's figures as it ends: a run stopped before the closing table keeps them
            memory = "n/a" if figures["peak_mib"] is None else f"{figures['peak_mib']:.0f} MiB"
            _say(
                request,
                f"{case}: {figures['ms_per_step']:.3f} ms/step, set-up {figures['set_up_ms']:.1f} ms, "
                f"peak {memory}, MFU {figures['mfu']:.1%}, "
                + (f"graph breaks {figures['graph_breaks']}, graphs not CUDA graphs {uncaptured}, " if perf.compile else "")
                + f"{warming} {warm_up:.1f} s",
            )
            if settings.profile_file is not None:
                # steps after the first (whose window held the edit's set-up: prompts, the weights'
                # cast and fingerprint), or a step graph's replays (after the steps run as they are
                # and recorded): the set-up is left out of every case's profile, as of its timing
                skipped = max(fixed_steps, 1)
                editor.steps = skipped + PROFILED_STEPS
                def profiled(callback: Callable[[EditState], None] | None) -> EditResult:
                    return editor.edit_latent(latent, callback=callback, **PROMPTS[recipe])

                window = {"steps": PROFILED_STEPS, "after": skipped, "device": device}
                summary = profile_summary(profiled, **window) + "\n" + host_summary(profiled, **window)
                with settings.profile_file.open("a") as file:
                    file.write(f"\n== {case}: {perf!r}\n{summary}\n")
    finally:
        editor.close()
    _check(result, latent, graph_breaks)


def _check(result: EditResult, latent: torch.Tensor, graph_breaks: int | None) -> None:
    """A case's edit moved the latent to finite values, and no compiled graph broke."""
    assert torch.isfinite(result.latent).all()
    assert not torch.equal(result.latent, latent)  # the step did work
    assert not graph_breaks, f"{graph_breaks} graph breaks: {list(counters['graph_break'])}"
