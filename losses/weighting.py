"""Timestep weightings w(t) of score-distillation gradients."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from .base import check_finite


@dataclass(frozen=True)
class TimestepWeighting:
    """w(t) = scale · (1 − ᾱ_t) (``"1-alpha_bar"``, DreamFusion's choice) or w(t) = scale
    (``"constant"``).

    The SteerMusic authors use ``scale=2`` for SteerMusic and ``scale=1`` for SteerMusic+.
    """

    kind: Literal["1-alpha_bar", "constant"] = "1-alpha_bar"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("1-alpha_bar", "constant"):
            scale = f" (a scale is scale={self.kind!r})" if isinstance(self.kind, numbers.Real) else ""
            raise ValueError(f"unknown weighting {self.kind!r}: use '1-alpha_bar' or 'constant'{scale}")
        check_finite("the weighting's scale", self.scale)

    def __call__(self, alpha_bar: Tensor) -> Tensor:
        """Weights ``(B,)`` for ᾱ_t of shape ``(B,)``."""
        if self.kind == "constant":
            return alpha_bar.new_full(alpha_bar.shape, self.scale)
        return self.scale * (1 - alpha_bar)


def check_weighting(weighting: Callable[[Tensor], Tensor]) -> None:
    """Refuse a w(t) that is not a function of ᾱ_t ``(B,)`` to weights ``(B,)``: a number
    (``weighting=2.0``) failed at the first step with "'float' object is not callable"."""
    if isinstance(weighting, type):  # weighting=TimestepWeighting, its call left out
        raise TypeError(
            f"weighting is the class {weighting.__name__}, not a weighting: pass {weighting.__name__}(...), e.g. "
            "TimestepWeighting('constant', scale=2.0)"
        )
    if not callable(weighting):
        raise TypeError(
            f"weighting must be a function of ᾱ_t (B,) returning weights (B,), got {type(weighting).__name__} "
            f"{weighting!r}: pass a TimestepWeighting, e.g. TimestepWeighting('constant', scale=2.0) for a "
            "constant weight"
        )
