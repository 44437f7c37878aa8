"""The AudioLDM mel front end: waveform → normalised 16 kHz mono → log-mel "image".

AudioLDM, AudioLDM2 and MusicLDM share it (Liu et al., 2023, "AudioLDM"; the diffusers pipelines
have no audio-to-latent path, so this module is the only one in the project). Settings are those
of the AudioLDM VAEs: n_fft 1024, hop 160, window 1024, 64 Slaney mel bands from 0 to 8 kHz on
the magnitude STFT, ``log(clamp(mel, 1e-5))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio.functional as AF
from torch import Tensor


def check_long_enough(waveform: Tensor, sample_rate: int, need: int, given: tuple[int, int] | None = None) -> None:
    """Refuse a ``(..., samples)`` waveform at the backbone's ``sample_rate`` shorter than ``need``
    samples (one STFT window) with a ``ValueError`` that counts both in samples and seconds;
    ``given``, the ``(samples, rate)`` of the clip before it was resampled, is named first.

    Example:
        >>> check_long_enough(torch.zeros(363), 16000, 1024, given=(1000, 44100))
        Traceback (most recent call last):
        ...
        ValueError: audio is too short: 1000 samples (0.023 s) at 44100 Hz, 363 at the backbone's 16000 Hz; it needs at least 1024 (0.064 s)
    """

    def count(samples: int, rate: int) -> str:
        return f"{samples} sample{'s' * (samples != 1)} ({samples / rate:.3f} s) at {rate} Hz"

    have = waveform.shape[-1]
    if have >= need:
        return
    if given is None or given[1] == sample_rate:
        said = count(have, sample_rate)
    else:
        said = f"{count(*given)}, {have} at the backbone's {sample_rate} Hz"
    raise ValueError(f"audio is too short: {said}; it needs at least {need} ({need / sample_rate:.3f} s)")


def resample(waveform: Tensor, sample_rate: int, target_rate: int) -> Tensor:
    """torchaudio's ``resample`` along the last axis, except that a constant row (a DC offset,
    silence) stays exactly that constant: the filter's zero padding made its ends ramp, and a
    44.1-kHz DC clip then gained a melody line (a finite CQT-1 PCC where a constant clip has none)."""
    resampled = AF.resample(waveform, sample_rate, target_rate)
    first = waveform[..., :1]
    return torch.where((waveform == first).all(-1, keepdim=True), first.expand_as(resampled), resampled)


def to_mono(waveform: Tensor, sample_rate: int, target_rate: int) -> Tensor:
    """Average channels and resample.

    Args:
        waveform: ``(samples,)``, ``(B, samples)`` or ``(B, channels, samples)``.

    Returns:
        ``(B, samples')`` float32 at ``target_rate``.
    """
    if waveform.dim() == 1:
        waveform = waveform[None]
    elif waveform.dim() == 3:
        waveform = waveform.mean(dim=1)
    elif waveform.dim() != 2:
        raise ValueError(
            f"expected a waveform of shape (samples,), (batch, samples) or (batch, channels, "
            f"samples), got {tuple(waveform.shape)}"
        )
    waveform = waveform.float()
    if sample_rate != target_rate:
        waveform = resample(waveform, sample_rate, target_rate)
    return waveform


@dataclass(frozen=True)
class MelFrontEnd:
    """Log-mel spectrogram as the AudioLDM VAEs expect it.

    Calling it maps a mono waveform ``(B, samples)`` at :attr:`sample_rate` to a log-mel
    ``(B, 1, frames, n_mels)`` with ``frames = samples // hop_length`` (the last STFT frame, which
    only the centre padding creates, is dropped so that decoding gives back ``samples``).

    Frame k is centred on sample k · hop (``torch.stft(center=True)``, reflection padding of
    n_fft / 2 = 512). AudioLDM's own preprocessor (the SteerMusic authors' ``preprocessor.py``)
    pads (n_fft − hop) / 2 = 432 and runs ``center=False``, so its frame k is centred 80 samples
    (5 ms) later: the same clip gives frames shifted by that much, and AudioLDM2's vocoder, trained
    on its framing, returns audio that much later. That preprocessor also reads a stereo file's
    first channel, where :func:`to_mono` takes the channels' mean.
    """

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 160
    win_length: int = 1024
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float = 8000.0
    peak: float = 0.5
    log_floor: float = 1e-5

    def normalize(self, waveform: Tensor) -> Tensor:
        """Remove the mean and scale each clip to peak :attr:`peak`, as AudioLDM's loader does."""
        waveform = waveform - waveform.mean(dim=-1, keepdim=True)
        return self.peak * waveform / (waveform.abs().amax(dim=-1, keepdim=True) + 1e-8)

    def filters(self, device: torch.device | str = "cpu") -> Tensor:
        """Slaney-normalised Slaney-scale mel filters, ``(n_fft // 2 + 1, n_mels)``."""
        return AF.melscale_fbanks(
            self.n_fft // 2 + 1,
            self.f_min,
            self.f_max,
            self.n_mels,
            self.sample_rate,
            norm="slaney",
            mel_scale="slaney",
        ).to(device)

    def __call__(self, waveform: Tensor) -> Tensor:
        window = torch.hann_window(self.win_length, device=waveform.device)
        spec = torch.stft(
            waveform.float(),
            self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        ).abs()  # (B, n_fft // 2 + 1, frames + 1)
        mel = torch.einsum("bkn,km->bnm", spec, self.filters(waveform.device))
        frames = waveform.shape[-1] // self.hop_length
        return mel[:, None, :frames].clamp(min=self.log_floor).log()

    def silence(self) -> float:
        """The log-mel value of silence, used to pad frames."""
        return float(torch.tensor(self.log_floor).log())
