"""SDEdit (Meng et al., "SDEdit: Guided Image Synthesis and Editing with Stochastic Differential
Equations", ICLR 2022, https://arxiv.org/abs/2108.01073): noise the source to an intermediate
timestep, then denoise it with the target prompt, here with deterministic DDIM.

A baseline of SteerMusic's comparison (Niu et al., section 5.3, Table 1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from backbones import Backbone

from ..editor import EditResult, LatentEditor, Prompts, check_callback, check_latent, check_seed, prompt_list, seeded_generator
from ..sampling import SamplerState, ddim_sample, ddim_timesteps
from .settings import DefaultStrength, check_settings


class SDEdit(DefaultStrength, LatentEditor):
    """Edit by partial noising and guided denoising.

    The source latent is noised with seeded ε to the first timestep of the last ``strength``
    fraction of a ``steps``-step DDIM schedule, then denoised over those timesteps with the target
    prompt. ε is drawn for one clip and added to every clip of a batch, so that a clip is edited
    as it is alone with the same seed (up to the rounding of batched kernels), wherever it sits
    in the batch. The source prompt is not used (SDEdit only knows the target); it is still
    validated, so that every editor takes the same arguments.

    SteerMusic's comparison runs this baseline on AudioLDM2 but lists no settings, so the defaults
    are those of ZETA's public code (Manor & Michaeli, ICML 2024,
    https://github.com/HilaManor/AudioEditingCode, ``main_run_sdedit.py``), the reference
    implementation of SDEdit on AudioLDM2 for text-based music editing: 200 steps (also the
    default of diffusers' ``AudioLDM2Pipeline``), the reverse process started at step 100 of 200
    (``strength=0.5``), target guidance 12. ZETA denoises with DDPM (η = 1); this class uses DDIM
    (η = 0), so that the seed fixes only the noise added to the source.

    Args:
        backbone: the diffusion model.
        strength: fraction of the schedule that is re-generated, in (0, 1]: near 0 returns the
            source, 1 starts from the schedule's first timestep and forgets it: (almost) pure
            noise with enough steps (diffusers' "leading" spacing starts at
            ``1 + (steps − 1) · ⌊1000 / steps⌋``: t = 1 for 1 step, 501 for 2, 901 for 10);
            ``None`` for :attr:`default_strength`, 0.5.
        steps: DDIM steps of the full schedule (``int(steps · strength)``, at least one, are
            run: :func:`~steer.sampling.ddim_timesteps`).
        guidance_scale: classifier-free guidance of the target prompt.

    Example:
        >>> import torch
        >>> from backbones import load_backbone
        >>> from steer import Audio
        >>> editor = SDEdit(load_backbone("tiny"), steps=4)  # random weights: a shape check
        >>> clip = Audio(torch.randn(1, 16000) * 0.1, 16000)
        >>> editor.edit(clip, source="a piano melody", target="a violin melody").audio.shape
        torch.Size([1, 16000])
    """

    default_strength = 0.5

    def __init__(
        self,
        backbone: Backbone,
        *,
        strength: float | None = None,
        steps: int = 200,
        guidance_scale: float = 12.0,
    ) -> None:
        self.backbone = backbone
        self.strength = strength
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.check_settings()

    def check_settings(self) -> None:
        """Refuse settings of the wrong type or out of range (:func:`~steer.baselines.settings.check_settings`):
        at construction, and at each edit, since they may be set between edits."""
        check_settings(self.backbone, steps=self.steps, strength=self.strength, guidance_scale=self.guidance_scale)

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
        """Edit a latent ``(B, C, T[, F])``; see :meth:`edit`. ``audio`` is left ``None``."""
        backbone = self.backbone
        self.check_settings()
        check_latent(latent, backbone)
        check_seed(seed)
        check_callback(callback)
        batch = latent.shape[0]
        prompt_list(source, batch, "source")
        cond = backbone.encode_prompt(prompt_list(target, batch, "target"))
        x0 = latent.detach().float()
        timesteps = ddim_timesteps(
            self.steps, num_train_timesteps=backbone.num_train_timesteps, strength=self.strength
        )
        generator = seeded_generator(seed, x0.device)
        # drawn for one clip and given to each: a clip of a batch is edited as it is alone
        noise = torch.randn((1, *x0.shape[1:]), generator=generator, device=x0.device).expand(x0.shape)
        x_t = backbone.add_noise(x0, noise, timesteps[:1].to(x0.device).expand(batch))
        edited = ddim_sample(
            backbone,
            x_t,
            cond,
            timesteps=timesteps,
            guidance_scale=self.guidance_scale,
            callback=callback,
            progress=progress,
        )
        return EditResult(latent=edited, audio=None, sample_rate=backbone.sample_rate)
