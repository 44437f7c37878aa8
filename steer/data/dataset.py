"""Render a ground-truth instrument-swap dataset into a folder, with a manifest.

Layout of ``out_dir``::

    render_config.json        the settings the audio was rendered with
    notes.json                extracted note lists (cache: later runs parse no score again)
    manifest.jsonl            one line per clip (see steer.data.manifest)
    audio/<collection>/<work>/<instrument>.wav     16 kHz mono float32 WAV

Rendering again into the same folder re-renders only missing or invalid files (a valid file has
the expected length, rate and format), so asking for more melodies or instruments later renders
just the new clips. A folder rendered with other settings (seed, length, rate, tempo,
collection) is refused rather than mixed.

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

from steer.data._files import atomic_write_text, atomic_write_wav, is_valid_wav
from steer.data.instruments import DEFAULT_INSTRUMENTS, gm_program, instrument_prompt
from steer.data.manifest import ManifestEntry, split_melodies, write_manifest
from steer.data.melodies import load_melodies
from steer.data.render import choose_clip, default_soundfont, render_clip

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

    Returns:
        the path of ``manifest.jsonl``.
    """
    out = Path(out_dir)
    instruments = list(dict.fromkeys(instruments))
    for instrument in instruments:
        gm_program(instrument)  # fail before any work on an unknown name
    if n_melodies < 1:
        raise ValueError(f"n_melodies must be at least 1, got {n_melodies}")
    config = {
        "collection": collection,
        "seed": seed,
        "seconds": seconds,
        "sample_rate": sample_rate,
        "qpm": qpm,
        "min_coverage": min_coverage,
        "soundfont": default_soundfont().name,
    }
    _check_config(out, config)

    clips = {}

    def has_clip(melody) -> bool:
        clip = choose_clip(melody, seconds=seconds, qpm=qpm, seed=seed, min_coverage=min_coverage)
        clips[melody.id] = clip
        return clip is not None

    melodies = load_melodies(
        collection, n_melodies=n_melodies, seed=seed, cache=out / NOTES, keep=has_clip
    )
    _write_config(out, config)  # once the collection is known to hold enough melodies
    split = split_melodies([m.id for m in melodies], test_fraction=test_fraction, seed=seed)

    frames = round(seconds * sample_rate)
    total = len(melodies) * len(instruments)
    entries = []
    for melody in melodies:
        for instrument in instruments:
            rel = audio_path(melody.id, instrument)
            cached = is_valid_wav(out / rel, frames=frames, sample_rate=sample_rate)
            if not cached:
                audio = render_clip(clips[melody.id], instrument, sample_rate=sample_rate)
                atomic_write_wav(out / rel, audio, sample_rate)
            entries.append(
                ManifestEntry(
                    audio=rel,
                    melody_id=melody.id,
                    instrument=instrument,
                    prompt=instrument_prompt(instrument),
                    split=split[melody.id],
                    collection=collection,
                )
            )
            if progress is not None:
                progress(len(entries), total, rel, cached)
    return write_manifest(out / MANIFEST, entries)


def _check_config(out: Path, config: dict) -> None:
    path = out / CONFIG
    if not path.exists():
        return
    old = json.loads(path.read_text())
    if old != config:
        changed = sorted(k for k in config.keys() | old.keys() if old.get(k) != config.get(k))
        raise ValueError(
            f"{out} was rendered with other settings ({', '.join(changed)} differ); "
            "render into another folder or delete it"
        )


def _write_config(out: Path, config: dict) -> None:
    if not (out / CONFIG).exists():
        atomic_write_text(out / CONFIG, json.dumps(config, indent=2) + "\n")
