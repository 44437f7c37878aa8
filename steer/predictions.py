"""Evaluate the noise predictions that losses request, in as few denoiser calls as possible."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from backbones import Backbone, Conditioning
from losses import NoiseRequest


def unique_requests(requests: Iterable[NoiseRequest]) -> list[NoiseRequest]:
    """Requests without duplicates, in first-seen order."""
    return list(dict.fromkeys(requests))


@torch.no_grad()
def evaluate_requests(
    requests: Iterable[NoiseRequest],
    *,
    models: Mapping[str, Backbone],
    latents: Mapping[str, Tensor],
    prompts: Mapping[str, Conditioning],
    t: Tensor,
    batched: bool = True,
) -> dict[NoiseRequest, Tensor]:
    """Guided noise predictions for each distinct request.

    Args:
        requests: what the losses need (duplicates are evaluated once).
        models: backbone by model name.
        latents: noisy latent by role (``"edit"``: x_t, ``"source"``: x_src_t), each ``(B, ...)``.
        prompts: conditioning by prompt role, each of batch size ``B``.
        t: timesteps ``(B,)``.
        batched: evaluate all requests of a model in one denoiser call (classifier-free guidance,
            every latent and every prompt stacked along the batch), else one call per request.

    Returns:
        ε̂ for each request, ``(B, ...)``.
    """
    requests = unique_requests(requests)
    if not batched:
        return {
            r: models[r.model].predict_noise(latents[r.latent], t, prompts[r.prompt], r.guidance_scale)
            for r in requests
        }
    out: dict[NoiseRequest, Tensor] = {}
    for model in dict.fromkeys(r.model for r in requests):
        group = [r for r in requests if r.model == model]
        batch = len(t)
        scales = {r.guidance_scale for r in group}
        guidance: float | Tensor = (
            scales.pop()
            if len(scales) == 1
            else torch.tensor([r.guidance_scale for r in group], device=t.device).repeat_interleave(batch)
        )
        eps = models[model].predict_noise(
            torch.cat([latents[r.latent] for r in group]),
            t.repeat(len(group)),
            Conditioning.cat([prompts[r.prompt] for r in group]),
            guidance,
        )
        out.update(zip(group, eps.split(batch)))
    return out
