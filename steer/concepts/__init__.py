"""Concepts for personalised editing (SteerMusic+): learn, save, publish, load, apply.

The names are imported on first use (:class:`PersonalizedBackbone` imports diffusers), so that
``steer personalize --help`` stays fast.

>>> from steer.concepts import Concept, PersonalizedBackbone
"""

from typing import TYPE_CHECKING

from backbones._lazy import lazy_names

if TYPE_CHECKING:
    from .concept import Concept, ConceptConfig, PushError, check_concept_reference
    from .personalized import PersonalizedBackbone
    from .train import TrainState, diffusion_loss, train_concept

_LAZY = {
    "Concept": "concept",
    "ConceptConfig": "concept",
    "PushError": "concept",
    "check_concept_reference": "concept",
    "PersonalizedBackbone": "personalized",
    "TrainState": "train",
    "diffusion_loss": "train",
    "train_concept": "train",
}

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


__getattr__, __dir__ = lazy_names("steer.concepts", _LAZY, __all__)
