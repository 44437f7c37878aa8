"""Forward-hook feature extractors that always clean up after themselves."""

from .capture import FeatureCapture
from .tap import FeatureTap

__all__ = ["FeatureCapture", "FeatureTap"]
