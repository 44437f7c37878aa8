"""Metrics chosen by name, as the ``steer eval`` command and the manifest runner build them.

Example:
    >>> sorted(METRICS)
    ['cdpam', 'clap', 'cqt1_pcc', 'fad', 'log_mel', 'lpaps']
    >>> build_metrics(["cqt1_pcc", "log_mel"], sample_rate=16000)["cqt1_pcc"].sample_rate
    16000
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from steer.metrics.cdpam_distance import CDPAM
from steer.metrics.clap import ClapEncoder, CLAPScore
from steer.metrics.fad import ClapAudioEmbedding, FrechetAudioDistance
from steer.metrics.lpaps import LPAPS
from steer.metrics.spectral import CQT1PCC, LogMelDistance

__all__ = ["CLAP_MODEL_HINT", "METRICS", "build_metrics"]

METRICS: dict[str, type[Metric]] = {
    "cqt1_pcc": CQT1PCC,
    "clap": CLAPScore,
    "fad": FrechetAudioDistance,
    "lpaps": LPAPS,
    "cdpam": CDPAM,
    "log_mel": LogMelDistance,
}

# The checkpoint the paper scores with (LAION CLAP, music); the weights cannot be fetched here.
CLAP_MODEL_HINT = "laion/larger_clap_music"
_NEEDS_CLAP = ("clap", "fad", "lpaps")


def build_metrics(
    names: Sequence[str],
    *,
    sample_rate: int,
    clap_model: str | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Metric]:
    """Build the named metrics, sharing one CLAP model between those that need it.

    Args:
        names: CLI names, keys of :data:`METRICS`.
        sample_rate: rate of the waveforms that will be passed to ``update``.
        clap_model: Hub repo id or local folder of a ``ClapModel`` + ``ClapProcessor``; needed by
            "clap", "fad" (CLAP audio embeddings) and "lpaps" (CLAP's audio encoder).
        device: where the metrics (and their models) run.

    Returns:
        ``{name: metric}`` in the order of ``names``, each on ``device``.

    Raises:
        ValueError: for an unknown name, or for a metric whose model is missing.
    """
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known metrics: {sorted(METRICS)}")
    needs_clap = [name for name in names if name in _NEEDS_CLAP]
    if needs_clap and clap_model is None:
        raise ValueError(
            f"{', '.join(needs_clap)} need(s) a CLAP model: download {CLAP_MODEL_HINT} and pass "
            f"--clap-model PATH (clap_model=PATH in Python)"
        )
    encoder = ClapEncoder.from_pretrained(clap_model) if needs_clap else None
    metrics: dict[str, Metric] = {}
    for name in names:
        if name in ("clap", "lpaps"):
            metric = METRICS[name](sample_rate=sample_rate, model=encoder)
        elif name == "fad":
            metric = FrechetAudioDistance(sample_rate=sample_rate, embedding=ClapAudioEmbedding(encoder))
        else:
            metric = METRICS[name](sample_rate=sample_rate)
        metrics[name] = metric.to(device)
    return metrics
