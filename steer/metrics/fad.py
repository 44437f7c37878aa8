"""Fréchet Audio Distance between the edited clips and their sources, on a pluggable embedding.

Each clip is embedded (one row per clip, or one per frame for frame-level embeddings such as
VGGish), the rows of each set are summarised by their mean and covariance in float64, and the
Fréchet distance between the two Gaussians is computed as fadtk does
(:func:`steer.metrics.functional.frechet_distance`).

Any embedding works that follows :class:`AudioEmbedding`: CLAP's is built in
(:class:`ClapAudioEmbedding`); for VGGish, wrap a torch VGGish model you have, e.g.::

    class VGGish(torch.nn.Module):
        sample_rate = 16000
        def __init__(self, net):
            super().__init__()
            self.net = net
        def forward(self, waveform):  # (B, samples) -> (B, frames, 128)
            return torch.stack([self.net(clip.cpu().numpy(), self.sample_rate) for clip in waveform])

References:
    Fréchet Audio Distance (Kilgour et al., 2019), https://arxiv.org/abs/1812.08466;
    fadtk (Gui et al., 2024), https://github.com/microsoft/fadtk
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.utilities import dim_zero_cat

from steer.metrics.base import AudioPairMetric
from steer.metrics.clap import ClapEncoder
from steer.metrics.functional import TooFewRows, frechet_distance

__all__ = ["AudioEmbedding", "ClapAudioEmbedding", "FrechetAudioDistance"]


@runtime_checkable
class AudioEmbedding(Protocol):
    """What FAD needs of an embedding model.

    Attributes:
        sample_rate: the rate it reads; FAD resamples the clips to it.
    """

    sample_rate: int

    def __call__(self, waveform: Tensor) -> Tensor:
        """``(B, samples)`` mono at ``sample_rate`` -> ``(B, D)`` or ``(B, frames, D)``."""
        ...


class ClapAudioEmbedding(nn.Module):
    """CLAP's unit-norm audio embedding, one ``(D,)`` row per clip (D = 512 for LAION CLAP).

    Args:
        clap: a loaded :class:`~steer.metrics.clap.ClapEncoder`.
    """

    def __init__(self, clap: ClapEncoder) -> None:
        super().__init__()
        self.clap = clap
        self.sample_rate = clap.sample_rate

    def forward(self, waveform: Tensor) -> Tensor:
        """``(B, samples)`` mono at :attr:`sample_rate` -> ``(B, D)``."""
        return self.clap.audio_embeddings(waveform)


class FrechetAudioDistance(AudioPairMetric):
    """FAD between the embeddings of all edited clips and those of all source clips.

    The set-level value: 0 when both sets embed identically, larger as their distributions part.
    It needs more embedding rows than dimensions on each side for a full-rank covariance;
    with fewer, fadtk's diagonal offset keeps it finite but biased. A set holding a NaN or
    infinite embedding row (a diverged clip's) gives NaN, with a warning counting such rows.

    Calling the metric (torchmetrics' ``forward``) adds the batch, as ``update`` does, and
    returns the FAD of that batch alone: NaN for a batch with under 2 embedding rows per set,
    which has no covariance (one clip, for one-row-per-clip embeddings such as CLAP's).

    Args:
        sample_rate: rate of the waveforms passed to ``update``; they are down-mixed and
            resampled to ``embedding.sample_rate``.
        embedding: an :class:`AudioEmbedding`, e.g. :class:`ClapAudioEmbedding`; an
            ``nn.Module`` one moves with the metric's ``.to()``.
    """

    higher_is_better = False

    def __init__(self, *, sample_rate: int, embedding: AudioEmbedding) -> None:
        super().__init__(sample_rate=sample_rate)
        if not isinstance(embedding, AudioEmbedding):
            raise ValueError(
                f"embedding must be callable and have a sample_rate attribute, got "
                f"{type(embedding).__name__}"
            )
        self.embedding = embedding
        self.model_rate = embedding.sample_rate
        # Rows, not running sums: the statistics are then exactly fadtk's np.mean / np.cov.
        self.add_state("edited_rows", default=[], dist_reduce_fx="cat")
        self.add_state("source_rows", default=[], dist_reduce_fx="cat")
        self._in_forward = False

    def forward(self, edited: Tensor, source: Tensor, *, target_prompts: Sequence[str] | None = None) -> Tensor:
        """Add a batch, as :meth:`update`, and return its own FAD (scalar float64; NaN for a
        batch with under 2 embedding rows per set)."""
        # torchmetrics computes the batch value between swapping the accumulated state out and
        # back in: a TooFewRows raised there would lose every clip added before.
        self._in_forward = True
        try:
            return super().forward(edited, source, target_prompts=target_prompts)
        finally:
            self._in_forward = False

    def _rows(self, waveform: Tensor) -> Tensor:
        with torch.no_grad():
            rows = self.embedding(waveform)
        if rows.ndim not in (2, 3):
            raise ValueError(
                f"the embedding must return (B, D) or (B, frames, D), got {tuple(rows.shape)}"
            )
        return rows.reshape(-1, rows.shape[-1]).to(device=self.device, dtype=torch.float64)

    def update(
        self, edited: Tensor, source: Tensor, *, target_prompts: Sequence[str] | None = None
    ) -> None:
        """Add a batch: ``edited`` and ``source`` ``(B, samples)`` or ``(B, channels, samples)``;
        ``target_prompts`` is not used."""
        edited, source = self._pair(edited, source)
        self.edited_rows.append(self._rows(edited))
        self.source_rows.append(self._rows(source))

    def compute(self) -> Tensor:
        """Scalar float64: the Fréchet distance between the edited and the source rows; NaN, with
        a ``RuntimeWarning``, where a row is not finite; :class:`TooFewRows` (a ``ValueError``)
        where a set has under 2 rows (NaN instead inside ``forward``)."""
        sets = [
            dim_zero_cat(rows).cpu().numpy() if len(rows) else np.zeros((0, 0))
            for rows in (self.edited_rows, self.source_rows)
        ]
        fewest = min(rows.shape[0] for rows in sets)
        if fewest < 2:
            if self._in_forward:
                return torch.tensor(float("nan"), dtype=torch.float64)
            raise TooFewRows(f"FAD needs at least 2 embedding rows per set, got {fewest}")
        bad = [int((~np.isfinite(rows).all(axis=1)).sum()) for rows in sets]
        if any(bad):
            counts = " and ".join(f"{n} of {len(rows)} {side}" for n, rows, side in zip(bad, sets, ("edited", "source")))
            warnings.warn(
                f"FAD is NaN: {counts} embedding rows are not finite (NaN or infinite: a diverged clip?)",
                RuntimeWarning,
                stacklevel=2,
            )
            return torch.tensor(float("nan"), dtype=torch.float64)
        statistics = [s for rows in sets for s in (rows.mean(axis=0), np.atleast_2d(np.cov(rows, rowvar=False)))]
        return torch.tensor(frechet_distance(*statistics), dtype=torch.float64)
