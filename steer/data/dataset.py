"""Render a ground-truth instrument-swap dataset into a folder, with a manifest.

Layout of ``out_dir``::

    render_config.json        the settings the folder was rendered with (test_fraction included)
    notes.json                extracted note lists (cache: later runs parse no score again)
    manifest.jsonl            one line per clip (see steer.data.manifest)
    audio/<collection>/<work>/<instrument>.wav     16 kHz mono float32 WAV

Rendering again into the same folder re-renders only missing or invalid files (a valid file has
the expected length, rate and format), so asking for more melodies or instruments later renders
just the new clips. A folder rendered with other settings (seed, length, rate, tempo,
collection, test fraction) is refused rather than mixed.

The manifest is the record of the split, and a re-render keeps it:

- a re-render that would move an already-rendered melody to the other split is refused, with
  nothing written. The split sends the ``round(test_fraction * n)`` melodies with the smallest
  hashes to test (see :func:`~steer.data.manifest.split_melodies`), so it depends on the whole
  set: more melodies can push one from train to test. Render into a new folder instead.
- a manifest that would be unchanged is not rewritten;
- one holding lines this render would not write (edited by hand, or listing melodies or
  instruments not asked for this time) is refused unless ``overwrite=True`` (``--overwrite``);
  growing the folder only adds lines, so it needs no ``overwrite``.

Folders rendered before ``render_config.json`` recorded ``test_fraction`` take the fraction of
their next re-render (which is then recorded), once the manifest shows that it moves no melody.

CQT-1 PCC of the ground truth itself depends on the instruments, because the metric's arg-max
picks whichever partial is loudest (measured over 40 Ryan's tunes x 5.12 s): among piano, violin,
acoustic guitar and marimba the fundamental wins and true swaps score 0.92 on average (min 0.58);
church organ (a sub-octave stop: the top bin jumps between an octave below and above), trumpet
(2nd/3rd partials) and clarinet (3rd partial) bring the mean over all 8 x 8 pairs down to 0.40,
with organ pairs near 0. Different melodies score 0.00 on average. So compare an edit's PCC with
the PCC of the ground-truth pair (source, target), not with 1.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from backbones.mel import MelFrontEnd, to_mono
from steer.audio import load_audio
from steer.data._files import (
    MAX_WAV_FRAMES,
    atomic_write_text,
    atomic_write_wav,
    is_valid_wav,
    read_json_object,
)
from steer.data.instruments import DEFAULT_INSTRUMENTS, gm_program, instrument_prompt
from steer.data.manifest import (
    ManifestEntry,
    check_test_fraction,
    read_manifest,
    split_melodies,
    write_manifest,
)
from steer.data.melodies import TooFewMelodies, collection_name, load_melodies
from steer.data.render import MIN_PITCHES, check_renderer, choose_clip, default_soundfont, render_clip
from steer.metrics.functional import cqt_min_seconds

#: The lowest rate clips are rendered at: the rate of CQT-1 PCC, of the instrument classifier and
#: of the mel front end of the AudioLDM family and the shipped backbone (bands up to 8 kHz); a clip
#: rendered below it is upsampled with its top bands empty, which none of them was made for.
MIN_SAMPLE_RATE = MelFrontEnd.sample_rate

MANIFEST = "manifest.jsonl"
CONFIG = "render_config.json"
NOTES = "notes.json"

Progress = Callable[[int, int, str, bool], None]
"""``progress(done, total, audio_path, cached)`` after each clip."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def audio_path(melody_id: str, instrument: str) -> str:
    """Where a clip lives, relative to the dataset folder."""
    rel, _, number = melody_id.partition("#")
    folder = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
    folder = "/".join(_slug(part) for part in folder.split("/"))
    if number:
        folder += f"-{int(number)}"
    return f"audio/{folder}/{_slug(instrument)}.wav"


def load_clip(path: str | Path, sample_rate: int) -> torch.Tensor:
    """A rendered clip as ``(samples,)`` mono float32 at ``sample_rate`` (a model's rate),
    resampled from the rate its folder was rendered at: a 16 kHz clip read at 16 kHz is
    returned sample for sample."""
    audio = load_audio(path)
    return to_mono(audio.waveform.mean(0), audio.sample_rate, sample_rate)[0]


