"""steer: music editing by score distillation (SteerMusic and SteerMusic+).

The names are imported on first use (most of them import diffusers and transformers, seconds of
start-up), so that ``import steer.data``, ``import steer.metrics`` or ``steer --help`` stays
fast.
"""

from typing import TYPE_CHECKING

from backbones._lazy import lazy_names

if TYPE_CHECKING:
    from .audio import Audio, load_audio, save_audio
    from .baselines import DDIMInversion, DDPMInversion, DreamSoundEditing, SDEdit
    from .concepts import Concept, PersonalizedBackbone, PushError
    from .editor import Editor, EditResult, EditState
    from .performance import Performance
    from .recipes import SteerMusic, SteerMusicPlus

__version__ = "0.1.0"

_LAZY = {
    "Audio": "audio",
    "load_audio": "audio",
    "save_audio": "audio",
    "DDIMInversion": "baselines",
    "DDPMInversion": "baselines",
    "DreamSoundEditing": "baselines",
    "SDEdit": "baselines",
    "Concept": "concepts",
    "PersonalizedBackbone": "concepts",
    "PushError": "concepts",
    "Editor": "editor",
    "EditResult": "editor",
    "EditState": "editor",
    "Performance": "performance",
    "SteerMusic": "recipes",
    "SteerMusicPlus": "recipes",
}

__all__ = [
    "Audio",
    "Concept",
    "DDIMInversion",
    "DDPMInversion",
    "DreamSoundEditing",
    "EditResult",
    "EditState",
    "Editor",
    "Performance",
    "PushError",
    "PersonalizedBackbone",
    "SDEdit",
    "SteerMusic",
    "SteerMusicPlus",
    "load_audio",
    "save_audio",
]


__getattr__, __dir__ = lazy_names("steer", _LAZY, __all__)
