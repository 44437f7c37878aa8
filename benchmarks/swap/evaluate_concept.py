"""SteerMusic+ on the instrument-swap data: learn a concept from a few clips, edit other clips.

    python benchmarks/swap/evaluate_concept.py --instrument "acoustic guitar" --n 8

A LoRA concept ("a recording of a sks guitar") is learnt from ``--references`` training-split
clips of one instrument; held-out clips of other instruments are then edited towards it with
SteerMusic+ (concept) and with SteerMusic (the instrument's plain prompt), and scored as in
``evaluate.py``: CQT-1 PCC with the source, log-mel L1 to the true rendering on that instrument,
and the share the classifier hears as that instrument; the unedited sources are scored too.
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
from steer import Concept, SteerMusic, SteerMusicPlus, load_audio
from steer.data import read_manifest
from steer.metrics import cqt1_pcc, log_mel_distance
from steer.metrics.instrument import InstrumentClassifier


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/swap-ryans/manifest.jsonl"))
    parser.add_argument("--backbone", default="weights/mel-diffusion-swap")
    parser.add_argument("--classifier", default="weights/instrument-classifier")
    parser.add_argument("--instrument", default="acoustic guitar", help="the concept's instrument")
    parser.add_argument("--class-word", default="guitar")
    parser.add_argument("--references", type=int, default=5, help="training clips the concept learns from")
    parser.add_argument("--n", type=int, default=8, help="held-out clips to edit")
    parser.add_argument("--seconds", type=float, default=2.56)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--lr", type=float, default=0.005, help="SteerMusic's; SteerMusic+ uses 2x (w = 1 - alpha_bar)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ablation", action="store_true", help="also SteerMusic+ without its shift / PCon terms")
    parser.add_argument("--out", type=Path, default=Path("outputs/swap-concept.json"))
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.overwrite:
        parser.error(f"{args.out} exists; pass --overwrite to replace it, or choose another --out")
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    backbone = load_backbone(args.backbone)
    classifier = InstrumentClassifier.from_pretrained(args.classifier).eval()
    rng = random.Random(args.seed)
    train = [e for e in read_manifest(args.data, split="train") if e.instrument == args.instrument]
    references = [args.data.parent / e.audio for e in rng.sample(train, args.references)]
    started = time.perf_counter()
    concept = Concept.train(backbone, references, token="sks", class_word=args.class_word, method="lora", seed=args.seed)
    train_seconds = time.perf_counter() - started

    test = read_manifest(args.data, split="test")
    truth = {e.melody_id: e for e in test if e.instrument == args.instrument}
    sources = [e for e in test if e.instrument != args.instrument and e.melody_id in truth]
    sources = rng.sample(sources, args.n)
    crop = round(args.seconds * 16000)
    concept_prompt = f"a recording of a sks {args.class_word}"

    def plus(**terms: float) -> SteerMusicPlus:
        return SteerMusicPlus(
            backbone, concept, steps=args.steps, guidance_scale=args.guidance, lr=2 * args.lr,
            weighting=TimestepWeighting(scale=1.0), **terms,
        )

    editors = {
        "steermusic (plain prompt)": (
            SteerMusic(backbone, steps=args.steps, guidance_scale=args.guidance, lr=args.lr),
            f"a recording of {'an' if args.instrument[0] in 'aeiou' else 'a'} {args.instrument}",
        ),
        "steermusic+ (concept)": (plus(), concept_prompt),
    }
    if args.ablation:  # the paper's ablation: which of SteerMusic+'s terms does what
        editors["personalised delta score only"] = (plus(shift=0, pcon_weight=0), concept_prompt)
        editors["+ shift regulariser (no PCon)"] = (plus(pcon_weight=0), concept_prompt)
        editors["+ PCon (no shift regulariser)"] = (plus(shift=0), concept_prompt)
    rows = []
    try:
        for index, source in enumerate(sources):
            audio = load_audio(args.data.parent / source.audio)
            audio = type(audio)(audio.waveform[..., :crop], audio.sample_rate)
            target = load_audio(args.data.parent / truth[source.melody_id].audio).waveform[0, :crop]
            rows.append({  # the unedited source: where an edit starts from
                "method": "unedited source", "source": source.instrument, "melody": source.melody_id,
                "pcc": 1.0, "distance": float(log_mel_distance(audio.waveform[0], target)),
                "predicted": classifier.predict(audio.waveform, 16000)[0], "seconds": 0.0,
            })
            for name, (editor, prompt) in editors.items():
                t0 = time.perf_counter()
                output = editor.edit(audio, source=source.prompt, target=prompt, seed=args.seed + index).audio[0]
                rows.append({
                    "method": name, "source": source.instrument, "melody": source.melody_id,
                    "pcc": cqt1_pcc(audio.waveform[0], output), "distance": float(log_mel_distance(output, target)),
                    "predicted": classifier.predict(output[None], 16000)[0], "seconds": time.perf_counter() - t0,
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
