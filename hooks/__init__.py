"""Forward-hook feature extractors that always clean up after themselves."""

from .capture import FeatureCapture

__all__ = ["FeatureCapture"]
