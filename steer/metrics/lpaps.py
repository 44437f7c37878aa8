"""LPAPS: an LPIPS-style distance on the stage outputs of CLAP's audio encoder, no learned layers.

As the SteerMusic authors compute it (their ``eval/lpaps.py`` and ``eval/lpaps_score.py``, taken
from the ZETA authors' evaluation code): both clips go through LAION CLAP's audio encoder (HTSAT),
the four stage outputs are compared by :func:`steer.metrics.functional.lpaps_distance` (see
there which axis is normalised, and why), and, for clips longer than one window, the clips are cut
into 10-s windows with 10 % overlap and the window scores are averaged. An edit and its source of
different lengths are compared over their common start.

References:
    Zero-Shot Unsupervised and Text-Based Audio Editing Using DDPM Inversion (Manor & Michaeli,
    2024), https://arxiv.org/abs/2402.10009; LPIPS (Zhang et al., 2018),
    https://arxiv.org/abs/1801.03924
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from steer.metrics.base import PerClipMetric
from steer.metrics.clap import ClapEncoder
from steer.metrics.functional import lpaps_distance

__all__ = ["LPAPS"]


class LPAPS(PerClipMetric):
    """LPAPS between each edited clip and its source; 0 for identical clips, lower is closer.
    NaN, with a warning, where their common start is shorter than one STFT window of CLAP's
    features (:attr:`~steer.metrics.clap.ClapEncoder.shortest`, 0.021 s).

    Args:
        sample_rate: rate of the waveforms passed to ``update``; they are down-mixed and
            resampled to the processor's rate (48 kHz for LAION CLAP).
        model: a Hub repo id or local folder holding a ``ClapModel`` + ``ClapProcessor``, or a
            loaded :class:`~steer.metrics.clap.ClapEncoder` (to share one between metrics).
        window_seconds: window length (the reference: 10 s, CLAP's input length).
        overlap: overlap of consecutive windows, in [0, 1) (the reference: 0.1).
    """

    higher_is_better = False

    def __init__(
        self,
        *,
        sample_rate: int,
        model: str | Path | ClapEncoder,
        window_seconds: float = 10.0,
        overlap: float = 0.1,
    ) -> None:
        super().__init__(sample_rate=sample_rate)
        if window_seconds <= 0 or not 0 <= overlap < 1:
            raise ValueError(
                f"need window_seconds > 0 and 0 <= overlap < 1, got {window_seconds} and {overlap}"
            )
        self.clap = model if isinstance(model, ClapEncoder) else ClapEncoder.from_pretrained(model)
        self.model_rate = self.clap.sample_rate
        self.window = round(window_seconds * self.model_rate)
        self.hop = max(1, int(self.window * (1 - overlap)))

    def update(
        self, edited: Tensor, source: Tensor, *, target_prompts: Sequence[str] | None = None
    ) -> None:
        """Add a batch: ``edited`` and ``source`` ``(B, samples)`` or ``(B, channels, samples)``
        whose lengths may differ (their common start is compared); ``target_prompts`` is not used."""
        common = min(edited.shape[-1], source.shape[-1])
        if common == 0:
            raise ValueError(
                f"LPAPS compares the clips' common start, and edited {tuple(edited.shape)} and source "
                f"{tuple(source.shape)} have none: pass clips of at least one sample"
            )
        # Both cut to their common start before resampling, as the other paired metrics compare
        # it: windowing each clip as it is padded the shorter one's last window by repetition
        # where the longer one had audio, so a copy 160 samples short scored 0.047, not 0.
        edited, source = self._pair(edited[..., :common], source[..., :common])
        if (nan := self.clap.too_short(edited, "LPAPS")) is not None:  # their common start
            self._append(nan)
            return
        # As the reference: windows start every hop; the last one may be short (the processor
        # pads it by repetition).
        starts = range(0, edited.shape[-1], self.hop)
        scores = [
            lpaps_distance(
                self.clap.audio_stages(edited[:, start : start + self.window]),
                self.clap.audio_stages(source[:, start : start + self.window]),
            )
            for start in starts
        ]
        self._append(sum(scores) / len(scores))
