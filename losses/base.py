"""What a loss asks of the editor (:class:`NoiseRequest`), what it is given (:class:`LossContext`)
and what it returns (:class:`LossOutput`).

Losses never call a model themselves: the editor gathers the requests of all losses, removes
duplicates and evaluates them in as few batched denoiser calls as it can (the diffusers guiders
idea of declared input predictions).
"""

from __future__ import annotations

import math
import numbers
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor

LatentRole = Literal["edit", "source"]
#: a function type kept through compilation (``compile(fn)`` has ``fn``'s signature)
Fn = TypeVar("Fn", bound=Callable[..., Any])


def _eager(fn: Fn) -> Fn:
    return fn


def check_finite(name: str, value: float) -> None:
    """Refuse a weight that is not a finite number, by name: a NaN weight made NaN gradients,
    zeroed (no edit), an infinite one a displacement of ~1e36."""
    if isinstance(value, Tensor):
        raise TypeError(f"{name} must be a number, got a tensor {value!r}: pass float(value)")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def check_layers(name: str, layers: str | None) -> None:
    """Refuse, by ``name``, layers that are neither ``None`` (the model's default) nor a non-empty
    valid regular expression: a bad pattern failed only at the first step, with a bare
    ``re.error``, and ``""`` quietly meant the default."""
    if layers is None:
        return
    if not isinstance(layers, str) or not layers:
        raise ValueError(
            f"{name} must be a regular expression over the model's self-attention module names or None "
            f"(the model's decoder_self_attention), got {layers!r}"
        )
    try:
        re.compile(layers)
    except re.error as error:
        raise ValueError(
            f"{name} {layers!r} is not a valid regular expression ({error}): escape special characters "
            "(re.escape) or fix the pattern"
        ) from None


@dataclass(frozen=True)
class NoiseRequest:
    """One classifier-free-guided noise prediction a loss needs at each step.

    Args:
        latent: ``"edit"`` for x_t (the latent being optimised, noised) or ``"source"`` for
            x_src_t (the source latent, noised with the same ε and t).
        prompt: the role of the prompt, a key of the editor's prompts (``"source"``, ``"target"``).
        guidance_scale: classifier-free guidance scale.
        model: which model evaluates it (``"base"``; personalised editors add others).
    """

    latent: LatentRole
    prompt: str
    guidance_scale: float
    model: str = "base"

    def __post_init__(self) -> None:
        if self.latent not in ("edit", "source"):
            raise ValueError(f"a request's latent must be 'edit' or 'source', got {self.latent!r}")
        check_finite("guidance_scale", self.guidance_scale)


@dataclass(frozen=True)
class FeatureRequest:
    """Self-attention features a loss reads from the denoiser call that answers ``request``.

    Args:
        request: the prediction whose call is observed; its conditional branch is kept.
        layers: regular expression selecting modules among the model's self-attention modules
            (``Backbone.self_attention_modules``), e.g. ``r"^up_blocks"``; ``None`` selects the
            model's ``Backbone.decoder_self_attention`` (an empty or invalid pattern is refused).
        grad: keep the graph back to the edited latent (the call then runs with gradients).
    """

    request: NoiseRequest
    layers: str | None
    grad: bool = False

    def __post_init__(self) -> None:
        check_layers("a feature request's layers", self.layers)


@dataclass(frozen=True, eq=False)  # holds tensors: == by identity (by field raised)
class LossContext:
    """Everything a loss may use at one step, for a batch of ``B`` clips.

    Attributes:
        t: timesteps, ``(B,)`` integers.
        alpha_bar: ᾱ_t, ``(B,)``.
        noise: the ε shared by both latents, shaped like the latent.
        latent: x, the edited latent (a leaf that requires grad), ``(B, ...)``.
        noisy_latent: x_t computed from ``latent`` (differentiable), ``(B, ...)``.
        predictions: the noise predictions the loss requested, each shaped like the latent (no
            grad); reading one it did not request is a ``KeyError`` naming the loss.
        features: for each feature request of the loss, module name → features ``(B, T, F, C)``.
        generator: the editor's seeded generator, for losses that sample: draw for one clip
            and give the draw to each (the editor does so with ``t`` and ``noise``), so a clip
            is edited in a batch as alone.
        compile: gives a pure function compiled for the editor's execution path (once per
            function and editor), or the function itself where the path does not compile:
            losses pass their maths through it (``context.compile(dds_gradient)(...)``), and
            the compiled editor fuses it into a few kernels.
    """

    t: Tensor
    alpha_bar: Tensor
    noise: Tensor
    latent: Tensor
    noisy_latent: Tensor
    predictions: Mapping[NoiseRequest, Tensor]
    features: Mapping[FeatureRequest, Mapping[str, Tensor]]
    generator: torch.Generator
    compile: Callable[[Fn], Fn] = _eager


@dataclass(frozen=True, eq=False)  # holds tensors: == by identity (by field raised)
class LossOutput:
    """A loss's contribution at one step, already multiplied by its weight.

    Attributes:
        value: a detached scalar to log.
        gradient: a gradient to add to the latent's, shaped like the latent, or ``None``.
        loss: a differentiable scalar whose gradient reaches the latent, or ``None``: the sum
            of the clips' terms, not their mean, so each clip's gradient is the one it gets
            alone.
    """

    value: Tensor
    gradient: Tensor | None = None
    loss: Tensor | None = None


class ScoreLoss(ABC):
    """A loss term of an editor. Subclasses list their :attr:`requests` (and
    :attr:`feature_requests`) and implement ``__call__``."""

    requests: tuple[NoiseRequest, ...] = ()
    feature_requests: tuple[FeatureRequest, ...] = ()

    @abstractmethod
    def __call__(self, context: LossContext) -> LossOutput: ...

    @property
    def name(self) -> str:
        return type(self).__name__
