"""CLAP for evaluation: a loaded ``ClapModel`` + ``ClapProcessor``, and the CLAP score.

The CLAP score of an edit is the cosine between the CLAP embedding of the edited audio and that
of the target prompt (the paper uses LAION CLAP's music checkpoint, ``laion/larger_clap_music`` on
the Hub). The same :class:`ClapEncoder` gives the audio embeddings FAD is computed on and the
audio-encoder stages LPAPS compares, so one loaded model serves all three metrics.

References:
    CLAP: Learning Audio Concepts from Natural Language Supervision / LAION-CLAP (Wu et al., 2023),
    https://arxiv.org/abs/2211.06687
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import warnings

import numpy as np
import torch
from torch import Tensor, nn
from transformers import ClapModel, ClapProcessor

from steer.metrics.base import PerClipMetric
from steer.metrics.functional import _too_short

__all__ = ["CLAPScore", "ClapEncoder"]

#: The seed of numpy's RNG while the feature extractor picks a long clip's crop or chunks.
_CROP_SEED = 0


@contextmanager
def _fixed_numpy_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG (which the CLAP feature extractor draws from) for the block, and
    put its previous state back afterwards, so that callers' numpy draws are not disturbed."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


class ClapEncoder(nn.Module):
    """A CLAP model and its processor, in eval mode and without gradients.

    Args:
        model: the ``ClapModel``.
        processor: its ``ClapProcessor`` (audio feature extractor + tokenizer).
    """

    def __init__(self, *, model: ClapModel, processor: ClapProcessor) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.processor = processor

    @classmethod
    def from_pretrained(cls, model: str | Path) -> ClapEncoder:
        """Load a ``ClapModel`` and ``ClapProcessor`` from a Hub repo id or a local folder."""
        try:
            return cls(
                model=ClapModel.from_pretrained(model),
                processor=ClapProcessor.from_pretrained(model),
            )
        except OSError as error:
            raise ValueError(
                f"cannot load a CLAP model and processor from {str(model)!r} ({error}); pass a "
                f"local folder or Hub id holding both, e.g. laion/larger_clap_music"
            ) from error

    @property
    def sample_rate(self) -> int:
        """The rate the audio feature extractor expects (48 kHz for LAION CLAP)."""
        return self.processor.feature_extractor.sampling_rate

    @property
    def shortest(self) -> int:
        """The fewest samples at :attr:`sample_rate` the audio features read: one STFT window
        (1024 at 48 kHz, 0.021 s). The extractor repeats a shorter clip to its input length, so
        a clip of a few samples became a buzz that LPAPS scored 0 against its source's start."""
        return self.processor.feature_extractor.fft_window_size

    def too_short(self, waveform: Tensor, what: str) -> Tensor | None:
        """For clips ``(B, samples)`` at :attr:`sample_rate` shorter than :attr:`shortest`, a
        ``(B,)`` NaN score and a ``RuntimeWarning`` saying so (as the log-mel distance does);
        ``None`` for clips long enough."""
        samples = waveform.shape[-1]
        if samples >= self.shortest:
            return None
        warnings.warn(f"{what} is NaN: {_too_short(what, samples, self.shortest, self.sample_rate)}", RuntimeWarning, stacklevel=3)
        return torch.full(waveform.shape[:1], float("nan"))

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _audio_inputs(self, waveform: Tensor) -> dict[str, Tensor]:
        """``(B, samples)`` mono at :attr:`sample_rate` -> the processor's model inputs.

        The feature extractor pads short clips (LAION: repeated to 10 s) and, for clips longer
        than its ``max_length_s``, crops a random window (``rand_trunc``) or fuses random chunks
        (``fusion``), as LAION CLAP does, drawing the positions from numpy's global RNG. So each
        clip is featurised alone under a fixed seed (:func:`_fixed_numpy_seed`): its crop depends
        on its length only, not on the batch it comes in or on the RNG's state, so scores repeat
        and identical clips embed identically. Alone, a ``fusion`` clip no longer than
        ``max_length_s`` is marked "longer" (fused), as LAION does in a batch holding no longer clip.
        """
        features = []
        for clip in waveform.detach().float().cpu().numpy():
            with _fixed_numpy_seed(_CROP_SEED):
                features.append(self.processor(audio=[clip], sampling_rate=self.sample_rate, return_tensors="pt"))
        return {key: torch.cat([f[key] for f in features]).to(self._device) for key in features[0]}

    @torch.no_grad()
    def audio_embeddings(self, waveform: Tensor) -> Tensor:
        """``(B, samples)`` mono at :attr:`sample_rate` -> ``(B, D)`` unit-norm audio embeddings."""
        return self.model.get_audio_features(**self._audio_inputs(waveform)).pooler_output

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> Tensor:
        """``B`` prompts -> ``(B, D)`` unit-norm text embeddings; a prompt longer than the text
        encoder's position embeddings reach (512 tokens for LAION's CLAP) is cut there (it
        raised an index error that stopped a whole ``steer eval``)."""
        # RoBERTa numbers positions from padding_idx + 1 = 2
        longest = self.model.config.text_config.max_position_embeddings - 2
        inputs = self.processor(text=list(prompts), return_tensors="pt", padding=True, truncation=True, max_length=longest)
        inputs = {key: value.to(self._device) for key, value in inputs.items()}
        return self.model.get_text_features(**inputs).pooler_output

    @torch.no_grad()
    def audio_stages(self, waveform: Tensor) -> tuple[Tensor, ...]:
        """The output of each stage of the audio encoder (HTSAT, a Swin transformer).

        Args:
            waveform: ``(B, samples)`` mono at :attr:`sample_rate`.

        Returns:
            one ``(B, C_s, H_s, W_s)`` feature map per stage (4 in LAION CLAP), after the stage's
            patch merging as in LAION's ``layer(x)``; the patch embedding before the first stage
            is left out.
        """
        inputs = self._audio_inputs(waveform)
        output = self.model.audio_model(**inputs, output_hidden_states=True)
        return tuple(output.hidden_states[1:])


