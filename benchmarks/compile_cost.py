"""What compiling costs editors reused over a manifest: the seconds of each edit and the graphs
dynamo holds, over clips of several lengths and one editor per concept (as ``steer run`` keeps
them).

The first edit of each editor traces and compiles its calls; a second clip length traces them
once more with the length symbolic (``Performance.dynamic``), and later lengths reuse those
graphs (with CUDA graphs, each new shape records a graph: a replay, no trace). A run whose
calls fall back to eager mode past dynamo's recompile limit fails here instead.

Usage::

    python -m benchmarks.compile_cost --real-size --device cuda --concepts 3
    python -m benchmarks.compile_cost --compile-backend aot_eager --frames 32 24 40 30   # CPU
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
import warnings

import torch
from torch._dynamo.utils import counters

from benchmarks.models import (
    REAL_LATENT,
    TINY_LATENT,
    build_backbone,
    compile_backend_option,
    device_option,
    lora_concept,
)
from steer import Editor, SteerMusic, SteerMusicPlus
from steer.performance import PRESETS

PROMPTS = {"source": "a piano melody", "target": "a sks guitar melody"}
COMPILED = [name for name, preset in PRESETS.items() if preset.compile]


def compile_cost(
    *, real_size: bool, device: torch.device, path: str, compile_backend: str, concepts: int,
    frames: list[int], steps: int,
) -> list[dict[str, float | int | str]]:
    """One row per edit: editor, latent frames, seconds, graphs compiled so far, graph breaks.
    Editors: SteerMusic, and a SteerMusic+ per concept (rank-4 LoRA concepts, each its own
    adapter); every editor edits a clip of each length in turn."""
    backbone = build_backbone(real_size=real_size, device=device)
    channels, _, width = REAL_LATENT if real_size else TINY_LATENT
    performance = dataclasses.replace(PRESETS[path], compile_backend=compile_backend)
    rows = []
    with contextlib.ExitStack() as editors_open, torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        # each closed on the way out (a LoRA concept's adapter leaves the backbone), whatever happens
        editors: dict[str, Editor] = {"steermusic": editors_open.enter_context(SteerMusic(backbone, steps=steps, performance=performance))}
        for i in range(concepts):
            editor = SteerMusicPlus(backbone, lora_concept(), steps=steps, performance=performance)
            editors[f"concept {i}"] = editors_open.enter_context(editor)
        torch._dynamo.reset()
        counters.clear()
        for n in frames:
            latent = torch.randn(1, channels, n, width, generator=torch.Generator().manual_seed(n)).to(device)
            for name, editor in editors.items():
                start = time.perf_counter()
                editor.edit_latent(latent, **PROMPTS)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                rows.append({"editor": name, "frames": n, "seconds": time.perf_counter() - start,
                             "graphs": counters["stats"]["unique_graphs"],
                             "graph_breaks": sum(counters["graph_break"].values())})
                print("{editor:>10} {frames:6d} frames {seconds:8.2f} s {graphs:4d} graphs "
                      "{graph_breaks:3d} breaks".format(**rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real-size", action="store_true", help="AudioLDM2-music's UNet size")
    parser.add_argument("--device", type=device_option, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--path", default="fused", choices=COMPILED)
    parser.add_argument("--compile-backend", type=compile_backend_option, default="inductor",
                        help="torch.compile backend (default inductor; aot_eager traces without code generation)")
    parser.add_argument("--concepts", type=int, default=1, help="SteerMusic+ editors, one per LoRA concept (0: SteerMusic's alone)")
    parser.add_argument("--frames", type=int, nargs="+",
                        help="latent lengths in turn (default: 256 250 512 496 for --real-size, else 32 24 40 30)")
    parser.add_argument("--steps", type=int, default=2, help="steps per edit")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="fused kernels need triton")  # said on every CPU edit
    frames = args.frames or ([256, 250, 512, 496] if args.real_size else [32, 24, 40, 30])
    if any(n < 8 for n in frames):
        parser.error(f"--frames must be latent lengths of at least 8 frames, got {frames}")
    if args.concepts < 0 or args.steps < 1:
        parser.error(f"--concepts must be at least 0 and --steps at least 1, got {args.concepts} and {args.steps}")
    compile_cost(real_size=args.real_size, device=args.device, path=args.path,
                 compile_backend=args.compile_backend, concepts=args.concepts, frames=frames,
                 steps=args.steps)


if __name__ == "__main__":
    main()
