"""Score folders of edits against their sources, grouped by edit type.

The pairs come from a ``steer run`` folder (its records name each edit's source clip and
prompts) or from a manifest plus a folder of ``<id>.wav`` edits made elsewhere. Per-clip metrics
(those with ``values()``: CQT-1 PCC, CLAP, LPAPS, CDPAM, log-mel distance) are averaged per group
over their finite values, with the count of NaNs beside them (a silent edit has no melody: its
CQT-1 PCC is NaN, and hiding it would flatter the mean; a clip too short for a metric and a
diverged edit count as NaN too, with a warning naming the item); set-level metrics (FAD) are
computed once per group.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shlex
import unicodedata
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import soundfile as sf
import torch

from backbones.mel import to_mono
from steer.data._files import atomic_write_text

from .audio import NonFiniteAudio, load_audio
from .manifest import EditItem, read_edit_manifest
from .metrics.functional import SCORING_RATE, TooFewRows
from .runner import ItemRecord, RunCounts, collect_records, read_record, write_json

if TYPE_CHECKING:
    from torchmetrics import Metric

#: The label of the overall row of the tables (``"overall": true`` in JSON rows).
ALL = "all"
#: Seconds by which an edit and its source may differ in duration before ``score_pairs`` warns
#: (an edit is decoded to its source's duration; resampling may move it by a sample or so).
LENGTH_TOLERANCE = 0.05
#: The label of the row of the items without an edit type in Markdown tables (JSON: ``null``).
NO_TYPE = "(none)"


@dataclass(frozen=True)
class Pair:
    """An edit and what it was made from."""

    id: str
    edit_type: str | None
    source: Path
    edit: Path
    target: str


def pairs_from_run(folder: str | os.PathLike) -> tuple[list[Pair], list[str]]:
    """The finished edits of a ``steer run`` folder, from its records; also the ids of the
    items it holds no finished edit of (a failed, running or unreadable record: the file's
    name). A ``ValueError`` naming the folder when it holds none (so that several folders are
    all checked before any is scored)."""
    folder = Path(folder)
    paths = sorted((folder / "records").glob("*.json")) if (folder / "records").is_dir() else []
    if not paths:
        raise ValueError(f"{folder} holds no records/: is it a 'steer run' output folder?")
    records = [read_record(path) for path in paths]
    pairs = [
        Pair(r.id, r.edit_type, source_of(r, folder), folder / f"{r.id}.wav", r.target)
        for r in records
        if r is not None and r.status == "done"
    ]
    not_done = [path.stem if r is None else r.id for path, r in zip(paths, records) if r is None or r.status != "done"]
    if not pairs:
        statuses = Counter("unreadable" if r is None else r.status for r in records)
        counts = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
        raise ValueError(
            f"{folder} has no finished edit to evaluate: none of its {len(records)} records is done "
            f"({counts}); rerun 'steer run' there or leave the folder out"
        )
    return pairs, not_done


def source_of(record: ItemRecord, folder: Path) -> Path:
    """The source clip of a record of the run folder ``folder``, from any working folder.

    Records store absolute paths; older ones hold paths relative to the folder the run was
    started from, which is found by matching the record's ``edit`` path (``<out>/<id>.wav`` as
    given) against the end of the folder's absolute path; failing that, the path is taken as it
    is."""
    audio, edit = Path(record.audio), Path(record.edit)
    if audio.is_absolute() or edit.is_absolute():
        return audio
    wav = (folder / f"{record.id}.wav").resolve()
    n = len(edit.parts)
    if ".." not in edit.parts and len(wav.parts) > n and wav.parts[-n:] == edit.parts:
        return Path(*wav.parts[:-n]) / audio
    return audio


def pairs_from_manifest(manifest: str | os.PathLike, edits: str | os.PathLike) -> tuple[list[Pair], list[str]]:
    """Pairs of a manifest's items and ``edits/<id>.wav``; also the ids whose edit is missing.

    Raises:
        ValueError: naming the folder and what it holds when no item has its edit there.

    Warns:
        RuntimeWarning: naming the missing items' edits that are there in another format
            (``<id>.flac``), which are not read, and how to convert them.
    """
    edits = Path(edits)
    if not edits.is_dir():
        raise ValueError(f"edits folder not found: {edits}")
    pairs, missing = [], []
    for item in read_edit_manifest(manifest):
        edit = edits / f"{item.id}.wav"
        if edit.is_file():
            pairs.append(Pair(item.id, item.edit_type, item.audio, edit, item.target))
        else:
            missing.append(item.id)
    files = sorted(path.name for path in edits.iterdir() if path.is_file() and not path.name.startswith("."))
    if not pairs:
        found = f"{len(files)} file(s): {', '.join(files[:3])}{', ...' if len(files) > 3 else ''}" if files else "no file"
        wavs = any(Path(name).suffix.lower() == ".wav" for name in files)
        fix = "convert the edits to .wav" if files and not wavs else "name each edit <id>.wav"
        raise ValueError(
            f"{edits} holds no edit of the manifest's {len(missing)} item(s): steer eval reads <id>.wav "
            f"(e.g. {missing[0]}.wav) and found {found}; {fix}"
        )
    if elsewhere := _other_formats(files, missing):
        first = edits / elsewhere[0]
        warnings.warn(
            f"{len(elsewhere)} missing edit(s) are in {edits} in another format, which steer eval does not read "
            f"(it reads <id>.wav): {', '.join(elsewhere[:3])}{', ...' if len(elsewhere) > 3 else ''}; convert "
            f"them to <id>.wav, e.g. ffmpeg -i {shlex.quote(str(first))} {shlex.quote(str(first.with_suffix('.wav')))}",
            RuntimeWarning,
            stacklevel=2,
        )
    return pairs, missing


#: compressed audio suffixes soundfile may not read (ffmpeg converts them)
_COMPRESSED = frozenset({"mp3", "m4a", "aac", "opus", "wma", "webm"})
#: suffixes of soundfile's formats other than the formats' names
_OTHER_NAMES = frozenset({"aif", "aifc", "oga", "snd"})


def _other_formats(files: Sequence[str], ids: Sequence[str]) -> list[str]:
    """The audio ``files`` named ``<id>.<suffix>`` for one of ``ids`` and a suffix other than
    ``.wav`` (``c2.flac``, ``c2.WAV``; not ``c2.json`` or ``c2.mid``, which is no recording), in
    the order of ``ids``. Audio is a format soundfile reads (``.caf``) or a compressed one ffmpeg
    converts (:data:`_COMPRESSED`)."""
    readable = {fmt.lower() for fmt in sf.available_formats()} | _OTHER_NAMES | _COMPRESSED
    by_stem: dict[str, list[str]] = {}
    for name in files:
        path = Path(name)
        if path.suffix != ".wav" and path.suffix[1:].lower() in readable:
            by_stem.setdefault(path.stem, []).append(name)
    return [name for item in ids for name in by_stem.get(item, [])]


def _mono(path: Path, sample_rate: int | None) -> tuple[torch.Tensor, int]:
    """``(samples,)`` mono waveform, resampled to ``sample_rate`` when given."""
    audio = load_audio(path)
    rate = audio.sample_rate if sample_rate is None else sample_rate
    return to_mono(audio.waveform[None], audio.sample_rate, rate)[0], rate


def is_per_clip(metric: Metric) -> bool:
    return callable(getattr(metric, "values", None))


def _fresh(metric: Metric) -> Metric:
    """An empty copy of ``metric`` sharing its models (submodules), not copies of them."""
    copy_ = copy.deepcopy(metric, {id(child): child for child in metric.children()})
    copy_.reset()
    return copy_


@dataclass(frozen=True)
class Scores:
    """What :func:`score_pairs` found.

    Attributes:
        items: per item id (in the order of the pairs), each per-clip metric's value; NaN for an
            item that was not scored.
        unscored: per item that was not scored, why (a missing or unreadable file, a diverged edit).
        by_type: per edit type (``None``: the items without one), each set-level metric's value.
        overall: each set-level metric's value over every scored item, kept apart from
            ``by_type`` so that any edit type name, "all" included, is a group of its own.
    """

    items: dict[str, dict[str, float]]
    unscored: dict[str, str]
    by_type: dict[str | None, dict[str, float]]
    overall: dict[str, float]


class _Unscorable(Exception):
    """A pair that cannot be scored; the message says why, starting with "its source"/"its edit"."""


def score_pairs(pairs: Sequence[Pair], metrics: Mapping[str, Metric], *, sample_rate: int) -> Scores:
    """Run the metrics over the pairs (each clip made mono and resampled to ``sample_rate``,
    the rate the metrics were built for). Paired metrics compare an edit and its source over
    their common start: pairs whose durations differ by more than :data:`LENGTH_TOLERANCE`
    seconds are named in a ``RuntimeWarning``.

    One bad item does not stop the others: a metric's warning of why its value is NaN for a
    pair (a clip too short for the CQT or the log-mel distance, …) is raised again naming the
    item, and a pair whose source or edit is missing or unreadable, or whose edit holds NaN or
    infinite samples (a diverged edit), is not scored: its per-clip values are NaN and it is
    left out of the set-level metrics, with a ``RuntimeWarning`` naming the item and the file.
    """
    per_clip = {name: m for name, m in metrics.items() if is_per_clip(m)}
    per_set = {name: m for name, m in metrics.items() if not is_per_clip(m)}
    if not pairs:
        return Scores({}, {}, {}, {})
    by_type = {pair.edit_type: {name: _fresh(m) for name, m in per_set.items()} for pair in pairs}
    for metric in per_clip.values():
        metric.reset()
    lengths: list[tuple[int, int] | None] = []
    unscored: dict[str, str] = {}
    items_of_warnings: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        # The metrics say why a value is NaN but cannot name the item: their warnings are kept,
        # with the item they came from, and raised again below ("always": one reason, say a
        # clip too short for the CQT, may hold for several items).
        warnings.simplefilter("always", RuntimeWarning)
        for pair in pairs:
            try:
                lengths.append(_add_pair(pair, [*per_clip.values(), *by_type[pair.edit_type].values()], sample_rate))
            except _Unscorable as error:
                lengths.append(None)
                unscored[pair.id] = str(error)
            items_of_warnings += [pair.id] * (len(caught) - len(items_of_warnings))
    for item, warning in zip(items_of_warnings, caught):
        if issubclass(warning.category, RuntimeWarning):
            warnings.warn(f"{item}: {warning.message}", warning.category, stacklevel=2)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    left_out = f" and it is left out of the set-level metrics ({', '.join(per_set)})" if per_set else ""
    for item, why in unscored.items():
        warnings.warn(f"{item} is not scored: {why}; its per-clip metrics are NaN{left_out}", RuntimeWarning, stacklevel=2)
    _warn_unequal_lengths(pairs, lengths, sample_rate)
    # every clip is embedded once: the overall set merges the edit types' states
    overall = {name: _fresh(m) for name, m in per_set.items()}
    for group in by_type.values():
        for name, metric in group.items():
            overall[name].merge_state(metric)
    values = {name: metric.values().tolist() for name, metric in per_clip.items()}
    items, row = {}, 0  # the metrics hold a value for each scored pair only
    for pair, length in zip(pairs, lengths):
        items[pair.id] = {name: math.nan if length is None else float(values[name][row]) for name in per_clip}
        row += length is not None
    return Scores(
        items=items,
        unscored=unscored,
        by_type={
            kind: {name: _set_value(m, name, _group_name(kind)) for name, m in group.items()}
            for kind, group in by_type.items()
        },
        overall={name: _set_value(m, name, "all edits") for name, m in overall.items()},
    )


def _warn_unequal_lengths(pairs: Sequence[Pair], lengths: Sequence[tuple[int, int] | None], sample_rate: int) -> None:
    """Name, in one ``RuntimeWarning``, the scored pairs whose edit and source durations differ
    by more than :data:`LENGTH_TOLERANCE`."""
    scored = [(pair, length) for pair, length in zip(pairs, lengths) if length is not None]
    unequal = [
        f"{pair.id} ({edit / sample_rate:.2f} s edit, {source / sample_rate:.2f} s source)"
        for pair, (edit, source) in scored
        if abs(edit - source) > LENGTH_TOLERANCE * sample_rate
    ]
    if unequal:
        warnings.warn(
            f"{len(unequal)} edit(s) differ in duration from their source, so the paired metrics compare only "
            f"their common start: {', '.join(unequal[:3])}{', ...' if len(unequal) > 3 else ''}",
            RuntimeWarning,
            stacklevel=3,
        )


def _read(path: Path, role: str, sample_rate: int) -> torch.Tensor:
    """One clip of a pair (``role``: "source" or "edit") mono at ``sample_rate``, or
    :class:`_Unscorable` saying which file is missing or unreadable."""
    if not os.path.exists(path):
        raise _Unscorable(f"its {role} file is missing: {path}")
    try:
        return _mono(path, sample_rate)[0]
    except NonFiniteAudio:
        raise _Unscorable(f"its {role} holds NaN or infinite samples ({path})") from None
    except ValueError as error:
        raise _Unscorable(f"its {role} file cannot be read ({error})") from None


def _add_pair(pair: Pair, metrics: Sequence[Metric], sample_rate: int) -> tuple[int, int]:
    """Add one pair to each metric, both clips mono at ``sample_rate``; the lengths of its edit
    and source in samples. :class:`_Unscorable` (nothing added) for a pair whose files cannot
    be scored."""
    edited = _read(pair.edit, "edit", sample_rate)
    source = _read(pair.source, "source", sample_rate)
    for metric in metrics:
        metric.update(edited[None], source[None], target_prompts=[pair.target])
    return edited.shape[-1], source.shape[-1]


def _group_name(edit_type: str | None) -> str:
    """How warnings name an edit type's group."""
    return "the items without an edit type" if edit_type is None else f"edit type {edit_type!r}"


