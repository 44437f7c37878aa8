"""Compose your own editor from losses and run it on any backbone.

    python examples/compose_an_editor.py                                  # the shipped small model
    python examples/compose_an_editor.py --backbone cvssp/audioldm2-music --device cuda

The editor below is SteerMusic's delta denoising score plus a weak score-distillation term that
pulls the edit towards the target prompt on its own; the same loop takes any list of losses.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from backbones import load_backbone, to_mono
from backbones.saving import check_can_be_folder
from losses import DeltaDenoisingScore, ScoreDistillationSampling, TimestepWeighting
from steer import Editor, Performance, load_audio, save_audio
from steer.audio import audio_format
from steer.cli import device_option
from steer.metrics import cqt1_pcc

HERE = Path(__file__).parent


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=str(HERE.parent / "weights" / "mel-diffusion-swap"),
                        help="default: the repository's shipped model, weights/ beside this script's folder")
    parser.add_argument("--input", type=Path, default=HERE / "audio" / "hornpipe_piano.wav")
    parser.add_argument("--source", default="a recording of a piano")
    parser.add_argument("--target", default="a recording of a violin")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--out", type=Path, default=Path("outputs/composed.wav"))
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a folder: name an audio file, e.g. {args.out / 'composed.wav'}")
    if args.out.exists() and not args.overwrite:
        parser.error(f"{args.out} exists (an earlier edit?): pass --overwrite to replace it, or another --out")
    if args.out.exists() and args.input.exists() and args.out.samefile(args.input):
        parser.error(f"--out {args.out} is the --input clip: name another --out, the input is never replaced")
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}: the edit reports its last step's loss")
    for option, prompt in (("--source", args.source), ("--target", args.target)):
        if not prompt.strip():
            parser.error(f"{option} is empty: describe the audio in words")
    try:  # all before the model loads and the edit runs
        audio_format(args.out)
        check_can_be_folder(args.out.parent, "--out's folder", another="another --out")
        device = device_option(args.device)
        clip = load_audio(args.input)
    except ValueError as error:
        parser.error(str(error))
    try:
        backbone = load_backbone(args.backbone, device=device)
    except ValueError as error:  # a missing folder: the default one outside the repository, a typo
        parser.error(f"--backbone {args.backbone}: {error}")
    editor = Editor(
        backbone,
        losses=[
            DeltaDenoisingScore(guidance_scale=7.5, weighting=TimestepWeighting(scale=2.0)),
            ScoreDistillationSampling(guidance_scale=7.5, weighting=TimestepWeighting(scale=0.1)),
        ],
        steps=args.steps,
        lr=0.005,
        performance=Performance.preset("bf16" if device.startswith("cuda") else "batched"),
    )
    result = editor.edit(clip, source=args.source, target=args.target, progress=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_audio(args.out, result.audio[0], result.sample_rate, overwrite=True)
    # the melody metric reads 16 kHz mono (the authors' setting), whatever the backbone's output
    source = to_mono(clip.waveform[None], clip.sample_rate, 16000)[0]
    edited = to_mono(result.audio[:1], result.sample_rate, 16000)[0]
    pcc = cqt1_pcc(source, edited)
    print(f"wrote {args.out}; melody kept (CQT-1 PCC): {pcc:.3f}; last total loss {result.history[-1]['total']:.4g}")
    return pcc


if __name__ == "__main__":
    main()
