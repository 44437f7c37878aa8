"""Evaluate the noise predictions (and features) that losses request, in as few denoiser calls
as possible."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from backbones import Backbone, Conditioning
from hooks import FeatureCapture
from losses import FeatureRequest, NoiseRequest


def unique(items: Iterable) -> list:
    """Items without duplicates, in first-seen order."""
    return list(dict.fromkeys(items))


def _guidance(group: Sequence[NoiseRequest], batch: int, device: torch.device) -> float | Tensor:
    scales = {r.guidance_scale for r in group}
    if len(scales) == 1:
        return scales.pop()
    return torch.tensor([r.guidance_scale for r in group], device=device).repeat_interleave(batch)


def _call(
    model: Backbone,
    group: Sequence[NoiseRequest],
    features: Sequence[FeatureRequest],
    latents: Mapping[str, Tensor],
    prompts: Mapping[str, Conditioning],
    t: Tensor,
    predict: Callable[..., Tensor] | None = None,
) -> tuple[dict[NoiseRequest, Tensor], dict[FeatureRequest, dict[str, Tensor]]]:
    """One denoiser call answering every request of ``group`` (all for ``model``).

    ``predict`` replaces ``model.predict_noise`` (a compiled one) in calls that capture no
    features: hooks added after compilation would not fire in compiled code.
    """
    batch = len(t)
    guidance = _guidance(group, batch, t.device)
    modules = model.self_attention_modules() if features else {}
    patterns = {f: f.layers or model.decoder_self_attention for f in features}
    names = unique(n for f in features for n in modules if re.search(patterns[f], n))
    for f, pattern in patterns.items():
        if not any(re.search(pattern, n) for n in modules):
            raise ValueError(
                f"the feature layers {pattern!r} match none of the {len(modules)} self-attention "
                f"modules of {type(model).__name__} (e.g. {next(iter(modules), None)!r}): pass a "
                "pattern that names some"
            )
    grad = any(f.grad for f in features)
    capture = FeatureCapture(model.denoiser, select=names) if names else contextlib.nullcontext()
    if names or predict is None:
        predict = model.predict_noise
    with torch.set_grad_enabled(grad), capture:
        eps = predict(
            torch.cat([latents[r.latent] if grad else latents[r.latent].detach() for r in group]),
            t.repeat(len(group)),
            Conditioning.cat([prompts[r.prompt] for r in group]),
            guidance,
        )
    predictions = dict(zip(group, eps.detach().split(batch)))
    out: dict[FeatureRequest, dict[str, Tensor]] = {}
    if names:
        rows = model.conditional_rows(batch * len(group), guidance)
        latent_shape = latents[group[0].latent].shape
        for f in features:
            start = rows.start + group.index(f.request) * batch
            out[f] = {}
            for name in names:
                if not re.search(patterns[f], name):
                    continue
                (h,) = capture.features[name]  # (rows, T·F, C), one call
                h = h[start : start + batch]
                # float32 whatever the autocast dtype of the call: losses compute in float32
                out[f][name] = model.feature_map(h if f.grad else h.detach(), latent_shape).float()
    return predictions, out


def evaluate_requests(
    requests: Iterable[NoiseRequest],
    *,
    models: Mapping[str, Backbone],
    latents: Mapping[str, Tensor],
    prompts: Mapping[str, Mapping[str, Conditioning]],
    t: Tensor,
    features: Iterable[FeatureRequest] = (),
    batched: bool = True,
    predictors: Mapping[str, Callable[..., Tensor]] | None = None,
) -> tuple[dict[NoiseRequest, Tensor], dict[FeatureRequest, dict[str, Tensor]]]:
    """Guided noise predictions for each distinct request, and the requested features.

    Args:
        requests: what the losses need (duplicates are evaluated once).
        models: backbone by model name.
        latents: noisy latent by role (``"edit"``: x_t, ``"source"``: x_src_t), each ``(B, ...)``;
            x_t may carry a graph back to the edited latent, used only by calls whose features
            are requested with ``grad=True``.
        prompts: model name → prompt role → conditioning of batch size ``B`` (each model encodes
            its own prompts: a textual-inversion concept changes the encoding).
        t: timesteps ``(B,)``.
        features: self-attention features to capture from the calls (conditional rows only).
        batched: evaluate all requests of a model in one denoiser call (classifier-free guidance,
            every latent and every prompt stacked along the batch), features read from the same
            call. ``False`` is the reference loop: one call per request, without gradients, and
            for each feature request with ``grad=True`` a second call of its prediction with
            gradients (the same rows; its ε̂ is discarded).
        predictors: model name → a function with ``predict_noise``'s signature (e.g. compiled)
            used for calls that capture no features; by default each model's ``predict_noise``.

    Returns:
        ε̂ for each request ``(B, ...)`` (detached), and for each feature request the features
        ``(B, T, F, C)`` by module name.
    """
    requests = unique(requests)
    features = unique(features)
    missing = [f.request for f in features if f.request not in requests]
    if missing:
        raise ValueError(f"features requested from a prediction nobody requested: {missing[0]}")
    predictors = predictors or {}
    if batched:
        groups = [[r for r in requests if r.model == m] for m in unique(r.model for r in requests)]
        calls = [(group, [f for f in features if f.request in group]) for group in groups]
    else:
        calls = [([r], [f for f in features if f.request == r and not f.grad]) for r in requests]
    predictions: dict[NoiseRequest, Tensor] = {}
    captured: dict[FeatureRequest, dict[str, Tensor]] = {}
    for group, mine in calls:
        model = group[0].model
        eps, feats = _call(models[model], group, mine, latents, prompts[model], t, predictors.get(model))
        predictions.update(eps)
        captured.update(feats)
    if not batched:
        for f in features:
            if f.grad:
                model = f.request.model
                _, feats = _call(models[model], [f.request], [f], latents, prompts[model], t)
                captured.update(feats)
    return predictions, captured
