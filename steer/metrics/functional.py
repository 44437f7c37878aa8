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

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torchaudio.functional

from steer.audio import float_samples_fix

CQT_SAMPLE_RATE = 16000
#: samples between CQT frames at :data:`CQT_SAMPLE_RATE` (32 ms)
CQT_HOP = 512
_CQT_KERNELS: dict[str, torch.nn.Module] = {}


def _cqt(device: torch.device) -> torch.nn.Module:
    """The CQT2010 module, built once per device (building its kernels is the slow part)."""
    key = str(device)
    if key not in _CQT_KERNELS:
        from nnAudio.features import CQT2010

        _CQT_KERNELS[key] = CQT2010(
            sr=CQT_SAMPLE_RATE,
            hop_length=CQT_HOP,
            fmin=65,
            n_bins=128,
            bins_per_octave=24,
            norm=1,
            window="hann",
            pad_mode="constant",  # as the authors' eval/CQT1_PCC.py (nnAudio's default reflects)
            output_format="Magnitude",
            verbose=False,
        ).to(device)
    return _CQT_KERNELS[key]


#: The rate ``steer eval`` and ``steer run --metrics`` score every clip at (each resampled to it):
#: 16 kHz, the paper's AudioLDM2 rate, so that runs at other rates (Stable Audio's 44.1 kHz) and
#: folders of mixed rates give comparable numbers (a pair's log-mel distance was 0.90 or 0.81 as
#: the folder's first edit was at 44.1 or 16 kHz). The CQT and CLAP resample on their own anyway.
SCORING_RATE = 16000


class ClipTooShort(ValueError):
    """A clip shorter than the CQT reads (:func:`cqt_top1`)."""


class TooFewRows(ValueError):
    """A set with fewer than the 2 embedding rows a covariance needs
    (:meth:`~steer.metrics.FrechetAudioDistance.compute`)."""


