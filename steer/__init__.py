"""steer: music editing by score distillation (SteerMusic and SteerMusic+)."""

from .audio import Audio, load_audio, save_audio
from .baselines import DDIMInversion, DDPMInversion, SDEdit
from .concepts import Concept, PersonalizedBackbone, PushError
from .editor import Editor, EditResult, EditState
from .performance import Performance
from .recipes import SteerMusic, SteerMusicPlus

__version__ = "0.1.0"

__all__ = [
    "Audio",
    "Concept",
    "DDIMInversion",
    "DDPMInversion",
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
