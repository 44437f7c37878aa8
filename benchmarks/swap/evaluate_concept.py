"""SteerMusic+ on the instrument-swap data: learn a concept from a few clips, edit other clips.

    python benchmarks/swap/evaluate_concept.py --instrument "acoustic guitar" --n 8

A LoRA concept ("a recording of a sks guitar"; the class word is the instrument's last word unless
``--class-word`` says otherwise) is learnt from ``--references`` training-split clips of one
instrument; held-out clips of other instruments are then edited towards it with
SteerMusic+ (concept) and with SteerMusic (the instrument's plain prompt), or the ``--methods``
named (``dreamsound``: SteerMusic+'s baseline with the same concept, at its defaults), and scored
as in ``evaluate.py``: CQT-1 PCC with the source, log-mel L1 to the true rendering on that
instrument, and the share the classifier hears as that instrument; the unedited sources are
scored too.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from pathlib import Path

import torch

from backbones import load_backbone
from losses import TimestepWeighting
from steer import Audio, Concept, DreamSoundEditing, SteerMusic, SteerMusicPlus
from steer.cli import CLASSIFIER, SWAP_BACKBONE  # the shipped models, wherever this runs from
from steer.data import load_clip, read_manifest
from steer.data._files import clip_length_problem, evaluation_problem, result_file_problem, seconds_problem
from steer.metrics import cqt1_pcc, log_mel_distance
from steer.metrics.instrument import InstrumentClassifier


#: the editors ``--methods`` may name
METHODS = ("steermusic", "steermusic+", "dreamsound")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/swap-ryans/manifest.jsonl"))
    parser.add_argument("--backbone", default=str(SWAP_BACKBONE))
    parser.add_argument("--classifier", default=str(CLASSIFIER))
    parser.add_argument("--instrument", default="acoustic guitar", help="the concept's instrument")
    parser.add_argument("--class-word", help="the concept's class word (default: the instrument's last word)")
    parser.add_argument("--references", type=int, default=5, help="training clips the concept learns from")
    parser.add_argument("--n", type=int, default=8, help="held-out clips to edit")
    parser.add_argument("--seconds", type=float, default=2.56, help="clip length edited (at most the clips')")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--lr", type=float, default=0.005, help="SteerMusic's; SteerMusic+ uses 2x (w = 1 - alpha_bar)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ablation", action="store_true", help="also SteerMusic+ without its shift / PCon terms")
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=["steermusic", "steermusic+"],
        help="the editors towards the concept's instrument (default: steermusic steermusic+)",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/swap-concept.json"))
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    if problem := result_file_problem(args.out, args.overwrite):
        parser.error(problem)
    for option in "references", "n", "threads", "steps":
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be at least 1, got {getattr(args, option)}")
    if problem := seconds_problem(args.seconds):
        parser.error(problem)
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a positive number, got {args.lr}")
    if not math.isfinite(args.guidance):
        parser.error(f"--guidance must be a finite number, got {args.guidance}")
    if problem := evaluation_problem(args.data, args.classifier, args.backbone):
        raise SystemExit(problem)
    entries = read_manifest(args.data)
    train = [e for e in entries if e.split == "train" and e.instrument == args.instrument]
    truth = {e.melody_id: e for e in entries if e.split == "test" and e.instrument == args.instrument}
    sources = [e for e in entries if e.split == "test" and e.instrument != args.instrument and e.melody_id in truth]
    if not train or not truth:
        both = {e.instrument for e in entries if e.split == "train"} & {e.instrument for e in entries if e.split == "test"}
        raise SystemExit(
            f"{args.data} has no {'test' if train else 'training'} clips of {args.instrument!r}: "
            f"choose --instrument from those in both splits ({', '.join(sorted(both)) or 'none'})"
        )
    if len(train) < args.references:
        raise SystemExit(
            f"{args.data} has {len(train)} training clips of {args.instrument!r}, fewer than "
            f"--references {args.references}: pass --references {len(train)} or fewer"
        )
    if len(sources) < args.n:
        raise SystemExit(
            f"{args.data} has {len(sources)} test clips of other instruments whose melody it also "
            f"holds on {args.instrument!r}, fewer than --n {args.n}: pass --n {len(sources)} or fewer"
        )
    args.class_word = args.class_word or args.instrument.split()[-1]  # "acoustic guitar": "guitar"
    rng = random.Random(args.seed)
    references = [args.data.parent / e.audio for e in rng.sample(train, args.references)]
    sources = rng.sample(sources, args.n)
    edited = [e.audio for source in sources for e in (source, truth[source.melody_id])]
    if problem := clip_length_problem((args.data.parent / audio for audio in edited), args.seconds):
        raise SystemExit(problem)
    torch.set_num_threads(args.threads)

    classifier = InstrumentClassifier.from_pretrained(args.classifier).eval()
    try:  # scored by the classifier: an instrument it cannot name would count as a miss
        classifier.class_index([args.instrument])
    except ValueError as error:
        raise SystemExit(
            f"--instrument: {error}, so its accuracy would be 0 whatever the edit: pass a "
            "--classifier trained on it (benchmarks/swap/train_classifier.py)"
        ) from None
    args.out.parent.mkdir(parents=True, exist_ok=True)  # once every check has passed: a refusal leaves none
    backbone = load_backbone(args.backbone)
    started = time.perf_counter()
    concept = Concept.train(backbone, references, token="sks", class_word=args.class_word, method="lora", seed=args.seed)
    train_seconds = time.perf_counter() - started

    rate = backbone.sample_rate  # every clip is read at it, whatever rate the data was rendered at
    crop = round(args.seconds * rate)
    concept_prompt = f"a recording of a sks {args.class_word}"

    def plus(**terms: float) -> SteerMusicPlus:
        return SteerMusicPlus(
            backbone, concept, steps=args.steps, guidance_scale=args.guidance, lr=2 * args.lr,
            weighting=TimestepWeighting(scale=1.0), **terms,
        )

    editors = {}
    if "steermusic" in args.methods:
        editors["steermusic (plain prompt)"] = (
            SteerMusic(backbone, steps=args.steps, guidance_scale=args.guidance, lr=args.lr),
            f"a recording of {'an' if args.instrument[0] in 'aeiou' else 'a'} {args.instrument}",
        )
    if "steermusic+" in args.methods:
        editors["steermusic+ (concept)"] = (plus(), concept_prompt)
    if "dreamsound" in args.methods:  # the paper's personalised baseline, at its own defaults
        editors["dreamsound (concept)"] = (DreamSoundEditing(backbone, concept), concept_prompt)
    if args.ablation:  # the paper's ablation: which of SteerMusic+'s terms does what
        editors["personalised delta score only"] = (plus(shift=0, pcon_weight=0), concept_prompt)
        editors["+ shift regulariser (no PCon)"] = (plus(pcon_weight=0), concept_prompt)
        editors["+ PCon (no shift regulariser)"] = (plus(shift=0), concept_prompt)
    rows = []
    try:
        for index, source in enumerate(sources):
            audio = Audio(load_clip(args.data.parent / source.audio, rate)[None, :crop], rate)
            target = load_clip(args.data.parent / truth[source.melody_id].audio, rate)[:crop]
            rows.append({  # the unedited source: where an edit starts from
                "method": "unedited source", "source": source.instrument, "melody": source.melody_id,
                "pcc": 1.0, "distance": float(log_mel_distance(audio.waveform[0], target, sample_rate=rate)),
                "predicted": classifier.predict(audio.waveform, rate)[0], "seconds": 0.0,
            })
            for name, (editor, prompt) in editors.items():
                t0 = time.perf_counter()
                output = editor.edit(audio, source=source.prompt, target=prompt, seed=args.seed + index).audio[0]
                rows.append({
                    "method": name, "source": source.instrument, "melody": source.melody_id,
                    "pcc": cqt1_pcc(audio.waveform[0], output, sample_rate=rate),
                    "distance": float(log_mel_distance(output, target, sample_rate=rate)),
                    "predicted": (  # a diverged edit is a miss; the classifier refuses NaN audio
                        classifier.predict(output[None], rate)[0] if torch.isfinite(output).all() else "(non-finite output)"
                    ),
                    "seconds": time.perf_counter() - t0,
                })
            print(f"[{index + 1}/{len(sources)}] {source.melody_id}: {source.instrument}", flush=True)
    finally:
        for editor, _ in editors.values():
            editor.close()  # each SteerMusic+ holds its own LoRA adapter in the shared denoiser
    lines = ["| method | CQT-1 PCC ↑ | log-mel L1 to truth ↓ | heard as target ↑ | s / edit |", "|---|---|---|---|---|"]
    summary = {}
    for name in ["unedited source", *editors]:
        mine = [r for r in rows if r["method"] == name]
        pcc = [r["pcc"] for r in mine if not math.isnan(r["pcc"])]
        summary[name] = {
            "pcc": statistics.fmean(pcc) if pcc else math.nan,
            "distance": statistics.fmean(r["distance"] for r in mine),
            "target_accuracy": statistics.fmean(r["predicted"] == args.instrument for r in mine),
            "seconds": statistics.fmean(r["seconds"] for r in mine),
        }
        s = summary[name]
        lines.append(f"| {name} | {s['pcc']:.3f} | {s['distance']:.3f} | {s['target_accuracy']:.2f} | {s['seconds']:.1f} |")
    print("\n".join(lines))
    args.out.write_text(json.dumps({
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "references": [str(r) for r in references], "concept_train_seconds": train_seconds,
        "summary": summary, "rows": rows, "table": "\n".join(lines),
    }, indent=2) + "\n")
    print(f"concept learnt in {train_seconds:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
