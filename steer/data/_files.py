"""Atomic file writes: write a temporary file beside the target, then rename it over.

A reader (or a later run's cache check) never sees a half-written file, even if the writer is
killed; an interrupted write leaves at most a ``.*.tmp`` file behind. Also the checks the swap
benchmark's scripts make of the paths they are given, before any work.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import soundfile
from huggingface_hub.utils import HFValidationError, validate_repo_id

from backbones.saving import HUB_MIXIN_FILES, check_model_folder, creation_problem


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json_object(path: Path, what: str, fix: str) -> dict | None:
    """The JSON object in ``path``, ``None`` where there is no such file, or a ``ValueError``
    saying that ``path`` is no ``what`` (a folder, unreadable, not a JSON object), then ``fix``.

    For the files a dataset folder holds under names of ours: one found there that is not ours
    is named and left alone, never read as ours or written over.
    """
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except IsADirectoryError:
        problem = "it is a folder"
    except OSError as error:
        problem = f"it cannot be read: {error.strerror or error}"
    except ValueError as error:  # not JSON, or not UTF-8
        problem = f"it is not JSON: {error}"
    else:
        if isinstance(data, dict):
            return data
        shown = json.dumps(data)
        problem = f"it holds {shown if len(shown) <= 40 else shown[:37] + '...'}, not a JSON object"
    raise ValueError(f"{path} is not {what} ({problem}): {fix}")


#: The most samples :func:`float_wav_bytes` can write: a RIFF file counts its size, 48 bytes of
#: header and 4 a sample, in 32 bits.
MAX_WAV_FRAMES = (2**32 - 1 - 48) // 4


def float_wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """Mono 32-bit float WAV bytes: RIFF header, ``fmt`` (IEEE float), ``fact`` and ``data``.

    Written by hand because libsndfile adds a ``PEAK`` chunk holding the time of writing, so the
    same audio written twice would give different files.
    """
    data = np.ascontiguousarray(audio, dtype="<f4").tobytes()
    n = len(data) // 4
    fmt = struct.pack("<HHIIHH", 3, 1, sample_rate, 4 * sample_rate, 4, 32)  # 3 = IEEE float
    chunks = (
        b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"fact"
        + struct.pack("<II", 4, n)
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def atomic_write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write mono float32 audio as a 32-bit float WAV: bit-exact, and the same audio always
    gives the same bytes."""
    if audio.ndim != 1:
        raise ValueError(f"expected mono (time,) audio, got shape {audio.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        tmp.write_bytes(float_wav_bytes(audio, sample_rate))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


#: What the swap benchmark's training scripts write into their ``--out`` folder: what the model's
#: ``save_pretrained`` writes (:data:`backbones.saving.HUB_MIXIN_FILES`) and the training record.
MODEL_FILES = (*HUB_MIXIN_FILES, "training.json")


def model_folder_problem(folder: Path, overwrite: bool) -> str | None:
    """Why a training script must not write a model into ``folder``, or ``None``: asked before
    any work, it is what the model's ``save_pretrained`` would refuse after the training
    (:func:`backbones.saving.check_model_folder`: a path that cannot be a folder or cannot be
    written, or, without ``overwrite``, a folder holding one of :data:`MODEL_FILES`), its fixes
    named as the script's options (``--out``, ``--overwrite``)."""
    try:
        check_model_folder(
            folder, "--out", MODEL_FILES, overwrite=overwrite, overwrite_as="--overwrite", another="another --out"
        )
    except ValueError as error:
        return str(error)
    return None


def result_file_problem(out: Path, overwrite: bool, option: str = "--out") -> str | None:
    """Why a script must not write its results to the file ``out``, given as ``option`` (a
    folder, under a file or a folder this user cannot write, or there already and ``overwrite``
    off), or ``None``: asked before any work, since the file is written at the end (its missing
    folders made then)."""
    if out.is_dir():
        return f"{option} {out} is a folder: name the JSON file to write, e.g. {out / 'results.json'}"
    if blocking := next((p for p in out.parents if p.exists() and not p.is_dir()), None):
        return f"{option} {out} cannot be written: {blocking} is a file, not a folder; choose another {option}"
    if not os.access(existing := next(p for p in out.parents if p.exists()), os.W_OK | os.X_OK):
        return f"{option} {out} cannot be written: {existing} is not writable; choose another {option}"
    if reason := creation_problem(existing):
        return f"{option} {out} cannot be written: nothing can be created in {existing} ({reason}); choose another {option}"
    if out.exists() and not overwrite:
        return f"{out} exists; pass --overwrite to replace it, or choose another {option}"
    return None


def evaluation_problem(data: Path, classifier: str, backbone: str) -> str | None:
    """Why an evaluation script cannot read its manifest ``data`` or load its ``--classifier``
    and ``--backbone`` (:func:`manifest_problem`, :func:`model_source_problem`), or ``None``."""
    return (
        manifest_problem(data)
        or model_source_problem(classifier, "--classifier")
        or model_source_problem(backbone, "--backbone")
    )


def clip_length_problem(clips: Iterable[Path], seconds: float) -> str | None:
    """Why ``--seconds`` cannot be cut from each of ``clips`` (longer than the shortest: the crop
    would silently be the whole clip, not the length recorded), or ``None``."""
    shortest = min(soundfile.info(str(clip)).duration for clip in clips)
    if seconds <= shortest:
        return None
    return (
        f"--seconds {seconds} is longer than the clips ({shortest:.4f} s): pass --seconds "
        f"{math.floor(shortest * 100) / 100:g} or less, or render longer clips (python -m steer.data --seconds)"
    )


def manifest_problem(manifest: Path) -> str | None:
    """Why a script cannot read the dataset ``manifest`` (it is a folder, is not there, or lists
    clips that are not there), or ``None``."""
    from steer.data.manifest import read_manifest  # not at the top: that module imports this one

    if manifest.is_dir():
        return f"{manifest} is a folder, not a manifest: pass {manifest / 'manifest.jsonl'}"
    if not manifest.is_file():
        return (
            f"{manifest} not found: render the data first, e.g. "
            "python -m steer.data --collection ryansMammoth --n-melodies 400 --out data/swap-ryans"
        )
    try:
        entries = read_manifest(manifest)
    except (ValueError, UnicodeDecodeError) as error:
        return str(error)
    if missing := [e.audio for e in entries if not (manifest.parent / e.audio).is_file()]:
        return (
            f"{manifest} lists {len(missing)} clips that are not there, e.g. {manifest.parent / missing[0]}: "
            f"run the command that rendered {manifest.parent} again (python -m steer.data --out "
            f"{manifest.parent} and the options it was made with): it renders only the missing clips"
        )
    return None


def split_conflict_problem(manifests: Iterable[Path]) -> str | None:
    """Why ``manifests`` (each readable: :func:`manifest_problem`) cannot be trained on together, or
    ``None``: a melody of one collection that is in the train split of one and the test split of
    another (two renders of one collection with different --n-melodies split it apart), whose
    test clips a model trained on the first would have heard."""
    from steer.data.manifest import read_manifest  # not at the top: that module imports this one

    splits: dict[tuple[str, str], tuple[str, Path]] = {}
    for manifest in manifests:
        for entry in read_manifest(manifest):
            key = (entry.collection, entry.melody_id)
            split, where = splits.setdefault(key, (entry.split, manifest))
            if split != entry.split:
                return (
                    f"melody {entry.melody_id} ({entry.collection}) is {split} in {where} but {entry.split} in "
                    f"{manifest}: a model trained on both would have heard a test melody; train on one render "
                    "of a collection (render every melody you need into one folder)"
                )
    return None


def seconds_problem(seconds: float) -> str | None:
    """Why ``--seconds`` cannot be the length of the clips a script scores, or ``None``: not a
    number, or shorter than CQT-1 PCC reads (every melody score would be NaN, or the log-mel
    distance fail)."""
    from steer.metrics.functional import cqt_min_seconds

    shortest = cqt_min_seconds()
    if not (math.isfinite(seconds) and seconds >= shortest):
        return (
            f"--seconds must be at least {shortest:.3f} s, the shortest clip whose melody line CQT-1 PCC reads, "
            f"got {seconds:g}"
        )
    return None


def model_source_problem(name: str, option: str) -> str | None:
    """Why ``from_pretrained(name)`` cannot even start, or ``None``: ``name`` is no local folder
    and either no Hub repo id or a path in a local folder that exists (``weights/typo``, which
    the Hub would be asked for in vain). ``~`` is expanded, as :func:`backbones.load_backbone` does."""
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        return None
    if path.exists():
        return f"{option} {name} is a file, not a model folder: pass a folder written by save_pretrained, or a Hub repo id"
    problem = f"{option} {name} not found: pass a folder written by save_pretrained, or a Hub repo id"
    if path.parent != Path(".") and path.parent.is_dir():
        return problem
    try:
        validate_repo_id(name)
    except HFValidationError:
        return problem
    return None


def is_valid_wav(path: str | Path, *, frames: int, sample_rate: int) -> bool:
    """Whether ``path`` is a readable mono float WAV of exactly ``frames`` at ``sample_rate``."""
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, OSError, soundfile.LibsndfileError):
        return False
    return (
        info.frames == frames
        and info.samplerate == sample_rate
        and info.channels == 1
        and info.subtype == "FLOAT"
    )
