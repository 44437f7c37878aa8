"""Peak memory of one SteerMusic and one SteerMusic+ step, measured on the CPU as a proxy.

A GPU run reads peak memory from the CUDA allocator (``test_bench_steps.py``). Without a GPU,
this measures the same steps on the CPU: each recipe runs in its own process, the resident-set
high-water mark (Linux ``VmHWM``) is reset after the model is built and the prompts encoded,
and the rise during one step is what the step's activations and temporaries needed. The model
weights are counted from the parameters; what the first edit leaves held (the copies an edit
keeps between edits: weights cast to bf16, fused projections, merged LoRA weights; and the
prompts' encodings) is counted from the tensors Python holds after it (not the resident set,
which also keeps what the CPU's allocator and kernel libraries hold on to). CPU kernels
(attention in particular) keep other temporaries than CUDA's, so read the ratio as an estimate
of the issue's "SteerMusic+ ≤ 1.2× SteerMusic", not as the GPU figure.

Compiled paths are compiled with ``--compile-backend`` (default ``aot_eager``: dynamo and
AOTAutograd's forward/backward partition, which decide what a step keeps, without inductor's
code generation, which takes many minutes on a CPU).

Usage::

    python -m benchmarks.memory --real-size [--path fused-checkpointed] [--merge-lora] [--fuse-projections]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.models import compile_backend_option
from steer.performance import PRESETS

RECIPES = ("steermusic", "steermusic_plus")


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (this needs Linux)")


def _storages() -> dict[int, int]:
    """Bytes of the storages of the tensors and parameters Python holds, by address."""
    import torch

    gc.collect()
    held = (o for o in gc.get_objects() if type(o) in (torch.Tensor, torch.nn.Parameter))
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in held if t.device.type == "cpu"}


def measure(recipe: str, real_size: bool, path: str, compile_backend: str, options: dict[str, bool]) -> dict[str, int]:
    """Bytes of weights, of what the first edit left resident (``kept``) and the rise of the
    peak resident set during one step (this process); ``options``: ``Performance`` fields."""
    import torch

    from benchmarks.models import REAL_LATENT, TINY_LATENT, build_backbone, make_editor

    torch.set_num_threads(1)
    backbone = build_backbone(real_size=real_size, device=torch.device("cpu"))
    shape = REAL_LATENT if real_size else TINY_LATENT
    latent = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    prompts = {"source": "a piano melody", "target": "a sks guitar melody"}
    performance = dataclasses.replace(PRESETS[path], compile_backend=compile_backend, **options)
    with make_editor(recipe, backbone, performance, steps=1) as editor:
        start = _storages()
        editor.edit_latent(latent, **prompts)  # warm-up: prompt encodings cached, kernels chosen
        kept = sum(size for address, size in _storages().items() if address not in start)
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
        before = _status("VmRSS")
        editor.edit_latent(latent, **prompts)
        peak = _status("VmHWM")
    weights = sum(p.numel() * p.element_size() for p in backbone.denoiser.parameters())
    return {"weights": weights, "kept": kept, "step_rise": peak - before}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real-size", action="store_true", help="AudioLDM2-music's UNet size, 10.24-s latent")
    parser.add_argument("--path", default="batched", choices=list(PRESETS), help="execution path preset (default batched)")
    parser.add_argument("--compile-backend", type=compile_backend_option, default="aot_eager",
                        help="torch.compile backend of the compiled paths (default aot_eager)")
    parser.add_argument("--merge-lora", action="store_true", help="Performance.merge_lora")
    parser.add_argument("--fuse-projections", action="store_true", help="Performance.fuse_projections")
    parser.add_argument("--recipe", choices=RECIPES, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    options = {"merge_lora": args.merge_lora, "fuse_projections": args.fuse_projections}
    if args.recipe:
        print(json.dumps(measure(args.recipe, args.real_size, args.path, args.compile_backend, options)))
        return
    figures = {}
    for recipe in RECIPES:
        command = [sys.executable, "-m", "benchmarks.memory", "--recipe", recipe, "--path", args.path,
                   "--compile-backend", args.compile_backend]
        command += [f"--{name.replace('_', '-')}" for name, on in options.items() if on]
        # glibc: every block ≥ 64 KiB its own mapping, unmapped when freed, so the resident set
        # follows the live tensors (by default freed heap stays resident and hides the peak)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        out = subprocess.run(command + (["--real-size"] if args.real_size else []), capture_output=True,
                             text=True, env=env, check=False)
        if out.returncode != 0:
            raise SystemExit(f"measuring {recipe} failed:\n{out.stderr}")
        figures[recipe] = json.loads(out.stdout.strip().splitlines()[-1])
        mib = {k: v / 2**20 for k, v in figures[recipe].items()}
        print(f"{recipe}: denoiser weights {mib['weights']:.0f} MiB, kept after the first edit "
              f"{mib['kept']:.0f} MiB, peak rise during one step {mib['step_rise']:.0f} MiB")
    compiled = f" (compiled: {args.compile_backend})" if PRESETS[args.path].compile else ""
    chosen = "".join(f", {name}" for name, on in options.items() if on)
    sums = {"weights + step": ("weights", "step_rise"), "weights + kept + step": ("weights", "kept", "step_rise")}
    for label, parts in sums.items():
        total = {r: sum(f[k] for k in parts) for r, f in figures.items()}
        print(f"SteerMusic+ / SteerMusic ({label}), {args.path}{compiled}{chosen}, CPU proxy: "
              f"{total['steermusic_plus'] / total['steermusic']:.2f}x")


if __name__ == "__main__":
    main()
