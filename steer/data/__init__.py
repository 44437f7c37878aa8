"""Paired data for a ground-truth instrument-swap benchmark.

Real melodies from music21's corpus, each rendered offline with several General-MIDI instruments
(same notes, same timing), so that (melody m, instrument a) -> (melody m, instrument b) is an
edit whose ideal result is known. ``python -m steer.data --help`` renders a dataset folder.
"""

from steer.data.dataset import audio_path, load_clip, render_dataset
from steer.data.instruments import DEFAULT_INSTRUMENTS, GM_PROGRAMS, gm_program, instrument_prompt
from steer.data.manifest import (
    ManifestEntry,
    read_manifest,
    split_melodies,
    swap_pairs,
    write_manifest,
)
from steer.data.melodies import (
    Melody,
    Note,
    TooFewMelodies,
    collection_name,
    iter_melodies,
    list_works,
    load_melodies,
    parse_melody,
)
from steer.data.render import Clip, choose_clip, render_clip, render_melody, synthesize

__all__ = [
    "DEFAULT_INSTRUMENTS",
    "GM_PROGRAMS",
    "Clip",
    "ManifestEntry",
    "Melody",
    "Note",
    "TooFewMelodies",
    "audio_path",
    "choose_clip",
    "collection_name",
    "gm_program",
    "instrument_prompt",
    "iter_melodies",
    "list_works",
    "load_clip",
    "load_melodies",
    "parse_melody",
    "read_manifest",
    "render_clip",
    "render_dataset",
    "render_melody",
    "split_melodies",
    "swap_pairs",
    "synthesize",
    "write_manifest",
]
