"""DDPM-inversion editing, ZETA's text-based audio editing (Manor & Michaeli, "Zero-Shot
Unsupervised and Text-Based Audio Editing Using DDPM Inversion", ICML 2024,
https://arxiv.org/abs/2402.10009): extract the noise maps of the source with the source prompt
(edit-friendly DDPM inversion, Huberman-Spiegelglas et al., CVPR 2024), then run DDPM sampling
with the target prompt and the same maps.

A baseline of SteerMusic's comparison (Niu et al., section 5.3, Table 1: ZETA).
"""

from __future__ import annotations

from torch import Tensor

from backbones import Backbone, Conditioning

from ..editor import check_whole_number, seeded_generator
from ..sampling import SamplerCallback, ddim_timesteps, ddpm_invert, ddpm_sample
from .inversion import InversionEditor


class DDPMInversion(InversionEditor):
    """Edit by edit-friendly DDPM inversion with the source prompt and DDPM sampling, from the
    same noise maps, with the target prompt.

    The defaults are those of ZETA's public code for text-based editing (``main_run.py``; see
    :class:`~steer.baselines.InversionEditor`): 200 steps, the reverse process started at step
    100 of 200 (``strength=0.5``, its ``--tstart 100``), guidance 3 while inverting and 12 while
    sampling, η = 1. The noisings that are inverted are drawn afresh for each edit from ``seed``,
    for one clip and given to every clip of a batch, so that a clip is edited as it is alone with
    the same seed (up to the rounding of batched kernels), wherever it sits in the batch; only
    the last ``strength`` of the schedule is inverted, the part the sampling uses (ZETA
    inverts all of it and discards the rest). ZETA's code zeroes the last step's map; it is kept
    here, so that a target prompt equal to the source, at equal guidance, returns the source
    exactly.

    Args:
        backbone: the diffusion model.
        steps: steps of the full schedule.
        strength: fraction of the schedule that is inverted and re-sampled, in (0, 1] (ZETA's
            ``tstart / steps``, default 0.5): larger edits more and keeps less of the source.
        guidance_scale_inversion: classifier-free guidance of the source prompt while inverting.
        guidance_scale: classifier-free guidance of the target prompt while sampling.
        steps_per_call: inversion steps per denoiser call (:func:`~steer.sampling.ddpm_invert`):
            k batches k steps' predictions into one call, for k times the memory. On the CPU, 25
            inversion steps of the shipped mel model took 0.64 s at k = 5 against 0.87 s one a
            call (one thread, one run each beside other work); not measured on a GPU.

    Example:
        >>> import torch
        >>> from backbones import load_backbone
        >>> from steer import Audio
        >>> editor = DDPMInversion(load_backbone("tiny"), steps=4)  # random weights: a shape check
        >>> clip = Audio(torch.randn(1, 16000) * 0.1, 16000)
        >>> editor.edit(clip, source="a piano melody", target="a violin melody").audio.shape
        torch.Size([1, 16000])
    """

    default_strength = 0.5

    def __init__(
        self,
        backbone: Backbone,
        *,
        steps: int = 200,
        strength: float | None = None,
        guidance_scale_inversion: float = 3.0,
        guidance_scale: float = 12.0,
        steps_per_call: int = 1,
    ) -> None:
        self.steps_per_call = steps_per_call
        super().__init__(
            backbone, steps=steps, strength=strength,
            guidance_scale_inversion=guidance_scale_inversion, guidance_scale=guidance_scale,
        )

    def check_settings(self) -> None:
        """As :meth:`InversionEditor.check_settings`, and ``steps_per_call`` and a schedule
        whose last step is not at timestep 0."""
        check_whole_number("steps_per_call", self.steps_per_call, 1)
        super().check_settings()
        if ddim_timesteps(self.steps, num_train_timesteps=self.backbone.num_train_timesteps)[-1] == 0:
            raise ValueError(
                f"steps={self.steps} puts the last step at timestep 0, the clean latent's level, which "
                f"DDPM inversion cannot invert: use at most {self.backbone.num_train_timesteps - 1} steps"
            )

    def invert(
        self, latent: Tensor, cond: Conditioning, timesteps: Tensor, *, seed: int,
        callback: SamplerCallback | None, progress: bool,
    ) -> tuple[Tensor, Tensor]:
        """``(x_T, noise maps)`` (:func:`~steer.sampling.ddpm_invert`), the noisings drawn from ``seed``."""
        generator = seeded_generator(seed, latent.device)
        return ddpm_invert(
            self.backbone, latent, cond, timesteps=timesteps, guidance_scale=self.guidance_scale_inversion,
            generator=generator, steps_per_call=self.steps_per_call, callback=callback, progress=progress,
        )

    def sample(
        self, inverted: tuple[Tensor, Tensor], cond: Conditioning, timesteps: Tensor, *,
        callback: SamplerCallback | None, progress: bool,
    ) -> Tensor:
        x_t, noises = inverted
        return ddpm_sample(
            self.sampler, x_t, cond, timesteps=timesteps, noises=noises, guidance_scale=self.guidance_scale,
            callback=callback, progress=progress,
        )
