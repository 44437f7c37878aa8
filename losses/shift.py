"""The shift regulariser of SteerMusic+ (Niu et al., 2025, section 4.2, eqs. 6–7)."""

from __future__ import annotations

from .base import LossContext, LossOutput, NoiseRequest, ScoreLoss, check_finite
from .functional import dds_gradient
from .weighting import TimestepWeighting, check_weighting


class ShiftRegularizer(ScoreLoss):
    """λ · w(t) · (ε'(x_t, y_tgt) − ε(x_t, y_cls)): how far the personalised model's score on
    the edited latent sits from the base model's, the distribution shift fine-tuning introduced.

    The base model reads the target prompt without the concept's token (role
    ``"target_base"``, e.g. "a guitar melody" for "a sks guitar melody"), since the token means
    nothing to it: the authors' code does so, where the paper's eq. 7 writes y_tgt for both
    models. λ > 0 pushes the edit towards the concept, λ < 0 keeps it closer to the source (the
    paper's ablation of λ, section 5.4).

    The logged value is λ times the mean square of w(t) · (ε' − ε): it keeps λ's sign and scale,
    where the gradient's mean square (the delta scores' value) was the same for λ and −λ.

    Args:
        strength: λ (the paper uses 0.05).
        guidance_scale: classifier-free guidance of both predictions.
        weighting: w(t), as for the delta score it accompanies.
    """

    def __init__(
        self,
        *,
        strength: float = 0.05,
        guidance_scale: float = 15.0,
        weighting: TimestepWeighting = TimestepWeighting(scale=1.0),
    ) -> None:
        check_finite("the shift strength", strength)
        check_weighting(weighting)
        self.strength = strength
        self.weighting = weighting
        self.personalized = NoiseRequest("edit", "target", guidance_scale, "personalized")
        self.base = NoiseRequest("edit", "target_base", guidance_scale, "base")
        self.requests = (self.personalized, self.base)

    def __call__(self, context: LossContext) -> LossOutput:
        p = context.predictions
        shift = context.compile(dds_gradient)(p[self.personalized], p[self.base], self.weighting(context.alpha_bar))
        # logged as the delta score's mean square times λ: with λ's sign, linear in it
        return LossOutput(value=self.strength * shift.detach().pow(2).mean(), gradient=self.strength * shift)
