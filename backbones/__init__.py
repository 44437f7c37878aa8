"""Latent audio diffusion backbones behind one interface (:class:`Backbone`).

The names are imported on first use (the adapters import diffusers and transformers, seconds
of start-up), so that ``from backbones import Backbone`` or the command line's ``--help`` stays
fast.
"""

from typing import TYPE_CHECKING

from backbones._lazy import lazy_names

if TYPE_CHECKING:
    from .audioldm import AudioLDMBackbone
    from .audioldm2 import AudioLDM2Backbone
    from .auto import load_backbone
    from .base import Backbone
    from .conditioning import Conditioning, PromptCache
    from .mel import MelFrontEnd, to_mono
    from .mel_diffusion import MelDiffusionBackbone, MelDiffusionModel
    from .mel_vae import MelVAEBackbone
    from .musicldm import MusicLDMBackbone
    from .stable_audio import StableAudioBackbone

_LAZY = {
    "AudioLDMBackbone": "audioldm",
    "AudioLDM2Backbone": "audioldm2",
    "load_backbone": "auto",
    "Backbone": "base",
    "Conditioning": "conditioning",
    "PromptCache": "conditioning",
    "MelFrontEnd": "mel",
    "to_mono": "mel",
    "MelDiffusionBackbone": "mel_diffusion",
    "MelDiffusionModel": "mel_diffusion",
    "MelVAEBackbone": "mel_vae",
    "MusicLDMBackbone": "musicldm",
    "StableAudioBackbone": "stable_audio",
}

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
    "PromptCache",
    "StableAudioBackbone",
    "load_backbone",
    "to_mono",
]


__getattr__, __dir__ = lazy_names("backbones", _LAZY, __all__)
