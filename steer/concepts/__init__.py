"""Concepts for personalised editing (SteerMusic+): learn, save, publish, load, apply.

>>> from steer.concepts import Concept, PersonalizedBackbone
"""

from .concept import Concept, ConceptConfig
from .personalized import PersonalizedBackbone
from .train import TrainState, diffusion_loss, train_concept

__all__ = ["Concept", "ConceptConfig", "PersonalizedBackbone", "TrainState", "diffusion_loss", "train_concept"]
