"""Delta Denoising Score (Hertz et al., 2023, https://arxiv.org/abs/2304.07090), the loss of
SteerMusic (section 4.1 of the paper)."""

from __future__ import annotations

from .base import LossContext, LossOutput, NoiseRequest, ScoreLoss
from .functional import dds_gradient
from .weighting import TimestepWeighting, check_weighting


class DeltaDenoisingScore(ScoreLoss):
    """w(t) · (ε̂(x_t, y_tgt) − ε̂(x_src_t, y_src)), both with the same ε and t.

    Args:
        guidance_scale: classifier-free guidance of both predictions (the paper uses 30).
        weighting: w(t), ᾱ_t ``(B,)`` → one weight per clip ``(B,)`` (a tensor, not a number: use
            ``TimestepWeighting("constant", scale)`` for a constant); the authors use 2 · (1 − ᾱ_t).
        target_model: the model predicting on the edited latent (a personalised one turns this
            into SteerMusic+'s personalised delta score).
        source_model: the model predicting on the source latent.

    The logged value is the mean squared gradient, the quantity DDS drives down.
    """

    def __init__(
        self,
        *,
        guidance_scale: float = 30.0,
        weighting: TimestepWeighting = TimestepWeighting(scale=2.0),
        target_model: str = "base",
        source_model: str = "base",
    ) -> None:
        check_weighting(weighting)
        self.weighting = weighting
        self.target = NoiseRequest("edit", "target", guidance_scale, target_model)
        self.source = NoiseRequest("source", "source", guidance_scale, source_model)
        self.requests = (self.target, self.source)

    def __call__(self, context: LossContext) -> LossOutput:
        weight = self.weighting(context.alpha_bar)
        predictions = context.predictions
        grad = context.compile(dds_gradient)(predictions[self.target], predictions[self.source], weight)
        return LossOutput(value=grad.detach().pow(2).mean(), gradient=grad)
