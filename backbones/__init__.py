"""Latent audio diffusion backbones behind one interface (:class:`Backbone`)."""

from .audioldm2 import AudioLDM2Backbone
from .auto import load_backbone
from .base import Backbone
from .conditioning import Conditioning
from .mel import MelFrontEnd, to_mono

__all__ = ["AudioLDM2Backbone", "Backbone", "Conditioning", "MelFrontEnd", "load_backbone", "to_mono"]
