"""Edit manifests: which clip to edit, from which prompt to which, and with which concept.

A manifest is JSON Lines, one edit per line::

    {"id": "clip-001", "audio": "clips/a.wav", "source": "a piano melody",
     "target": "a violin melody", "concept": "concepts/sks-guitar", "edit_type": "instrument"}

``audio`` is relative to the manifest's folder (or absolute, or under the user's home as
``~/...``); ``concept`` (a concept folder or Hub repo id, edited with SteerMusic+; ``~/...`` is
the user's home, and a relative folder that exists beside the manifest is taken from there, as
``audio`` is) and ``edit_type`` (a group name for the summary) are optional. The ZoME-Bench metadata (Liu et al., "MEDIC: Zero-shot Music Editing with Disentangled
Inversion Control", https://arxiv.org/abs/2407.13220) is read too: see :func:`read_zome_bench`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_FIELDS = {"id": True, "audio": True, "source": True, "target": True, "concept": False, "edit_type": False}
#: an id is a file name: not hidden (no leading "."), and YouTube ids may start with "-" or "_"
_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
#: the longest id: file names stop at 255 bytes, and a run's temporary files add to the id
#: (``records/.<id>.json.<pid>.tmp``)
MAX_ID_LENGTH = 200


@dataclass(frozen=True)
class EditItem:
    """One edit of a manifest.

    Attributes:
        id: unique name; the edit is written to ``<id>.wav``.
        audio: the source clip.
        source, target: the prompts describing the clip and the wanted edit.
        concept: a concept folder or Hub repo id (SteerMusic+), or ``None`` (SteerMusic).
        edit_type: the group this edit is summarised in, or ``None``.
    """

    id: str
    audio: Path
    source: str
    target: str
    concept: str | None = None
    edit_type: str | None = None


def _item(raw: Any, where: str, folder: Path) -> EditItem:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(_FIELDS)})")
    for name, required in _FIELDS.items():
        value = raw.get(name)
        if value is None and not required:
            continue
        if value is None:
            raise ValueError(f"{where}: missing field {name!r}")
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}: field {name!r} must be a non-empty string")
    if not _ID.fullmatch(raw["id"]):
        raise ValueError(
            f"{where}: field 'id' {raw['id']!r} must be a file name: ASCII letters (a-z, A-Z), "
            "digits, '.', '_' and '-', not starting with '.'"
        )
    if len(raw["id"]) > MAX_ID_LENGTH:
        raise ValueError(
            f"{where}: field 'id' is {len(raw['id'])} characters long, too long for a file name: "
            f"shorten it to at most {MAX_ID_LENGTH}"
        )
    return EditItem(
        id=raw["id"],
        audio=folder / Path(os.path.expanduser(raw["audio"])),  # an absolute path stays as it is
        source=raw["source"],
        target=raw["target"],
        concept=_concept(raw.get("concept"), folder),
        edit_type=raw.get("edit_type"),
    )


def _concept(reference: str | None, folder: Path) -> str | None:
    """A concept reference as given (``~/...`` expanded to the user's home), or its path beside
    the manifest when one exists there (a Hub repo id such as ``"me/guitar"`` is not a local path
    and stays as it is)."""
    if reference is None:
        return None
    reference = os.path.expanduser(reference)
    return str(folder / reference) if (folder / reference).exists() else reference


def _check_unique(items: Sequence[EditItem], where: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for item, place in zip(items, where):
        if item.id in seen:
            raise ValueError(f"{place}: field 'id' {item.id!r} is already used at {seen[item.id]}")
        seen[item.id] = place


#: what a manifest line must be, said with every error about a line's format
_JSON_LINES = "a manifest is JSON Lines, one JSON object per line"


def _shown(line: str, limit: int = 60) -> str:
    """The start of a line, quoted, for an error message."""
    return repr(line if len(line) <= limit else line[:limit] + "...")


class _RepeatedField(ValueError):
    """A JSON object naming a field twice (``json`` keeps the last silently)."""


def _fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's fields, :class:`_RepeatedField` for a name given twice."""
    fields: dict[str, Any] = {}
    for name, value in pairs:
        if name in fields:
            raise _RepeatedField(name)
        fields[name] = value
    return fields


def _lines(text: str) -> list[str]:
    """The lines of JSON Lines text: split at "\\n" only (``str.splitlines`` also splits at
    U+2028, U+0085, "\\x1c"…, which JSON strings may hold raw), a "\\r" before it dropped."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def read_edit_manifest(path: str | os.PathLike) -> list[EditItem]:
    """The items of a JSON Lines manifest (UTF-8, a byte order mark allowed), or of ZoME-Bench's
    metadata (a folder or its file).

    Every line is checked before anything runs: errors name the line and the field.
    """
    path = Path(path)
    if path.is_dir() or _is_zome_bench(path):
        return read_zome_bench(path)
    if not path.is_file():
        raise ValueError(f"manifest not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text: {_JSON_LINES}") from None
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, list):
        raise ValueError(
            f"{path} holds a JSON array, not JSON Lines: {_JSON_LINES}; write each element of the "
            "array on its own line"
        )
    items, places = [], []
    for number, line in enumerate(_lines(text), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            raw = json.loads(line, object_pairs_hook=_fields)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not JSON ({error.msg}): {_JSON_LINES}; got {_shown(line)}") from None
        except _RepeatedField as error:
            raise ValueError(f"{where}: field {error.args[0]!r} is given twice: keep one") from None
        if not isinstance(raw, dict):
            raise ValueError(
                f"{where}: expected a JSON object, got {type(raw).__name__}: {_JSON_LINES}; got {_shown(line)}"
            )
        items.append(_item(raw, where, path.parent))
        places.append(where)
    if not items:
        raise ValueError(f"{path} holds no items")
    _check_unique(items, places)
    return items


# -- ZoME-Bench -----------------------------------------------------------------------------------
#: ``editing_type_id`` → name, from the dataset card of ``liuhuadai/ZoME-Bench``.
ZOME_EDIT_TYPES = {
    "0": "change_instrument",
    "1": "add_instrument",
    "2": "delete_instrument",
    "3": "change_genre",
    "4": "change_mood",
    "5": "change_rhythm",
    "6": "change_background",
    "7": "change_melody",
    "8": "extract_instrument",
    "9": "random",
}
_ZOME_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
_AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def _zome_rows(path: Path) -> list[tuple[str | None, dict]]:
    """``(key, row)`` pairs of a metadata file: a JSON list, a JSON object keyed by id (as
    PIE-Bench's ``mapping_file.json``), JSON Lines, CSV, or Parquet (the Hub's dataset layout)."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet
        except ImportError as error:
            raise ValueError(f"{path}: reading Parquet needs pyarrow: pip install 'steer[zome]'") from error
        return [(None, row) for row in pyarrow.parquet.read_table(path).to_pylist()]
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as file:
            return [(None, row) for row in csv.DictReader(file)]
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text) if path.suffix == ".json" else _json_lines(text, path)
    except json.JSONDecodeError:
        data = _json_lines(text, path)
    if isinstance(data, dict):
        if "editing_prompt" in data:  # one row alone
            return [(None, data)]
        return [(str(key), row) for key, row in data.items()]
    if isinstance(data, list):
        return [(None, row) for row in data]
    raise ValueError(f"{path}: expected a list or an object of rows")


