"""Evaluation metrics: pure functions in :mod:`steer.metrics.functional`."""

from steer.metrics.functional import cqt1_pcc, cqt1_pcc_batch, cqt_top1

__all__ = ["cqt1_pcc", "cqt1_pcc_batch", "cqt_top1"]
