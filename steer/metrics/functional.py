"""Metrics as pure functions.

CQT-1 PCC (melody consistency), as the SteerMusic authors compute it: the constant-Q transform
of both clips (nnAudio ``CQT2010`` at 16 kHz, fmin 65 Hz, 128 bins, 24 bins per octave, hop 512,
``norm=1``, Hann window), per frame the index of the loudest bin (the "top-1" pitch), the longer
index sequence cut to the length of the shorter, and the Pearson correlation of the two
sequences. 1 means the dominant pitch moves identically; unrelated melodies score near 0.

References:
    SteerMusic: Enhanced Musical Consistency for Zero-shot Text-Guided and Personalized Music
    Editing, https://arxiv.org/abs/2504.10826
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio.functional

CQT_SAMPLE_RATE = 16000
_CQT_KERNELS: dict[str, torch.nn.Module] = {}


def _cqt(device: torch.device) -> torch.nn.Module:
    """The CQT2010 module, built once per device (building its kernels is the slow part)."""
    key = str(device)
    if key not in _CQT_KERNELS:
        from nnAudio.features import CQT2010

        _CQT_KERNELS[key] = CQT2010(
            sr=CQT_SAMPLE_RATE,
            hop_length=512,
            fmin=65,
            n_bins=128,
            bins_per_octave=24,
            norm=1,
            window="hann",
            output_format="Magnitude",
            verbose=False,
        ).to(device)
    return _CQT_KERNELS[key]


def _as_tensor(waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(waveform, np.ndarray):
        waveform = torch.from_numpy(np.ascontiguousarray(waveform))
    return waveform.detach().float()


def cqt_top1(waveform: np.ndarray | torch.Tensor, *, sample_rate: int = 16000) -> torch.Tensor:
    """Index of the loudest CQT bin in each frame.

    Args:
        waveform: ``(time,)`` or ``(batch, time)`` mono audio, numpy or torch (on any device).
        sample_rate: rate of ``waveform``; other rates than 16 kHz are resampled to 16 kHz first,
            so a hop is always 32 ms as in the authors' evaluation.

    Returns:
        ``(frames,)`` or ``(batch, frames)`` int64 bin indices in ``[0, 128)``, bin ``k`` centred
        on ``65 * 2 ** (k / 24)`` Hz. Silent frames give bin 0.
    """
    x = _as_tensor(waveform)
    if x.ndim not in (1, 2):
        raise ValueError(f"expected (time,) or (batch, time) audio, got shape {tuple(x.shape)}")
    if sample_rate != CQT_SAMPLE_RATE:
        x = torchaudio.functional.resample(x, sample_rate, CQT_SAMPLE_RATE)
    with torch.no_grad():
        spectrum = _cqt(x.device)(x.reshape(-1, x.shape[-1]))  # (batch, 128, frames)
    top = spectrum.argmax(dim=1)
    return top[0] if x.ndim == 1 else top


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last axis, in float64; NaN where either side is constant."""
    a = a.double() - a.double().mean(-1, keepdim=True)
    b = b.double() - b.double().mean(-1, keepdim=True)
    # sqrt(saa * sbb), not sqrt(saa) * sqrt(sbb): a sequence against itself gives exactly 1.0
    r = (a * b).sum(-1) / torch.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    return r.clamp(-1.0, 1.0)  # clamp keeps NaN


def cqt1_pcc(
    reference: np.ndarray | torch.Tensor,
    estimate: np.ndarray | torch.Tensor,
    *,
    sample_rate: int = 16000,
) -> float:
    """CQT-1 PCC between two mono clips: the Pearson correlation of their top-1 CQT bins.

    Args:
        reference, estimate: ``(time,)`` audio, numpy or torch; lengths may differ (the longer
            frame sequence is cut to the shorter).
        sample_rate: rate of both clips.

    Returns:
        a float in [-1, 1]; a clip against itself gives exactly 1.0. **NaN** when either clip's
        top-1 sequence is constant — silence above all (every bin 0) — since the correlation is
        then undefined; it is returned as NaN, not hidden, so averages over a benchmark must say how
        they treat it (e.g. ``np.nanmean`` plus a count of NaNs).
    """
    ref, est = (
        cqt_top1(reference, sample_rate=sample_rate),
        cqt_top1(estimate, sample_rate=sample_rate),
    )
    if ref.ndim != 1 or est.ndim != 1:
        raise ValueError("cqt1_pcc takes (time,) clips; use cqt1_pcc_batch for batches")
    n = min(ref.shape[-1], est.shape[-1])
    return float(_pearson(ref[:n].cpu(), est[:n].cpu()))


def cqt1_pcc_batch(
    reference: np.ndarray | torch.Tensor,
    estimate: np.ndarray | torch.Tensor,
    *,
    sample_rate: int = 16000,
) -> torch.Tensor:
    """:func:`cqt1_pcc` of each pair in a batch: ``(batch, time)``, ``(batch, time')`` ->
    ``(batch,)`` float64 on CPU (NaN for constant sequences)."""
    ref, est = (
        cqt_top1(reference, sample_rate=sample_rate),
        cqt_top1(estimate, sample_rate=sample_rate),
    )
    if ref.ndim != 2 or est.ndim != 2 or ref.shape[0] != est.shape[0]:
        raise ValueError(
            f"expected (batch, time) clips with equal batch sizes, got {tuple(ref.shape)} "
            f"and {tuple(est.shape)} frames"
        )
    n = min(ref.shape[-1], est.shape[-1])
    return _pearson(ref[:, :n].cpu(), est[:, :n].cpu())
