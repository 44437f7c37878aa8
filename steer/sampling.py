"""Deterministic DDIM sampling and inversion through the :class:`~backbones.Backbone` interface.

Only ``backbone.predict_noise`` and ``backbone.alphas_cumprod`` are used, so every backbone
(AudioLDM2, the trained mel model, the analytic toy of the tests) samples the same way.

Noise levels follow diffusers' ``DDIMScheduler`` as AudioLDM2 configures it
(``timestep_spacing="leading"``, ``steps_offset=1``, ``set_alpha_to_one=False``): sampling walks
the timesteps downwards and its last step lands on the level ᾱ_0 of timestep 0; inversion starts
from that level and walks the same timesteps upwards.

References:
    DDIM: Song, Meng & Ermon, "Denoising Diffusion Implicit Models", ICLR 2021, eq. 12 with η = 0,
    https://arxiv.org/abs/2010.02502
    DDIM inversion: the same paper, section 4.3 (the Euler step of the DDIM ODE) and section 5.4
    (encoding x_0 into x_T by running it backwards).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from backbones import Backbone, Conditioning

from .editor import prompt_list

__all__ = ["SamplerState", "ddim_invert", "ddim_sample", "ddim_step", "ddim_timesteps", "sample"]


@dataclass(frozen=True)
class SamplerState:
    """What a sampler callback sees after each step.

    Attributes:
        step: 0-based step index.
        t: the timestep the denoiser was evaluated at, ``(B,)``.
        latent: x after the step, ``(B, ...)``.
        denoised: the x̂_0 predicted at this step, ``(B, ...)``.
        noise_pred: the guided ε̂ used by this step, ``(B, ...)``.
    """

    step: int
    t: Tensor
    latent: Tensor
    denoised: Tensor
    noise_pred: Tensor


SamplerCallback = Callable[[SamplerState], None]


def ddim_timesteps(
    num_steps: int,
    *,
    num_train_timesteps: int = 1000,
    strength: float = 1.0,
    steps_offset: int = 1,
) -> Tensor:
    """Descending integer timesteps of a ``num_steps`` DDIM schedule (diffusers' "leading" spacing).

    The timesteps are ``k · (T // num_steps) + steps_offset`` for ``k = num_steps − 1 … 0``, as
    diffusers' ``DDIMScheduler.set_timesteps`` gives them (AudioLDM2 uses ``steps_offset=1``:
    ``[981, 961, …, 1]`` for 50 steps). Where the offset would push the top timestep out of
    range (diffusers then indexes ``alphas_cumprod[T]``), it is lowered just enough to fit.

    Args:
        num_steps: number of denoising steps of the full schedule, ``1 … num_train_timesteps``.
        num_train_timesteps: ``T``, the backbone's training timesteps.
        strength: keep only the last (least noisy) ``strength`` fraction of the schedule, at least
            one step, as SDEdit and diffusers' image-to-image pipelines do: ``0.5`` of 50 steps is
            ``[481, 461, …, 1]``.
        steps_offset: added to every timestep.

    Returns:
        a ``(max(1, round(num_steps · strength)),)`` int64 tensor, strictly decreasing, in
        ``[0, T)``.

    Example:
        >>> ddim_timesteps(5).tolist()
        [801, 601, 401, 201, 1]
        >>> ddim_timesteps(50, strength=0.5)[[0, -1]].tolist()
        [481, 1]
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"need 1 <= num_steps <= {num_train_timesteps}, got {num_steps}")
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if steps_offset < 0:
        raise ValueError(f"steps_offset must be >= 0, got {steps_offset}")
    ratio = num_train_timesteps // num_steps
    offset = min(steps_offset, num_train_timesteps - 1 - (num_steps - 1) * ratio)
    timesteps = torch.arange(num_steps - 1, -1, -1, dtype=torch.int64) * ratio + offset
    # round() guards against 0.29 * 100 == 28.999…; at least one step so that strength > 0 edits.
    keep = max(1, min(num_steps, round(num_steps * strength)))
    return timesteps[num_steps - keep :]


