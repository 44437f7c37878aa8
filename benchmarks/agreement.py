"""How closely each execution path's gradient follows the reference loop's, on the benchmark models.

For each seed, the first step's gradient on the latent (the same t and ε on every path) is
compared with the ``reference`` path's (in full fp32: no TF32 on a GPU) by cosine similarity:
what the issue's thresholds (≥ 0.999 fp32, ≥ 0.99 bf16) are stated on. The tests check the
tiny model; this script measures the real-size UNet, where rounding in bf16 accumulates over
more and wider layers. A non-finite gradient is a skipped step on ``fp16`` (its scaled loss
overflowed) and a failure anywhere else: the summary gives NaN and the script exits with 1; on
the reference itself nothing can be compared, and the script stops at once, naming it.

Usage::

    python -m benchmarks.agreement --real-size --seeds 0 1 2 3 --paths batched bf16 fused
    python -m benchmarks.agreement --recipe steermusic_plus --json agreement.json
    python -m benchmarks.agreement --real-size --recipe steermusic_plus --lora-std 0.05 --merge-lora
    python -m benchmarks.agreement --paths fused --compile-backend aot_eager   # CPU, in seconds
    python -m benchmarks.agreement --backbone weights/mel-diffusion-swap --paths bf16 fp16

``--backbone`` measures SteerMusic on a model of ``load_backbone``'s (a trained one: the shipped
mel-diffusion model, a Hub repo) on the demo's clip and prompts (``steer demo``'s edit, at the
recipe's guidance 30), instead of a benchmark model of random weights.

``--fuse-projections`` and ``--merge-lora`` set those options (``steer.performance.Performance``)
on every path compared with the reference, which runs without them; ``--lora-std`` draws
SteerMusic+'s LoRA B (else 0: ε′'s adapter changes nothing, as in the rows recorded before it).
``--compile-backend`` compiles the fused paths with another ``torch.compile`` backend than
inductor (``aot_eager``: dynamo and autograd's graphs without generated code, in seconds on a CPU
where inductor's C++ code takes minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.models import (
    REAL_LATENT,
    TINY_LATENT,
    build_backbone,
    compile_backend_option,
    lora_concept,
    make_editor,
)
from steer import Editor
from steer.data._files import result_file_problem
from steer.performance import PRESETS

PROMPTS = {"source": "a piano melody", "target": "a sks guitar melody"}


class NonFiniteReference(RuntimeError):
    """The ``reference`` path's own gradient is not finite: no path can be compared with it."""


def first_gradient(editor: Editor, latent: Tensor, seed: int, prompts: dict[str, str] = PROMPTS) -> Tensor:
    """The gradient the editor applies at its first step, ``latent``'s shape."""
    states = []
    editor.edit_latent(latent, seed=seed, callback=states.append, **prompts)
    return states[0].gradient


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """CUDA's float32 maths without TF32 (torch lets cuDNN's convolutions use it by default, and
    matmuls where a user allowed it), so that ``reference`` is the plain fp32 loop on a GPU too."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def agreement(
    *, recipe: str, paths: list[str], seeds: list[int], real_size: bool, device: torch.device,
    options: dict[str, bool | str] | None = None, lora_std: float = 0.0, backbone_name: str | None = None,
) -> list[dict[str, float | int | str | bool]]:
    """Cosine of each path's first-step gradient with the reference's, per seed. ``skipped``:
    the step was not taken, an fp16 overflow (a non-finite gradient where the path scales its
    loss); ``failed``: any other non-finite gradient or cosine. ``options`` are set on every path
    but the reference, ``lora_std`` draws SteerMusic+'s LoRA B
    (:func:`benchmarks.models.lora_concept`). ``backbone_name``: SteerMusic on that model
    (``load_backbone``) with the demo's clip and prompts (``steer.cli.DEMO_PROMPTS``), in place of
    a benchmark model. Raises :class:`NonFiniteReference` where the reference's own gradient is
    not finite."""
    prompts = PROMPTS
    if backbone_name is None:
        backbone = build_backbone(real_size=real_size, device=device)
        shape = REAL_LATENT if real_size else TINY_LATENT
        latent = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    else:
        from backbones import load_backbone
        from steer import load_audio
        from steer.cli import DEMO_PROMPTS, DEMO_SOURCE

        if recipe != "steermusic":
            raise ValueError("a backbone_name measures SteerMusic (SteerMusic+ would need a concept of that model)")
        backbone, clip, prompts = load_backbone(backbone_name, device=device), load_audio(DEMO_SOURCE), DEMO_PROMPTS
        latent = backbone.encode_audio(clip.waveform[None].to(device), clip.sample_rate)
    concept = lora_concept(backbone=backbone, std=lora_std) if recipe == "steermusic_plus" else None
    performances = {"reference": PRESETS["reference"]}
    performances.update({path: dataclasses.replace(PRESETS[path], **(options or {})) for path in paths})
    # one editor per path, reused for every seed: a compiled one traces its calls once
    editors = {path: make_editor(recipe, backbone, p, steps=1, concept=concept) for path, p in performances.items()}
    rows = []
    try:
        for seed in seeds:
            start = time.perf_counter()
            with full_fp32():
                reference = first_gradient(editors["reference"], latent, seed, prompts)
            if not reference.isfinite().all():
                raise NonFiniteReference(
                    f"the reference path's gradient is not finite for seed {seed}: the fp32 reference loop itself "
                    "fails here, so no path can be compared with it; trace it as benchmarks/README.md's NaN note did"
                )
            for path in paths:
                gradient = first_gradient(editors[path], latent, seed, prompts)
                cosine = torch.nn.functional.cosine_similarity(gradient.flatten(), reference.flatten(), dim=0).item()
                finite = bool(gradient.isfinite().all()) and math.isfinite(cosine)
                # a scaled loss's overflow makes the gradient non-finite and skips the step (fp16's
                # documented behaviour): no cosine to give; anywhere else it is a wrong gradient
                skipped = not finite and performances[path].grad_scaler(device) is not None
                rows.append({"recipe": recipe, "path": path, "seed": seed, "cosine": cosine,
                             "skipped": skipped, "failed": not (finite or skipped)})
            print(f"seed {seed}: {', '.join(map(_cosine, rows[-len(paths):]))} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    finally:
        for editor in editors.values():
            editor.close()
    return rows


def _cosine(row: dict[str, float | int | str | bool]) -> str:
    """A row's path and cosine, and what a non-finite one means."""
    mark = " (skipped: fp16 overflow)" if row["skipped"] else " (FAILED: non-finite gradient)" if row["failed"] else ""
    return f"{row['path']} {row['cosine']:.5f}{mark}"


