"""DDIM inversion editing: invert the source latent with the source prompt by running DDIM
backwards, then sample from the inverted noise with the target prompt (Song et al., "Denoising
Diffusion Implicit Models", ICLR 2021, https://arxiv.org/abs/2010.02502, section 5.4).

A baseline of SteerMusic's comparison (Niu et al., section 5.3, Table 1); the inversion error it
suffers is the paper's Figure 2.
"""

from __future__ import annotations

from torch import Tensor

from backbones import Conditioning

from ..sampling import SamplerCallback, ddim_invert, ddim_sample
from .inversion import InversionEditor


class DDIMInversion(InversionEditor):
    """Edit by deterministic inversion with the source prompt and sampling with the target.

    SteerMusic's comparison runs this baseline on AudioLDM2 but lists no settings, so the defaults
    are those of the DDIM mode of ZETA's public code (``main_run.py --mode ddim``; see
    :class:`~steer.baselines.InversionEditor`): 200 steps, full inversion (``strength=1``),
    guidance 3 while inverting and 12 while sampling. Null-text inversion (Mokady et al., 2023)
    shows that guidance 1 inverts most faithfully: pass ``guidance_scale_inversion=1``.

    Args:
        backbone: the diffusion model.
        steps: DDIM steps of the full schedule.
        strength: fraction of the schedule that is inverted and re-sampled, in (0, 1]; 1 (the
            default) is the plain DDIM-inversion baseline (:class:`DreamSoundEditing`, the
            personalised baseline, inverts shallowly and samples with a concept's model).
        guidance_scale_inversion: classifier-free guidance of the source prompt while inverting.
        guidance_scale: classifier-free guidance of the target prompt while sampling.

    The edit is deterministic: ``edit_latent``'s ``seed`` does not change it (it is still checked,
    as every editor checks it). Inversion and sampling clamp x̂_0 to the backbone's
    :attr:`~backbones.Backbone.latent_range` alike (:func:`~steer.sampling.ddim_invert`), so the
    same prompt at guidance 1 returns the source, up to an error that shrinks with more steps.

    Example:
        >>> import torch
        >>> from backbones import load_backbone
        >>> from steer import Audio
        >>> editor = DDIMInversion(load_backbone("tiny"), steps=2)  # random weights: a shape check
        >>> clip = Audio(torch.randn(1, 16000) * 0.1, 16000)
        >>> editor.edit(clip, source="a piano melody", target="a violin melody").audio.shape
        torch.Size([1, 16000])
    """

    default_strength = 1.0

    def invert(
        self, latent: Tensor, cond: Conditioning, timesteps: Tensor, *, seed: int,
        callback: SamplerCallback | None, progress: bool,
    ) -> Tensor:
        """x_T by deterministic DDIM inversion (``seed``, checked by ``edit_latent``, is not used)."""
        return ddim_invert(
            self.backbone, latent, cond, timesteps=timesteps, guidance_scale=self.guidance_scale_inversion,
            callback=callback, progress=progress,
        )

    def sample(
        self, inverted: Tensor, cond: Conditioning, timesteps: Tensor, *,
        callback: SamplerCallback | None, progress: bool,
    ) -> Tensor:
        return ddim_sample(
            self.sampler, inverted, cond, timesteps=timesteps, guidance_scale=self.guidance_scale,
            callback=callback, progress=progress,
        )