def ddim_step(
    x: Tensor,
    noise_pred: Tensor,
    alpha_bar: Tensor,
    alpha_bar_next: Tensor,
    clip: tuple[float, float] | None = None,
) -> tuple[Tensor, Tensor]:
    """Move x from noise level ᾱ to ᾱ' along ε̂ (DDIM, eq. 12 with η = 0), in either direction.

    x̂_0 = (x − √(1 − ᾱ) ε̂) / √ᾱ, then x' = √ᾱ' x̂_0 + √(1 − ᾱ') ε̂. Sampling takes ᾱ' > ᾱ,
    inversion ᾱ' < ᾱ.

    Args:
        x: latents at level ᾱ, ``(B, ...)``.
        noise_pred: ε̂, ``(B, ...)``.
        alpha_bar, alpha_bar_next: ᾱ and ᾱ', ``(B,)``.
        clip: bounds of clean latents; x̂_0 is clamped to them and ε̂ re-derived from the clamped
            x̂_0 (diffusers' ``clip_sample``), which keeps an imperfect model from diverging at
            high noise, where ε̂'s error is amplified by 1/√ᾱ.

    Returns:
        ``(x', x̂_0)``, both ``(B, ...)``.
    """
    shape = (-1,) + (1,) * (x.dim() - 1)
    a, a_next = alpha_bar.view(shape), alpha_bar_next.view(shape)
    denoised = (x - (1 - a).sqrt() * noise_pred) / a.sqrt()
    if clip is not None:
        denoised = denoised.clamp(*clip)
        noise_pred = (x - a.sqrt() * denoised) / (1 - a).sqrt()
    return a_next.sqrt() * denoised + (1 - a_next).sqrt() * noise_pred, denoised


def _check_timesteps(backbone: Backbone, timesteps: Tensor | Sequence[int]) -> Tensor:
    timesteps = torch.as_tensor(timesteps, dtype=torch.int64).flatten().cpu()
    if len(timesteps) == 0:
        raise ValueError("timesteps is empty: give at least one timestep")
    if not (timesteps[:-1] > timesteps[1:]).all():
        raise ValueError("timesteps must be strictly decreasing (see ddim_timesteps)")
    if timesteps[-1] < 0 or timesteps[0] >= backbone.num_train_timesteps:
        raise ValueError(f"timesteps must lie in [0, {backbone.num_train_timesteps})")
    return timesteps


def _walk(
    backbone: Backbone,
    x: Tensor,
    cond: Conditioning,
    path: Tensor,
    guidance_scale: float,
    callback: SamplerCallback | None,
    progress: bool,
    desc: str,
) -> Tensor:
    """DDIM steps from the level of ``path[i]`` to that of ``path[i + 1]``, with ε̂(x, path[i])."""
    x = x.detach().float()
    batch = x.shape[0]
    alpha_bar = backbone.alphas_cumprod[path.to(backbone.alphas_cumprod.device)].to(x.device)
    # clamp x̂_0 to the backbone's latent range when denoising (not when inverting)
    clip = backbone.latent_range if path[-1] < path[0] else None
    for i in tqdm(range(len(path) - 1), desc=desc, disable=not progress, leave=False):
        t = torch.full((batch,), int(path[i]), dtype=torch.int64, device=x.device)
        noise_pred = backbone.predict_noise(x, t, cond, guidance_scale).float()
        x, denoised = ddim_step(
            x, noise_pred, alpha_bar[i].expand(batch), alpha_bar[i + 1].expand(batch), clip
        )
        if callback is not None:
            callback(SamplerState(step=i, t=t, latent=x, denoised=denoised, noise_pred=noise_pred))
    return x


@torch.no_grad()
def ddim_sample(
    backbone: Backbone,
    x_t: Tensor,
    cond: Conditioning,
    *,
    timesteps: Tensor | Sequence[int],
    guidance_scale: float = 1.0,
    callback: SamplerCallback | None = None,
    progress: bool = False,
) -> Tensor:
    """Denoise ``x_t`` from the level of ``timesteps[0]`` with deterministic DDIM.

    Step i evaluates ε̂(x, τ_i) and moves x to the level of τ_{i+1}; the last step lands on ᾱ_0,
    the level of timestep 0 (diffusers' ``set_alpha_to_one=False``, as AudioLDM2 configures it).

    Args:
        backbone: the model.
        x_t: latents at the noise level of ``timesteps[0]``, ``(B, ...)``.
        cond: conditioning of batch size ``B``.
        timesteps: strictly decreasing integer timesteps, e.g. :func:`ddim_timesteps`.
        guidance_scale: classifier-free guidance of every prediction.
        callback: called with a :class:`SamplerState` after every step.
        progress: show a progress bar.

    Returns:
        the denoised latents, ``(B, ...)`` float32.
    """
    timesteps = _check_timesteps(backbone, timesteps)
    path = torch.cat([timesteps, timesteps.new_zeros(1)])
    return _walk(backbone, x_t, cond, path, guidance_scale, callback, progress, "sampling")