def summary(rows: list[dict[str, float | int | str | bool]], path: str) -> str:
    """The cosines of ``path`` over its seeds: min (NaN if any seed failed) and max of those
    compared, and the seeds skipped or failed."""
    mine = [r for r in rows if r["path"] == path]
    compared = [r for r in mine if not r["skipped"]]
    finite = [r["cosine"] for r in compared if not r["failed"]]
    failed = [r["seed"] for r in compared if r["failed"]]
    skipped = [r["seed"] for r in mine if r["skipped"]]
    if compared:
        low = math.nan if failed or not finite else min(finite)
        high = max(finite) if finite else math.nan
        text = f"min {low:.5f}, max {high:.5f} over seeds {[r['seed'] for r in compared]}"
    else:
        text = "no seed compared"
    if failed:
        text += f"; FAILED (non-finite gradient) for seeds {failed}"
    if skipped:
        text += f"; skipped (fp16 overflow) for seeds {skipped}"
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=("steermusic", "steermusic_plus"), default="steermusic")
    parser.add_argument("--paths", nargs="+", default=["batched", "bf16"], choices=[p for p in PRESETS if p != "reference"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--real-size", action="store_true", help="AudioLDM2-music's UNet size, 10.24-s latent")
    parser.add_argument("--fuse-projections", action="store_true", help="Performance.fuse_projections on the paths")
    parser.add_argument("--merge-lora", action="store_true", help="Performance.merge_lora on the paths")
    parser.add_argument("--compile-backend", type=compile_backend_option, default="inductor",
                        help="torch.compile backend of the fused paths (aot_eager: seconds on a CPU)")
    parser.add_argument("--lora-std", type=float, default=0.0,
                        help="SteerMusic+'s LoRA B drawn with this std (0: B = 0); --recipe steermusic_plus only")
    parser.add_argument("--backbone", help="SteerMusic on this model (load_backbone: a folder, a Hub repo id) and the "
                        "demo's clip, in place of a benchmark model")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json")
    args = parser.parse_args(argv)
    if args.json is not None and (problem := result_file_problem(args.json, args.overwrite, "--json")):
        parser.error(problem)  # before minutes (hours, real-size) of work
    if not (math.isfinite(args.lora_std) and args.lora_std >= 0):
        parser.error(f"--lora-std must be a finite standard deviation of at least 0, got {args.lora_std}")
    if args.lora_std and args.recipe != "steermusic_plus":
        parser.error("--lora-std draws SteerMusic+'s LoRA B, and SteerMusic has no concept: give it with "
                     "--recipe steermusic_plus, or leave it out")
    if args.backbone is not None and (args.recipe != "steermusic" or args.real_size):
        parser.error("--backbone measures SteerMusic on that model: leave out --recipe steermusic_plus and --real-size")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    warnings.filterwarnings("ignore", message="fused kernels need triton")
    options = {"fuse_projections": args.fuse_projections, "merge_lora": args.merge_lora,
               "compile_backend": args.compile_backend}
    try:
        rows = agreement(
            recipe=args.recipe, paths=args.paths, seeds=args.seeds, real_size=args.real_size, device=device,
            options=options, lora_std=args.lora_std, backbone_name=args.backbone,
        )
    except NonFiniteReference as error:
        sys.exit(str(error))
    for path in args.paths:
        print(f"{args.recipe} {path}: cosine with reference {summary(rows, path)} ({device.type}, torch "
              f"{torch.__version__}, {args.backbone or ('real-size' if args.real_size else 'tiny')} model)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    failed = sorted({r["path"] for r in rows if r["failed"]})
    if failed:
        sys.exit(f"non-finite gradient on {', '.join(failed)}, not an fp16 overflow: a wrong gradient there; "
                 "trace it as benchmarks/README.md's NaN note did")


if __name__ == "__main__":
    main()
