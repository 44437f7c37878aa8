"""The checks every baseline shares: its settings, refused with one message each when of the wrong
type or out of range, and the latent it edits."""

from __future__ import annotations

from torch import Tensor

from backbones import Backbone
from losses.base import check_finite

from ..editor import check_latent
from ..sampling import check_strength, check_whole_number


def check_settings(backbone: Backbone, *, steps: int, strength: float, **guidance_scales: float) -> None:
    """Refuse steps that are not a whole number the backbone's schedule can run (``2.5``,
    ``True``, ``torch.tensor(3)``), a strength that is not a number in (0, 1], and a guidance
    scale that is not a finite number (NaN guidance made every prediction NaN: all-NaN audio,
    silently)."""
    check_whole_number("steps", steps, 1, backbone.num_train_timesteps)
    check_strength(strength)
    for name, value in guidance_scales.items():
        check_finite(name, value)


def check_baseline_latent(latent: Tensor, backbone: Backbone) -> None:
    """Refuse a latent ``backbone`` cannot edit (:func:`steer.editor.check_latent`: no batch axis,
    other channels, NaN) and one that is not floating point: an integer tensor is no encoded
    audio, and it was edited without a word."""
    check_latent(latent, backbone)
    if not latent.is_floating_point():
        raise TypeError(
            f"the latent is {latent.dtype}: pass a floating-point latent, e.g. from backbone.encode_audio"
        )
