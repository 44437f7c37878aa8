"""What every clip-pair metric shares: input checks, down-mixing and resampling, per-clip values."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from backbones.mel import to_mono
from steer.audio import float_samples_fix

__all__ = ["AudioPairMetric", "PerClipMetric"]


class AudioPairMetric(Metric):
    """A metric updated with pairs of (edited, source) waveforms.

    Subclasses set ``model_rate`` (the rate their model reads) and implement ``update``; they call
    :meth:`_pair` to check and convert the inputs.

    Args:
        sample_rate: rate of the waveforms passed to ``update``.
    """

    is_differentiable = False
    full_state_update = False
    model_rate: int

    def __init__(self, *, sample_rate: int) -> None:
        super().__init__()
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
        self.sample_rate = sample_rate

    def train(self, mode: bool = True) -> AudioPairMetric:
        """Set the metric's own mode; the networks it scores with stay in eval mode, as
        torchmetrics' FID keeps its Inception network. A parent module's ``.train()`` (a
        LightningModule's, at the start of fitting) turned CLAP's dropout on: scores changed with
        the other clips of the batch, LPAPS of a clip with itself was no longer 0, and batch-norm
        statistics were overwritten for good."""
        super().train(mode)
        for network in self.children():
            network.eval()
        return self

    def merge_state(self, incoming_state: dict | Metric) -> None:
        """Add another metric's clips to this one (torchmetrics' merge), counting its updates
        too, so that a metric merged from updated ones does not read as never updated."""
        super().merge_state(incoming_state)
        if isinstance(incoming_state, Metric):
            self._update_count += incoming_state.update_count

    def _mono(self, waveform: Tensor, name: str) -> Tensor:
        """``(B, samples)`` or ``(B, channels, samples)`` -> ``(B, samples')`` float32 mono at
        ``model_rate``, on the metric's device."""
        self._check(waveform, name)
        return self._at_model_rate(waveform)

    def _at_model_rate(self, waveform: Tensor) -> Tensor:
        """A checked waveform (:meth:`_check`) as ``(B, samples')`` float32 mono at ``model_rate``."""
        return to_mono(waveform.detach().to(self.device), self.sample_rate, self.model_rate)

    @staticmethod
    def _check(waveform: Tensor, name: str) -> None:
        """A ``ValueError`` naming ``name`` where it is no ``(B, samples)`` or ``(B, channels,
        samples)`` tensor of at least one clip of at least one sample."""
        if not isinstance(waveform, Tensor) or waveform.ndim not in (2, 3):
            shape = tuple(waveform.shape) if isinstance(waveform, Tensor) else type(waveform).__name__
            raise ValueError(f"{name} must be a (B, samples) or (B, channels, samples) tensor, got {shape}")
        if not waveform.is_floating_point():  # integer PCM, unscaled, changed CLAP's scores
            raise ValueError(
                f"{name} must hold floating-point samples in [-1, 1], got {waveform.dtype}: {float_samples_fix(waveform)}"
            )
        if waveform.shape[0] == 0:
            raise ValueError(f"{name} holds no clips (shape {tuple(waveform.shape)}): pass at least one clip")
        if waveform.shape[-1] == 0:
            raise ValueError(
                f"{name} holds clips of no samples (shape {tuple(waveform.shape)}): pass clips of at least one sample"
            )

    def _pair(self, edited: Tensor, source: Tensor) -> tuple[Tensor, Tensor]:
        """Both clips as ``(B, samples')`` mono at ``model_rate``, with one batch size."""
        self._check(edited, "edited")
        self._check(source, "source")
        if edited.shape[0] != source.shape[0]:
            raise ValueError(
                f"edited and source must hold the same number of clips, got {edited.shape[0]} and "
                f"{source.shape[0]}"
            )
        return self._at_model_rate(edited), self._at_model_rate(source)

    @staticmethod
    def _prompts(target_prompts: Sequence[str] | None, batch: int, metric: str) -> list[str]:
        """The target prompts as a list of ``batch`` strings, or a ``ValueError`` saying what to pass."""
        if target_prompts is None:
            raise ValueError(f"{metric} compares audio with text: pass target_prompts=[...] to update()")
        prompts = [target_prompts] if isinstance(target_prompts, str) else list(target_prompts)
        if len(prompts) != batch:
            raise ValueError(f"got {batch} clips but {len(prompts)} target prompts")
        return prompts


class PerClipMetric(AudioPairMetric):
    """A metric with one value per clip: ``values()`` returns them all, ``compute()`` their mean.

    NaN values (a silent clip's CQT-1 PCC, a diverged edit) are kept in ``values()`` and left out
    of the mean (``nanmean``), so a report can count them instead of losing them; the mean of no
    finite value is NaN.
    """

    def __init__(self, *, sample_rate: int) -> None:
        super().__init__(sample_rate=sample_rate)
        self.add_state("per_clip", default=[], dist_reduce_fx="cat")

    def _append(self, values: Tensor) -> None:
        """Store ``(B,)`` per-clip values (float64, so sums of many clips stay exact enough)."""
        self.per_clip.append(values.detach().to(device=self.device, dtype=torch.float64).reshape(-1))

    def values(self) -> Tensor:
        """``(N,)`` float64: the value of every clip seen so far, in update order, NaNs kept."""
        if isinstance(self.per_clip, Tensor):  # after a distributed sync the list is concatenated
            return self.per_clip
        if not self.per_clip:
            return torch.zeros(0, dtype=torch.float64, device=self.device)
        return dim_zero_cat(self.per_clip)

    def compute(self) -> Tensor:
        """Scalar float64: the mean over clips, NaN values left out."""
        return self.values().nanmean()
