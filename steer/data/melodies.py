"""Monophonic melodies from music21's corpus, as plain note lists.

A *collection* is a folder of music21's corpus (``"ryansMammoth"``, ``"bach"`` — the chorales —,
``"oneills1850"``, ``"essenFolksong"``, ...), resolved with ``music21.corpus.getComposer``. A *work*
is one file, or one tune of a multi-tune ABC file (``"oneills1850/0001-0050.abc#12"``). Works are
parsed one by one, in an order fixed by the seed, only as many as needed (parsing one takes about
0.05 s; parsing all of Ryan's Mammoth Collection would take about a minute), and the extracted
note lists can be cached as JSON so that a second run parses nothing.

The melody of a work is its soprano part (the part named "Soprano", else the first part), with
ties merged, grace notes dropped, chords reduced to their highest note and overlaps cut
("skyline"), so exactly one note sounds at a time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steer.data._files import atomic_write_text, read_json_object

# Formats holding notes, best first: where a folder holds one work in several formats
# (``bach/bwv277.mxl`` and ``bach/bwv277.krn``), the first is kept so no melody appears twice.
_NOTE_FORMATS = (".mxl", ".musicxml", ".xml", ".krn", ".abc", ".mid", ".midi")
_ABC_TUNE = re.compile(r"^X:\s*(\d+)", re.MULTILINE)


class TooFewMelodies(ValueError):
    """:func:`load_melodies` found fewer usable melodies than asked for."""


@dataclass(frozen=True)
class Note:
    """One note of a melody, in quarter notes from the start of the work."""

    pitch: int  # MIDI key, 60 = middle C
    onset: float
    duration: float


@dataclass(frozen=True)
class Melody:
    """A monophonic melody: notes sorted by onset, never overlapping."""

    id: str  # "<collection>/<file>[#<tune number>]", unique across the corpus
    collection: str
    title: str
    notes: tuple[Note, ...]

    @property
    def quarters(self) -> float:
        """Length in quarter notes, up to the end of the last note."""
        return self.notes[-1].onset + self.notes[-1].duration if self.notes else 0.0

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "collection": self.collection,
            "title": self.title,
            "notes": [[n.pitch, n.onset, n.duration] for n in self.notes],
        }

    @classmethod
    def from_json(cls, data: dict) -> Melody:
        notes = tuple(Note(int(p), float(o), float(d)) for p, o, d in data["notes"])
        return cls(data["id"], data["collection"], data["title"], notes)


def _corpus_root() -> Path:
    import music21.corpus

    return Path(music21.corpus.__file__).parent


def _no_collection(collection: str) -> ValueError:
    return ValueError(
        f"music21's corpus has no collection {collection!r}; try 'ryansMammoth', 'bach', "
        "'oneills1850' or 'essenFolksong'"
    )


def collection_name(collection: str) -> str:
    """``collection`` as music21's corpus spells it: the corpus matches names ignoring case
    (``"Bach"`` and ``"bach"`` are one collection), so folders record this spelling.

    Raises:
        ValueError: where no folder or file of the corpus has that name.
    """
    from music21 import corpus

    root, wanted = _corpus_root(), collection.lower()
    for path in corpus.getComposer(collection):
        for part in Path(path).relative_to(root).parts:  # getComposer matches names with or
            for name in (part, part.rsplit(".", 1)[0]):  # without their last suffix
                if name.lower() == wanted:
                    return name
    raise _no_collection(collection)  # none, or only a folder above the corpus ("site-packages")


def list_works(collection: str) -> list[str]:
    """All work ids of a music21 corpus collection, sorted.

    Costs no parsing: multi-tune ABC files are split by their ``X:`` lines.
    """
    from music21 import corpus

    root = _corpus_root()
    paths = sorted(Path(p) for p in corpus.getComposer(collection))
    by_stem: dict[Path, Path] = {}
    for path in paths:
        if path.suffix.lower() not in _NOTE_FORMATS:
            continue  # e.g. bach/choraleAnalyses/*.rntxt
        key = path.with_suffix("")
        old = by_stem.get(key)
        if old is None or _NOTE_FORMATS.index(path.suffix.lower()) < _NOTE_FORMATS.index(
            old.suffix.lower()
        ):
            by_stem[key] = path
    if not by_stem:
        raise _no_collection(collection)
    works = []
    for path in sorted(by_stem.values()):
        rel = path.relative_to(root).as_posix()
        tunes = _ABC_TUNE.findall(path.read_text(errors="replace")) if path.suffix == ".abc" else []
        if len(tunes) > 1:
            works.extend(f"{rel}#{int(n)}" for n in tunes)
        else:
            works.append(rel)
    return works


def parse_melody(work_id: str, *, collection: str | None = None) -> Melody | None:
    """Parse one work and extract its melody; ``None`` if it has no notes or does not parse."""
    from music21 import converter, stream
    from music21.exceptions21 import Music21Exception

    rel, _, number = work_id.partition("#")
    path = _corpus_root() / rel
    kwargs = {"number": int(number)} if number else {}
    try:
        score = converter.parse(path, forceSource=True, **kwargs)
    except Music21Exception:  # a malformed file: skip the work (none in Ryan's or the chorales)
        return None
    if isinstance(score, stream.Opus):
        score = score.scores[0] if score.scores else None
    if score is None:
        return None
    parts = list(score.parts) if isinstance(score, stream.Score) else [score]
    if not parts:
        return None
    part = next((p for p in parts if "soprano" in f"{p.partName or ''} {p.id}".lower()), parts[0])
    notes = _skyline(part)
    if not notes:
        return None
    title = (score.metadata.bestTitle if score.metadata is not None else None) or rel
    return Melody(work_id, collection or rel.split("/")[0], str(title), notes)


def _skyline(part) -> tuple[Note, ...]:
    """The part's notes as a monophonic line: the highest note at each onset, cut at the next."""
    by_onset: dict[float, Note] = {}
    for element in part.stripTies().flatten().notes:
        duration = float(element.quarterLength)
        if duration <= 0:  # grace notes
            continue
        pitch = max(round(p.midi) for p in element.pitches)
        onset = float(element.offset)
        old = by_onset.get(onset)
        if old is None or pitch > old.pitch:
            by_onset[onset] = Note(pitch, onset, duration)
    notes = sorted(by_onset.values(), key=lambda n: n.onset)
    line = []
    for note, following in zip(notes, notes[1:] + [None]):
        end = note.onset + note.duration
        if following is not None:
            end = min(end, following.onset)
        line.append(Note(note.pitch, note.onset, end - note.onset))
    return tuple(line)


