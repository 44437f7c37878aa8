"""Personalised Contrastive loss, PCon (Niu et al., 2025, section 4.2, eq. 9), after the
contrastive denoising score of Nam et al. (2024)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Literal

from torch import Tensor

from .base import FeatureRequest, LossContext, LossOutput, NoiseRequest, ScoreLoss, check_finite, check_layers
from .functional import check_patch_nce, patch_nce_sum, sample_positions


class PersonalizedContrastiveLoss(ScoreLoss):
    """PatchNCE along time between self-attention features of the personalised model on the edit
    and of the base model on the reference, summed over layers.

    The query is ε'(x_t, y_tgt)'s conditional branch; its gradient flows through the
    personalised denoiser to the edited latent. The reference (detached) is, by default as in
    the paper, ε(x_src_t, y_src); ``reference="edited"`` takes ε(x_t, y_cls) instead, which is
    what the authors' script computes whenever the shift term is on. Both come from calls the
    editor makes anyway for the delta score and the shift term, so PCon costs no extra forward
    pass (only the backward through ε').

    Each clip's loss is averaged over its positions (eq. 9 sums them; the mean, as PatchNCE and
    the contrastive denoising score take it, weighs a layer the same whatever its number of time
    positions); the logged value is the mean over the
    batch's clips, and the gradient their sum, so a clip's gradient does not depend on the
    clips edited beside it (the positions are drawn once for all of them).

    A layer whose feature map has a single time position has no negatives: it adds 0 and no
    gradient, and PCon warns once naming it (choose finer layers, or a longer clip).

    Args:
        weight: multiplier of the loss (the authors use 3).
        tau: temperature τ (0.07).
        num_positions: time positions sampled per layer (256; ``None``: all).
        layers: regular expression over the model's self-attention module names (non-empty);
            ``None`` (default) reads each model's :attr:`~backbones.Backbone.decoder_self_attention`,
            the authors' up-block ``attn1`` outputs (:data:`backbones.base.UP_BLOCK_SELF_ATTENTION`) on a U-Net.
        guidance_scale: must equal the delta score's, so the calls are shared.
        reference: ``"source"`` (paper) or ``"edited"`` (authors' script).
    """

    def __init__(
        self,
        *,
        weight: float = 3.0,
        tau: float = 0.07,
        num_positions: int | None = 256,
        layers: str | None = None,
        guidance_scale: float = 15.0,
        reference: Literal["source", "edited"] = "source",
    ) -> None:
        check_finite("PCon's weight", weight)
        check_patch_nce(tau, num_positions)
        if reference not in ("source", "edited"):
            raise ValueError(f"reference must be 'source' or 'edited', got {reference!r}")
        check_layers("PCon's layers", layers)
        self.weight = weight
        self.tau = tau
        self.num_positions = num_positions
        query = NoiseRequest("edit", "target", guidance_scale, "personalized")
        ref = (
            NoiseRequest("source", "source", guidance_scale, "base")
            if reference == "source"
            else NoiseRequest("edit", "target_base", guidance_scale, "base")
        )
        self.requests = (query, ref)
        self.query = FeatureRequest(query, layers, grad=True)
        self.reference = FeatureRequest(ref, layers)
        self.feature_requests = (self.query, self.reference)
        self._warned: set[str] = set()  # layers already warned of a single time position

    def __call__(self, context: LossContext) -> LossOutput:
        query, reference = context.features[self.query], context.features[self.reference]
        names = list(query)
        for name in names:
            if query[name].shape != reference[name].shape:
                raise ValueError(
                    f"PCon's query and reference features of {name!r} differ: "
                    f"{tuple(query[name].shape)} and {tuple(reference[name].shape)}"
                )
        self._warn_single_positions(query)
        positions = [
            sample_positions(query[n].shape[1], self.num_positions, context.generator, query[n].device)
            for n in names
        ]
        loss = context.compile(patch_nce_sum)(
            [query[n] for n in names], [reference[n] for n in names], positions, self.tau
        )
        loss = self.weight * loss  # the mean over the clips
        # summed over the clips: each clip's gradient is the one it gets alone
        return LossOutput(value=loss.detach(), loss=loss * len(context.t))

    def _warn_single_positions(self, features: Mapping[str, Tensor]) -> None:
        """Warn once per layer whose map ``(B, T, F, C)`` has T = 1: its softmax has one entry, so
        its loss is 0 and it gives no gradient (shapes only: no device sync)."""
        for name, f in features.items():
            if f.shape[1] == 1 and name not in self._warned:
                self._warned.add(name)
                warnings.warn(
                    f"PCon's layer {name!r} has a single time position (features {tuple(f.shape)}): with no "
                    "other position to contrast it adds 0 to the loss and no gradient; pick layers of finer "
                    "time resolution (PCon's layers) or edit a longer clip",
                    UserWarning,
                    stacklevel=3,
                )
