"""The torchmetrics modules: per-clip values, NaNs kept, state merging and sync, choosing by name."""

from __future__ import annotations

import math

import pytest
import torch

from steer.metrics import (
    CQT1PCC,
    METRICS,
    LogMelDistance,
    build_metrics,
    cqt1_pcc_batch,
    log_mel_distance,
)

SR = 16000


def melody(*midi: int, seconds_each: float = 0.3, sample_rate: int = SR) -> torch.Tensor:
    t = torch.arange(round(seconds_each * sample_rate)) / sample_rate
    return torch.cat([0.5 * torch.sin(2 * math.pi * 440 * 2 ** ((p - 69) / 12) * t) for p in midi])


UP, DOWN = melody(60, 64, 67, 72, 65), melody(72, 67, 64, 60, 69)


def test_cqt1_pcc_keeps_nan_for_silence_and_averages_the_rest():
    metric = CQT1PCC(sample_rate=SR)
    metric.update(torch.stack([UP, UP]), torch.stack([UP, DOWN]))
    metric.update(torch.zeros(1, UP.shape[0]), UP[None])  # silence: a constant top-1 sequence
    values = metric.values()
    reference = cqt1_pcc_batch(UP[None], DOWN[None]).item()
    assert values[0].item() == 1.0 and values[1].item() == pytest.approx(reference, abs=1e-12)
    assert math.isnan(values[2].item())
    assert metric.compute().item() == pytest.approx((1.0 + reference) / 2, abs=1e-12)


def test_inputs_are_downmixed_and_resampled():
    metric = CQT1PCC(sample_rate=44100)
    up44 = melody(60, 64, 67, 72, 65, sample_rate=44100)
    metric.update(torch.stack([up44, up44])[None], up44[None])  # (1, 2 channels, samples)
    assert metric.compute().item() == 1.0
    log_mel = LogMelDistance(sample_rate=44100)
    log_mel.update(up44[None], up44[None])
    log_mel.update(up44[None], melody(72, 67, 64, 60, 69, sample_rate=44100)[None])
    values = log_mel.values()
    assert values[0].item() == 0.0
    expected = log_mel_distance(up44, melody(72, 67, 64, 60, 69, sample_rate=44100), sample_rate=44100)
    assert values[1].item() == pytest.approx(expected, rel=1e-6)


def test_halves_merged_equal_the_whole():
    edited = torch.stack([UP, DOWN, torch.zeros_like(UP), UP])
    source = torch.stack([UP, UP, UP, DOWN])
    whole, first, second = (CQT1PCC(sample_rate=SR) for _ in range(3))
    whole.update(edited, source)
    first.update(edited[:2], source[:2])
    second.update(edited[2:], source[2:])
    second.merge_state(first)  # torchmetrics puts the incoming clips first
    torch.testing.assert_close(second.values(), whole.values(), equal_nan=True)
    assert second.compute().item() == whole.compute().item()


def test_distributed_sync_gathers_every_process_clips():
    """Two 'processes': the gather hands each state the other's tensor as torch.distributed would."""
    whole, local, remote = (LogMelDistance(sample_rate=SR) for _ in range(3))
    whole.update(torch.stack([UP, DOWN, DOWN]), torch.stack([UP, UP, DOWN]))
    local.update(torch.stack([UP, DOWN]), torch.stack([UP, UP]))
    remote.update(DOWN[None], DOWN[None])
    local.sync(dist_sync_fn=lambda tensor, group=None: [tensor, remote.values()], distributed_available=lambda: True)
    torch.testing.assert_close(local.values(), whole.values())
    local.unsync()
    assert local.values().shape == (2,)


def test_bad_inputs_are_refused():
    metric = CQT1PCC(sample_rate=SR)
    with pytest.raises(ValueError, match="same number of clips"):
        metric.update(torch.stack([UP, UP]), UP[None])
    with pytest.raises(ValueError, match=r"\(B, samples\)"):
        metric.update(UP, UP)
    # one clip each, of other lengths, read as clip counts; a list was an AttributeError
    with pytest.raises(ValueError, match=r"^edited must be a \(B, samples\) or \(B, channels, samples\) tensor, got \(32000,\)$"):
        metric.update(torch.zeros(32000), torch.zeros(31999))
    with pytest.raises(ValueError, match=r"^source must be a .* tensor, got list$"):
        metric.update(UP[None], [[0.0] * 9000])
    with pytest.raises(ValueError, match="sample_rate"):
        CQT1PCC(sample_rate=0)
    assert metric.values().shape == (0,)


def test_build_metrics_errors_are_clear():
    assert sorted(METRICS) == ["cdpam", "clap", "cqt1_pcc", "fad", "log_mel", "lpaps"]
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['pesq'\]; known metrics: \['cdpam'"):
        build_metrics(["cqt1_pcc", "pesq"], sample_rate=SR)
    for name in ("clap", "fad", "lpaps"):
        with pytest.raises(ValueError, match="download laion/larger_clap_music and pass --clap-model PATH"):
            build_metrics([name], sample_rate=SR)
    metrics = build_metrics(["log_mel", "cqt1_pcc"], sample_rate=22050, device="cpu")
    assert list(metrics) == ["log_mel", "cqt1_pcc"] and metrics["log_mel"].sample_rate == 22050
