"""CDPAM with the weights the cdpam package ships (skipped where it is not installed)."""

from __future__ import annotations

import math

import pytest
import torch

from steer.metrics import CDPAM

pytest.importorskip("cdpam", reason="CDPAM needs the cdpam extra: pip install 'steer[cdpam]'")


@pytest.mark.slow
def test_cdpam_is_zero_for_identical_clips_and_grows_with_noise():
    sample_rate = 22050
    t = torch.arange(sample_rate // 4) / sample_rate
    clean = (0.3 * torch.sin(2 * math.pi * 330 * t)).expand(3, -1)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    metric = CDPAM(sample_rate=sample_rate)
    metric.update(clean + torch.tensor([[0.0], [0.01], [0.1]]) * noise, clean)
    values = metric.values()
    assert values[0].item() == 0.0
    assert 0 < values[1].item() < values[2].item()
    assert metric.compute().item() == pytest.approx(values.mean().item(), rel=1e-12)
