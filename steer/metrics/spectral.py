"""Metrics without a learned model: melody consistency (CQT-1 PCC) and log-mel distance.

Both are thin modules over the pure functions of :mod:`steer.metrics.functional`.

Example:
    >>> import torch
    >>> t = torch.arange(32000) / 16000
    >>> clip = torch.sin(2 * torch.pi * 440 * 2 ** (t.floor() / 12) * t)[None]  # (1, 32000)
    >>> pcc = CQT1PCC(sample_rate=16000)
    >>> pcc.update(clip, clip); pcc.update(torch.zeros_like(clip), clip)
    >>> pcc.values()
    tensor([1., nan], dtype=torch.float64)
    >>> pcc.compute()
    tensor(1., dtype=torch.float64)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from backbones.mel import MelFrontEnd
from steer.metrics.base import PerClipMetric
from steer.metrics.functional import CQT_SAMPLE_RATE, cqt1_pcc_batch, log_mel_distance

__all__ = ["CQT1PCC", "LogMelDistance"]


class CQT1PCC(PerClipMetric):
    """CQT-1 PCC between each edited clip and its source (:func:`~steer.metrics.cqt1_pcc`).

    Per clip in [-1, 1], 1 when the dominant pitch moves identically; NaN when either top-1
    sequence is constant (silence), kept in :meth:`values` and left out of :meth:`compute`.

    Args:
        sample_rate: rate of the waveforms passed to ``update``; they are down-mixed and
            resampled to 16 kHz.
    """

    higher_is_better = True
    model_rate = CQT_SAMPLE_RATE

    def update(
        self, edited: Tensor, source: Tensor, *, target_prompts: Sequence[str] | None = None
    ) -> None:
        """Add a batch: ``edited`` and ``source`` ``(B, samples)`` or ``(B, channels, samples)``;
        ``target_prompts`` is not used."""
        edited, source = self._pair(edited, source)
        self._append(cqt1_pcc_batch(source, edited, sample_rate=self.model_rate))


class LogMelDistance(PerClipMetric):
    """Mean absolute log-mel difference between each edited clip and its source, in nats
    (:func:`~steer.metrics.log_mel_distance`); 0 for identical clips. NaN (kept in
    :meth:`values`, left out of :meth:`compute`) for a diverged clip and, with a warning, for
    clips shorter than one STFT window (0.064 s).

    Args:
        sample_rate: rate of the waveforms passed to ``update``; they are down-mixed and
            resampled to 16 kHz, the rate of the AudioLDM mel front end.
    """

    higher_is_better = False
    model_rate = MelFrontEnd.sample_rate

    def update(
        self, edited: Tensor, source: Tensor, *, target_prompts: Sequence[str] | None = None
    ) -> None:
        """Add a batch: ``edited`` and ``source`` ``(B, samples)`` or ``(B, channels, samples)``;
        ``target_prompts`` is not used."""
        edited, source = self._pair(edited, source)
        self._append(log_mel_distance(edited, source, sample_rate=self.model_rate))
