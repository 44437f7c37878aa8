"""DDIM and DDPM sampling and inversion through the :class:`~backbones.Backbone` interface.

Only ``backbone.predict_noise`` and ``backbone.alphas_cumprod`` are used, so every backbone
(AudioLDM2, the trained mel model, the analytic toy of the tests) samples the same way.

Noise levels follow diffusers' ``DDIMScheduler`` as AudioLDM2 configures it
(``timestep_spacing="leading"``, ``steps_offset=1``, ``set_alpha_to_one=False``): sampling walks
the timesteps downwards and its last step lands on the level ᾱ_0 of timestep 0; inversion starts
from that level and walks the same timesteps upwards. That clean end of the path is the
backbone's :attr:`~backbones.Backbone.final_alpha_cumprod`: ᾱ_0 for the AudioLDM family, 1 for
Stable Audio, whose timestep 0 is still noisy (σ_min = 0.3) and whose scheduler ends at σ = 0.

References:
    DDIM: Song, Meng & Ermon, "Denoising Diffusion Implicit Models", ICLR 2021, eq. 12 with η = 0,
    https://arxiv.org/abs/2010.02502
    DDIM inversion: the same paper, section 4.3 (the Euler step of the DDIM ODE) and section 5.4
    (encoding x_0 into x_T by running it backwards).
    DDPM steps: DDIM's eq. 12 with η = 1 (Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic
    Models", NeurIPS 2020, eq. 7, over the sampler's coarser steps).
    Edit-friendly DDPM inversion: Huberman-Spiegelglas, Kligerman & Michaeli, CVPR 2024,
    https://arxiv.org/abs/2304.06140
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from backbones import Backbone, Conditioning

from .editor import check_whole_number, prompt_list, seeded_generator

__all__ = [
    "SamplerState",
    "ddim_invert",
    "ddim_sample",
    "ddim_step",
    "ddim_timesteps",
    "ddpm_invert",
    "ddpm_sample",
    "ddpm_step_mean",
    "sample",
]


@dataclass(frozen=True, eq=False)  # holds tensors: == by identity (by field raised)
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


def check_strength(strength: float) -> None:
    """Refuse a strength that is not a real number in (0, 1] (a string, a bool, NaN)."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 < strength <= 1:
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")


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
        num_steps: number of denoising steps of the full schedule, a whole number in
            ``[1, num_train_timesteps]``.
        num_train_timesteps: ``T``, the backbone's training timesteps.
        strength: keep only the last (least noisy) ``int(num_steps · strength)`` steps of the
            schedule, as diffusers' image-to-image pipelines do (``get_timesteps``), but at least
            one, so that every strength > 0 edits: ``0.5`` of 50 steps is ``[481, 461, …, 1]``,
            0.5 of 5 steps keeps 2, 1e-6 of 50 the one step at ``[1]``. Like diffusers, the
            product is truncated as a float: 0.29 of 100 steps (28.999…) keeps 28.
        steps_offset: added to every timestep.

    Returns:
        a ``(max(1, int(num_steps · strength)),)`` int64 tensor, strictly decreasing, in
        ``[0, T)``.

    Example:
        >>> ddim_timesteps(5).tolist()
        [801, 601, 401, 201, 1]
        >>> ddim_timesteps(50, strength=0.5)[[0, -1]].tolist()
        [481, 1]
    """
    check_whole_number("num_steps", num_steps, 1, num_train_timesteps)
    check_strength(strength)
    check_whole_number("steps_offset", steps_offset, 0)
    num_steps, steps_offset = int(num_steps), int(steps_offset)
    ratio = num_train_timesteps // num_steps
    offset = min(steps_offset, num_train_timesteps - 1 - (num_steps - 1) * ratio)
    timesteps = torch.arange(num_steps - 1, -1, -1, dtype=torch.int64) * ratio + offset
    keep = max(1, int(num_steps * strength))
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
    inversion ᾱ' < ᾱ. DDPM's stochastic step (η = 1) is :func:`ddpm_step_mean`'s mean + σ z.

    Args:
        x: latents at level ᾱ, ``(B, ...)``.
        noise_pred: ε̂, ``(B, ...)``.
        alpha_bar, alpha_bar_next: ᾱ and ᾱ', ``(B,)``.
        clip: bounds of clean latents (low, high: they need not be symmetric); x̂_0 is clamped
            to them and ε̂ re-derived from the clamped x̂_0 (diffusers' ``clip_sample`` with
            ``use_clipped_model_output=True``; ``clip_sample`` alone keeps the raw ε̂), which keeps
            an imperfect model from diverging at high noise, where ε̂'s error is amplified by 1/√ᾱ.

    Returns:
        ``(x', x̂_0)``, both ``(B, ...)``.
    """
    a_next = alpha_bar_next.view(_per_row(x))
    denoised, noise_pred = _denoise(x, noise_pred, alpha_bar, clip)
    return a_next.sqrt() * denoised + (1 - a_next).sqrt() * noise_pred, denoised


