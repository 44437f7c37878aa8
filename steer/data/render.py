"""Render a melody with a General-MIDI instrument: a clip window, then offline synthesis.

The window of a melody depends on the melody and the seed only, never on the instrument, and
every instrument plays the same notes at the same samples, so two renderings of one melody are a
ground-truth instrument swap of each other.

Synthesis uses TinySoundFont (``tinysoundfont``) with the ``TimGM6mb.sf2`` General-MIDI soundfont
that ships inside ``pretty_midi``. It renders at ``oversample`` times the target rate (48 kHz for
16 kHz clips) and decimates with a polyphase low-pass filter, because TinySoundFont's linear
interpolation aliases high notes when asked for 16 kHz directly. A fresh synthesizer per clip
keeps each clip independent of the ones rendered before it, so rendering is bit-exact repeatable.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steer.data.instruments import gm_program
from steer.data.melodies import Melody


#: What rendering imports, and how each is installed (tinysoundfont is not in the ``data`` extra:
#: its metadata requires pyaudio, which it does not use; scripts/setup.sh installs it without).
RENDER_MODULES = {
    "music21": 'pip install "steer[data]"',
    "pretty_midi": 'pip install "steer[data]"',
    "scipy": 'pip install "steer[data]"',
    "tinysoundfont": 'pip install --no-deps "tinysoundfont==0.3.*"',
}


def check_renderer() -> None:
    """Refuse, with how to install it, a module rendering needs that is missing (before any file
    is written; ``bash scripts/setup.sh`` installs them all)."""
    import importlib.util

    missing = [name for name in RENDER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        how = "; ".join(dict.fromkeys(RENDER_MODULES[name] for name in missing))
        raise ValueError(f"rendering needs {', '.join(missing)}, not installed: {how} (or bash scripts/setup.sh)")


def default_soundfont() -> Path:
    """``TimGM6mb.sf2``, the General-MIDI soundfont installed with ``pretty_midi``."""
    import pretty_midi

    return Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"


#: Distinct pitches a clip window must hold (fewer: no melody for CQT-1 PCC to follow).
MIN_PITCHES = 3


@dataclass(frozen=True)
class Clip:
    """A fixed-length window of a melody, with note times in seconds from the window start."""

    melody_id: str
    start: float  # seconds from the start of the melody
    seconds: float
    notes: tuple[tuple[int, float, float], ...]  # (MIDI pitch, onset, offset), 0 <= onset < seconds

    @property
    def coverage(self) -> float:
        """Fraction of the window during which a note sounds (the rest is rests)."""
        return sum(min(off, self.seconds) - on for _, on, off in self.notes) / self.seconds


def choose_clip(
    melody: Melody,
    *,
    seconds: float = 5.12,
    qpm: float = 100.0,
    seed: int = 0,
    min_coverage: float = 0.6,
    min_pitches: int = MIN_PITCHES,
) -> Clip | None:
    """Pick the window of ``melody`` to render, deterministically from ``seed`` and the melody id.

    Windows start on a note onset and must fit in the melody. They are tried in a seeded random
    order; the first one where notes sound at least ``min_coverage`` of the time and that holds at
    least ``min_pitches`` distinct pitches wins (a window of one repeated pitch has no melody to
    preserve: its CQT-1 PCC is undefined). ``None`` when no window qualifies.

    Args:
        qpm: tempo in quarter notes per minute (the corpus mostly has no tempo marks, so one tempo
            is used for every melody).
    """
    if seconds <= 0 or qpm <= 0:
        raise ValueError(f"seconds and qpm must be positive, got {seconds} and {qpm}")
    scale = 60.0 / qpm
    timed = [(n.pitch, n.onset * scale, (n.onset + n.duration) * scale) for n in melody.notes]
    total = melody.quarters * scale
    starts = [on for _, on, _ in timed if on + seconds <= total] or [timed[0][1]]
    rng = np.random.default_rng([seed, zlib.crc32(melody.id.encode())])
    for index in rng.permutation(len(starts)):
        start = starts[index]
        notes = tuple(
            (pitch, on - start, min(off - start, seconds))
            for pitch, on, off in timed
            if start <= on < start + seconds
        )
        clip = Clip(melody.id, start, seconds, notes)
        if clip.coverage >= min_coverage and len({p for p, _, _ in notes}) >= min_pitches:
            return clip
    return None


@functools.cache
def _soundfont_bytes(path: Path) -> bytes:
    return path.read_bytes()


def synthesize(
    notes: tuple[tuple[int, float, float], ...],
    instrument: str,
    *,
    seconds: float,
    sample_rate: int = 16000,
    velocity: int = 100,
    peak: float = 0.9,
    oversample: int = 3,
    fade: float = 0.01,
    soundfont: str | Path | None = None,
) -> np.ndarray:
    """Play ``notes`` (pitch, onset s, offset s) on ``instrument``; mono float32 of fixed length.

    Returns:
        ``(round(seconds * sample_rate),)`` float32, peak-normalised to ``peak``, with a
        ``fade``-second fade-out so notes still sounding at the window end do not click.
    """
    import tinysoundfont
    from scipy.signal import resample_poly  # not at the top: seconds to import, for `steer --help`

    frames = round(seconds * sample_rate)
    rate = sample_rate * oversample
    synth = tinysoundfont.Synth(samplerate=rate)
    sfid = synth.sfload(_soundfont_bytes(Path(soundfont or default_soundfont())))
    synth.program_select(0, sfid, 0, gm_program(instrument))

    # (sample, 0 = off / 1 = on, pitch): at a shared sample a note ends before the next begins
    events = sorted(
        [(round(on * rate), 1, pitch) for pitch, on, _ in notes]
        + [(round(off * rate), 0, pitch) for pitch, _, off in notes]
    )
    total = frames * oversample
    chunks, position = [], 0
    for sample, is_on, pitch in events + [(total, 0, -1)]:
        sample = min(sample, total)
        if sample > position:
            chunks.append(np.frombuffer(synth.generate_simple(sample - position), np.float32))
            position = sample
        if pitch < 0 or position >= total:
            break
        if is_on:
            synth.noteon(0, pitch, velocity)
        else:
            synth.noteoff(0, pitch)
    stereo = np.concatenate(chunks).reshape(-1, 2)  # interleaved L, R
    mono = resample_poly(stereo.mean(axis=1, dtype=np.float64), 1, oversample)[:frames]

    n_fade = min(round(fade * sample_rate), frames)
    if n_fade:
        mono[-n_fade:] *= 0.5 + 0.5 * np.cos(np.linspace(0.0, np.pi, n_fade))
    top = np.abs(mono).max()
    if top == 0:
        raise ValueError(f"{instrument!r} rendered silence; does the soundfont have its preset?")
    return (mono * (peak / top)).astype(np.float32)


def render_clip(clip: Clip, instrument: str, *, sample_rate: int = 16000, **kwargs) -> np.ndarray:
    """:func:`synthesize` the notes of ``clip``; keyword arguments go to it."""
    return synthesize(
        clip.notes, instrument, seconds=clip.seconds, sample_rate=sample_rate, **kwargs
    )


def render_melody(
    melody: Melody,
    instrument: str,
    *,
    seconds: float = 5.12,
    sample_rate: int = 16000,
    qpm: float = 100.0,
    seed: int = 0,
    min_coverage: float = 0.6,
    **kwargs,
) -> np.ndarray:
    """Render the seeded clip of ``melody`` with ``instrument``.

    Returns:
        ``(round(seconds * sample_rate),)`` float32 mono, peak ``0.9``.

    Raises:
        ValueError: when the melody has no window worth rendering (see :func:`choose_clip`).
    """
    clip = choose_clip(melody, seconds=seconds, qpm=qpm, seed=seed, min_coverage=min_coverage)
    if clip is None:
        raise ValueError(f"melody {melody.id!r} has no {seconds} s window that is mostly notes")
    return render_clip(clip, instrument, sample_rate=sample_rate, **kwargs)
