"""Tiny randomly initialised pipelines with each backbone's real module structure, built offline.

Their outputs are noise; they exist so tests, doctests and demos run without downloading weights.
"""

from .audioldm2 import tiny_audioldm2_pipeline

__all__ = ["tiny_audioldm2_pipeline"]