def ddpm_step_mean(
    x: Tensor,
    noise_pred: Tensor,
    alpha_bar: Tensor,
    alpha_bar_next: Tensor,
    clip: tuple[float, float] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The mean and standard deviation of DDPM's step from level ᾱ down to ᾱ' > ᾱ along ε̂.

    DDIM's eq. 12 with η = 1 (the posterior q(x' | x, x̂_0) of DDPM, Ho et al., 2020, eq. 7, over
    the step from ᾱ to ᾱ'): σ² = (1 − ᾱ')/(1 − ᾱ) · (1 − ᾱ/ᾱ') and mean = √ᾱ' x̂_0 +
    √(1 − ᾱ' − σ²) ε̂; a step draws x' = mean + σ z, as diffusers' ``DDIMScheduler.step(eta=1)``.

    Args:
        x, noise_pred, alpha_bar, alpha_bar_next, clip: as :func:`ddim_step`.

    Returns:
        ``(mean, σ, x̂_0)``: ``(B, ...)``, ``(B, 1, …)`` (broadcasts over x), ``(B, ...)``.
    """
    if (alpha_bar_next <= alpha_bar).any():
        raise ValueError("a DDPM step lowers the noise: every alpha_bar_next must exceed its alpha_bar")
    return _ddpm_step_mean(x, noise_pred, alpha_bar, alpha_bar_next, clip)


def _ddpm_step_mean(
    x: Tensor,
    noise_pred: Tensor,
    alpha_bar: Tensor,
    alpha_bar_next: Tensor,
    clip: tuple[float, float] | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`ddpm_step_mean` for levels already checked (the samplers check their timesteps
    once, not with a device sync each step)."""
    a, a_next = alpha_bar.view(_per_row(x)), alpha_bar_next.view(_per_row(x))
    denoised, noise_pred = _denoise(x, noise_pred, alpha_bar, clip)
    variance = (1 - a_next) / (1 - a) * (1 - a / a_next)
    return a_next.sqrt() * denoised + (1 - a_next - variance).sqrt() * noise_pred, variance.sqrt(), denoised


def _per_row(x: Tensor) -> tuple[int, ...]:
    """The shape that broadcasts a ``(B,)`` tensor over ``x`` ``(B, ...)``."""
    return (-1,) + (1,) * (x.dim() - 1)


def _denoise(
    x: Tensor, noise_pred: Tensor, alpha_bar: Tensor, clip: tuple[float, float] | None
) -> tuple[Tensor, Tensor]:
    """(x̂_0, ε̂): x̂_0 = (x − √(1 − ᾱ) ε̂) / √ᾱ, clamped to ``clip`` with ε̂ re-derived from it."""
    a = alpha_bar.view(_per_row(x))
    denoised = (x - (1 - a).sqrt() * noise_pred) / a.sqrt()
    if clip is not None:
        denoised = denoised.clamp(*clip)
        noise_pred = (x - a.sqrt() * denoised) / (1 - a).sqrt()
    return denoised, noise_pred


def _check_timesteps(backbone: Backbone, timesteps: Tensor | Sequence[int]) -> Tensor:
    timesteps = torch.as_tensor(timesteps, dtype=torch.int64).flatten().cpu()
    if len(timesteps) == 0:
        raise ValueError("timesteps is empty: give at least one timestep")
    if not (timesteps[:-1] > timesteps[1:]).all():
        raise ValueError("timesteps must be strictly decreasing (see ddim_timesteps)")
    if timesteps[-1] < 0 or timesteps[0] >= backbone.num_train_timesteps:
        raise ValueError(f"timesteps must lie in [0, {backbone.num_train_timesteps})")
    return timesteps


def _check_ddpm_timesteps(backbone: Backbone, timesteps: Tensor | Sequence[int], what: str) -> Tensor:
    """:func:`_check_timesteps`, and none at 0: a DDPM step must lower the noise, and the last
    one lands on timestep 0's level."""
    timesteps = _check_timesteps(backbone, timesteps)
    if timesteps[-1] == 0:
        raise ValueError(f"{what} needs timesteps above 0 (timestep 0 is the clean latent's level)")
    return timesteps


def _levels(backbone: Backbone, path: Tensor) -> Tensor:
    """ᾱ of each timestep of a sampler's ``path``, ``(len(path),)``, its timestep 0 (only ever
    the clean end: the samplers' own timesteps are above it or end there) at the backbone's
    :attr:`~backbones.Backbone.final_alpha_cumprod`."""
    table = backbone.alphas_cumprod
    path = path.to(table.device)
    return torch.where(path == 0, backbone.final_alpha_cumprod.to(table), table[path])


def _map_scale(sigma: Tensor) -> Tensor:
    """What a DDPM step's noise map is multiplied by: σ, or 1 at a deterministic step (σ = 0,
    the last step onto a clean end at ᾱ = 1), whose map is then the residual itself."""
    return torch.where(sigma > 0, sigma, torch.ones_like(sigma))


def _walk(
    backbone: Backbone,
    x: Tensor,
    cond: Conditioning,
    path: Tensor,
    guidance_scale: float,
    callback: SamplerCallback | None,
    progress: bool,
    desc: str,
    noises: Tensor | None = None,
) -> Tensor:
    """DDIM steps from the level of ``path[i]`` to that of ``path[i + 1]``, with ε̂(x, path[i]);
    DDPM steps with the noise maps ``noises[i]`` where given."""
    x = x.detach().float()
    batch = x.shape[0]
    alpha_bar = _levels(backbone, path).to(x.device)
    # clamp x̂_0 to the backbone's latent range in both directions: inversion then integrates the
    # same (clamped) ODE as sampling, backwards, and a round trip converges with more steps; with
    # the clamp on one side only, it stalled at 34 % relative error on the shipped mel model
    clip = backbone.latent_range
    for i in tqdm(range(len(path) - 1), desc=desc, disable=not progress, leave=False):
        t = torch.full((batch,), int(path[i]), dtype=torch.int64, device=x.device)
        noise_pred = backbone.predict_noise(x, t, cond, guidance_scale).float()
        levels = alpha_bar[i].expand(batch), alpha_bar[i + 1].expand(batch)
        if noises is None:
            x, denoised = ddim_step(x, noise_pred, *levels, clip)
        else:
            mean, sigma, denoised = _ddpm_step_mean(x, noise_pred, *levels, clip)
            x = mean + _map_scale(sigma) * noises[i]
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

    Step i evaluates ε̂(x, τ_i) and moves x to the level of τ_{i+1}; the last step lands on the
    backbone's :attr:`~backbones.Backbone.final_alpha_cumprod`: ᾱ_0, the level of timestep 0
    (diffusers' ``set_alpha_to_one=False``, as AudioLDM2 configures it), or 1 (Stable Audio).

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

    The levels of :func:`ddim_sample` walked upwards, 0 → τ_{K−1} → … → τ_0 (x0 sits at the
    backbone's :attr:`~backbones.Backbone.final_alpha_cumprod`), each step the same DDIM step
    with the noise predicted at the current point and its own timestep, ε̂(x, τ_current): the
    Euler step of the DDIM ODE run backwards (DDIM, sections 4.3 and 5.4). Sampling back
    evaluates ε̂ at the other end of each step, so a round trip is exact only where ε̂ is
    constant along the path (as for a point-mass data distribution); elsewhere this is the inversion error of the SteerMusic paper's Figure 2,
    and it shrinks with more steps. Where the backbone has a :attr:`~backbones.Backbone.latent_range`,
    x̂_0 is clamped to it here as in :func:`ddim_sample` (and in :func:`ddpm_invert`), so that
    both directions follow the same ODE: on the shipped mel model, a 1 s clip inverted and
    sampled back with the same prompt at guidance 1 comes back with a relative error of 0.11,
    0.050, 0.027 and 0.014 at 20, 50, 100 and 200 steps (0.33 to 0.34 at all of these when the
    inversion did not clamp).

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
def ddpm_invert(
    backbone: Backbone,
    x0: Tensor,
    cond: Conditioning,
    *,
    timesteps: Tensor | Sequence[int],
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    steps_per_call: int = 1,
    callback: SamplerCallback | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Edit-friendly DDPM inversion: the noise maps with which :func:`ddpm_sample` returns x0.

    Huberman-Spiegelglas, Kligerman & Michaeli, "An Edit Friendly DDPM Noise Space: Inversion and
    Manipulations", CVPR 2024, https://arxiv.org/abs/2304.06140 (section 3), the inversion of
    ZETA's text-based audio editing (Manor & Michaeli, ICML 2024). Each level of the path
    τ_0 > … > τ_{K−1} gets its own noising of x0, drawn independently (not a Markov chain):
    x_i = √ᾱ_{τ_i} x0 + √(1 − ᾱ_{τ_i}) ε_i, and x_K = x0 at the clean end
    (:attr:`~backbones.Backbone.final_alpha_cumprod`). Step i's
    noise map is then the z that takes x_i to x_{i+1} by a DDPM step along the guided
    ε̂(x_i, τ_i): z_i = (x_{i+1} − mean_i) / σ_i (:func:`ddpm_step_mean`). Sampling with these
    maps, the same prompt and guidance retraces x_0 … x_K exactly; another prompt changes the
    means but keeps the maps, which carry much of x0's structure.

    Unlike the reference code, the last step's map is kept (that code zeroes it, leaving the
    round trip off by that step's σ z), so that the round trip is exact. Where the clean end is
    ᾱ = 1 (Stable Audio) the last step has σ = 0: its map is then the residual x0 − mean itself,
    which :func:`ddpm_sample` adds as it is, so the round trip stays exact.

    Args:
        backbone: the model.
        x0: clean latents, ``(B, ...)``.
        cond: conditioning of batch size ``B`` (the source prompt when editing).
        timesteps: strictly decreasing integer timesteps above 0, as given to :func:`ddpm_sample`.
        guidance_scale: classifier-free guidance of every prediction.
        generator: draws the noisings ε_i (on ``x0``'s device), ``(K, 1, ...)`` in one call,
            each ε_i for one clip and added to every row of the batch: a row's maps are those it
            gets alone from a generator in the same state (up to the rounding of batched
            kernels), wherever it sits in the batch; at ``B = 1`` the draws are those of
            ``torch.randn((K, *x0.shape), generator=generator)``.
        steps_per_call: steps whose predictions one denoiser call makes. They do not depend on
            one another (every x_i is drawn up front), so k steps run as one batch of k·B rows:
            fewer, larger calls (faster where the calls are small for the device, as at batch 1
            on a GPU) for k times the activation memory. The maps agree with one step a call up
            to the rounding of batched kernels.
        callback: called with a :class:`SamplerState` after every step, in sampling order
            (``latent`` is x_{i+1}, where the step's noise map takes x_i).
        progress: show a progress bar.

    Returns:
        ``(x_T, noises)``: the latents at the level of ``timesteps[0]``, ``(B, ...)``, and the
        noise maps, ``(K, B, ...)``, both float32.
    """
    timesteps = _check_ddpm_timesteps(backbone, timesteps, "DDPM inversion")
    check_whole_number("steps_per_call", steps_per_call, 1)
    x0 = x0.detach().float()
    path = torch.cat([timesteps, timesteps.new_zeros(1)])
    alpha_bar = _levels(backbone, path).to(x0.device)
    levels = alpha_bar[:-1].view(-1, *[1] * x0.dim())
    # drawn for one clip and given to each: a clip of a batch is inverted as it is alone
    draws = torch.randn((len(timesteps), 1, *x0.shape[1:]), generator=generator, device=x0.device)
    xs = torch.cat([levels.sqrt() * x0 + (1 - levels).sqrt() * draws, x0[None]])
    noises = torch.empty_like(xs[:-1])
    batch = x0.shape[0]
    clip = backbone.latent_range
    starts = range(0, len(timesteps), steps_per_call)
    for start in tqdm(starts, desc="inverting", disable=not progress, leave=False):
        steps = range(start, min(start + steps_per_call, len(timesteps)))
        t = path[start : steps.stop].to(x0.device).repeat_interleave(batch)
        rows = Conditioning.cat([cond] * len(steps))
        noise_preds = backbone.predict_noise(xs[start : steps.stop].flatten(0, 1), t, rows, guidance_scale)
        for i, noise_pred in zip(steps, noise_preds.float().unflatten(0, (len(steps), batch)), strict=True):
            mean, sigma, denoised = _ddpm_step_mean(
                xs[i], noise_pred, alpha_bar[i].expand(batch), alpha_bar[i + 1].expand(batch), clip
            )
            noises[i] = (xs[i + 1] - mean) / _map_scale(sigma)
            if callback is not None:
                step_t = t[(i - start) * batch : (i - start + 1) * batch]
                callback(SamplerState(step=i, t=step_t, latent=xs[i + 1], denoised=denoised, noise_pred=noise_pred))
    return xs[0], noises


@torch.no_grad()
def ddpm_sample(
    backbone: Backbone,
    x_t: Tensor,
    cond: Conditioning,
    *,
    timesteps: Tensor | Sequence[int],
    noises: Tensor,
    guidance_scale: float = 1.0,
    callback: SamplerCallback | None = None,
    progress: bool = False,
) -> Tensor:
    """Denoise ``x_t`` from the level of ``timesteps[0]`` with DDPM steps and the given noise maps.

    Step i evaluates ε̂(x, τ_i) and moves x to the level of τ_{i+1} (after the last, the
    backbone's :attr:`~backbones.Backbone.final_alpha_cumprod`):
    x ← mean_i + σ_i · noises[i] (:func:`ddpm_step_mean`). With the maps of
    :func:`ddpm_invert` this is the reverse process of DDPM-inversion editing.

    Args:
        backbone: the model.
        x_t: latents at the noise level of ``timesteps[0]``, ``(B, ...)``.
        cond: conditioning of batch size ``B``.
        timesteps: strictly decreasing integer timesteps above 0, e.g. :func:`ddim_timesteps`.
        noises: one noise map per step, ``(K, B, ...)`` for K timesteps (a step with σ = 0 adds
            its map as it is: :func:`ddpm_invert`).
        guidance_scale: classifier-free guidance of every prediction.
        callback: called with a :class:`SamplerState` after every step.
        progress: show a progress bar.

    Returns:
        the denoised latents, ``(B, ...)`` float32.
    """
    timesteps = _check_ddpm_timesteps(backbone, timesteps, "DDPM sampling")
    if noises.shape != (len(timesteps), *x_t.shape):
        raise ValueError(
            f"noises has shape {tuple(noises.shape)}; {len(timesteps)} steps of latents "
            f"{tuple(x_t.shape)} need {(len(timesteps), *x_t.shape)} (one map per step, see ddpm_invert)"
        )
    path = torch.cat([timesteps, timesteps.new_zeros(1)])
    return _walk(backbone, x_t, cond, path, guidance_scale, callback, progress, "sampling", noises.float())


def _latent_shape(backbone: Backbone, shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` as a tuple, refused with what to give where the backbone's denoiser could not take
    latents of it (:attr:`~backbones.Backbone.latent_dims`, :attr:`~backbones.Backbone.latent_channels`;
    the denoiser's own error was a convolution's about its weight)."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise TypeError(f"shape must be a sequence of whole numbers (B, C, T) or (B, C, T, F), got {shape!r}")
    shape = tuple(shape)
    if any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1 for n in shape):
        raise ValueError(f"shape must hold positive whole numbers (B, C, T) or (B, C, T, F), got {shape}")
    name = type(backbone).__name__
    dims = backbone.latent_dims
    if len(shape) not in (3, 4) or (dims is not None and len(shape) != dims):
        wanted = {3: "3-D latents (B, C, T)", 4: "4-D latents (B, C, T, F)"}.get(dims, "latents (B, C, T) or (B, C, T, F)")
        hint = f", e.g. {(1, *shape)}" if dims is not None and len(shape) == dims - 1 else ""
        raise ValueError(
            f"shape {shape} has {len(shape)} axes, but {name}'s denoiser takes {wanted}: "
            f"give the batch size first{hint}"
        )
    channels = backbone.latent_channels
    if channels is not None and shape[1] != channels:
        raise ValueError(
            f"shape {shape} has {shape[1]} channels (axis 1), but {name}'s denoiser takes {channels}: "
            f"give shape=(B, {channels}, ...)"
        )
    return tuple(int(n) for n in shape)


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
        shape: the latent shape ``(B, C, T, F)`` or ``(B, C, T)``, as many axes and channels as
            the backbone's denoiser takes, e.g. ``(1, 8, 256, 16)`` for 10.24 s of AudioLDM2.
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
    shape = _latent_shape(backbone, shape)
    timesteps = ddim_timesteps(steps, num_train_timesteps=backbone.num_train_timesteps)
    cond = backbone.encode_prompt(prompt_list(prompt, shape[0], "target"))
    generator = seeded_generator(seed, backbone.device)
    noise = torch.randn(shape, generator=generator, device=backbone.device)
    return ddim_sample(
        backbone,
        noise,
        cond,
        timesteps=timesteps,
        guidance_scale=guidance_scale,
        callback=callback,
        progress=progress,
    )