def _set_value(metric: Metric, name: str, group: str) -> float:
    """A set-level metric's value over a group; NaN (shown as "—"), with a warning, for a group
    too small for it (FAD of an edit type with one clip), so the other groups are still scored."""
    try:
        return float(metric.compute())
    except TooFewRows as error:
        warnings.warn(f"{name} of {group} is left empty: {error}", RuntimeWarning, stacklevel=2)
        return math.nan


def aggregate(
    rows: Sequence[tuple[str | None, Mapping[str, float | None]]],
    names: Sequence[str],
    *,
    by_type: Mapping[str | None, Mapping[str, float]] | None = None,
    overall: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """One row per edit type (sorted; ``None``, the items without one, first) and a last
    overall row: ``edit_type`` (the name as written, ``None`` for no type, :data:`ALL` in the
    overall row), ``overall`` (true in the last row only, so an edit type named "all" is told
    apart from it), ``n``, and for each metric its mean over finite values (``None`` when there
    are none) and ``<name>_nan``, the count of NaN/missing values; set-level metrics take their
    value from ``by_type[edit type]`` and ``overall``.

    Example:
        >>> aggregate([("a", {"m": 1.0}), ("a", {"m": float("nan")}), ("b", {"m": 3.0})], ["m"])[-1]
        {'edit_type': 'all', 'overall': True, 'n': 3, 'm': 2.0, 'm_nan': 1}
    """
    groups: dict[str | None, list[Mapping[str, float | None]]] = {}
    for edit_type, values in rows:
        groups.setdefault(edit_type, []).append(values)
    ordered = [(kind, False, groups[kind], (by_type or {}).get(kind, {})) for kind in sorted(groups, key=_type_order)]
    ordered.append((ALL, True, [v for _, v in rows], overall or {}))
    table = []
    for kind, is_overall, members, sets in ordered:
        row: dict[str, Any] = {"edit_type": kind, "overall": is_overall, "n": len(members)}
        for name in names:
            if name in sets:
                row[name], row[f"{name}_nan"] = _finite(sets[name]), None
                continue
            found = [v.get(name) for v in members]
            finite = [v for v in found if v is not None and math.isfinite(v)]
            row[name] = sum(finite) / len(finite) if finite else None
            row[f"{name}_nan"] = len(found) - len(finite)
        table.append(row)
    return table


def _type_order(edit_type: str | None) -> tuple[bool, str]:
    """Sort key of edit types: no type first, then by name."""
    return edit_type is not None, edit_type or ""


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def markdown_table(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> str:
    """The rows of :func:`aggregate` as a Markdown table; where no item has an edit type, the
    overall row alone (the "(none)" row would repeat it)."""
    if len(rows) == 2 and rows[0]["edit_type"] is None and not rows[0]["overall"]:
        rows = rows[1:]
    header = ["edit type", "N"]
    for name in names:
        header += [name, f"{name} NaN"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [_label(row), str(row["n"])]
        for name in names:
            value, nan = row[name], row[f"{name}_nan"]
            cells += ["—" if value is None else f"{value:.4f}", "—" if nan is None else str(nan)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _label(row: Mapping[str, Any]) -> str:
    """A row's edit type as a table cell: :data:`ALL` for the overall row, :data:`NO_TYPE` for
    the items without a type; an edit type written as one of those, or holding a quote, a
    pipe, a backslash (Markdown's escape) or an unprintable character, or with spaces at an end
    (a table cell trims them) or not in Unicode's composed form (NFC: "café" typed two ways), is
    quoted (JSON), so no two rows read alike."""
    kind = row["edit_type"]
    if row["overall"]:
        return ALL
    if kind is None:
        return NO_TYPE
    plain = kind.isprintable() and kind == kind.strip() and kind and unicodedata.is_normalized("NFC", kind)
    if kind in (ALL, NO_TYPE) or not plain or any(char in kind for char in '"|\\'):
        return json.dumps(kind, ensure_ascii=False).replace("|", "\\|")
    return kind


def comparison_table(results: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> str:
    """One Markdown table of several runs' :func:`evaluate` results, a ``run`` column first (the
    paper's tables: a row per method and edit type), and a line under it where the runs scored
    different items (their means are then over different clips; an unscored item, NaN in every
    metric, counts as not scored)."""
    parts = []
    for run, result in results.items():
        table = markdown_table(result["groups"], names).splitlines()
        if not parts:
            parts += ["| run " + table[0], "|---" + table[1]]
        cell = run.replace("|", "\\|")  # a folder's "|" would end the cell
        parts += [f"| {cell} " + line for line in table[2:]]
    text = "\n".join(parts) + "\n"
    scored = {run: set(result["items"]) - set(result.get("unscored", {})) for run, result in results.items()}
    if len({frozenset(items) for items in scored.values()}) > 1:
        common = set.intersection(*scored.values())
        counts = ", ".join(f"{run} {len(items)}" for run, items in scored.items())
        text += (
            f"\nThe runs scored different items ({counts}; {len(common)} in all of them): "
            "their means are over different clips.\n"
        )
    return text


def evaluate(
    pairs: Sequence[Pair],
    names: Sequence[str],
    *,
    clap_model: str | None = None,
    device: str | torch.device = "cpu",
    missing: Sequence[str] = (),
    metrics: Mapping[str, Metric] | None = None,
) -> dict[str, Any]:
    """Score the pairs with the named metrics (:func:`steer.metrics.collection.build_metrics`),
    every clip made mono and resampled to :data:`~steer.metrics.functional.SCORING_RATE`;
    ``metrics``: those metrics already built (at that rate), to score several folders with one
    CLAP model loaded once.

    Returns:
        ``{"metrics": names, "groups": rows of aggregate(), "items": {id: {name: value}},
        "missing": ids without an edit, "unscored": {id: why}}`` (items whose source or edit
        could not be read, or whose edit diverged), NaN written as ``None``.

    Raises:
        ValueError: when there are no pairs, or when no pair can be scored, naming the folder.
    """
    from steer.metrics.collection import build_metrics

    if not pairs:
        raise ValueError("no edits to evaluate")
    if metrics is None:
        metrics = build_metrics(names, sample_rate=SCORING_RATE, clap_model=clap_model, device=device)
    scores = score_pairs(pairs, {name: metrics[name] for name in names}, sample_rate=SCORING_RATE)
    if len(scores.unscored) == len(pairs):
        folders = ", ".join(sorted({str(pair.edit.parent) for pair in pairs}))
        first, why = next(iter(scores.unscored.items()))
        raise ValueError(
            f"no edit in {folders} could be scored ({len(pairs)} tried; first: {first}: {why}); "
            "check that the edits and their sources are there and readable"
        )
    kinds = {pair.id: pair.edit_type for pair in pairs}
    rows = aggregate(
        [(kinds[i], values) for i, values in scores.items.items()],
        list(names),
        by_type=scores.by_type,
        overall=scores.overall,
    )
    return {
        "metrics": list(names),
        "groups": rows,
        "items": {i: {k: _finite(v) for k, v in values.items()} for i, values in scores.items.items()},
        "missing": list(missing),
        "unscored": scores.unscored,
    }


#: The files :func:`write_run_summary` writes into a run folder.
RUN_SUMMARY_FILES = ("summary.json", "summary.md")
_SUMMARY_HEADING = "# steer run summary"
_SUMMARY_KEYS = {"this_run", "items", "done", "groups"}


def is_run_summary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a summary :func:`write_run_summary` wrote (``summary.json``: an
    object with its keys; ``summary.md``: starting with its heading), so a run may replace it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".md":
            return text.startswith(_SUMMARY_HEADING + "\n")
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and _SUMMARY_KEYS <= data.keys()


def write_run_summary(
    out: str | os.PathLike,
    items: Sequence[EditItem],
    names: Sequence[str],
    counts: RunCounts,
    *,
    set_metrics: Mapping[str, Metric] | None = None,
    others: Sequence[str] = (),
) -> dict[str, Any]:
    """Write ``summary.json`` and ``summary.md`` of a run folder from its records.

    Per-clip metric values come from the records (``names``; none: those the records hold);
    set-level metrics (``set_metrics``, built at :data:`~steer.metrics.functional.SCORING_RATE`)
    are computed over the finished edits, each in a column of its own (after ``names`` where
    they are not among them). ``counts`` is what this invocation did (summed over processes);
    the totals over the manifest come from the records. ``others`` are the ids of finished edits
    in the folder of items not in ``items`` (:func:`~steer.runner.other_items_done`): counted
    under ``other_items_done`` and named in a line (:func:`other_items_note`).
    """
    out = Path(out)
    records = collect_records(out, items)
    done = [r for r in records if r is not None and r.status == "done"]
    # a rerun without --metrics keeps the columns of the per-clip values its records hold
    names = list(names) or list(dict.fromkeys(k for r in done for k in r.metrics))
    names += [name for name in set_metrics or {} if name not in names]
    pairs = [Pair(r.id, r.edit_type, source_of(r, out), out / f"{r.id}.wav", r.target) for r in done]
    scores = score_pairs(pairs if set_metrics else [], set_metrics or {}, sample_rate=SCORING_RATE)
    rows = aggregate(
        [(r.edit_type, {k: (math.nan if v is None else v) for k, v in r.metrics.items()}) for r in done],
        list(names),
        by_type=scores.by_type,
        overall=scores.overall,
    )
    summary = {
        "this_run": {"done": counts.done, "skipped": counts.skipped, "failed": counts.failed},
        "items": len(items),
        "done": len(done),
        "failed": sum(r is not None and r.status == "failed" for r in records),
        "not_finished": sum(r is None or r.status == "running" for r in records),
        "metrics": list(names),
        "groups": rows,
        "other_items_done": len(others),
    }
    write_json(out / RUN_SUMMARY_FILES[0], summary)
    text = (
        f"{_SUMMARY_HEADING}\n\n{summary['done']} of {summary['items']} items done, "
        f"{summary['failed']} failed, {summary['not_finished']} not finished.\n\n"
    )
    text += markdown_table(rows, names)
    if others:
        text = f"{text.rstrip()}\n\n{other_items_note(out, others)}.\n"
    atomic_write_text(out / RUN_SUMMARY_FILES[1], text)
    return summary


def other_items_note(out: Path, others: Sequence[str]) -> str:
    """The line saying that the run folder ``out`` holds finished edits of items not in the
    run's manifest (``others``, their ids), which ``steer eval`` scores too."""
    return (
        f"{len(others)} finished edit(s) of items not in this manifest are in {out} too (first: {others[0]}); "
        "steer eval scores them as well"
    )