def cqt_min_samples(cqt: torch.nn.Module) -> int:
    """The fewest 16-kHz samples steer scores with ``cqt``: its lowest octave is the clip halved
    ``n_octaves - 1`` times, and a clip shorter than its kernel's half-width, ``n_fft / 2``
    samples there (8224 samples, 0.514 s, for the paper's settings), would be read mostly as the
    zeros it is padded with (the CQT itself takes shorter clips; nnAudio's default reflection
    padding could not)."""
    return (cqt.n_fft // 2 + 1) * 2 ** (cqt.n_octaves - 1)


def cqt_min_seconds() -> float:
    """Seconds of the shortest clip :func:`cqt_top1` (and so CQT-1 PCC) reads, at the CQT's
    16 kHz: 0.514 s (8224 samples) for the paper's settings.

    Example:
        >>> round(cqt_min_seconds(), 3)
        0.514
    """
    return cqt_min_samples(_cqt(torch.device("cpu"))) / CQT_SAMPLE_RATE


def _too_short(what: str, samples: int, shortest: int, sample_rate: int) -> str:
    """Says that a clip of ``samples`` is shorter than the ``shortest`` that ``what`` reads: in
    seconds, with as many decimals (3 at least) as it takes for the two to differ, and in samples.

    Example:
        >>> _too_short("the CQT", 8223, 8224, 16000)
        'a clip of 0.5139 s is too short for the CQT, which reads at least 0.5140 s (8224 samples at 16000 Hz; the clip holds 8223)'
    """
    digits = 3
    while f"{samples / sample_rate:.{digits}f}" == f"{shortest / sample_rate:.{digits}f}":
        digits += 1
    return (
        f"a clip of {samples / sample_rate:.{digits}f} s is too short for {what}, which reads at least "
        f"{shortest / sample_rate:.{digits}f} s ({shortest} samples at {sample_rate} Hz; the clip holds {samples})"
    )


def _as_tensor(waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(waveform, np.ndarray):
        waveform = torch.from_numpy(np.ascontiguousarray(waveform))
    if not waveform.is_floating_point():  # integer PCM, unscaled, is 32768 times too loud
        raise ValueError(
            f"a waveform must hold floating-point samples in [-1, 1], got {waveform.dtype}: "
            f"{float_samples_fix(waveform)}"
        )
    return waveform.detach().float()


def _on_device_of(estimate: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``estimate`` and ``reference`` (any shapes) both on ``estimate``'s device, where every
    metric of two clips runs: an edit often lies on the accelerator that made it and its source on
    the CPU it was loaded on. Nothing is copied when they share a device.

    Example:
        >>> estimate, reference = _on_device_of(torch.zeros(3, device="meta"), torch.zeros(3))
        >>> reference.device
        device(type='meta')
    """
    return estimate, reference.to(estimate.device)


def cqt_top1(waveform: np.ndarray | torch.Tensor, *, sample_rate: int = 16000) -> torch.Tensor:
    """Index of the loudest CQT bin in each frame.

    Args:
        waveform: ``(time,)`` or ``(batch, time)`` mono audio, numpy or torch (on any device).
        sample_rate: rate of ``waveform``; other rates than 16 kHz are resampled to 16 kHz first,
            so a hop is always 32 ms as in the authors' evaluation.

    Returns:
        ``(frames,)`` or ``(batch, frames)`` int64 bin indices in ``[0, 128)``, bin ``k`` centred
        on ``65 * 2 ** (k / 24)`` Hz. Silent frames give bin 0, and so does every frame of a
        constant clip (a DC offset), which has no energy in the CQT's range either.

    Raises:
        ClipTooShort: (a ``ValueError``) for clips shorter than the CQT reads, 0.514 s.
    """
    x = _as_tensor(waveform)
    if x.ndim not in (1, 2):
        raise ValueError(f"expected (time,) or (batch, time) audio, got shape {tuple(x.shape)}")
    # The lowest kernels do not reject a DC offset entirely (0.3 of DC leaks 0.013 into them),
    # which gave a constant clip a wandering top bin, so a melody line (CQT-1 PCC -0.41 against a
    # 440-Hz tone); it has no energy in the CQT's range, so it reads as silence does: bin 0 throughout.
    # (Checked before resampling, which does not keep a constant constant at the edges.)
    constant = (x == x[..., :1]).all(-1).reshape(-1, 1)
    if sample_rate != CQT_SAMPLE_RATE:
        x = torchaudio.functional.resample(x, sample_rate, CQT_SAMPLE_RATE)
    cqt = _cqt(x.device)
    if x.shape[-1] < (shortest := cqt_min_samples(cqt)):
        raise ClipTooShort(
            _too_short("the CQT of the melody line (CQT-1 PCC, steer plot)", x.shape[-1], shortest, CQT_SAMPLE_RATE)
        )
    with torch.no_grad():
        spectrum = cqt(x.reshape(-1, x.shape[-1]))  # (batch, 128, frames)
    top = spectrum.argmax(dim=1).masked_fill(constant, 0)
    return top[0] if x.ndim == 1 else top


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last axis, in float64; NaN where either side is constant."""
    a = a.double() - a.double().mean(-1, keepdim=True)
    b = b.double() - b.double().mean(-1, keepdim=True)
    # sqrt(saa * sbb), not sqrt(saa) * sqrt(sbb): a sequence against itself gives exactly 1.0
    r = (a * b).sum(-1) / torch.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    return r.clamp(-1.0, 1.0)  # clamp keeps NaN


def _tops(
    reference: torch.Tensor, estimate: torch.Tensor, sample_rate: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Both clips' :func:`cqt_top1`, or ``None`` (with a warning) where one is too short: its
    melody line, hence the correlation, is undefined, as for silence."""
    try:
        return cqt_top1(reference, sample_rate=sample_rate), cqt_top1(estimate, sample_rate=sample_rate)
    except ClipTooShort as error:
        warnings.warn(f"CQT-1 PCC is NaN: {error}", RuntimeWarning, stacklevel=3)
        return None


def cqt1_pcc(
    reference: np.ndarray | torch.Tensor,
    estimate: np.ndarray | torch.Tensor,
    *,
    sample_rate: int = 16000,
) -> float:
    """CQT-1 PCC between two mono clips: the Pearson correlation of their top-1 CQT bins.

    Args:
        reference, estimate: ``(time,)`` audio, numpy or torch; lengths may differ (the longer
            frame sequence is cut to the shorter). They may lie on different devices: both are
            scored on ``estimate``'s.
        sample_rate: rate of both clips.

    Returns:
        a float in [-1, 1]; a clip against itself gives exactly 1.0. **NaN** when either clip's
        top-1 sequence is constant — silence and constant (DC) clips above all (every bin 0) — since the correlation is
        then undefined; it is returned as NaN, not hidden, so averages over a benchmark must say how
        they treat it (e.g. ``np.nanmean`` plus a count of NaNs). NaN too, with a warning, when
        either clip is shorter than the CQT reads (0.514 s), and when either holds a NaN or
        infinite sample (a diverged edit), whose CQT has no melody line.
    """
    estimate, reference = _on_device_of(_as_tensor(estimate), _as_tensor(reference))
    if reference.ndim != 1 or estimate.ndim != 1:
        raise ValueError("cqt1_pcc takes (time,) clips; use cqt1_pcc_batch for batches")
    if not bool(_finite_rows(reference[None], estimate[None])):
        return float("nan")
    tops = _tops(reference, estimate, sample_rate)
    if tops is None:
        return float("nan")
    ref, est = tops
    n = min(ref.shape[-1], est.shape[-1])
    return float(_pearson(ref[:n].cpu(), est[:n].cpu()))


def cqt1_pcc_batch(
    reference: np.ndarray | torch.Tensor,
    estimate: np.ndarray | torch.Tensor,
    *,
    sample_rate: int = 16000,
) -> torch.Tensor:
    """:func:`cqt1_pcc` of each pair in a batch: ``(batch, time)``, ``(batch, time')`` ->
    ``(batch,)`` float64 on CPU (NaN for constant sequences, for clips too short for the CQT, and
    for pairs holding a NaN or infinite sample). Computed on ``estimate``'s device."""
    estimate, reference = _on_device_of(_as_tensor(estimate), _as_tensor(reference))
    if reference.ndim != 2 or estimate.ndim != 2 or reference.shape[0] != estimate.shape[0]:
        raise ValueError(
            f"expected (batch, time) clips with equal batch sizes, got {tuple(reference.shape)} "
            f"and {tuple(estimate.shape)}"
        )
    tops = _tops(reference, estimate, sample_rate)
    if tops is None:
        return torch.full(reference.shape[:1], float("nan"), dtype=torch.float64)
    ref, est = tops
    n = min(ref.shape[-1], est.shape[-1])
    r = _pearson(ref[:, :n].cpu(), est[:, :n].cpu())
    return r.masked_fill(~_finite_rows(reference, estimate), float("nan"))


def _finite_rows(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` bool on CPU: both clips of the pair hold only finite samples."""
    return (reference.isfinite().all(-1) & estimate.isfinite().all(-1)).cpu()


def _mono_batch(waveform: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """``(time,)`` or ``(batch, time)`` float tensor, or a ``ValueError`` naming the argument."""
    x = _as_tensor(waveform)
    if x.ndim not in (1, 2):
        raise ValueError(f"expected {name} of shape (time,) or (batch, time), got {tuple(x.shape)}")
    return x


def log_mel_distance(
    estimate: np.ndarray | torch.Tensor,
    reference: np.ndarray | torch.Tensor,
    *,
    sample_rate: int = 16000,
) -> float | torch.Tensor:
    """Mean absolute difference of the AudioLDM log-mels of two clips, in nats.

    Both clips are resampled to 16 kHz and the longer is cut to the length of the shorter; each
    is then peak-normalised (:meth:`backbones.MelFrontEnd.normalize`, so a gain changes nothing)
    and turned into the log-mel the editors work on (:class:`backbones.MelFrontEnd`: 64 bands,
    hop 10 ms, ``log(clamp(mel, 1e-5))``), and ``|log-mel(estimate) − log-mel(reference)|`` is
    averaged over frames and bands. 0 for a clip against itself; it grows with any change of
    spectrum — timbre, notes, timing or noise — so it says how far an edit moved from its source,
    or how close it came to a ground-truth target.

    Scale, measured on the rendered swap data (5.12-s clips, means): two instruments playing the
    same notes are 1.58 apart on Ryan's Mammoth test tunes and 1.95 on Bach chorales; another
    melody on the same instrument is 1.94 and 2.00 apart — barely farther on the chorales, so
    this is no melody metric (use :func:`cqt1_pcc`). A Griffin–Lim round trip alone (the
    mel-diffusion backbone's decoder) costs 0.58 on Ryan's and 0.80 on Bach (0.35 for flute to
    1.08 for clarinet): the floor of what an edit decoded that way can reach.

    Args:
        estimate, reference: ``(time,)`` or ``(batch, time)`` mono audio, numpy or torch, with
            the same batch size; lengths may differ. They may lie on different devices: both are
            scored on ``estimate``'s.
        sample_rate: rate of both.

    Returns:
        a float for ``(time,)`` clips, a ``(batch,)`` float32 CPU tensor for batches; NaN for
        a pair where either clip holds NaN or infinite samples (a diverged edit), so averages
        must say how they treat it, as for :func:`cqt1_pcc`. NaN too, with a warning, when the
        clips' common length is under one STFT window (1024 samples at 16 kHz, 0.064 s).
    """
    from backbones.mel import MelFrontEnd, to_mono

    est, ref = _on_device_of(_mono_batch(estimate, "estimate"), _mono_batch(reference, "reference"))
    if est.ndim != ref.ndim or (est.ndim == 2 and est.shape[0] != ref.shape[0]):
        raise ValueError(
            f"estimate and reference must both be (time,) or both (batch, time) with one batch "
            f"size, got {tuple(est.shape)} and {tuple(ref.shape)}"
        )
    single = est.ndim == 1
    mel = MelFrontEnd()
    est, ref = (to_mono(x, sample_rate, mel.sample_rate) for x in (est, ref))
    n = min(est.shape[-1], ref.shape[-1])
    if n < mel.n_fft:
        warnings.warn(
            f"log-mel distance is NaN: {_too_short('the log-mel distance', n, mel.n_fft, mel.sample_rate)}",
            RuntimeWarning,
            stacklevel=2,
        )
        distance = torch.full(est.shape[:1], float("nan"))
        return float(distance[0]) if single else distance
    with torch.no_grad():
        est_mel, ref_mel = (mel(mel.normalize(x[..., :n])) for x in (est, ref))  # (B, 1, frames, 64)
    distance = (est_mel - ref_mel).abs().mean(dim=(1, 2, 3)).cpu()
    return float(distance[0]) if single else distance


def instrument_accuracy(
    classifier: torch.nn.Module,
    waveforms: np.ndarray | torch.Tensor | list,
    targets: list[str] | tuple[str, ...],
    *,
    sample_rate: int = 16000,
    batch_size: int = 32,
) -> float:
    """Share of clips that ``classifier`` labels as their target instrument (edit fidelity).

    Args:
        classifier: an :class:`steer.metrics.InstrumentClassifier` (e.g. the shipped one,
            ``InstrumentClassifier.from_pretrained("weights/instrument-classifier")``).
        waveforms: ``(batch, time)`` mono audio, numpy or torch, or a list of ``(time,)`` clips
            whose lengths may differ.
        targets: one instrument name per clip, among ``classifier.classes``.
        sample_rate: rate of the clips.
        batch_size: clips per forward pass.

    Returns:
        a float in [0, 1]. A clip holding NaN or infinite samples (a diverged edit) counts as
        wrong rather than stopping the evaluation (the classifier itself refuses such audio).
    """
    if isinstance(waveforms, (np.ndarray, torch.Tensor)):
        clips = _mono_batch(waveforms, "waveforms")
        clips = list(clips[None] if clips.ndim == 1 else clips)
    else:
        clips = [_mono_batch(x, "each clip") for x in waveforms]
        if any(x.ndim != 1 for x in clips):
            raise ValueError("a list of waveforms must hold (time,) clips")
    targets = [targets] if isinstance(targets, str) else list(targets)
    if len(targets) != len(clips):
        raise ValueError(f"got {len(clips)} clips but {len(targets)} targets")
    if not clips:
        raise ValueError("no clips to classify")
    wanted = classifier.class_index(targets)
    correct = 0
    by_length: dict[int, list[int]] = {}
    for i, clip in enumerate(clips):
        if torch.isfinite(clip).all():
            by_length.setdefault(clip.shape[-1], []).append(i)
    with torch.no_grad():
        for indices in by_length.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                logits = classifier.logits(torch.stack([clips[i] for i in chunk]), sample_rate)
                correct += int((logits.argmax(-1).cpu() == wanted[chunk]).sum())
    return correct / len(clips)


def frechet_distance(
    mean_a: np.ndarray | torch.Tensor,
    cov_a: np.ndarray | torch.Tensor,
    mean_b: np.ndarray | torch.Tensor,
    cov_b: np.ndarray | torch.Tensor,
    *,
    eps: float = 1e-6,
) -> float:
    """Fréchet distance between two Gaussians, computed as fadtk does (so FAD scores compare).

    ``‖μ_a − μ_b‖² + tr(C_a) + tr(C_b) − 2 tr((C_a C_b)^½)`` in float64, with scipy's
    ``sqrtm`` of the (non-symmetric) product. As in fadtk: when the square root is not finite (a
    near-singular product), ``eps`` is added to both diagonals and it is taken again; a complex
    result whose diagonal is real to 1e-3 is replaced by its real part, and a larger imaginary
    part is an error. The square root's round-off can leave identical statistics a hair below 0
    (−1e-14; −2e-8 for singular CLAP covariances), so the result is clamped at 0.

    Args:
        mean_a, mean_b: ``(D,)`` means.
        cov_a, cov_b: ``(D, D)`` covariances.
        eps: the diagonal offset of the fallback.

    Returns:
        the squared distance, a float ≥ 0 (0 for identical statistics); NaN, with a
        ``RuntimeWarning``, when a statistic holds NaN or infinite values (those of a set holding
        a non-finite embedding: a diverged clip's).

    Example:
        >>> import numpy as np
        >>> frechet_distance(np.zeros(2), np.diag([4.0, 1.0]), np.ones(2), np.diag([1.0, 1.0]))
        3.0
    """
    import scipy.linalg

    mean_a, cov_a, mean_b, cov_b = (
        np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
        for x in (mean_a, cov_a, mean_b, cov_b)
    )
    mean_a, mean_b = np.atleast_1d(mean_a), np.atleast_1d(mean_b)
    cov_a, cov_b = np.atleast_2d(cov_a), np.atleast_2d(cov_b)
    if mean_a.shape != mean_b.shape or cov_a.shape != cov_b.shape or cov_a.shape != 2 * mean_a.shape:
        raise ValueError(
            f"expected (D,) means and (D, D) covariances of one D, got {mean_a.shape}, "
            f"{cov_a.shape}, {mean_b.shape}, {cov_b.shape}"
        )
    named = {"mean_a": mean_a, "cov_a": cov_a, "mean_b": mean_b, "cov_b": cov_b}
    bad = [name for name, x in named.items() if not np.isfinite(x).all()]
    if bad:
        warnings.warn(
            f"the Fréchet distance is NaN: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not finite "
            "(statistics of NaN or infinite embeddings, e.g. of a diverged clip)",
            RuntimeWarning,
            stacklevel=2,
        )
        return math.nan
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():
        offset = np.eye(cov_a.shape[0]) * eps
        root = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            raise ValueError(
                f"the covariance product has no real square root (imaginary part up to "
                f"{np.abs(root.imag).max():.3g}); use more clips than embedding dimensions"
            )
        root = root.real
    diff = mean_a - mean_b
    return max(0.0, float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root)))


def lpaps_distance(
    features_a: Sequence[torch.Tensor], features_b: Sequence[torch.Tensor], *, eps: float = 1e-10
) -> torch.Tensor:
    """LPAPS between two clips from their audio-encoder stage outputs, as the reference computes it.

    The reference LPAPS (the ZETA authors' ``evals/lpaps.py``, which SteerMusic's evaluation
    uses unchanged) applies image LPIPS's two steps, unit-normalise along axis 1 then sum axis 1
    and average axes 1-2, to LAION HTSAT's ``(B, tokens, C)`` stage outputs, not to the
    ``(B, C, H, W)`` maps LPIPS was written for. Axis 1 is therefore the token axis: each
    channel's activation map is unit-normalised over positions, the squared differences are
    summed over positions and averaged over channels, and the stages are summed (not averaged).
    Per stage that is ``mean_c ‖â_c − b̂_c‖² = mean_c (2 − 2 cos(a_c, b_c))`` for unit-norm maps,
    so each stage lies in [0, 4] and the total in [0, 4 × stages]. This function reproduces that
    computation on ``(B, C, H, W)`` maps (positions flattened), so scores compare with the paper's.

    Args:
        features_a, features_b: one ``(B, C_s, H_s, W_s)`` map per stage, e.g. from
            :meth:`steer.metrics.clap.ClapEncoder.audio_stages`; :class:`~steer.metrics.LPAPS`
            passes the edit's as ``features_a``. They may lie on different devices: the
            distance is computed on ``features_a``'s.
        eps: added to the norms, as in LPIPS, so an all-zero channel gives 0 rather than NaN.

    Returns:
        ``(B,)`` float64 distances on ``features_a``'s device, 0 for identical features.
    """
    for side in (features_a, features_b):
        if isinstance(side, torch.Tensor) or not all(isinstance(x, torch.Tensor) for x in side):
            raise TypeError(
                "expected a list of tensors on each side, one (B, C, H, W) map per stage, got "
                f"{'a tensor' if isinstance(side, torch.Tensor) else [type(x).__name__ for x in side]}: "
                "pass ClapEncoder.audio_stages(...)'s list, or [features] for one stage"
            )
    if len(features_a) != len(features_b) or not features_a:
        raise ValueError(
            f"expected one feature map per stage on both sides, got {len(features_a)} and "
            f"{len(features_b)}"
        )
    for stage, (a, b) in enumerate(zip(features_a, features_b)):
        if a.dim() != 4 or a.shape != b.shape:  # broadcasting made a (1, ...) side a batch's distances
            raise ValueError(
                f"stage {stage}: expected two (B, C, H, W) maps of one shape, got {tuple(a.shape)} and "
                f"{tuple(b.shape)}: pass the two clips' features from the same encoder, batch for batch"
            )
    total = 0.0
    for a, b in zip(features_a, features_b):
        a, b = (x.double().flatten(2) for x in _on_device_of(a, b))  # (B, C, positions)
        a = a / (a.norm(dim=-1, keepdim=True) + eps)
        b = b / (b.norm(dim=-1, keepdim=True) + eps)
        total = total + (a - b).square().sum(-1).mean(-1)
    return total
