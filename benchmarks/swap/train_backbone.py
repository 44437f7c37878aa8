"""Train the small mel-diffusion backbone on the rendered instrument-swap data (one command, seeded).

    python benchmarks/swap/train_backbone.py --steps 2400 --threads 1 --out weights/mel-diffusion-swap-retrained \\
        --data data/swap-ryans/manifest.jsonl data/swap-bach/manifest.jsonl

(the shipped model's settings, README: the swap benchmark).

Standard DDPM training (Ho et al., 2020): x_t = √ᾱ x0 + √(1−ᾱ) ε, loss ‖ε̂(x_t, t, y) − ε‖²,
with the prompt dropped (replaced by "") 10 % of the time for classifier-free guidance (Ho &
Salimans, 2022), AdamW with warm-up and cosine decay, and an exponential moving average of the
weights, which is what gets saved. Each step takes random 2.56-s crops of the training clips (read
at the model's 16 kHz, whatever rate they were rendered at). ``--out`` gets ``config.json``,
``model.safetensors`` (every 1000 steps and at the end) and ``training.json`` (every setting, the
final loss and the time; written at the end, and removed when the first weights are saved, so it
never describes other weights). Before any work, an ``--out`` that the first save would refuse
is refused: one that cannot be a folder or cannot be written, or one already holding any of them,
without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from backbones import MelFrontEnd
from backbones.mel_diffusion import MelDiffusionBackbone, MelDiffusionModel, default_unet_config
from backbones.word_encoder import split_words
from steer.data import load_clip, read_manifest
from steer.data._files import manifest_problem, model_folder_problem, split_conflict_problem


def load_log_mels(manifests: list[Path], mel: MelFrontEnd) -> tuple[torch.Tensor, list[str]]:
    """Log-mels ``(N, 1, frames, 64)`` of the manifests' training clips and their prompts."""
    mels, prompts, paths = [], [], []
    for manifest in manifests:
        entries = read_manifest(manifest, split="train")
        if not entries:
            raise SystemExit(f"{manifest} has no training clips")
        for entry in entries:
            paths.append(manifest.parent / entry.audio)
            mels.append(mel(mel.normalize(load_clip(paths[-1], mel.sample_rate)[None])))
            prompts.append(entry.prompt)
            if mels[-1].shape[2] != mels[0].shape[2]:
                first, this = (m.shape[2] * mel.hop_length / mel.sample_rate for m in (mels[0], mels[-1]))
                raise SystemExit(
                    f"the training clips differ in length ({paths[0]}: {first:.2f} s, {paths[-1]}: "
                    f"{this:.2f} s): train on data rendered with one --seconds"
                )
    return torch.cat(mels), prompts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="manifest.jsonl files")
    parser.add_argument("--out", type=Path, required=True, help="output folder (config + safetensors)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--p-uncond", type=float, default=0.1, help="prompt dropout probability")
    parser.add_argument("--crop-frames", type=int, default=256, help="mel frames per crop (2.56 s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    args = parser.parse_args(argv)
    if problem := model_folder_problem(args.out, args.overwrite):
        parser.error(problem)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be at least 1 and --warmup at least 0, got {args.steps} and {args.warmup}")
    for option in "batch", "crop_frames", "threads":
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1, got {getattr(args, option)}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a positive number, got {args.lr}")
    for option, meaning in ("ema", "a decay"), ("p_uncond", "a probability"):
        if not 0 <= getattr(args, option) <= 1:  # nan too
            parser.error(f"--{option.replace('_', '-')} is {meaning}, from 0 to 1; got {getattr(args, option)}")
    for manifest in args.data:
        if problem := manifest_problem(manifest):
            raise SystemExit(problem)
    if problem := split_conflict_problem(args.data):
        raise SystemExit(problem)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    mel_front = MelFrontEnd()
    started = time.time()
    mels, prompts = load_log_mels(args.data, mel_front)
    print(f"{len(mels)} training clips, log-mel {tuple(mels.shape[1:])}, {time.time() - started:.0f} s to load")
    frames = mels.shape[2]
    if frames < args.crop_frames:
        clip_seconds = frames * mel_front.hop_length / mel_front.sample_rate
        raise SystemExit(
            f"the training clips are {frames} mel frames ({clip_seconds:.2f} s) long, shorter than "
            f"--crop-frames {args.crop_frames}: pass --crop-frames {frames} or fewer, or render "
            "longer clips (python -m steer.data --seconds)"
        )

    words = sorted({w for p in prompts for w in split_words(p)})
    model = MelDiffusionModel(
        words=words,
        unet=default_unet_config(),  # saved in config.json, so later defaults can't change it
        mel_mean=float(mels.mean()),
        mel_std=float(mels.std()),
    )
    backbone = MelDiffusionBackbone(model)  # for the latent transform only
    model.train().requires_grad_(True)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    print(f"UNet {sum(p.numel() for p in model.unet.parameters()) / 1e6:.2f} M parameters, words: {words}")

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / max(args.warmup, 1))  # --warmup 0: none
        * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))),
    )
    patch = model.patch
    max_start = (mels.shape[2] - args.crop_frames) // patch
    losses = []
    for step in range(args.steps):
        index = torch.randint(len(mels), (args.batch,))
        starts = torch.randint(max_start + 1, (args.batch,)) * patch
        crops = torch.stack(
            [mels[i, :, s : s + args.crop_frames] for i, s in zip(index.tolist(), starts.tolist())]
        )
        x0 = backbone.mel_to_latent(crops)
        batch_prompts = [
            "" if torch.rand(()) < args.p_uncond else prompts[i] for i in index.tolist()
        ]
        ids, mask = model.text_encoder.tokenize(batch_prompts)
        t = torch.randint(0, backbone.num_train_timesteps, (args.batch,))
        noise = torch.randn_like(x0)
        alpha_bar = backbone.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
        states = model.text_encoder(ids, mask)
        eps = model.unet(x_t, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample
        loss = F.mse_loss(eps, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step == args.steps - 1:
            recent = sum(losses[-100:]) / len(losses[-100:])
            print(f"step {step + 1}/{args.steps}  loss {recent:.4f}  {time.time() - started:.0f} s", flush=True)
        if (step + 1) % 1000 == 0 or step == args.steps - 1:
            (args.out / "training.json").unlink(missing_ok=True)  # it describes the weights replaced
            # --overwrite for the first save; every later one replaces this run's own files
            ema.save_pretrained(args.out, overwrite=args.overwrite or step >= 1000)

    seconds = time.time() - started
    (args.out / "training.json").write_text(
        json.dumps(
            {
                **json.loads(json.dumps(vars(args), default=str)),  # every setting; paths as text
                "clips": len(mels),
                "final_loss": sum(losses[-100:]) / len(losses[-100:]),
                "seconds": round(seconds),
                "device": "cpu",
            },
            indent=2,
        )
        + "\n"
    )
    print(f"saved {args.out} after {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
