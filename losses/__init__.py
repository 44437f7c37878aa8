"""Score-distillation losses: each declares the noise predictions it needs and turns them into a
gradient on the edited latent (or a differentiable loss)."""

from .base import LossContext, LossOutput, NoiseRequest, ScoreLoss
from .dds import DeltaDenoisingScore
from .sds import ScoreDistillationSampling
from .weighting import TimestepWeighting

__all__ = [
    "DeltaDenoisingScore",
    "LossContext",
    "LossOutput",
    "NoiseRequest",
    "ScoreDistillationSampling",
    "ScoreLoss",
    "TimestepWeighting",
]
