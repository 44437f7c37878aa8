"""Fixtures of the editors' tests: a LoRA concept on the tiny AudioLDM2 that changes its UNet."""

import pytest
import torch

from steer import Concept
from steer.concepts.concept import LORA_TARGETS, ConceptConfig


@pytest.fixture()
def lora(tiny_backbone):
    """A LoRA concept whose adapter changes the UNet (random B instead of peft's zeros)."""
    config = ConceptConfig(
        method="lora", token="sks", class_word="guitar", family="audioldm2", lora_rank=2,
        lora_targets=LORA_TARGETS,
    )
    concept = Concept(config, {})
    with concept.apply(tiny_backbone) as personalized:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in personalized.trainable_parameters().items():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        yield _Applied(concept, personalized)


class _Applied:
    """The concept, applied once: SteerMusicPlus gets the same ε' (and one adapter) every time."""

    def __init__(self, concept, personalized):
        self.token = concept.token
        self.personalized = personalized

    def apply(self, backbone):
        return self.personalized