def render_dataset(
    out_dir: str | Path,
    *,
    collection: str = "ryansMammoth",
    n_melodies: int = 40,
    instruments: Sequence[str] = DEFAULT_INSTRUMENTS,
    seconds: float = 5.12,
    sample_rate: int = 16000,
    seed: int = 0,
    test_fraction: float = 0.2,
    qpm: float = 100.0,
    min_coverage: float = 0.6,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Render ``n_melodies`` melodies of ``collection`` with each of ``instruments``.

    Args:
        out_dir: the dataset folder (created; reused as a cache).
        collection: a music21 corpus folder: ``"ryansMammoth"``, ``"bach"`` (chorales, soprano
            line), ``"oneills1850"``, ``"essenFolksong"``, ...; in any case (``"Bach"``): the
            folder records the corpus's spelling.
        n_melodies: how many melodies, the first ones in the seeded order that have a window
            ``min_coverage`` full of notes.
        instruments: names from :data:`steer.data.instruments.GM_PROGRAMS`.
        seconds, sample_rate: clip length and rate (every clip has exactly
            ``round(seconds * sample_rate)`` samples): at least 0.514 s, the shortest clip
            CQT-1 PCC reads, and :data:`MIN_SAMPLE_RATE` (16 kHz).
        seed: a non-negative integer; fixes which melodies, which window of each, and the
            split.
        test_fraction: share of melodies held out for test.
        qpm: tempo, quarter notes per minute.
        overwrite: replace a manifest holding lines this render would not write (see the
            module's docstring); a melody is never moved to the other split, even so.

    Returns:
        the path of ``manifest.jsonl``.

    Raises:
        ValueError: for settings no render can use, before any work; for a folder rendered
            with other settings, or holding a file under one of its names (``notes.json``,
            ``render_config.json``, ``manifest.jsonl``) that is not what that name holds
            (named, and left as it is; a manifest is replaced with ``overwrite``); for a
            collection with too few usable melodies.
    """
    out = Path(out_dir)
    instruments = list(dict.fromkeys(instruments))
    if not instruments:
        raise ValueError("instruments (--instruments) is empty: name one or more")
    for instrument in instruments:
        gm_program(instrument)  # fail before any work on an unknown name
    _check_settings(
        n_melodies=n_melodies, seconds=seconds, sample_rate=sample_rate, seed=seed,
        test_fraction=test_fraction, qpm=qpm,
    )
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a dataset folder: choose another out_dir (--out)")
    check_renderer()
    collection = collection_name(collection)
    config = {
        "collection": collection,
        "seed": seed,
        "seconds": seconds,
        "sample_rate": sample_rate,
        "qpm": qpm,
        "min_coverage": min_coverage,
        "soundfont": default_soundfont().name,
        "test_fraction": test_fraction,
    }
    _check_config(out, config)

    clips = {}
    longest = 0.0  # quarter notes, of the melodies tried

    def has_clip(melody) -> bool:
        nonlocal longest
        longest = max(longest, melody.quarters)
        clip = choose_clip(melody, seconds=seconds, qpm=qpm, seed=seed, min_coverage=min_coverage)
        clips[melody.id] = clip
        return clip is not None

    try:
        melodies = load_melodies(
            collection, n_melodies=n_melodies, seed=seed, cache=out / NOTES, keep=has_clip
        )
    except TooFewMelodies as error:  # every melody of the collection was tried
        usable = sum(clip is not None for clip in clips.values())
        fixes = [f"ask for {usable} or fewer (--n-melodies)"] if usable else []
        if len(clips) < n_melodies:  # no window of any length or tempo gives enough
            fixes.append("render another collection (--collection)")
            raise ValueError(
                f"{error}; it holds {len(clips)} melodies in all, so no other --seconds or "
                f"--qpm gives {n_melodies}: {', or '.join(fixes)}"
            ) from None
        fixes.insert(0, "choose other seconds (--seconds) or qpm (--qpm)")
        raise ValueError(
            f"{error}: a usable melody has a {seconds:g} s window starting on a note in which "
            f"notes sound {min_coverage:.0%} of the time or more and {MIN_PITCHES} distinct "
            f"pitches or more start, and the longest of the {len(clips)} melodies tried lasts "
            f"{longest * 60 / qpm:.1f} s at {qpm:g} qpm: {', or '.join(fixes)}"
        ) from None
    split = split_melodies([m.id for m in melodies], test_fraction=test_fraction, seed=seed)
    entries = [
        ManifestEntry(
            audio=audio_path(melody.id, instrument),
            melody_id=melody.id,
            instrument=instrument,
            prompt=instrument_prompt(instrument),
            split=split[melody.id],
            collection=collection,
        )
        for melody in melodies
        for instrument in instruments
    ]
    manifest_changes = _check_manifest(out / MANIFEST, entries, collection, overwrite=overwrite)
    _write_config(out, config)  # once the collection is known to hold enough melodies

    frames = round(seconds * sample_rate)
    for done, entry in enumerate(entries, 1):
        cached = is_valid_wav(out / entry.audio, frames=frames, sample_rate=sample_rate)
        if not cached:
            audio = render_clip(clips[entry.melody_id], entry.instrument, sample_rate=sample_rate)
            atomic_write_wav(out / entry.audio, audio, sample_rate)
        if progress is not None:
            progress(done, len(entries), entry.audio, cached)
    if manifest_changes:
        write_manifest(out / MANIFEST, entries)
    return out / MANIFEST


def _check_settings(
    *, n_melodies: int, seconds: float, sample_rate: int, seed: int, test_fraction: float, qpm: float
) -> None:
    """Refuse settings no render can use, before any score is parsed or file written."""
    if n_melodies < 1:
        raise ValueError(f"n_melodies (--n-melodies) must be at least 1, got {n_melodies}")
    if not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed (--seed) must be a non-negative integer, got {seed!r}")
    if not isinstance(sample_rate, numbers.Integral) or sample_rate < MIN_SAMPLE_RATE:
        raise ValueError(
            f"sample_rate (--sample-rate) must be a whole number of Hz, at least {MIN_SAMPLE_RATE}: "
            "the rate of steer's metrics and mel backbones, whose bands reach 8 kHz; "
            f"got {sample_rate!r}"
        )
    longest = MAX_WAV_FRAMES / sample_rate
    if not math.isfinite(seconds) or seconds > longest:
        raise ValueError(
            f"seconds (--seconds) must be a finite clip length, at most {longest:.0f} s at "
            f"{sample_rate} Hz (the most a WAV file holds), got {seconds:g}"
        )
    if seconds < (shortest := cqt_min_seconds()):
        raise ValueError(
            f"seconds (--seconds) must be at least {shortest:.3f} s, the shortest clip whose "
            f"melody line CQT-1 PCC (the swap benchmark's melody metric) reads, got {seconds:g}"
        )
    if not math.isfinite(qpm) or qpm <= 0:
        raise ValueError(
            f"qpm (--qpm) must be a positive number of quarter notes a minute, got {qpm:g}"
        )
    check_test_fraction(test_fraction)


def _check_config(out: Path, config: dict) -> None:
    old = _read_config(out)
    if old is None:
        return
    # older folders did not record the fraction: _check_manifest guards their split instead
    old.setdefault("test_fraction", config["test_fraction"])
    if str(old.get("collection")).lower() == config["collection"].lower():
        old["collection"] = config["collection"]  # recorded as given ("Bach") before
    if old != config:
        changed = sorted(k for k in config.keys() | old.keys() if old.get(k) != config.get(k))
        raise ValueError(
            f"{out} was rendered with other settings ({', '.join(changed)} differ); "
            "render into another folder or delete it"
        )


def _read_config(out: Path) -> dict | None:
    """The settings ``out`` was rendered with; ``None`` for a new folder."""
    path = out / CONFIG
    return read_json_object(
        path,
        "a render config",
        "without the settings its clips were rendered with, they cannot be checked against "
        "these; render into another folder (--out)",
    )


def _check_manifest(
    path: Path, entries: list[ManifestEntry], collection: str, *, overwrite: bool
) -> bool:
    """Whether ``path`` must be (re)written to hold ``entries``; raises ``ValueError`` where
    that would move a rendered melody to the other split, or, without ``overwrite``, drop or
    change a line."""
    if not path.exists():
        return True
    if not path.is_file():
        raise ValueError(
            f"{path} is not a manifest (it is a folder): move it out of {path.parent}, or "
            "render into another folder (--out)"
        )
    try:
        recorded = read_manifest(path)
    except ValueError as error:
        if not overwrite:
            raise ValueError(
                f"{error}; pass --overwrite (overwrite=True) to replace {path} with the "
                "rendered clips' manifest"
            ) from None
        return True
    # folders rendered before names were spelt as the corpus does ("Bach") get its spelling
    old = [
        dataclasses.replace(e, collection=collection)
        if e.collection.lower() == collection.lower()
        else e
        for e in recorded
    ]
    if old == entries:
        return old != recorded
    split = {e.melody_id: e.split for e in entries}
    moved = sorted(
        {(e.melody_id, e.split) for e in old if split.get(e.melody_id, e.split) != e.split}
    )
    if moved:
        examples = ", ".join(f"{m} {s} -> {split[m]}" for m, s in moved[:3])
        raise ValueError(
            f"rendering {len(split)} melodies into {path.parent} would move {len(moved)} of its "
            f"rendered melodies to the other split ({examples}), so a test melody "
            "could be heard in training: the split depends on the whole set of melodies. "
            "Render into a new folder instead (no clip, manifest or config was written)"
        )
    kept = set(entries)
    dropped = [e for e in old if e not in kept]
    if dropped and not overwrite:
        raise ValueError(
            f"{path} holds {len(dropped)} lines this render would not write (edited, or "
            f"melodies or instruments not asked for this time; e.g. {dropped[0].audio}); pass "
            "--overwrite (overwrite=True) to replace it, or render into another folder"
        )
    return True


def _write_config(out: Path, config: dict) -> None:
    # a new folder, or an older one gaining its test_fraction or the corpus's spelling
    if _read_config(out) != config:
        atomic_write_text(out / CONFIG, json.dumps(config, indent=2) + "\n")
