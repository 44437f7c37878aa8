"""Builders shared by the concept tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import math

import torch

from backbones.mel_diffusion import (
    MelDiffusionBackbone,
    MelDiffusionModel,
    default_unet_config,
)
from steer import Audio

WORDS = ["a", "recording", "of", "flute", "violin", "guitar", "piano"]


def tiny_mel_backbone(seed: int = 0, *, widths=(16, 16, 32)) -> MelDiffusionBackbone:
    """A randomly initialised mel-diffusion backbone (~0.3 M parameters), built in ~0.1 s."""
    unet = default_unet_config()
    unet.update(block_out_channels=list(widths), norm_num_groups=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MelDiffusionBackbone(MelDiffusionModel(words=WORDS, unet=unet, text_layers=1))


def tone(f0: float, seconds: float = 1.28, sample_rate: int = 16000, seed: int = 0) -> Audio:
    """Harmonics of ``f0`` with a little noise, peak 0.5, ``(1, samples)``."""
    t = torch.arange(round(seconds * sample_rate)) / sample_rate
    wave = sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, 6))
    wave = wave + 0.01 * torch.randn(t.shape, generator=torch.Generator().manual_seed(seed))
    return Audio((0.5 * wave / wave.abs().max())[None].float(), sample_rate)
