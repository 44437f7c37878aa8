"""The manifest of a rendered dataset: one JSON object per line, one line per clip.

``{"audio": "audio/<melody>/<instrument>.wav", "melody_id": ..., "instrument": ...,
"prompt": "a recording of a violin", "split": "train" | "test", "collection": ...}``

``audio`` is relative to the manifest's folder. Train and test are split by melody (by the
corpus file), so a test melody's file is never heard in training, whatever the instrument; a tune
that the corpus holds twice under two titles can land on both sides (README: the swap benchmark).
Re-rendering a folder (:func:`steer.data.render_dataset`) refuses to move a rendered melody to the
other split.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from steer.data._files import atomic_write_text

Split = Literal["train", "test"]


@dataclass(frozen=True)
class ManifestEntry:
    audio: str
    melody_id: str
    instrument: str
    prompt: str
    split: Split
    collection: str

    def __post_init__(self):
        if self.split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {self.split!r}")


def write_manifest(path: str | Path, entries: Iterable[ManifestEntry]) -> Path:
    path = Path(path)
    atomic_write_text(path, "".join(json.dumps(asdict(e)) + "\n" for e in entries))
    return path


def read_manifest(path: str | Path, *, split: Split | None = None) -> list[ManifestEntry]:
    """The entries of a manifest, optionally only one split."""
    entries = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = ManifestEntry(**json.loads(line))
        except (ValueError, TypeError) as error:  # JSONDecodeError is a ValueError; so is a bad split
            raise ValueError(f"{path}:{number}: not a manifest line ({error})") from None
        if split is None or entry.split == split:
            entries.append(entry)
    return entries


def check_test_fraction(test_fraction: float) -> None:
    """Refuse a share of test melodies outside ``[0, 1)`` (NaN included)."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction (--test-fraction) must be in [0, 1), got {test_fraction}")


def split_melodies(
    melody_ids: Sequence[str], *, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, Split]:
    """Assign each melody to train or test, deterministically.

    The ``round(test_fraction * n)`` melodies (at least one when ``test_fraction > 0`` and there
    are two or more melodies) with the smallest ``sha256(f"{seed}:{id}")`` go to test. The result
    does not depend on the order of ``melody_ids``.
    """
    check_test_fraction(test_fraction)
    ids = sorted(set(melody_ids), key=lambda m: hashlib.sha256(f"{seed}:{m}".encode()).digest())
    n_test = round(test_fraction * len(ids))
    if test_fraction > 0 and len(ids) > 1:
        n_test = min(max(n_test, 1), len(ids) - 1)
    return {m: "test" if i < n_test else "train" for i, m in enumerate(ids)}


def swap_pairs(entries: Iterable[ManifestEntry]) -> list[tuple[ManifestEntry, ManifestEntry]]:
    """Every ordered (source, target) pair of one melody on two instruments: the ideal edit of
    ``source`` towards ``target.prompt`` is ``target``."""
    by_melody: dict[str, list[ManifestEntry]] = {}
    for entry in entries:
        by_melody.setdefault(entry.melody_id, []).append(entry)
    return [
        (a, b)
        for group in by_melody.values()
        for a, b in itertools.permutations(group, 2)
        if a.instrument != b.instrument
    ]
