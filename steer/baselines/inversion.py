"""What the inversion editors share: invert the source latent with the source prompt over the
last ``strength`` of a ``steps``-step schedule, then sample back down with the target prompt
(with :attr:`InversionEditor.sampler`: the backbone, or a concept's personalised model)."""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

from torch import Tensor

from backbones import Backbone, Conditioning

from ..editor import EditResult, LatentEditor, Prompts, check_callback, check_latent, check_seed, prompt_list
from ..sampling import SamplerCallback, SamplerState, ddim_timesteps
from .settings import DefaultStrength, check_settings


class InversionEditor(DefaultStrength, LatentEditor):
    """Edit by inverting with the source prompt and sampling with the target prompt.

    Subclasses implement :meth:`invert` and :meth:`sample` and set :attr:`default_strength`;
    ``edit_latent`` encodes the prompts, builds the timesteps
    (:func:`~steer.sampling.ddim_timesteps`) and runs the two, with one callback over both: the
    inversion's steps first, then the sampling's, numbered on. The defaults are those of ZETA's
    public code on AudioLDM2 (Manor & Michaeli, ICML 2024,
    https://github.com/HilaManor/AudioEditingCode, ``main_run.py``), the reference
    implementation of both inversion baselines for text-based music editing: 200 steps (also the
    default of diffusers' ``AudioLDM2Pipeline``), guidance 3 while inverting with the source
    prompt and 12 while sampling with the target.

    Args:
        backbone: the diffusion model.
        steps: steps of the full schedule.
        strength: fraction of the schedule that is inverted and re-sampled, in (0, 1]; ``None``
            for the method's :attr:`default_strength`.
        guidance_scale_inversion: classifier-free guidance of the source prompt while inverting.
        guidance_scale: classifier-free guidance of the target prompt while sampling.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        steps: int = 200,
        strength: float | None = None,
        guidance_scale_inversion: float = 3.0,
        guidance_scale: float = 12.0,
    ) -> None:
        self.backbone = backbone
        self.steps = steps
        self.strength = strength
        self.guidance_scale_inversion = guidance_scale_inversion
        self.guidance_scale = guidance_scale
        self.check_settings()

    def check_settings(self) -> None:
        """Refuse settings of the wrong type or out of range (:func:`~steer.baselines.settings.check_settings`):
        at construction, and at each edit, since they may be set between edits."""
        check_settings(
            self.backbone,
            steps=self.steps,
            strength=self.strength,
            guidance_scale_inversion=self.guidance_scale_inversion,
            guidance_scale=self.guidance_scale,
        )

    @property
    def sampler(self) -> Backbone:
        """The model that encodes the target prompt and samples with it: the backbone (a
        personalised editor samples with its concept's model, :class:`DreamSoundEditing`)."""
        return self.backbone

    def check_targets(self, targets: list[str]) -> None:
        """Refuse target prompts the :attr:`sampler` cannot edit towards (every one here; a
        personalised editor refuses one without its concept's token)."""

    @abstractmethod
    def invert(
        self, latent: Tensor, cond: Conditioning, timesteps: Tensor, *, seed: int,
        callback: SamplerCallback | None, progress: bool,
    ) -> Any:
        """Invert ``latent`` ``(B, ...)`` with the source conditioning up to ``timesteps[0]``;
        returns what :meth:`sample` starts from."""

    @abstractmethod
    def sample(
        self, inverted: Any, cond: Conditioning, timesteps: Tensor, *,
        callback: SamplerCallback | None, progress: bool,
    ) -> Tensor:
        """Sample the edited latents ``(B, ...)`` from :meth:`invert`'s result with the target
        conditioning."""

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
        """Edit a latent ``(B, C, T[, F])``; see :meth:`edit`. ``audio`` is left ``None``.

        The settings (:meth:`check_settings`), the latent, the seed and the target prompts
        (:meth:`check_targets`) are checked before any step (a deterministic method, which does
        not use the seed, refuses a bad one too)."""
        backbone = self.backbone
        self.check_settings()
        check_latent(latent, backbone)
        check_seed(seed)
        check_callback(callback)
        batch = latent.shape[0]
        source_cond = backbone.encode_prompt(prompt_list(source, batch, "source"))
        targets = prompt_list(target, batch, "target")
        self.check_targets(targets)
        target_cond = self.sampler.encode_prompt(targets)
        timesteps = ddim_timesteps(
            self.steps, num_train_timesteps=backbone.num_train_timesteps, strength=self.strength
        )
        inverted = self.invert(latent, source_cond, timesteps, seed=seed, callback=callback, progress=progress)
        if callback is not None:
            user_callback = callback

            def callback(state: SamplerState) -> None:
                user_callback(dataclasses.replace(state, step=state.step + len(timesteps)))

        edited = self.sample(inverted, target_cond, timesteps, callback=callback, progress=progress)
        return EditResult(latent=edited, audio=None, sample_rate=backbone.sample_rate)
