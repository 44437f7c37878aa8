"""A denoiser that knows the answer, for checking an adapter's conversion to ε (imported by name:
pytest puts this folder on sys.path)."""

from __future__ import annotations

import pytest
from torch import Tensor, nn


def make_perfect(monkeypatch: pytest.MonkeyPatch, module: nn.Module, target: Tensor) -> None:
    """Make ``module`` return ``target`` ``(B, ...)`` for the ``B`` rows of every branch of a
    call (its ``return_dict=False`` tuple), until the test ends."""

    def forward(sample: Tensor, *args: object, **kwargs: object) -> tuple[Tensor]:
        return (target.repeat(sample.shape[0] // target.shape[0], *([1] * (target.dim() - 1))),)

    monkeypatch.setattr(module, "forward", forward)
