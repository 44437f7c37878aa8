"""Score-distillation losses: each declares the noise predictions it needs and turns them into a
gradient on the edited latent (or a differentiable loss)."""

from .base import FeatureRequest, LossContext, LossOutput, NoiseRequest, ScoreLoss
from .dds import DeltaDenoisingScore
from .pcon import PersonalizedContrastiveLoss
from .pds import PersonalizedDeltaScore
from .sds import ScoreDistillationSampling
from .shift import ShiftRegularizer
from .weighting import TimestepWeighting

__all__ = [
    "DeltaDenoisingScore",
    "FeatureRequest",
    "LossContext",
    "LossOutput",
    "NoiseRequest",
    "PersonalizedContrastiveLoss",
    "PersonalizedDeltaScore",
    "ScoreDistillationSampling",
    "ScoreLoss",
    "ShiftRegularizer",
    "TimestepWeighting",
]
