"""Evaluation metrics: pure functions in :mod:`steer.metrics.functional`, the instrument
classifier in :mod:`steer.metrics.instrument`."""

from steer.metrics.functional import (
    cqt1_pcc,
    cqt1_pcc_batch,
    cqt_top1,
    instrument_accuracy,
    log_mel_distance,
)
from steer.metrics.instrument import InstrumentClassifier

__all__ = [
    "InstrumentClassifier",
    "cqt1_pcc",
    "cqt1_pcc_batch",
    "cqt_top1",
    "instrument_accuracy",
    "log_mel_distance",
]
