"""Editors configured as in the SteerMusic paper (Niu et al., sections 4.1 and 5.1) and the
authors' public code."""

from __future__ import annotations

from backbones import Backbone
from losses import DeltaDenoisingScore, TimestepWeighting

from .editor import Editor


class SteerMusic(Editor):
    """Zero-shot text-guided music editing with Delta Denoising Score.

    Defaults are the authors' recipe: 400 SGD steps at learning rate 0.02, decayed ×0.9 every 20
    steps; t uniform in [20, 980]; w(t) = 2 · (1 − ᾱ_t); classifier-free guidance 30 on both
    predictions; the latent starts at the VAE encoding of the source.

    Example:
        >>> import torch
        >>> from backbones import load_backbone
        >>> from steer import Audio
        >>> editor = SteerMusic(load_backbone("tiny"), steps=2)
        >>> clip = Audio(torch.randn(1, 16000) * 0.1, 16000)  # or load_audio("in.wav")
        >>> result = editor.edit(clip, source="a piano melody", target="a violin melody")
        >>> result.audio.shape, result.sample_rate
        (torch.Size([1, 16000]), 16000)
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        steps: int = 400,
        guidance_scale: float = 30.0,
        lr: float = 0.02,
        weighting: TimestepWeighting = TimestepWeighting(scale=2.0),
        optimizer: str = "sgd",
        lr_step_size: int = 20,
        lr_gamma: float = 0.9,
        t_min: int = 20,
        t_max: int = 980,
        batched: bool = True,
    ) -> None:
        super().__init__(
            backbone,
            losses=[DeltaDenoisingScore(guidance_scale=guidance_scale, weighting=weighting)],
            steps=steps,
            lr=lr,
            optimizer=optimizer,
            lr_step_size=lr_step_size,
            lr_gamma=lr_gamma,
            t_min=t_min,
            t_max=t_max,
            batched=batched,
        )
