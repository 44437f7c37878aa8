"""DDIM inversion editing: invert the source latent with the source prompt by running DDIM
backwards, then sample from the inverted noise with the target prompt (Song et al., "Denoising
Diffusion Implicit Models", ICLR 2021, https://arxiv.org/abs/2010.02502, section 5.4).

A baseline of SteerMusic's comparison (Niu et al., section 5.3, Table 1); the inversion error it
suffers is the paper's Figure 2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch import Tensor

from backbones import Backbone

from ..editor import EditResult, LatentEditor, Prompts, prompt_list
from ..sampling import SamplerState, ddim_invert, ddim_sample, ddim_timesteps


class DDIMInversion(LatentEditor):
    """Edit by deterministic inversion with the source prompt and sampling with the target.

    SteerMusic's comparison runs this baseline on AudioLDM2 but lists no settings, so the defaults
    are those of the DDIM mode of ZETA's public code (Manor & Michaeli, ICML 2024,
    https://github.com/HilaManor/AudioEditingCode, ``main_run.py --mode ddim``), the reference
    implementation of this baseline on AudioLDM2 for text-based music editing: 200 steps (also
    the default of diffusers' ``AudioLDM2Pipeline``), full inversion, guidance 3 while inverting
    with the source prompt and 12 while sampling with the target. Null-text inversion (Mokady et
    al., 2023) shows that guidance 1 inverts most faithfully: pass ``guidance_scale_inversion=1``.

    Args:
        backbone: the diffusion model.
        steps: DDIM steps of the full schedule.
        strength: fraction of the schedule that is inverted and re-sampled, in (0, 1]; 1 is the
            plain DDIM-inversion baseline, smaller values the shallow inversion of DreamSound's
            editing (SteerMusic section 5.4).
        guidance_scale_inversion: classifier-free guidance of the source prompt while inverting.
        guidance_scale: classifier-free guidance of the target prompt while sampling.

    Example:
        >>> import torch
        >>> from backbones import load_backbone
        >>> from steer import Audio
        >>> editor = DDIMInversion(load_backbone("tiny"), steps=2)  # random weights: a shape check
        >>> clip = Audio(torch.randn(1, 16000) * 0.1, 16000)
        >>> editor.edit(clip, source="a piano melody", target="a violin melody").audio.shape
        torch.Size([1, 16000])
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        steps: int = 200,
        strength: float = 1.0,
        guidance_scale_inversion: float = 3.0,
        guidance_scale: float = 12.0,
    ) -> None:
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        if not 1 <= steps <= backbone.num_train_timesteps:
            raise ValueError(f"steps must be in [1, {backbone.num_train_timesteps}], got {steps}")
        self.backbone = backbone
        self.steps = steps
        self.strength = strength
        self.guidance_scale_inversion = guidance_scale_inversion
        self.guidance_scale = guidance_scale

    def edit_latent(
        self,
        latent: Tensor,
        *,
        source: Prompts,
        target: Prompts,
        seed: int = 0,
        callback: Callable[[SamplerState], None] | None = None,
        progress: bool = False,
    ) -> EditResult:
        """Edit a latent ``(B, ...)``; see :meth:`edit`. ``audio`` is left ``None``."""
        backbone = self.backbone
        batch = latent.shape[0]
        source_cond = backbone.encode_prompt(prompt_list(source, batch, "source"))
        target_cond = backbone.encode_prompt(prompt_list(target, batch, "target"))
        timesteps = ddim_timesteps(
            self.steps, num_train_timesteps=backbone.num_train_timesteps, strength=self.strength
        )
        inverted = ddim_invert(
            backbone,
            latent,
            source_cond,
            timesteps=timesteps,
            guidance_scale=self.guidance_scale_inversion,
            callback=callback,
            progress=progress,
        )
        if callback is not None:
            user_callback = callback

            def callback(state: SamplerState) -> None:
                user_callback(dataclasses.replace(state, step=state.step + len(timesteps)))

        edited = ddim_sample(
            backbone,
            inverted,
            target_cond,
            timesteps=timesteps,
            guidance_scale=self.guidance_scale,
            callback=callback,
            progress=progress,
        )
        return EditResult(latent=edited, audio=None, sample_rate=backbone.sample_rate)
