"""Tiny randomly initialised pipelines with each backbone's real module structure, built offline.

Their outputs are noise; they exist so tests, doctests and demos run without downloading weights.
"""

from .audioldm import tiny_audioldm_pipeline
from .audioldm2 import tiny_audioldm2_pipeline
from .musicldm import tiny_musicldm_pipeline
from .stable_audio import tiny_stable_audio_pipeline

__all__ = [
    "tiny_audioldm2_pipeline",
    "tiny_audioldm_pipeline",
    "tiny_musicldm_pipeline",
    "tiny_stable_audio_pipeline",
]
