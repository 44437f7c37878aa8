"""Latent audio diffusion backbones behind one interface (:class:`Backbone`)."""

from .audioldm import AudioLDMBackbone
from .audioldm2 import AudioLDM2Backbone
from .auto import load_backbone
from .base import Backbone
from .conditioning import Conditioning
from .mel import MelFrontEnd, to_mono
from .mel_diffusion import MelDiffusionBackbone, MelDiffusionModel
from .mel_vae import MelVAEBackbone
from .musicldm import MusicLDMBackbone
from .stable_audio import StableAudioBackbone

__all__ = [
    "AudioLDM2Backbone",
    "AudioLDMBackbone",
    "Backbone",
    "Conditioning",
    "MelDiffusionBackbone",
    "MelDiffusionModel",
    "MelFrontEnd",
    "MelVAEBackbone",
    "MusicLDMBackbone",
    "StableAudioBackbone",
    "load_backbone",
    "to_mono",
]
