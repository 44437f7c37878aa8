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

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from backbones.mel import to_mono
from steer.audio import load_audio
from steer.data._files import atomic_write_text, atomic_write_wav, is_valid_wav
from steer.data.instruments import DEFAULT_INSTRUMENTS, gm_program, instrument_prompt
from steer.data.manifest import ManifestEntry, read_manifest, split_melodies, write_manifest
from steer.data.melodies import TooFewMelodies, load_melodies
from steer.data.render import MIN_PITCHES, choose_clip, default_soundfont, render_clip

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
            line), ``"oneills1850"``, ``"essenFolksong"``, ...
        n_melodies: how many melodies, the first ones in the seeded order that have a window
            ``min_coverage`` full of notes.
        instruments: names from :data:`steer.data.instruments.GM_PROGRAMS`.
        seconds, sample_rate: clip length and rate (every clip has exactly
            ``round(seconds * sample_rate)`` samples).
        seed: fixes which melodies, which window of each, and the split.
        test_fraction: share of melodies held out for test.
        qpm: tempo, quarter notes per minute.
        overwrite: replace a manifest holding lines this render would not write (see the
            module's docstring); a melody is never moved to the other split, even so.

    Returns:
        the path of ``manifest.jsonl``.
    """
    out = Path(out_dir)
    instruments = list(dict.fromkeys(instruments))
    for instrument in instruments:
        gm_program(instrument)  # fail before any work on an unknown name
    if n_melodies < 1:
        raise ValueError(f"n_melodies must be at least 1, got {n_melodies}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a dataset folder: choose another out_dir (--out)")
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
    except TooFewMelodies as error:
        raise ValueError(
            f"{error}: a usable melody has a {seconds:g} s window starting on a note in which "
            f"notes sound {min_coverage:.0%} of the time or more and {MIN_PITCHES} distinct "
            f"pitches or more start, and the longest of the {len(clips)} melodies tried lasts "
            f"{longest * 60 / qpm:.1f} s at {qpm:g} qpm: choose other seconds (--seconds) or "
            "qpm (--qpm)"
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
    manifest_changes = _check_manifest(out / MANIFEST, entries, overwrite=overwrite)
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


def _check_config(out: Path, config: dict) -> None:
    path = out / CONFIG
    if not path.exists():
        return
    old = json.loads(path.read_text())
    # older folders did not record the fraction: _check_manifest guards their split instead
    old.setdefault("test_fraction", config["test_fraction"])
    if old != config:
        changed = sorted(k for k in config.keys() | old.keys() if old.get(k) != config.get(k))
        raise ValueError(
            f"{out} was rendered with other settings ({', '.join(changed)} differ); "
            "render into another folder or delete it"
        )


def _check_manifest(path: Path, entries: list[ManifestEntry], *, overwrite: bool) -> bool:
    """Whether ``path`` must be (re)written to hold ``entries``; raises ``ValueError`` where
    that would move a rendered melody to the other split, or, without ``overwrite``, drop or
    change a line."""
    if not path.exists():
        return True
    try:
        old = read_manifest(path)
    except ValueError as error:
        if not overwrite:
            raise ValueError(
                f"{error}; pass --overwrite (overwrite=True) to replace {path} with the "
                "rendered clips' manifest"
            ) from None
        return True
    if old == entries:
        return False
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
    path = out / CONFIG
    # a new folder, or an older one gaining its test_fraction
    if not path.exists() or json.loads(path.read_text()) != config:
        atomic_write_text(path, json.dumps(config, indent=2) + "\n")
