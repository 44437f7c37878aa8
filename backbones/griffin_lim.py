"""Log-mel → waveform without a trained vocoder: mel pseudo-inverse, then Griffin–Lim.

Used by backbones trained from scratch on this machine, where no neural vocoder is available.
Phase is estimated (Griffin & Lim, 1984), so the result is intelligible but not hi-fi; pitch and
timing, which the melody metrics read, survive well.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio.transforms as T
from torch import Tensor, nn

from .mel import MelFrontEnd


class GriffinLimVocoder(nn.Module):
    """Invert :class:`MelFrontEnd` log-mels ``(B, frames, n_mels)`` to waveforms ``(B, frames · hop)``.

    Args:
        mel: the front end whose output is inverted.
        n_iter: Griffin–Lim iterations (deterministic: the phase starts at zero).
    """

    def __init__(self, mel: MelFrontEnd, *, n_iter: int = 32) -> None:
        super().__init__()
        self.hop_length = mel.hop_length
        # Least-squares inverse of the mel filters, (n_mels, n_fft // 2 + 1).
        self.register_buffer("inverse", torch.linalg.pinv(mel.filters()), persistent=False)
        self.griffin_lim = T.GriffinLim(
            n_fft=mel.n_fft,
            win_length=mel.win_length,
            hop_length=mel.hop_length,
            power=1.0,
            n_iter=n_iter,
            rand_init=False,
        )

    def forward(self, log_mel: Tensor) -> Tensor:
        magnitude = (log_mel.float().exp() @ self.inverse).clamp(min=0)  # (B, frames, freqs)
        waveform = self.griffin_lim(magnitude.transpose(1, 2))  # (frames - 1) · hop samples
        length = log_mel.shape[1] * self.hop_length
        return F.pad(waveform, (0, max(0, length - waveform.shape[-1])))[..., :length]
