"""The settings every baseline shares, refused with one message each when of the wrong type or out
of range."""

from __future__ import annotations

from backbones import Backbone
from losses.base import check_finite

from ..editor import check_whole_number
from ..sampling import check_strength


def check_settings(backbone: Backbone, *, steps: int, strength: float, **guidance_scales: float) -> None:
    """Refuse steps that are not a whole number the backbone's schedule can run (``2.5``,
    ``True``, ``torch.tensor(3)``), a strength that is not a number in (0, 1], and a guidance
    scale that is not a finite number (NaN guidance made every prediction NaN: all-NaN audio,
    silently)."""
    check_whole_number("steps", steps, 1, backbone.num_train_timesteps)
    check_strength(strength)
    for name, value in guidance_scales.items():
        check_finite(name, value)


class DefaultStrength:
    """A baseline's ``strength`` setting, where ``None`` stands for the method's
    :attr:`default_strength` (so that one settings dict builds any baseline)."""

    #: the strength an editor gets when none is given
    default_strength: float

    @property
    def strength(self) -> float:
        """The fraction of the schedule edited; set ``None`` for the method's :attr:`default_strength`."""
        return self._strength

    @strength.setter
    def strength(self, strength: float | None) -> None:
        self._strength = self.default_strength if strength is None else strength