def _json_lines(text: str, path: Path) -> list[Any]:
    """The rows of JSON Lines ``text``; a line that is not JSON is a ``ValueError`` naming it."""
    rows = []
    for number, line in enumerate(_lines(text), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error.msg}); got {_shown(line)}") from None
    return rows


def _is_zome_bench(path: Path) -> bool:
    """Whether ``path`` is ZoME-Bench's metadata: its first row has ``editing_prompt`` (a file
    whose later line is broken too, for :func:`read_zome_bench` to name that line)."""
    if not path.is_file() or path.suffix not in _ZOME_SUFFIXES:
        return False
    try:
        rows = _zome_rows(path)
    except (UnicodeDecodeError, csv.Error, OSError):
        return False
    except ValueError:  # a line that is not JSON
        first = next((line for line in _lines(path.read_text(encoding="utf-8-sig")) if line.strip()), "")
        try:
            rows = [(None, json.loads(first))]
        except json.JSONDecodeError:
            return False
    return bool(rows) and isinstance(rows[0][1], dict) and "editing_prompt" in rows[0][1]


def _find_audio(folder: Path, ytid: str) -> Path:
    """``audio/<ytid>.wav`` or a clip in ``audio/`` (or the folder) named after the YouTube id:
    ``<ytid>.*``, ``<ytid>_<start>_<end>.*``, ``[<ytid>]*.*``; the first path when none exists.
    The path is relative to ``folder``, as a manifest's ``audio`` is."""
    for place in (folder / "audio", folder):
        if not place.is_dir():
            continue
        for candidate in sorted(place.iterdir()):
            stem = candidate.stem
            if candidate.suffix.lower() in _AUDIO_SUFFIXES and (
                stem == ytid or stem.startswith((f"{ytid}_", f"{ytid}-", f"[{ytid}]"))
            ):
                return candidate.relative_to(folder)
    return Path("audio", f"{ytid}.wav")


