"""Reading and writing audio files (soundfile), with errors that say what went wrong."""

from __future__ import annotations

import contextlib
import io
import numbers
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor


class NonFiniteAudio(ValueError):
    """A waveform holding NaN or infinite samples (a diverged edit): refused by :class:`Audio`,
    :func:`load_audio` and :func:`save_audio`, told apart from other bad input by callers that score such edits
    as NaN (``steer eval``)."""


@dataclass(frozen=True, eq=False)  # holds tensors: == by identity (by field raised)
class Audio:
    """A clip: ``waveform`` of shape ``(channels, samples)``, floating point in [-1, 1], at
    ``sample_rate`` (Hz); ``(samples,)`` is kept as one channel ``(1, samples)``, and
    ``(B, channels, samples)`` is a batch of equal-length clips.

    Raises:
        TypeError: for a waveform that is not a tensor.
        ValueError: for a waveform that is not floating point, has no 1 to 3 dimensions or no
            samples, is on the meta device, or a sample rate that is not a positive integer below
            2**31 (soundfile's limit).
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
            raise ValueError(f"Audio's waveform must be floating point in [-1, 1], got {waveform.dtype}: {float_samples_fix(waveform)}")
        if not 1 <= waveform.dim() <= 3:
            raise ValueError(f"Audio's waveform must be (channels, samples), got shape {tuple(waveform.shape)}")
        if waveform.numel() == 0:
            raise ValueError(f"Audio's waveform of shape {tuple(waveform.shape)} holds no samples: pass a clip "
                             "of at least one channel and one sample")
        if waveform.dim() >= 2 and waveform.shape[-2] > waveform.shape[-1]:
            raise ValueError(_transposed(waveform.shape))
        if waveform.is_meta:
            raise ValueError("Audio's waveform is on the meta device, which holds no samples: pass a clip on cpu or cuda")
        if not torch.isfinite(waveform).all():
            raise NonFiniteAudio("the audio holds NaN or infinite samples")
        if waveform.dim() == 1:
            object.__setattr__(self, "waveform", waveform[None])
        object.__setattr__(self, "sample_rate", _whole_rate(rate))

    @property
    def seconds(self) -> float:
        return self.waveform.shape[-1] / self.sample_rate


def float_samples_fix(waveform: Tensor) -> str:
    """How to make a waveform of a dtype that is not floating point one that is."""
    if waveform.is_complex():
        return "a recording is real: pass its real part (waveform.real) or its magnitude"
    if waveform.dtype == torch.bool:
        return "pass samples in [-1, 1]"
    return "divide 16-bit samples by 32768 (32-bit ones by 2**31)"


def _whole_rate(rate: int) -> int:
    """``rate`` as an ``int``, or a ``ValueError`` unless it is a positive whole number of Hz
    that soundfile can write (below 2**31)."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Integral) or not 0 < rate < 2**31:
        raise ValueError(f"the sample rate must be a positive whole number of Hz below 2**31, got {rate!r}")
    return int(rate)


def _transposed(shape: torch.Size) -> str:
    return (
        f"a waveform of shape {tuple(shape)} has more channels than samples: pass (channels, samples), "
        "e.g. the transpose of a (samples, channels) array as soundfile reads it"
    )


def load_audio(path: str | os.PathLike) -> Audio:
    """Read any format soundfile reads (wav, flac, ogg, …) into an :class:`Audio`; a
    ``ValueError`` naming the file when it cannot (:class:`NonFiniteAudio` for NaN samples)."""
    path = Path(path)
    # os.path's checks: Path's raise OSError for a name longer than the file system allows
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder: name an audio file")
    if not os.path.isfile(path):
        raise ValueError(f"input file not found: {path}")
    try:
        data, sample_rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as error:
        raise ValueError(f"cannot read audio from {path}: {error}") from error
    if data.shape[0] == 0:
        raise ValueError(f"audio file is empty: {path} holds no samples; name a file that holds audio")
    try:
        return Audio(torch.from_numpy(np.ascontiguousarray(data.T)), int(sample_rate))
    except NonFiniteAudio as error:  # a float file may hold NaN
        raise NonFiniteAudio(f"{path}: {error}") from error
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def audio_format(path: Path) -> str:
    """soundfile's format name for ``path``'s suffix (``.mp3`` → ``"MP3"``); a ``ValueError``
    listing :func:`writable_suffixes` for a suffix that names no format it can write."""
    fmt = path.suffix.lstrip(".").upper()
    if not fmt or not sf.check_format(fmt):
        raise ValueError(
            f"unsupported audio format {path.suffix!r}: use {', '.join(writable_suffixes())} "
            f"(what soundfile {sf.__version__} with libsndfile {sf.__libsndfile_version__} writes)"
        )
    return fmt


def check_format_takes(path: str | os.PathLike, channels: int, sample_rate: int) -> None:
    """Refuse, before an edit, an output whose format cannot hold ``channels`` channels at
    ``sample_rate`` Hz (``.xi`` and a few others write mono alone): a few silent samples are
    written in memory as :func:`save_audio` would write the file. A ``ValueError`` naming the file,
    its format and the fix."""
    path = Path(path)
    fmt = audio_format(path)
    try:
        sf.write(io.BytesIO(), np.zeros((16, channels), dtype=np.float32), sample_rate, format=fmt)
    except sf.LibsndfileError as error:
        said = "mono" if channels == 1 else f"{channels}-channel"
        raise ValueError(
            f"cannot write {path} as {fmt}: the format takes no {said} audio at {sample_rate} Hz "
            f"({error.error_string.removeprefix('Error : ')}), what this backbone makes; name a .wav or .flac output"
        ) from None


