"""Train the instrument classifier that scores edit fidelity (one command, seeded).

    python benchmarks/swap/train_classifier.py --data data/swap-ryans/manifest.jsonl \\
        --bach data/swap-bach/manifest.jsonl --out weights/instrument-classifier-retrained

Trains :class:`steer.metrics.InstrumentClassifier` on the TRAIN split of a rendered swap dataset
(random 2.56-s crops, cross-entropy, AdamW with warm-up and cosine decay), then reports accuracy
on the TEST split (melodies never heard in training) and, with ``--bach``, on every clip of
another collection, each both on the clean renders and on their Griffin–Lim round trips
(waveform → log-mel → :class:`backbones.griffin_lim.GriffinLimVocoder` → waveform), which is how
the mel-diffusion backbone's edits sound. Writes ``config.json``, ``model.safetensors`` and
``training.json`` (the numbers, the command, the time, the seed) into ``--out``: the weights
after training, ``training.json`` after the evaluation (an older one is removed when the weights
are saved, so it never describes other weights). Before any work, an ``--out`` that the save
would refuse is refused: one that cannot be a folder or cannot be written, or one already holding
any of them, without ``--overwrite``. Clips are read at 16 kHz, whatever rate they were rendered at.

Augmentation, per crop:

- **Griffin–Lim**: half the crops come from Griffin–Lim round trips of the training clips,
  precomputed once with 8 iterations instead of the vocoder's 32. Measured on Ryan's clips: the
  8-iteration log-mel is 0.15 (mean |Δ| in nats) from the 32-iteration one — about as far as
  64 iterations are (0.11) — while both are 0.50 from the clean log-mel, at a quarter of the cost
  (0.07 s against 0.24 s per 5.12-s clip on one core). Evaluation uses the real 32-iteration
  vocoder.
- **noise**: white noise at a random SNR of 10–40 dB, on half the crops. Gain is not augmented:
  the classifier peak-normalises every clip (:meth:`backbones.MelFrontEnd.normalize`), so a gain
  changes nothing it sees.
- **blur and jitter** on the log-mel, for what a diffusion model generates: a quarter of the
  crops blurred by a Gaussian of 0.2–1.5 frames and bands, a quarter with Gaussian noise of up
  to 0.5 nats added.
- **spectral tilt and masks** on the log-mel: a random linear tilt of up to ±0.5 nats across the
  bands (a gentle EQ), one time mask of up to 20 frames and one band mask of up to 6 bands.

``--cache DIR`` keeps the Griffin–Lim round trips between runs (they are most of the time).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from backbones import MelFrontEnd
from backbones.griffin_lim import GriffinLimVocoder
from backbones.saving import check_can_be_folder
from steer.data import DEFAULT_INSTRUMENTS, load_clip, read_manifest
from steer.data._files import manifest_problem, model_folder_problem, split_conflict_problem
from steer.metrics import InstrumentClassifier

SAMPLE_RATE = 16000
GRIFFIN_LIM_SECONDS: dict[str, int] = {}  # precomputation time per clip set (not when cached)


def load_clips(manifest: Path, split: str | None) -> tuple[torch.Tensor, list[str]]:
    """Waveforms ``(N, samples)`` of a manifest's clips (all of one length) and their instruments."""
    entries = read_manifest(manifest, split=split)
    if not entries:
        raise SystemExit(f"{manifest} has no {split or ''} clips")
    waveforms, instruments = [], []
    for entry in entries:
        waveforms.append(load_clip(manifest.parent / entry.audio, SAMPLE_RATE))
        instruments.append(entry.instrument)
        if len(waveforms[-1]) != len(waveforms[0]):
            raise SystemExit(
                f"{manifest}'s clips differ in length ({entries[0].audio}: "
                f"{len(waveforms[0]) / SAMPLE_RATE:.2f} s, {entry.audio}: "
                f"{len(waveforms[-1]) / SAMPLE_RATE:.2f} s): render them with one --seconds"
            )
    return torch.stack(waveforms), instruments