def _zome_edit_type(value: Any) -> str | None:
    """The name of an ``editing_type_id`` (:data:`ZOME_EDIT_TYPES`): ``"4"``, ``4`` and ``4.0`` (a
    CSV or Parquet column with a gap holds floats) are ``change_mood``; an unknown id gives
    ``type_<id>``, a missing one (empty, null or NaN) ``None``."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
        return None
    kind = str(value).strip()
    try:
        number = float(kind)
    except ValueError:
        number = math.nan
    if number.is_integer():
        kind = str(int(number))
    return ZOME_EDIT_TYPES.get(kind, f"type_{kind}")


def read_zome_bench(path: str | os.PathLike) -> list[EditItem]:
    """Items of ZoME-Bench's metadata: its folder (holding one ``.json``/``.jsonl``/``.csv``/
    ``.parquet`` metadata file, at the top or in ``data/`` as the Hub lays datasets out) or the
    file itself.

    Rows need ``original_prompt``, ``editing_prompt`` and ``ytid``; ``editing_type_id`` names the
    edit type (:data:`ZOME_EDIT_TYPES`). The square brackets that mark the edited word in the
    prompts ("a [piano] solo") are removed. The benchmark ships no audio (the clips are MusicCaps
    segments from YouTube): a row's ``audio_path`` (relative to the folder) is used when present,
    else the clip is looked up by YouTube id in ``audio/``, see :func:`_find_audio`. Ids are the
    row's key (object files) or ``<row number>_<ytid>``. A metadata file in a folder named
    ``data`` is read as its dataset folder's (the one above), however it is given: the dataset
    folder, its ``data`` folder or the file.
    """
    path = Path(path)
    if path.is_dir():
        places = [p for p in (path, path / "data") if p.is_dir()]
        files = sorted(f for p in places for f in p.iterdir() if f.suffix in _ZOME_SUFFIXES and _is_zome_bench(f))
        if len(files) != 1:
            found = ", ".join(str(f.relative_to(path)) for f in files) or "none"
            raise ValueError(
                f"{path}: expected one ZoME-Bench metadata file (.json, .jsonl, .csv or .parquet "
                f"with 'editing_prompt'), found {found}; pass the file itself"
            )
        path = files[0]
    folder = path.parent.parent if path.parent.name == "data" else path.parent
    items, places = [], []
    for number, (key, row) in enumerate(_zome_rows(path)):
        where = f"{path}: row {number}" + ("" if key is None else f" (key {key!r})")
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object")
        for name in ("original_prompt", "editing_prompt", "ytid"):
            if not str(row.get(name) or "").strip():
                raise ValueError(f"{where}: missing field {name!r}")
        ytid = str(row["ytid"]).strip()
        audio = row.get("audio_path")
        raw = {
            "id": re.sub(r"[^A-Za-z0-9._-]", "_", key if key is not None else f"{number:04d}_{ytid}"),
            "audio": str(audio) if audio else str(_find_audio(folder, ytid)),
            "source": str(row["original_prompt"]).replace("[", "").replace("]", ""),
            "target": str(row["editing_prompt"]).replace("[", "").replace("]", ""),
            "edit_type": _zome_edit_type(row.get("editing_type_id")),
        }
        items.append(_item({k: v for k, v in raw.items() if v is not None}, where, folder))
        places.append(where)
    if not items:
        raise ValueError(f"{path} holds no rows")
    _check_unique(items, places)
    return items
