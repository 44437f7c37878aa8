"""Concepts for personalised editing (SteerMusic+): learn, save, publish, load, apply.

The names are imported on first use (:class:`PersonalizedBackbone` imports diffusers), so that
``steer personalize --help`` stays fast.

>>> from steer.concepts import Concept, PersonalizedBackbone
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"steer.concepts.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'steer.concepts' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
