"""Host time of a compiled edit's steps, the graphs' work left out: dynamo's guard checks, the
gathering of each graph's inputs and the putting back of its side effects, the eager ops between
the compiled calls and the editor's own Python, with each ``Performance.guards`` setting.

On a GPU a step's compiled calls are CUDA-graph replays: the GPU runs them while the host goes
on, unless the host's own work per step takes longer. A 1-s, 400-step edit leaves 2.5 ms a step,
so the host time measured here bounds the edit from below. The editor compiles with a backend
that runs each graph during two 2-step warm-up edits and from then on returns the graph's last
outputs (detached, for outputs that carried gradients: the compiled backward's work is left out
too; ``--autograd`` keeps AOTAutograd's forward and backward wrappers and the backward pass,
with the graphs inside them frozen alike); edits of ``--steps`` steps are then timed without a
profiler, and the fastest counts. The eager ops between the calls are counted in a profiled
edit (``torch.profiler``, top-level ``aten::`` ops: on CUDA each a dispatch or a kernel launch).
A step's figures are what the edit adds over a 0-step edit, timed and profiled alike, divided
by its steps: the 0-step edit's are printed as the edit's set-up (prompts, the weights'
fingerprint), which a 400-step edit counts once.

Usage::

    python -m benchmarks.host_time --real-size --device cuda --recipe steermusic_plus
    python -m benchmarks.host_time --real-size        # the host's figures, on a CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch._dynamo.backends.common import aot_autograd
from torch.profiler import ProfilerActivity, profile
from torch.utils._pytree import tree_map_only

from benchmarks.models import (
    REAL_LATENT,
    TINY_LATENT,
    build_backbone,
    device_option,
    make_editor,
)
from benchmarks.profiling import per_step
from steer import Editor
from steer.performance import GUARDS, PRESETS

PROMPTS = {"source": "a piano melody", "target": "a sks guitar melody"}
COMPILED = [name for name, preset in PRESETS.items() if preset.compile]
BACKEND = "steer_host_only"


class _HostOnly:
    """A ``torch.compile`` backend that runs each graph until :attr:`frozen`, then returns the
    graph's last outputs: a call then costs only what dynamo does around its graph. With
    :attr:`autograd`, AOTAutograd splits each graph into a forward and a backward, each frozen
    alike: a call costs what dynamo and AOTAutograd's wrappers do around the graphs, and a
    backward pass what the autograd engine and the compiled backward's wrapper do."""

    def __init__(self) -> None:
        self.frozen = False
        self.autograd = False

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        if self.autograd:
            return aot_autograd(fw_compiler=self._boxed, bw_compiler=self._boxed)(graph, example_inputs)
        last: list[Any] = []

        def run(*args: Any) -> Any:
            if not (self.frozen and last):
                last[:] = [graph(*args)]
                return last[0]
            return tree_map_only(torch.Tensor, lambda t: t.detach().requires_grad_(t.requires_grad), last[0])

        return run

    def _boxed(self, graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[[list[Any]], Any]:
        """An AOTAutograd graph (called with its inputs in a list), frozen after :attr:`frozen`."""
        last: list[Any] = []

        def run(args: list[Any]) -> Any:
            if not (self.frozen and last):
                last[:] = [graph(*args)]
            args.clear()
            return last[0]

        run._boxed_call = True  # type: ignore[attr-defined]
        return run


_HOST_ONLY = _HostOnly()


def _edit_figures(editor: Editor, latent: torch.Tensor, rounds: int) -> tuple[float, int]:
    """The seconds of the fastest of ``rounds`` edits (no profiler), and the top-level ``aten::``
    ops of one more, profiled."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        editor.edit_latent(latent, **PROMPTS)
        times.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        editor.edit_latent(latent, **PROMPTS)
    ops = sum(1 for e in profiled.events() if e.cpu_parent is None and e.name.startswith("aten::"))
    return min(times), ops


def host_time(
    *, recipe: str, real_size: bool, device: torch.device, path: str, steps: int, rounds: int,
    autograd: bool = False,
) -> dict[str, float]:
    """Host milliseconds a step with each :data:`~steer.performance.GUARDS` setting, and the
    eager ops a step makes between the compiled calls with that setting (``"guards=... eager ops
    a step"``); with ``autograd``, AOTAutograd's wrappers and the backward pass through the
    compiled calls included. A step's figures are what an edit of ``steps`` steps (the first
    step included) adds over a 0-step edit, each the fastest of ``rounds`` edits (ops: one
    profiled edit of each); the 0-step edit's are the edit's fixed part (``"set-up ms"``,
    ``"set-up eager ops"``: prompts, the weights' fingerprint, set-up), counted once an edit."""
    if BACKEND not in torch.compiler.list_backends(exclude_tags=()):
        torch._dynamo.register_backend(_HOST_ONLY, name=BACKEND)
    _HOST_ONLY.autograd = autograd
    backbone = build_backbone(real_size=real_size, device=device)
    latent = torch.randn(1, *(REAL_LATENT if real_size else TINY_LATENT), generator=torch.Generator().manual_seed(0))
    latent = latent.to(device)
    figures: dict[str, float] = {}
    for guards in GUARDS:
        performance = dataclasses.replace(PRESETS[path], compile_backend=BACKEND, guards=guards)
        _HOST_ONLY.frozen = False
        torch._dynamo.reset()
        with make_editor(recipe, backbone, performance, steps=2) as editor:
            for _ in range(2):  # traces the calls; runs each graph a few times
                editor.edit_latent(latent, **PROMPTS)
            _HOST_ONLY.frozen = True
            editor.steps = steps
            edit_s, edit_ops = _edit_figures(editor, latent, rounds)
            editor.steps = 0
            fixed_s, fixed_ops = _edit_figures(editor, latent, rounds)
        step_s, set_up_s = per_step(edit_s, fixed_s, steps=steps)
        step_ops, set_up_ops = per_step(edit_ops, fixed_ops, steps=steps)
        figures[f"guards={guards} ms a step"] = step_s * 1e3
        figures[f"guards={guards} eager ops a step"] = step_ops
        figures[f"guards={guards} set-up ms"] = set_up_s * 1e3
        figures[f"guards={guards} set-up eager ops"] = set_up_ops
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real-size", action="store_true", help="AudioLDM2-music's UNet size")
    parser.add_argument("--device", type=device_option, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--recipe", default="steermusic", choices=("steermusic", "steermusic_plus"))
    parser.add_argument("--path", default="fused", choices=COMPILED)
    parser.add_argument("--steps", type=int, default=50, help="steps of each timed edit")
    parser.add_argument("--rounds", type=int, default=3, help="timed edits per setting; the fastest counts")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch's intra-op threads (torch.set_num_threads; default 1: the eager ops' time "
                             "steadier on a shared CPU)")
    parser.add_argument("--autograd", action="store_true",
                        help="include AOTAutograd's wrappers around the graphs and the backward pass through "
                             "them (SteerMusic+'s PCon); without it, graphs with gradients return detached outputs")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.rounds < 1 or args.threads < 1:
        parser.error(f"--steps must be at least 2 (a first step and later ones), --rounds and --threads at least 1, "
                     f"got {args.steps}, {args.rounds} and {args.threads}")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="fused kernels need triton")  # said on every CPU edit
    warnings.filterwarnings("ignore", message="Warning: Profiler clears events")
    figures = host_time(recipe=args.recipe, real_size=args.real_size, device=args.device,
                        path=args.path, steps=args.steps, rounds=args.rounds, autograd=args.autograd)
    mode = ", with autograd" if args.autograd else ""
    print(f"{args.recipe}, {args.path}, {'real-size' if args.real_size else 'tiny'}, {args.device.type}, "
          f"{args.threads} thread{'s' if args.threads > 1 else ''}{mode}: "
          + ", ".join(f"{name} {value:.2f}" for name, value in figures.items()), flush=True)


if __name__ == "__main__":
    main()