@torch.no_grad()
def griffin_lim_round_trip(
    waveforms: torch.Tensor,
    *,
    n_iter: int,
    cache: Path | None,
    mel: MelFrontEnd,
    label: str,
    batch: int = 8,
) -> torch.Tensor:
    """``waveform → log-mel → Griffin–Lim → waveform`` of every clip, cached by content; as long
    as the clips (the vocoder gives whole hops: a clip's last part-hop comes back as silence)."""
    if cache is not None:
        digest = hashlib.sha256(waveforms.numpy().tobytes()).hexdigest()[:16]
        path = cache / f"griffin-lim-{n_iter}-{digest}.pt"
        if path.exists():
            try:
                return torch.load(path)
            except (RuntimeError, EOFError, OSError) as error:  # cut short by an older steer's interrupted write
                print(f"{path} cannot be read ({error}): computing it again", flush=True)
    vocoder = GriffinLimVocoder(mel, n_iter=n_iter)
    started, out = time.time(), []
    for i in range(0, len(waveforms), batch):
        out.append(vocoder(mel(mel.normalize(waveforms[i : i + batch])).squeeze(1)))
    out = torch.cat(out)
    out = F.pad(out, (0, waveforms.shape[-1] - out.shape[-1]))
    seconds = time.time() - started
    GRIFFIN_LIM_SECONDS[label] = round(seconds)
    print(f"Griffin–Lim ({n_iter} iterations) of {len(out)} {label} clips: {seconds:.0f} s", flush=True)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # renamed whole: a kill leaves no cut file
        torch.save(out, partial)
        os.replace(partial, path)
    return out


def gaussian_blur(log_mel: torch.Tensor, sigma_time: float, sigma_band: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, 1, frames, bands)`` with edge replication."""
    for sigma, shape in ((sigma_time, (1, 1, -1, 1)), (sigma_band, (1, 1, 1, -1))):
        radius = max(1, math.ceil(2 * sigma))
        kernel = torch.exp(-0.5 * (torch.arange(-radius, radius + 1) / sigma) ** 2)
        kernel = (kernel / kernel.sum()).view(shape)
        pad = (0, 0, radius, radius) if shape[2] == -1 else (radius, radius, 0, 0)
        log_mel = F.conv2d(F.pad(log_mel, pad, mode="replicate"), kernel)
    return log_mel


def augment(
    crops: torch.Tensor,
    mel: MelFrontEnd,
    generator: torch.Generator,
    *,
    p_noise: float = 0.5,
    p_blur: float = 0.25,
    p_jitter: float = 0.25,
) -> torch.Tensor:
    """Noisy, tilted, masked normalised log-mels ``(B, 1, frames, 64)`` of waveform crops ``(B, samples)``."""
    b = len(crops)
    crops = mel.normalize(crops)
    snr_db = 10 + 30 * torch.rand(b, 1, generator=generator)
    noise = torch.randn(crops.shape, generator=generator)
    scale = crops.std(-1, keepdim=True) / 10 ** (snr_db / 20)
    use = (torch.rand(b, 1, generator=generator) < p_noise).float()
    log_mel = mel(mel.normalize(crops + use * scale * noise))
    frames, bands = log_mel.shape[2], log_mel.shape[3]
    # a generated log-mel is smoother and noisier than a rendered one: blur some, jitter some
    blur = torch.rand(b, generator=generator) < p_blur
    if blur.any():
        sigma = 0.2 + 1.3 * torch.rand(2, generator=generator)  # frames, bands
        log_mel[blur] = gaussian_blur(log_mel[blur], float(sigma[0]), float(sigma[1]))
    jitter = (torch.rand(b, 1, 1, 1, generator=generator) < p_jitter) * 0.5 * torch.rand(b, 1, 1, 1, generator=generator)
    log_mel = log_mel + jitter * torch.randn(log_mel.shape, generator=generator)
    ramp = torch.linspace(-0.5, 0.5, bands)
    tilt = (2 * torch.rand(b, 1, 1, 1, generator=generator) - 1) * ramp  # up to ±0.5 nats
    log_mel = log_mel + tilt
    silence = mel.silence()
    for i in range(b):
        width = int(torch.randint(0, 21, (), generator=generator))
        start = int(torch.randint(0, frames - width + 1, (), generator=generator))
        log_mel[i, :, start : start + width] = silence
        width = int(torch.randint(0, 7, (), generator=generator))
        start = int(torch.randint(0, bands - width + 1, (), generator=generator))
        log_mel[i, :, :, start : start + width] = silence
    return log_mel


@torch.no_grad()
def evaluate(
    classifier: InstrumentClassifier,
    waveforms: torch.Tensor,
    targets: torch.Tensor,
    *,
    batch: int = 32,
) -> dict:
    """Accuracy on whole clips (``accuracy``) and on their two halves (``accuracy_2.56s`` for
    5.12-s clips: named by :func:`half_seconds`), and the whole-clip confusion matrix (rows: true
    instrument, columns: predicted)."""
    classifier.eval()
    n = len(classifier.classes)

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([classifier.logits(x[i : i + batch]).argmax(-1) for i in range(0, len(x), batch)])

    whole = predict(waveforms)
    half = waveforms.shape[-1] // 2
    halves = torch.cat([predict(waveforms[:, :half]), predict(waveforms[:, half : 2 * half])])
    confusion = torch.zeros(n, n, dtype=torch.long)
    confusion.index_put_((targets, whole), torch.ones_like(targets), accumulate=True)
    return {
        "clips": len(waveforms),
        "accuracy": round(float((whole == targets).float().mean()), 4),
        f"accuracy_{half_seconds(waveforms.shape[-1])}s": round(float((halves == targets.repeat(2)).float().mean()), 4),
        "confusion": confusion.tolist(),
    }


def half_seconds(samples: int) -> str:
    """The length of a clip's halves as :func:`evaluate` names them: ``"2.56"`` for the shipped
    data's 5.12-s clips (``accuracy_2.56s``), ``"0.64"`` for 1.28-s ones."""
    return f"{samples // 2 / SAMPLE_RATE:g}"