class CLAPScore(PerClipMetric):
    """Cosine between the CLAP embedding of each edited clip and that of its target prompt.

    Per clip in [-1, 1], higher when the audio fits the prompt better; ``source`` is not used.
    NaN, with a warning, for a clip shorter than one STFT window (:attr:`ClapEncoder.shortest`).
    A clip longer than the feature extractor reads (10 s for LAION CLAP; AudioLDM2's clips are
    10.24 s) is cropped or chunked as LAION does, at positions fixed per clip length (see
    :meth:`ClapEncoder._audio_inputs`), so a clip scores the same in any batch and on every run.

    Args:
        sample_rate: rate of the waveforms passed to ``update``; they are down-mixed and
            resampled to the processor's rate (48 kHz for LAION CLAP).
        model: a Hub repo id or local folder holding a ``ClapModel`` + ``ClapProcessor``, or a
            loaded :class:`ClapEncoder` (to share one between metrics).
    """

    higher_is_better = True

    def __init__(self, *, sample_rate: int, model: str | Path | ClapEncoder) -> None:
        super().__init__(sample_rate=sample_rate)
        self.clap = model if isinstance(model, ClapEncoder) else ClapEncoder.from_pretrained(model)
        self.model_rate = self.clap.sample_rate

    def update(
        self, edited: Tensor, source: Tensor, *, target_prompts: Sequence[str] | None = None
    ) -> None:
        """Add a batch: ``edited`` and ``source`` ``(B, samples)`` or ``(B, channels, samples)``,
        one target prompt per clip."""
        prompts = self._prompts(target_prompts, edited.shape[0], "the CLAP score")
        edited = self._mono(edited, "edited")
        if (nan := self.clap.too_short(edited, "the CLAP score")) is not None:
            self._append(nan)
            return
        audio, text = self.clap.audio_embeddings(edited), self.clap.text_embeddings(prompts)
        # Both are unit-norm already; normalising again keeps the cosine exact in float64.
        self._append(torch.cosine_similarity(audio.double(), text.double(), dim=-1))
