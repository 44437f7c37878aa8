"""Evaluation metrics: pure functions in :mod:`steer.metrics.functional`, ``torchmetrics``
modules over them (one per metric of the paper, chosen by name in
:mod:`steer.metrics.collection`), and the instrument classifier in
:mod:`steer.metrics.instrument`.

The modules need the ``metrics`` extra (torchmetrics); they are imported on first use, so the
pure functions stay importable without it.
"""

from backbones._lazy import lazy_names
from steer.metrics.functional import (
    cqt1_pcc,
    cqt1_pcc_batch,
    cqt_min_seconds,
    cqt_top1,
    frechet_distance,
    instrument_accuracy,
    log_mel_distance,
    lpaps_distance,
)
from steer.metrics.instrument import InstrumentClassifier

_LAZY = {
    "AudioPairMetric": "base",
    "PerClipMetric": "base",
    "CDPAM": "cdpam_distance",
    "ClapEncoder": "clap",
    "CLAPScore": "clap",
    "METRICS": "collection",
    "build_metrics": "collection",
    "AudioEmbedding": "fad",
    "ClapAudioEmbedding": "fad",
    "FrechetAudioDistance": "fad",
    "LPAPS": "lpaps",
    "CQT1PCC": "spectral",
    "LogMelDistance": "spectral",
}

__all__ = [
    "CDPAM",
    "CQT1PCC",
    "LPAPS",
    "METRICS",
    "AudioEmbedding",
    "AudioPairMetric",
    "CLAPScore",
    "ClapAudioEmbedding",
    "ClapEncoder",
    "FrechetAudioDistance",
    "InstrumentClassifier",
    "LogMelDistance",
    "PerClipMetric",
    "build_metrics",
    "cqt1_pcc",
    "cqt1_pcc_batch",
    "cqt_min_seconds",
    "cqt_top1",
    "frechet_distance",
    "instrument_accuracy",
    "log_mel_distance",
    "lpaps_distance",
]


__getattr__, __dir__ = lazy_names("steer.metrics", _LAZY, __all__, extra="metrics")