@torch.no_grad()
def ddim_invert(
    backbone: Backbone,
    x0: Tensor,
    cond: Conditioning,
    *,
    timesteps: Tensor | Sequence[int],
    guidance_scale: float = 1.0,
    callback: SamplerCallback | None = None,
    progress: bool = False,
) -> Tensor:
    """Run deterministic DDIM backwards, from clean latents up to the level of ``timesteps[0]``.

    The levels of :func:`ddim_sample` walked upwards, 0 → τ_{K−1} → … → τ_0 (x0 sits at ᾱ_0, the
    level of timestep 0), each step the same DDIM step with the noise predicted at the current
    point and its own timestep, ε̂(x, τ_current): the Euler step of the DDIM ODE run backwards
    (DDIM, sections 4.3 and 5.4). Sampling back evaluates ε̂ at the other end of each step, so
    a round trip is exact only where ε̂ is constant along the path (as for a point-mass data
    distribution); elsewhere this is the inversion error of the SteerMusic paper's Figure 2,
    and it shrinks with more steps.

    diffusers' ``DDIMInverseScheduler`` and prompt-to-prompt's null-text inversion code
    (Mokady et al., 2023) instead evaluate ε̂(x, τ_next), the timestep of the level being stepped
    to: the same approximation with the timestep one step ahead of x, which leaves a round-trip
    error even where ε̂ is constant along the path.

    Args:
        backbone: the model.
        x0: clean latents, ``(B, ...)``.
        cond: conditioning of batch size ``B`` (the source prompt when editing).
        timesteps: strictly decreasing integer timesteps, as given to :func:`ddim_sample`.
        guidance_scale: classifier-free guidance of every prediction (1 inverts most faithfully).
        callback: called with a :class:`SamplerState` after every step (``t`` is the timestep the
            denoiser saw: 0 first).
        progress: show a progress bar.

    Returns:
        ``x_T``, the latents at the level of ``timesteps[0]``, ``(B, ...)`` float32; sampling from
        it with :func:`ddim_sample` and the same timesteps approximately returns ``x0``.
    """
    timesteps = _check_timesteps(backbone, timesteps)
    path = torch.cat([timesteps, timesteps.new_zeros(1)]).flip(0)
    return _walk(backbone, x0, cond, path, guidance_scale, callback, progress, "inverting")


@torch.no_grad()
def sample(
    backbone: Backbone,
    prompt: str | Sequence[str],
    *,
    shape: Sequence[int],
    steps: int = 50,
    guidance_scale: float = 3.0,
    seed: int = 0,
    callback: SamplerCallback | None = None,
    progress: bool = False,
) -> Tensor:
    """Generate latents for text prompts with DDIM from seeded Gaussian noise (text-to-audio).

    Args:
        backbone: the model.
        prompt: one prompt for the whole batch, or one per row.
        shape: the latent shape ``(B, ...)``, e.g. ``(1, 8, 256, 16)`` for 10.24 s of AudioLDM2.
        steps: DDIM steps (diffusers' DDIM default, 50).
        guidance_scale: classifier-free guidance.
        seed: seeds the initial noise: the same seed gives the same latents.
        callback: called with a :class:`SamplerState` after every step.
        progress: show a progress bar.

    Returns:
        latents of ``shape``, float32; ``backbone.decode_audio`` turns them into audio.

    Example:
        >>> from backbones import load_backbone
        >>> backbone = load_backbone("tiny")  # random weights: a shape check, not music
        >>> sample(backbone, "a recording of a flute", shape=(1, 8, 16, 16), steps=2).shape
        torch.Size([1, 8, 16, 16])
    """
    shape = tuple(shape)
    cond = backbone.encode_prompt(prompt_list(prompt, shape[0], "target"))
    generator = torch.Generator(device=backbone.device).manual_seed(seed)
    noise = torch.randn(shape, generator=generator, device=backbone.device)
    timesteps = ddim_timesteps(steps, num_train_timesteps=backbone.num_train_timesteps)
    return ddim_sample(
        backbone,
        noise,
        cond,
        timesteps=timesteps,
        guidance_scale=guidance_scale,
        callback=callback,
        progress=progress,
    )
