"""Personalised Delta Score, the main term of SteerMusic+ (Niu et al., 2025, section 4.2, eq. 5)."""

from __future__ import annotations

from .dds import DeltaDenoisingScore
from .weighting import TimestepWeighting


class PersonalizedDeltaScore(DeltaDenoisingScore):
    """w(t) · (ε'(x_t, y_tgt) − ε(x_src_t, y_src)): DDS whose target prediction comes from the
    personalised model ε' (the concept-tuned one) and whose source prediction from the base ε.

    Args:
        guidance_scale: classifier-free guidance of both predictions (the paper uses 15).
        weighting: w(t); the authors use 1 − ᾱ_t for SteerMusic+.
    """

    def __init__(
        self,
        *,
        guidance_scale: float = 15.0,
        weighting: TimestepWeighting = TimestepWeighting(scale=1.0),
    ) -> None:
        super().__init__(
            guidance_scale=guidance_scale,
            weighting=weighting,
            target_model="personalized",
            source_model="base",
        )
