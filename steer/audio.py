"""Reading and writing audio files (soundfile), with errors that say what went wrong."""

from __future__ import annotations

import numbers
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor


class NonFiniteAudio(ValueError):
    """A waveform holding NaN or infinite samples (a diverged edit): refused by :class:`Audio`
    and :func:`load_audio`, told apart from other bad input by callers that score such edits
    as NaN (``steer eval``)."""


@dataclass(frozen=True)
class Audio:
    """A clip: ``waveform`` of shape ``(channels, samples)``, floating point in [-1, 1], at
    ``sample_rate`` (Hz); ``(samples,)`` is kept as one channel ``(1, samples)``, and
    ``(B, channels, samples)`` is a batch of equal-length clips.

    Raises:
        TypeError: for a waveform that is not a tensor.
        ValueError: for a waveform that is not floating point or has no 1 to 3 dimensions, or a
            sample rate that is not a positive integer.
        NonFiniteAudio: (a ``ValueError``) for a waveform holding NaN or infinite samples.
    """

    waveform: Tensor
    sample_rate: int

    def __post_init__(self) -> None:
        waveform, rate = self.waveform, self.sample_rate
        if not isinstance(waveform, Tensor):
            raise TypeError(f"Audio's waveform must be a torch.Tensor, got {type(waveform).__name__}: "
                            "wrap a NumPy array with torch.from_numpy")
        if not waveform.is_floating_point():
            raise ValueError(f"Audio's waveform must be floating point in [-1, 1], got {waveform.dtype}: "
                             "divide 16-bit samples by 32768")
        if not 1 <= waveform.dim() <= 3:
            raise ValueError(f"Audio's waveform must be (channels, samples), got shape {tuple(waveform.shape)}")
        if waveform.dim() >= 2 and waveform.shape[-2] > waveform.shape[-1]:
            raise ValueError(_transposed(waveform.shape))
        if not torch.isfinite(waveform).all():
            raise NonFiniteAudio("the audio holds NaN or infinite samples")
        if isinstance(rate, bool) or not isinstance(rate, numbers.Integral) or rate <= 0:
            raise ValueError(f"the sample rate must be a positive whole number of Hz, got {rate!r}")
        if waveform.dim() == 1:
            object.__setattr__(self, "waveform", waveform[None])
        object.__setattr__(self, "sample_rate", int(rate))

    @property
    def seconds(self) -> float:
        return self.waveform.shape[-1] / self.sample_rate


def _transposed(shape: torch.Size) -> str:
    return (
        f"a waveform of shape {tuple(shape)} has more channels than samples: pass (channels, samples), "
        "e.g. the transpose of a (samples, channels) array as soundfile reads it"
    )


def load_audio(path: str | os.PathLike) -> Audio:
    """Read any format soundfile reads (wav, flac, ogg, …) into an :class:`Audio`; a
    ``ValueError`` naming the file when it cannot (:class:`NonFiniteAudio` for NaN samples)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder: name an audio file")
    if not path.is_file():
        raise ValueError(f"input file not found: {path}")
    try:
        data, sample_rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as error:
        raise ValueError(f"cannot read audio from {path}: {error}") from error
    if data.shape[0] == 0:
        raise ValueError(f"audio file is empty: {path}")
    try:
        return Audio(torch.from_numpy(np.ascontiguousarray(data.T)), int(sample_rate))
    except NonFiniteAudio as error:  # a float file may hold NaN
        raise NonFiniteAudio(f"{path}: {error}") from error
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def audio_format(path: Path) -> str:
    """soundfile's format name for ``path``'s suffix; ``ValueError`` for one it cannot write."""
    fmt = path.suffix.lstrip(".").upper()
    if not fmt or not sf.check_format(fmt):
        raise ValueError(f"unsupported audio format {path.suffix!r}: use .wav, .flac or .ogg")
    return fmt


def save_audio(
    path: str | os.PathLike,
    waveform: Tensor,
    sample_rate: int,
    *,
    overwrite: bool = True,
) -> Path:
    """Write ``(samples,)`` or ``(channels, samples)`` as 16-bit PCM (or a soundfile format by suffix).

    The file is written to a temporary name and renamed, so an interrupted write never leaves a
    half file under ``path``. With ``overwrite=False`` an existing file is an error. Samples
    beyond ±1 are clipped to it, with a ``RuntimeWarning`` counting them (scale the waveform
    first to keep them).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"output folder does not exist: {path.parent}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder: name an audio file")
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists; choose another name or allow overwriting")
    fmt = audio_format(path)
    data = waveform.detach().float().cpu()
    if data.dim() == 1:
        data = data[None]
    if data.dim() != 2:
        raise ValueError(f"expected (samples,) or (channels, samples), got {tuple(data.shape)}")
    if data.shape[0] > data.shape[1]:
        raise ValueError(_transposed(data.shape))
    bad = int((~data.isfinite()).sum())
    if bad:
        raise ValueError(f"{bad} samples are NaN or infinite (a diverged edit?): nothing written to {path}")
    loud = int((data.abs() > 1).sum())
    if loud:
        warnings.warn(
            f"{path.name}: {loud} of {data.numel()} samples ({100 * loud / data.numel():.2g} %) lie beyond ±1 "
            f"(peak {data.abs().max():.3g}) and are clipped: scale the waveform first to keep them",
            RuntimeWarning,
            stacklevel=2,
        )
    data = data.clamp(-1, 1).numpy().T
    tmp = path.with_name(f".{path.name}.partial")
    try:
        sf.write(tmp, data, sample_rate, format=fmt)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
