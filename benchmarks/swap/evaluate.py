"""The instrument-swap benchmark: edit held-out clips into another instrument, with each method.

    python benchmarks/swap/evaluate.py --n 8 --steps 200 --guidance 7.5 --lr 0.005 --threads 1 \\
        --out outputs/swap-benchmark.json

(the settings of the README's table; the defaults are the paper's, which overshoot this small
backbone).

Each item is a melody of the test split rendered with two instruments: the source clip, the
target prompt ("a recording of a violin") and the ground-truth target rendering, so the ideal
edit is known. Every method edits the source through the same backbone and its output is scored:

- **CQT-1 PCC** (source ↔ output): melody kept (the SteerMusic paper's metric; 1 = same line);
- **log-mel L1 to ground truth**: how close the output is to the true swap (lower is better);
- **target accuracy**: share of outputs the instrument classifier hears as the target;
- **seconds per edit** on this machine.

Two reference rows bracket the methods: ``identity`` (the source itself, through the backbone's
encode/decode round trip: no edit at all) and ``ground-truth`` (the true target, through the
same round trip: the best any edit can score under this decoder).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from backbones import Backbone, load_backbone
from steer import Audio, SteerMusic
from steer.baselines import DDIMInversion, DDPMInversion, SDEdit
from steer.cli import CLASSIFIER, SWAP_BACKBONE  # the shipped models, wherever this runs from
from steer.data import ManifestEntry, load_clip, read_manifest, swap_pairs
from steer.data._files import clip_length_problem, evaluation_problem, result_file_problem, seconds_problem
from steer.metrics import cqt1_pcc, log_mel_distance
from steer.metrics.instrument import InstrumentClassifier
from steer.sampling import check_strength

Method = Callable[[Audio, ManifestEntry, ManifestEntry, int], torch.Tensor]
METHODS = ("identity", "steermusic", "sdedit", "ddim-inversion", "ddpm-inversion", "ground-truth")


def _round_trip(backbone: Backbone, audio: Audio) -> torch.Tensor:
    with torch.no_grad():
        latent = backbone.encode_audio(audio.waveform[None], audio.sample_rate)
        return backbone.decode_audio(latent, audio.waveform.shape[-1])[0]


def methods(backbone: Backbone, args: argparse.Namespace) -> dict[str, Method]:
    """Each method maps (source audio, source entry, target entry, seed) to a waveform."""
    editors = {
        "steermusic": SteerMusic(backbone, steps=args.steps, guidance_scale=args.guidance, lr=args.lr),
        # the baselines keep their reference settings (ZETA's code), but for the step count
        "sdedit": SDEdit(backbone, strength=args.sdedit_strength, steps=args.baseline_steps),
        "ddim-inversion": DDIMInversion(backbone, steps=args.baseline_steps),
        "ddpm-inversion": DDPMInversion(backbone, steps=args.baseline_steps),  # ZETA
    }
    table: dict[str, Method] = {"identity": lambda audio, src, tgt, seed: _round_trip(backbone, audio)}
    for name, editor in editors.items():
        table[name] = lambda audio, src, tgt, seed, editor=editor: editor.edit(
            audio, source=src.prompt, target=tgt.prompt, seed=seed
        ).audio[0]
    return table


def load_crop(path: Path, seconds: float, sample_rate: int) -> Audio:
    """The first ``seconds`` of a rendered clip, mono at ``sample_rate`` (the backbone's)."""
    return Audio(load_clip(path, sample_rate)[None, : round(seconds * sample_rate)], sample_rate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/swap-ryans/manifest.jsonl"))
    parser.add_argument("--backbone", default=str(SWAP_BACKBONE))
    parser.add_argument("--classifier", default=str(CLASSIFIER))
    parser.add_argument("--n", type=int, default=16, help="number of (source, target) items")
    parser.add_argument(
        "--split", choices=["train", "test"], default="test",
        help="melodies to edit: test (held out) for reporting, train for choosing settings",
    )
    parser.add_argument("--seconds", type=float, default=2.56, help="clip length edited (at most the clips')")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--steps", type=int, default=400, help="SteerMusic steps")
    parser.add_argument("--guidance", type=float, default=30.0, help="SteerMusic guidance")
    parser.add_argument("--lr", type=float, default=0.02, help="SteerMusic learning rate")
    parser.add_argument("--sdedit-strength", type=float, default=0.5)
    parser.add_argument("--baseline-steps", type=int, default=50, help="steps of the baselines' schedules")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("outputs/swap-benchmark.json"))
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if problem := result_file_problem(args.out, args.overwrite):
        parser.error(problem)
    for option in "n", "threads", "steps", "baseline_steps":
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1, got {getattr(args, option)}")
    if problem := seconds_problem(args.seconds):
        parser.error(problem)
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a positive number, got {args.lr}")
    if not math.isfinite(args.guidance):
        parser.error(f"--guidance must be a finite number, got {args.guidance}")
    try:
        check_strength(args.sdedit_strength)
    except ValueError as error:
        parser.error(f"--sdedit-strength: {error}")
    if problem := evaluation_problem(args.data, args.classifier, args.backbone):
        raise SystemExit(problem)
    pairs = swap_pairs(read_manifest(args.data, split=args.split))
    if not pairs:
        raise SystemExit(
            f"{args.data} has no {args.split}-split melody rendered with two instruments, so no "
            "(source, target) pair to edit: render more melodies or instruments "
            "(python -m steer.data), or choose the other --split"
        )
    if len(pairs) < args.n:
        print(f"{args.data} has {len(pairs)} {args.split}-split pairs, fewer than --n {args.n}: evaluating {len(pairs)}")
    random.Random(args.seed).shuffle(pairs)
    pairs = pairs[: args.n]
    if problem := clip_length_problem((args.data.parent / e.audio for pair in pairs for e in pair), args.seconds):
        raise SystemExit(problem)
    torch.set_num_threads(args.threads)

    classifier = InstrumentClassifier.from_pretrained(args.classifier).eval()
    try:  # scored by the classifier: one it cannot name would count as a miss
        classifier.class_index(sorted({target.instrument for _, target in pairs}))
    except ValueError as error:
        raise SystemExit(
            f"{args.data}: target {error}, so target accuracy would be 0 whatever the edit: pass a "
            "--classifier trained on them (benchmarks/swap/train_classifier.py)"
        ) from None
    args.out.parent.mkdir(parents=True, exist_ok=True)  # once every check has passed: a refusal leaves none
    backbone = load_backbone(args.backbone)
    table = methods(backbone, args)
    rate = backbone.sample_rate  # every clip is read at it, whatever rate the data was rendered at

    rows = []
    for index, (source, target) in enumerate(pairs):
        src_audio = load_crop(args.data.parent / source.audio, args.seconds, rate)
        tgt_audio = load_crop(args.data.parent / target.audio, args.seconds, rate)
        for name in args.methods:
            started = time.perf_counter()
            if name == "ground-truth":
                output = _round_trip(backbone, tgt_audio)
            else:
                output = table[name](src_audio, source, target, args.seed + index)
            seconds = time.perf_counter() - started
            rows.append(
                {
                    "item": index,
                    "melody": source.melody_id,
                    "source": source.instrument,
                    "target": target.instrument,
                    "method": name,
                    "pcc": cqt1_pcc(src_audio.waveform[0], output, sample_rate=rate),
                    "distance": float(log_mel_distance(output, tgt_audio.waveform[0], sample_rate=rate)),
                    "predicted": (
                        classifier.predict(output[None], rate)[0]
                        if torch.isfinite(output).all()
                        else "(non-finite output)"
                    ),
                    "seconds": seconds,
                }
            )
        print(f"[{index + 1}/{len(pairs)}] {source.melody_id}: {source.instrument} → {target.instrument}", flush=True)

    summary = {}
    for name in args.methods:
        mine = [r for r in rows if r["method"] == name]
        pcc = [r["pcc"] for r in mine if not math.isnan(r["pcc"])]
        summary[name] = {
            "pcc": statistics.fmean(pcc) if pcc else math.nan,
            "pcc_nan": len(mine) - len(pcc),
            "distance": statistics.fmean(r["distance"] for r in mine),
            "target_accuracy": statistics.fmean(r["predicted"] == r["target"] for r in mine),
            "seconds": statistics.fmean(r["seconds"] for r in mine),
        }
    lines = [
        "| method | CQT-1 PCC ↑ | log-mel L1 to truth ↓ | target accuracy ↑ | s / edit |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {s['pcc']:.3f} | {s['distance']:.3f} | {s['target_accuracy']:.2f} | {s['seconds']:.1f} |"
            for name, s in summary.items()
        ),
    ]
    print("\n".join(lines))
    args.out.write_text(
        json.dumps(
            {
                "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "machine": {"processor": platform.processor() or platform.machine(), "threads": args.threads, "torch": torch.__version__},
                "summary": summary,
                "rows": rows,
                "table": "\n".join(lines),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
