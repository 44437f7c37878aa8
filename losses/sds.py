"""Score Distillation Sampling (Poole et al., 2022, "DreamFusion", https://arxiv.org/abs/2209.14988)."""

from __future__ import annotations

from .base import LossContext, LossOutput, NoiseRequest, ScoreLoss
from .functional import sds_gradient
from .weighting import TimestepWeighting, check_weighting


class ScoreDistillationSampling(ScoreLoss):
    """Pull the edited latent towards the target prompt: w(t) · (ε̂(x_t, y_tgt) − ε).

    Args:
        guidance_scale: classifier-free guidance of ε̂.
        weighting: w(t), ᾱ_t ``(B,)`` → one weight per clip ``(B,)`` (a tensor, not a number: use
            ``TimestepWeighting("constant", scale)`` for a constant).
        model: which model predicts ε̂.
    """

    def __init__(
        self,
        *,
        guidance_scale: float = 30.0,
        weighting: TimestepWeighting = TimestepWeighting(scale=2.0),
        model: str = "base",
    ) -> None:
        check_weighting(weighting)
        self.weighting = weighting
        self.target = NoiseRequest("edit", "target", guidance_scale, model)
        self.requests = (self.target,)

    def __call__(self, context: LossContext) -> LossOutput:
        weight = self.weighting(context.alpha_bar)
        grad = context.compile(sds_gradient)(context.predictions[self.target], context.noise, weight)
        return LossOutput(value=grad.detach().pow(2).mean(), gradient=grad)