def print_confusion(name: str, result: dict, classes: list[str], samples: int) -> None:
    """Print :func:`evaluate`'s ``result`` on clips of ``samples``."""
    half = half_seconds(samples)
    print(f"{name}: {result['accuracy']:.3f} (whole clips), {result[f'accuracy_{half}s']:.3f} ({half}-s halves)")
    short = [c.split()[-1][:6] for c in classes]
    print("          " + " ".join(f"{s:>6}" for s in short))
    for s, row in zip(short, result["confusion"]):
        print(f"  {s:>6}  " + " ".join(f"{v:6d}" for v in row))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="manifest.jsonl of rendered clips (train + test)")
    parser.add_argument("--bach", type=Path, help="manifest.jsonl of another collection, for evaluation only")
    parser.add_argument("--out", type=Path, required=True, help="output folder (config + safetensors + training.json)")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--crop-seconds", type=float, default=2.56)
    parser.add_argument("--p-griffin-lim", type=float, default=0.5, help="share of crops from Griffin–Lim round trips")
    parser.add_argument("--train-griffin-lim-iters", type=int, default=8)
    parser.add_argument("--cache", type=Path, help="folder keeping Griffin–Lim round trips between runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--overwrite", action="store_true", help="replace a classifier already in --out")
    args = parser.parse_args(argv)
    if problem := model_folder_problem(args.out, args.overwrite):
        parser.error(problem)
    if args.steps < 1 or args.warmup < 0 or not (math.isfinite(args.crop_seconds) and args.crop_seconds > 0):
        parser.error(
            f"--steps must be at least 1, --warmup at least 0 and --crop-seconds positive, got "
            f"{args.steps}, {args.warmup} and {args.crop_seconds}"
        )
    for option in "batch", "threads", "train_griffin_lim_iters":
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1, got {getattr(args, option)}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a positive number, got {args.lr}")
    if not 0 <= args.p_griffin_lim <= 1:  # nan too
        parser.error(f"--p-griffin-lim is a probability, from 0 to 1; got {args.p_griffin_lim}")
    if args.cache is not None:
        try:
            check_can_be_folder(args.cache, "--cache", another="another --cache")
        except ValueError as error:
            parser.error(str(error))
    test_sets = [("ryans_test", args.data, "test")]
    if args.bach is not None:
        test_sets.append(("bach", args.bach, None))
    for _, manifest, _ in test_sets:
        if problem := manifest_problem(manifest):
            raise SystemExit(problem)
    if problem := split_conflict_problem(manifest for _, manifest, _ in test_sets):
        raise SystemExit(problem)
    trained = {e.instrument for e in read_manifest(args.data, split="train")}
    for _, manifest, split in test_sets:  # evaluated after training: checked before it
        entries = read_manifest(manifest, split=split)
        if not entries:
            raise SystemExit(f"{manifest} has no {'test ' if split else ''}clips to evaluate the classifier on")
        if unknown := sorted({e.instrument for e in entries} - trained):
            raise SystemExit(
                f"{manifest} has clips of {', '.join(unknown)}, which {args.data}'s training split "
                "lacks: the classifier could not name them"
            )

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    mel = MelFrontEnd()
    started = time.time()

    clean, instruments = load_clips(args.data, "train")
    classes = [i for i in DEFAULT_INSTRUMENTS if i in set(instruments)]
    classes += sorted(set(instruments) - set(classes))
    print(f"{len(clean)} training clips of {clean.shape[-1] / SAMPLE_RATE:.2f} s, classes {classes}", flush=True)
    crop = round(args.crop_seconds * SAMPLE_RATE)
    if crop > clean.shape[-1]:
        raise SystemExit(
            f"the training clips are {clean.shape[-1] / SAMPLE_RATE:.2f} s long, shorter than "
            f"--crop-seconds {args.crop_seconds}: pass --crop-seconds "
            f"{clean.shape[-1] / SAMPLE_RATE:.2f} or less, or render longer clips (python -m steer.data --seconds)"
        )
    rough = griffin_lim_round_trip(
        clean, n_iter=args.train_griffin_lim_iters, cache=args.cache, mel=mel, label="training"
    )
    with torch.no_grad():  # standardisation statistics of the training log-mels
        sample = mel(mel.normalize(torch.cat([clean[::8], rough[::8]])))
    classifier = InstrumentClassifier(
        classes=classes, mel_mean=round(float(sample.mean()), 3), mel_std=round(float(sample.std()), 3)
    )
    targets = classifier.class_index(instruments)
    n_params = sum(p.numel() for p in classifier.parameters())
    print(f"{n_params / 1e3:.0f} k parameters, log-mel mean {classifier.mel_mean}, std {classifier.mel_std}", flush=True)

    optimizer = torch.optim.AdamW(classifier.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / max(args.warmup, 1))  # --warmup 0: none
        * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))),
    )
    hop = mel.hop_length
    max_start = (clean.shape[-1] - crop) // hop
    classifier.train()
    train_started, losses, hits = time.time(), [], []
    for step in range(args.steps):
        index = torch.randint(len(clean), (args.batch,), generator=generator)
        starts = (torch.randint(max_start + 1, (args.batch,), generator=generator) * hop).tolist()
        use_rough = (torch.rand(args.batch, generator=generator) < args.p_griffin_lim).tolist()
        crops = torch.stack(
            [(rough if r else clean)[i, s : s + crop] for i, s, r in zip(index.tolist(), starts, use_rough)]
        )
        with torch.no_grad():
            log_mel = augment(crops, mel, generator)
        logits = classifier(log_mel)
        loss = F.cross_entropy(logits, targets[index], label_smoothing=0.05)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        hits.append(float((logits.argmax(-1) == targets[index]).float().mean()))
        if (step + 1) % 100 == 0 or step == args.steps - 1:
            print(
                f"step {step + 1}/{args.steps}  loss {np.mean(losses[-100:]):.3f}  "
                f"train acc {np.mean(hits[-100:]):.3f}  {time.time() - started:.0f} s",
                flush=True,
            )
    train_seconds = time.time() - train_started
    classifier.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "training.json").unlink(missing_ok=True)  # it describes the weights replaced
    classifier.save_pretrained(args.out, overwrite=args.overwrite)

    evaluations = {}
    for name, manifest, split in test_sets:
        waveforms, names = load_clips(manifest, split)
        truth = classifier.class_index(names)
        evaluations[f"{name}_clean"] = evaluate(classifier, waveforms, truth)
        print_confusion(f"{name}, clean", evaluations[f"{name}_clean"], classes, waveforms.shape[-1])
        vocoded = griffin_lim_round_trip(waveforms, n_iter=32, cache=args.cache, mel=mel, label=name)
        evaluations[f"{name}_griffin_lim"] = evaluate(classifier, vocoded, truth)
        print_confusion(f"{name}, Griffin–Lim", evaluations[f"{name}_griffin_lim"], classes, vocoded.shape[-1])

    seconds = time.time() - started
    record = {
        # the arguments parsed (main(argv) from Python: not the calling process's)
        "command": shlex.join(["python", "benchmarks/swap/train_classifier.py", *(sys.argv[1:] if argv is None else argv)]),
        "seed": args.seed,
        "data": str(args.data),
        "bach": None if args.bach is None else str(args.bach),
        "training_clips": len(clean),
        "classes": classes,
        "parameters": n_params,
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "crop_seconds": args.crop_seconds,
        "p_griffin_lim": args.p_griffin_lim,
        "train_griffin_lim_iters": args.train_griffin_lim_iters,
        "threads": args.threads,
        "device": "cpu",
        "final_train_loss": round(float(np.mean(losses[-100:])), 4),
        "train_seconds": round(train_seconds),
        "griffin_lim_seconds": GRIFFIN_LIM_SECONDS,
        "seconds": round(seconds),
        "evaluation": evaluations,
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {args.out} after {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
