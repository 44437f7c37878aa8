"""The settings every baseline shares, refused with one message each when out of range."""

from __future__ import annotations

import math

from backbones import Backbone


def check_settings(backbone: Backbone, *, steps: int, strength: float, **guidance_scales: float) -> None:
    """Refuse a schedule the backbone cannot run, a strength outside (0, 1], and a guidance scale
    that is not a finite number (NaN guidance made every prediction NaN: all-NaN audio, silently)."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if not 1 <= steps <= backbone.num_train_timesteps:
        raise ValueError(f"steps must be in [1, {backbone.num_train_timesteps}], got {steps}")
    for name, value in guidance_scales.items():
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
