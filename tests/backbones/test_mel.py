"""The mel front end against an independent computation: numpy's FFT and transformers' filters."""

import numpy as np
import pytest
import torch
from transformers.audio_utils import mel_filter_bank

from backbones import MelFrontEnd, to_mono


def _reference_log_mel(waveform: np.ndarray) -> np.ndarray:
    n_fft, hop = 1024, 160
    padded = np.pad(waveform, n_fft // 2, mode="reflect")
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann, as torch.hann_window
    frames = len(waveform) // hop
    spec = np.stack(
        [np.abs(np.fft.rfft(padded[i * hop : i * hop + n_fft] * window)) for i in range(frames)]
    )  # (frames, 513)
    filters = mel_filter_bank(513, 64, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")
    return np.log(np.maximum(spec @ filters, 1e-5))


def test_log_mel_matches_independent_reference():
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    waveform = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(8000)
    ours = MelFrontEnd()(torch.tensor(waveform, dtype=torch.float64)[None].float())
    assert ours.shape == (1, 1, 50, 64)
    reference = _reference_log_mel(waveform.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(ours[0, 0].double().numpy(), reference, atol=1e-5, rtol=1e-5)


def test_normalize_removes_mean_and_sets_peak():
    waveform = torch.rand(2, 1000) + 3.0
    out = MelFrontEnd().normalize(waveform)
    assert out.mean(dim=-1).abs().max() < 1e-6
    torch.testing.assert_close(out.abs().amax(dim=-1), torch.full((2,), 0.5))


def test_to_mono_averages_channels_and_resamples():
    stereo = torch.stack([torch.ones(1, 44100), -torch.ones(1, 44100)], dim=1)  # (1, 2, 44100)
    mono = to_mono(stereo, 44100, 16000)
    assert mono.shape == (1, 16000)
    assert mono.abs().max() < 1e-6
    with pytest.raises(ValueError, match="waveform of shape"):
        to_mono(torch.zeros(1, 1, 1, 10), 16000, 16000)
