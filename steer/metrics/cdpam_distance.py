"""CDPAM: the contrastive deep perceptual audio metric, from the ``cdpam`` package.

The package ships its trained weights (26 M parameters, 106 MB). It is an optional dependency
(``pip install steer[cdpam]``: cdpam itself declares no requirements but imports librosa and
resampy, which pull in numba and scikit-learn). Clips are given to it as the SteerMusic authors
do (their ``eval/CDPAM.py`` reads files with ``cdpam.load_audio``): mono at 22.05 kHz, scaled to
the 16-bit integer range and rounded. Resampling here is torchaudio's, not librosa's, so scores
can differ from file-based ones in the last digits.

References:
    CDPAM: Contrastive learning for perceptual audio similarity (Manocha et al., 2021),
    https://arxiv.org/abs/2102.05109
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from steer.metrics.base import PerClipMetric

__all__ = ["CDPAM"]


class CDPAM(PerClipMetric):
    """CDPAM distance between each edited clip and its source; 0 for identical clips.

    Args:
        sample_rate: rate of the waveforms passed to ``update``; they are down-mixed and
            resampled to 22.05 kHz.

    Raises:
        ValueError: when the ``cdpam`` package is not installed.
    """

    higher_is_better = False
    model_rate = 22050

    def __init__(self, *, sample_rate: int) -> None:
        super().__init__(sample_rate=sample_rate)
        try:
            import cdpam
        except ImportError as error:
            raise ValueError(
                f"CDPAM needs the cdpam package ({error}): pip install cdpam librosa resampy "
                f"(or pip install 'steer[cdpam]')"
            ) from error
        # cdpam 0.0.6 pickles its weights in a form torch >= 2.6's weights-only loader refuses;
        # the file ships inside the package whose code was just imported, so it gets the same
        # trust: full unpickling, for this one load only.
        previous = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
        os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY")
                self._cdpam = cdpam.CDPAM(dev="cpu")
        finally:
            if previous is None:
                del os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"]
            else:
                os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = previous
        # Registered as a submodule so that the metric's .to() moves it.
        self.network = self._cdpam.model.requires_grad_(False)

    def update(
        self, edited: Tensor, source: Tensor, *, target_prompts: Sequence[str] | None = None
    ) -> None:
        """Add a batch: ``edited`` and ``source`` ``(B, samples)`` or ``(B, channels, samples)``;
        ``target_prompts`` is not used."""
        edited, source = self._pair(edited, source)
        # cdpam.load_audio's input range: 16-bit integers held in floats.
        edited, source = torch.round(edited * 32768), torch.round(source * 32768)
        self._cdpam.device = self.device  # CDPAM.forward moves its inputs there
        with torch.no_grad():
            self._append(self._cdpam.forward(source, edited))