_COMMON_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def writable_suffixes() -> list[str]:
    """The file suffixes :func:`save_audio` takes: the formats the installed libsndfile writes
    with their default encoding (it reports them, so MP3 is there from libsndfile 1.1 on), the
    common ones first, then the rest by name."""
    suffixes = sorted(f".{fmt.lower()}" for fmt in sf.available_formats() if sf.check_format(fmt))
    rest = len(_COMMON_SUFFIXES)
    return sorted(suffixes, key=lambda suffix: _COMMON_SUFFIXES.index(suffix) if suffix in _COMMON_SUFFIXES else rest)


def _partial(path: Path) -> Path:
    """The temporary file :func:`save_audio` writes before renaming it to ``path``:
    ``.{name}.partial``, the name cut short where the whole would not fit in one file name."""
    name, limit = path.name, _name_max(path.parent)
    while len(name) > 1 and len(os.fsencode(f".{name}.partial")) > limit:
        name = name[:-1]
    return path.with_name(f".{name}.partial")


def _name_max(folder: Path) -> int:
    """The most bytes a file name may have in ``folder``: the file system's limit where the
    system tells it (POSIX ``pathconf``), else the usual 255."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # no pathconf (Windows), no such folder
        return 255
    return limit if limit > 0 else sys.maxsize  # -1: no fixed limit


def check_writable(path: str | os.PathLike) -> Path:
    """Refuse, before any work, a file that cannot be created at ``path``: a name longer than the
    file system takes, or a folder that is missing or where no file can be made (one read-only or
    virtual, such as ``/proc``). A ``ValueError`` naming the file and the reason.

    Creates and removes a file of its own, uniquely named, in ``path``'s folder (so processes
    checking one folder at once never remove each other's).
    """
    path = Path(path)
    size, limit = len(os.fsencode(path.name)), _name_max(path.parent)
    if size > limit:
        raise ValueError(
            f"cannot write {path}: its name is {size} bytes long, more than the {limit} a file name may "
            "have: shorten it"
        )
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".steer-check-"):
            pass
    except OSError as error:
        raise ValueError(_uncreatable(path, error)) from None
    return path


def _uncreatable(path: Path, error: OSError) -> str:
    return (
        f"cannot write {path}: no file can be created in {path.parent} ({error.strerror or error}): "
        "choose a folder you can write to"
    )


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

    Raises:
        TypeError: for a waveform that is not a tensor.
        ValueError: naming ``path``, for a file that cannot be written (its folder missing or
            unwritable, its name too long, a sample rate that is not a positive whole number below
            2**31 or that the format does not take, an empty waveform of another shape), or for
            a waveform that is not floating point.
        NonFiniteAudio: (a ``ValueError``) for a waveform holding NaN or infinite samples; nothing
            is written.
    """
    path = Path(path)
    # os.path's checks: Path's raise OSError for a name longer than the file system allows
    if not os.path.isdir(path.parent):
        if os.path.exists(path.parent):
            raise ValueError(f"{path.parent} is a file, not a folder: name a file in a folder")
        raise ValueError(f"output folder does not exist: {path.parent}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder: name an audio file")
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"{path} exists; choose another name or allow overwriting")
    fmt = audio_format(path)
    try:
        sample_rate = _whole_rate(sample_rate)
    except ValueError as error:
        raise ValueError(f"cannot write {path}: {error}") from None
    if not isinstance(waveform, Tensor):
        raise TypeError(f"save_audio's waveform must be a torch.Tensor, got {type(waveform).__name__}: "
                        "wrap a NumPy array with torch.from_numpy")
    if not waveform.is_floating_point():  # as Audio: int16 samples were clipped to ±1
        raise ValueError(f"save_audio's waveform must be floating point in [-1, 1], got {waveform.dtype}: {float_samples_fix(waveform)}")
    data = waveform.detach().float().cpu()
    if data.dim() == 1:
        data = data[None]
    if data.dim() != 2:
        raise ValueError(f"expected (samples,) or (channels, samples), got {tuple(data.shape)}")
    if data.shape[1] == 0:
        raise ValueError(f"cannot write {path}: the waveform of shape {tuple(data.shape)} has no samples")
    if data.shape[0] > data.shape[1]:
        raise ValueError(_transposed(data.shape))
    bad = int((~data.isfinite()).sum())
    if bad:
        raise NonFiniteAudio(
            f"{bad} sample{'s are' if bad > 1 else ' is'} NaN or infinite (a diverged edit?): nothing written to {path}"
        )
    loud = int((data.abs() > 1).sum())
    if loud:
        warnings.warn(
            f"{path.name}: {loud} of {data.numel()} samples ({100 * loud / data.numel():.2g} %) lie beyond ±1 "
            f"(peak {data.abs().max():.3g}) and are clipped to ±1 in the file",
            RuntimeWarning,
            stacklevel=2,
        )
    data = data.clamp(-1, 1).numpy().T
    tmp = _partial(path)
    try:  # opened here, not by soundfile, whose error said "System error." of the temporary file
        file = tmp.open("wb")
    except OSError as error:
        raise ValueError(_uncreatable(path, error)) from None
    try:
        with file:
            sf.write(file, data, sample_rate, format=fmt)
        os.replace(tmp, path)
    except OSError as error:
        raise ValueError(f"cannot write {path}: {error.strerror or error}") from None
    except sf.LibsndfileError as error:
        raise ValueError(
            f"cannot write {path} as {fmt} at {sample_rate} Hz: {error.error_string.removeprefix('Error : ')}"
        ) from None
    finally:
        with contextlib.suppress(OSError):  # a file that was never made, or cannot be reached
            tmp.unlink(missing_ok=True)
    return path
