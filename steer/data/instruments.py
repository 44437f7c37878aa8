"""General-MIDI instruments used to render the instrument-swap benchmark.

Names are the words a text prompt would use ("church organ"), mapped to 0-based General-MIDI
program numbers (the numbers ``tinysoundfont`` and ``pretty_midi`` take; MIDI user interfaces
show them 1-based).
"""

from __future__ import annotations

GM_PROGRAMS: dict[str, int] = {
    # the eight of the benchmark
    "piano": 0,  # Acoustic Grand Piano
    "violin": 40,
    "flute": 73,
    "acoustic guitar": 25,  # Acoustic Guitar (steel)
    "church organ": 19,
    "trumpet": 56,
    "clarinet": 71,
    "marimba": 12,
    # more, for other experiments
    "harpsichord": 6,
    "electric piano": 4,
    "vibraphone": 11,
    "xylophone": 13,
    "accordion": 21,
    "classical guitar": 24,  # Acoustic Guitar (nylon)
    "electric guitar": 27,  # Electric Guitar (clean)
    "cello": 42,
    "harp": 46,
    "string ensemble": 48,
    "choir": 52,
    "trombone": 57,
    "tuba": 58,
    "french horn": 60,
    "saxophone": 65,  # Alto Sax
    "oboe": 68,
    "bassoon": 70,
    "pan flute": 75,
    "sitar": 104,
    "banjo": 105,
}

DEFAULT_INSTRUMENTS: tuple[str, ...] = (
    "piano",
    "violin",
    "flute",
    "acoustic guitar",
    "church organ",
    "trumpet",
    "clarinet",
    "marimba",
)


def gm_program(instrument: str) -> int:
    """The 0-based General-MIDI program of ``instrument`` (a key of :data:`GM_PROGRAMS`)."""
    try:
        return GM_PROGRAMS[instrument]
    except KeyError:
        raise ValueError(
            f"unknown instrument {instrument!r}; choose one of {sorted(GM_PROGRAMS)}"
        ) from None


def instrument_prompt(instrument: str) -> str:
    """The text prompt describing a clip of ``instrument``: ``"a recording of a violin"``.

    The article follows English ("an acoustic guitar"), since text encoders read it.
    """
    article = "an" if instrument[:1].lower() in "aeiou" else "a"
    return f"a recording of {article} {instrument}"
