"""Concepts for personalised editing (SteerMusic+): learn, save, publish, load, apply.

>>> from steer.concepts import Concept, PersonalizedBackbone
"""

from .concept import Concept, ConceptConfig, PushError, check_concept_reference
from .personalized import PersonalizedBackbone
from .train import TrainState, diffusion_loss, train_concept

__all__ = [
    "Concept",
    "ConceptConfig",
    "PersonalizedBackbone",
    "PushError",
    "TrainState",
    "check_concept_reference",
    "diffusion_loss",
    "train_concept",
]