def iter_melodies(
    collection: str, *, seed: int = 0, cache: str | Path | None = None
) -> Iterator[Melody]:
    """Melodies of ``collection`` in an order fixed by ``seed``, parsed lazily.

    Args:
        collection: a music21 corpus folder, e.g. ``"ryansMammoth"`` or ``"bach"``, in any
            case (melodies carry the corpus's spelling, :func:`collection_name`).
        seed: fixes the order (a permutation of :func:`list_works`).
        cache: a JSON file of extracted note lists; read if it exists, updated as works are
            parsed, so later calls parse nothing they already did.

    Raises:
        ValueError: for a ``cache`` that is not one (see :class:`_NoteCache`).
    """
    collection = collection_name(collection)
    works = list_works(collection)
    order = np.random.default_rng(seed).permutation(len(works))
    store = _NoteCache(Path(cache) if cache is not None else None)
    try:
        for index in order:
            work = works[index]
            if work not in store:
                store[work] = parse_melody(work, collection=collection)
            melody = store[work]
            if melody is not None:
                yield melody
    finally:
        store.flush()


def load_melodies(
    collection: str = "ryansMammoth",
    *,
    n_melodies: int,
    seed: int = 0,
    cache: str | Path | None = None,
    keep: Callable[[Melody], bool] | None = None,
) -> list[Melody]:
    """The first ``n_melodies`` melodies of ``collection`` in seeded order that pass ``keep``.

    Raises:
        TooFewMelodies: (a ``ValueError``) when the collection has fewer usable melodies.
        ValueError: for a collection music21's corpus does not have, or fewer works than
            ``n_melodies`` (each gives one melody at most), before any is parsed.
    """
    name = collection_name(collection)
    works = len(list_works(name))
    if n_melodies > works:
        raise ValueError(
            f"collection {name!r} has {works} works, each giving one melody at most, so not {n_melodies} "
            f"melodies: ask for {works} or fewer (--n-melodies), or render a larger collection (--collection)"
        )
    melodies = []
    iterator = iter_melodies(collection, seed=seed, cache=cache)
    try:
        for melody in iterator:
            if keep is None or keep(melody):
                melodies.append(melody)
                if len(melodies) == n_melodies:
                    break
    finally:
        iterator.close()  # writes the cache
    if len(melodies) < n_melodies:
        raise TooFewMelodies(
            f"collection {collection!r} has only {len(melodies)} usable melodies, "
            f"{n_melodies} asked for"
        )
    return melodies


class _NoteCache:
    """Work id -> Melody (or None for works without a melody), mirrored in a JSON file.

    A file there that is no note cache (not written by this class) is refused, naming it, and
    left as it is: it may be someone's, and the cache only saves parsing scores again.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self.items: dict[str, Melody | None] = {}
        self.dirty = False
        if path is None:
            return
        fix = (
            f"if it is yours, move it out of {path.parent}; if it is a damaged cache, delete it "
            "(it only saves parsing the scores again)"
        )
        for work, data in (read_json_object(path, "a note cache", fix) or {}).items():
            try:
                self.items[work] = None if data is None else Melody.from_json(data)
            except (KeyError, TypeError, ValueError):
                raise ValueError(
                    f"{path} is not a note cache (its entry {work!r} is no melody): {fix}"
                ) from None

    def __contains__(self, work: str) -> bool:
        return work in self.items

    def __getitem__(self, work: str) -> Melody | None:
        return self.items[work]

    def __setitem__(self, work: str, melody: Melody | None) -> None:
        self.items[work] = melody
        self.dirty = True

    def flush(self) -> None:
        if self.path is None or not self.dirty:
            return
        raw = {k: None if v is None else v.to_json() for k, v in sorted(self.items.items())}
        atomic_write_text(self.path, json.dumps(raw, separators=(",", ":")) + "\n")
        self.dirty = False
