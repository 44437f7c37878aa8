"""Edit every clip of a manifest (:mod:`steer.manifest`): resumable, one record per clip,
sharded over processes.

:class:`ManifestRunner` writes ``OUT/<id>.wav`` and ``OUT/records/<id>.json`` per item, both
atomically. Before editing, an item's record says ``"running"`` with its attempt number, so a
killed run leaves evidence of what it was doing and a rerun counts the attempt; a rerun skips
items whose record says ``"done"`` and whose wav exists (bringing their records up to date: edit
type, metrics asked for) and redoes the rest, and refuses a folder whose edits were made with
other settings or from other prompts or clips (:meth:`ManifestRunner.check_settings`). A wav is
written over only when it is the run's own (:attr:`ItemRecord.owns_wav`) or with ``overwrite``,
never over a source clip (:func:`check_outputs`). Under
``accelerate launch`` the items still to edit are dealt out round-robin, pending item ``i`` to
process ``i % num_processes`` (:meth:`ManifestRunner.plan`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import soundfile as sf
import torch

from backbones import Backbone
from backbones.auto import TINY
from steer.data._files import atomic_write_text

from .audio import Audio, load_audio, save_audio
from .baselines import DDIMInversion, DDPMInversion, DreamSoundEditing, SDEdit
from .editor import LatentEditor
from .manifest import EditItem
from .metrics.functional import SCORING_RATE
from .recipes import SteerMusic, SteerMusicPlus

if TYPE_CHECKING:
    from torchmetrics import Metric

#: the paper's baselines by recipe name: they take a schedule's ``steps`` and ``guidance_scale``
#: and no execution path; each takes no concept but those of :data:`CONCEPT_RECIPES`
BASELINES: dict[str, type[LatentEditor]] = {
    "sdedit": SDEdit,
    "ddim_inversion": DDIMInversion,
    "ddpm_inversion": DDPMInversion,
    "dreamsound": DreamSoundEditing,
}
RECIPES = ("steermusic", "steermusic_plus", *BASELINES)
#: the recipes that edit every item with a concept (its own or the run's default)
CONCEPT_RECIPES = ("steermusic_plus", "dreamsound")


# -- editing ---------------------------------------------------------------------------------------
def build_editor(
    backbone: Backbone, settings: Mapping[str, Any], concept: Any = None, recipe: str = "steermusic"
) -> LatentEditor:
    """SteerMusic, SteerMusic+ with ``concept``, or a baseline of :data:`BASELINES` (with
    ``concept`` for those of :data:`CONCEPT_RECIPES`); ``settings``
    are its keyword arguments (``steps``, ``guidance_scale``, ``lr``, ...), missing ones take its
    defaults."""
    if recipe in CONCEPT_RECIPES and concept is None:
        raise ValueError(f"recipe {recipe} needs a concept")
    if recipe in BASELINES:
        if recipe in CONCEPT_RECIPES:
            return BASELINES[recipe](backbone, concept, **settings)
        if concept is not None:
            raise ValueError(f"recipe {recipe} takes no concept: use steermusic, steermusic_plus or dreamsound")
        return BASELINES[recipe](backbone, **settings)
    if concept is not None:
        return SteerMusicPlus(backbone, concept, **settings)
    return SteerMusic(backbone, **settings)


def check_concepts(items: Sequence[EditItem], recipe: str, default_concept: str | None) -> None:
    """Raise ``ValueError`` for an unknown recipe, for one of :data:`CONCEPT_RECIPES` when an
    item has no concept and there is no default, and for another baseline when there is a concept."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    missing = [item.id for item in items if item.concept is None]
    if recipe in CONCEPT_RECIPES and default_concept is None and missing:
        raise ValueError(
            f"recipe {recipe} needs a concept for every item; {len(missing)} have none "
            f"(first: {missing[0]!r}): add 'concept' to them or pass --concept"
        )
    if recipe in BASELINES and recipe not in CONCEPT_RECIPES:
        named = [item.id for item in items if item.concept is not None]
        if default_concept is not None or named:
            which = "--concept is given" if default_concept is not None else (
                f"{len(named)} item(s) name one (first: {named[0]!r})"
            )
            raise ValueError(
                f"recipe {recipe} takes no concept, but {which}: edit those items with "
                f"steermusic, steermusic_plus or dreamsound"
            )


def check_batch_size(batch_size: int) -> None:
    """Raise ``ValueError`` for a batch size that is not a whole number >= 1. Every recipe, the
    baselines included, edits a clip of a batch as it is alone with the same seed, up to
    rounding (the noise is drawn for one clip and given to each)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"the batch size must be a whole number >= 1, got {batch_size!r}")


def check_outputs(items: Sequence[EditItem], out: str | os.PathLike) -> None:
    """Raise ``ValueError`` when an item's edit (``out/<id>.wav``) would be written over a
    source clip, its own or another item's (paths compared resolved): with or without
    ``overwrite``, that clip would be lost, and an item editing it would edit an edit."""
    sources: dict[Path, str] = {}
    for item in items:
        sources.setdefault(item.audio.resolve(), item.id)
    for item in items:
        wav = (Path(out) / f"{item.id}.wav").resolve()
        if wav in sources:
            whose = "its own source clip" if sources[wav] == item.id else f"the source clip of item {sources[wav]!r}"
            raise ValueError(f"item {item.id!r} would write its edit to {wav}, {whose}: pass another --out")


def _fail(record: ItemRecord, error: Exception) -> None:
    record.status, record.error = "failed", f"{type(error).__name__}: {error}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else value  # JSON has no NaN


@dataclass
class ItemRecord:
    """What ``records/<id>.json`` holds about one item.

    Attributes:
        status: ``"running"`` (started; a killed run leaves this), ``"done"`` or ``"failed"``.
        attempt: how many times the item was started, this one included.
        rank: the process that edited it.
        metrics: per-clip metric values, ``None`` for NaN.
        seconds: wall time of the edit and its metrics; an item edited in a batch gets the
            batch's time over the items it edited (0 for an item that failed before the edit).
        batch: how many clips were edited together, this one included (not counting the
            copies that fill up a compiled editor's batch).
        recipe: what edited it: ``"steermusic"``, ``"steermusic_plus"`` or a baseline's name.
        settings: what made the edit (recipe settings, seed, backbone and its weights' dtype, the
            concept's content, a baseline's name): a rerun refuses to mix edits made with other
            settings into one folder.
        audio_file: the source clip as the edit began (``size``, ``mtime_ns`` and ``sha256``,
            the SHA-256 of its bytes): a rerun refuses an item whose clip's bytes changed since,
            and takes the new path, size and mtime of the same bytes moved or touched (so the
            next rerun need not read them). ``None`` in records older than this field: their
            clip is unknown, and never refused.
        owns_wav: whether the wav at ``edit`` is the run's own, to write over: true when done;
            while running, true when the wav was absent or the run's own as the attempt began
            (the check comes before the record is written), so a wav beside a killed attempt's
            record is the edit it wrote, never a file that was there before; when failed, true
            when the run's own wav is still there. A wav beside a record that does not own it,
            or beside none, is not the run's: it is kept unless ``overwrite``. (Records older
            than this field own the wav when done.)
    """

    id: str
    status: str
    attempt: int
    rank: int
    audio: str
    edit: str
    source: str
    target: str
    concept: str | None
    edit_type: str | None
    recipe: str
    started_at: str
    finished_at: str | None = None
    seconds: float | None = None
    batch: int = 1
    sample_rate: int | None = None
    samples: int | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    error: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    owns_wav: bool = False
    audio_file: dict[str, Any] | None = None


def read_record(path: str | os.PathLike) -> ItemRecord | None:
    """The record at ``path``, or ``None`` when it is missing or unreadable."""
    try:
        return ItemRecord(**json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError, TypeError):
        return None


def finished_record(out: str | os.PathLike, item: EditItem) -> ItemRecord | None:
    """The item's record in the run folder ``out`` when it says ``"done"`` and its wav
    (``out/<id>.wav``) exists, else ``None``: an item a rerun skips."""
    out = Path(out)
    record = read_record(out / "records" / f"{item.id}.json")
    return record if record is not None and record.status == "done" and (out / f"{item.id}.wav").is_file() else None


def _owns_wav(wav: Path, record: ItemRecord | None) -> bool:
    """Whether the run may write ``wav``, an item's, whose record is ``record``: it is absent,
    or the run wrote it (see :attr:`ItemRecord.owns_wav`)."""
    return not wav.exists() or (record is not None and (record.status == "done" or record.owns_wav))


def wav_problem(out: str | os.PathLike, item: EditItem, *, overwrite: bool) -> str | None:
    """Why ``steer run`` must not write the item's wav in ``out``, or ``None``: a file is there
    that the run did not write, and ``overwrite`` is off. (A wav that is a source clip is
    refused before the run: :func:`check_outputs`.)"""
    wav = Path(out) / f"{item.id}.wav"
    if overwrite or _owns_wav(wav, read_record(Path(out) / "records" / f"{item.id}.json")):
        return None
    return _foreign_wav(wav)


def _foreign_wav(wav: Path) -> str:
    return (
        f"{wav} exists and was not written by steer run: move it away for steer run to write this edit "
        "there, or pass another --out (or --overwrite, which redoes every item)"
    )


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


@dataclass
class RunCounts:
    """What one process did: items edited, skipped (already done) and failed."""

    done: int = 0
    skipped: int = 0
    failed: int = 0


class ManifestRunner:
    """Edit the items of a manifest into a folder, resuming where an earlier run stopped.

    Args:
        items: the manifest's items (all of them: each process takes its share).
        out: the output folder (created if needed).
        backbone: the diffusion model.
        recipe: ``"steermusic"`` (items with a concept still use SteerMusic+),
            ``"steermusic_plus"`` or ``"dreamsound"`` (every item needs a concept, its own or
            ``default_concept``), or another baseline of :data:`BASELINES` (no item may name a
            concept).
        settings: the recipe's keyword arguments (see :func:`build_editor`).
        seed: the seed of every edit.
        metrics: per-clip metrics (``torchmetrics`` metrics with ``values()``), by name, built
            at :data:`~steer.metrics.functional.SCORING_RATE`, which each clip is resampled to;
            each item's values go into its record.
        default_concept: the concept of items that name none.
        load_concept: turns a concept reference into a concept (default
            :meth:`steer.concepts.Concept.from_pretrained`); each reference is loaded once.
        rank, num_processes: this process and how many share the work (see :meth:`plan`).
        overwrite: redo items that are already done, and write over wavs the run did not write
            (never over a source clip: :func:`check_outputs`).
        progress: show a progress bar per edit.
        batch_size: edit up to this many items in one call, among those sharing a concept, a
            sample rate, a channel count and a length (each is edited as it is alone, up to
            rounding, by every recipe: see :class:`~steer.editor.Editor`); on a GPU several
            clips a call take less time each. With a compiled editor (``Performance.compile``)
            a smaller batch is filled up with copies of its last clip, whose edits are thrown
            away, so that the calls traced for a full batch serve it (instead of a trace, and
            with inductor minutes of compiling, for one call).
    """

    def __init__(
        self,
        items: Sequence[EditItem],
        out: str | os.PathLike,
        *,
        backbone: Backbone,
        recipe: str = "steermusic",
        settings: Mapping[str, Any] | None = None,
        seed: int = 0,
        metrics: Mapping[str, Metric] | None = None,
        default_concept: str | None = None,
        load_concept: Callable[[str], Any] | None = None,
        rank: int = 0,
        num_processes: int = 1,
        overwrite: bool = False,
        progress: bool = False,
        batch_size: int = 1,
    ) -> None:
        check_concepts(items, recipe, default_concept)
        check_batch_size(batch_size)
        check_outputs(items, out)
        if not 0 <= rank < num_processes:
            raise ValueError(f"rank {rank} is not in [0, {num_processes})")
        self.items = list(items)
        self.out = Path(out)
        self.backbone = backbone
        self.recipe = recipe
        self.settings = dict(settings or {})
        self.seed = seed
        # JSON-able (a Performance is a dataclass, kept as its non-default fields, so a field
        # added later with a default does not change it): what a finished record must match
        self.fingerprint = json.loads(json.dumps(
            {
                "settings": {k: _jsonable(v) for k, v in sorted(self.settings.items())},
                "seed": seed,
                "backbone": f"{type(backbone).__name__}:{_local_or_hub(str(backbone.name_or_path))}",
                # float32, the default, is left out as records older than this field have it
                **({"dtype": str(backbone.dtype)} if backbone.dtype != torch.float32 else {}),
                # a baseline's name (SteerMusic's records, older than the baselines, have none)
                **({"recipe": recipe} if recipe in BASELINES else {}),
            },
            default=str,
        ))
        self.metrics = dict(metrics or {})
        self.default_concept = default_concept
        if load_concept is None:
            from .concepts import Concept

            load_concept = Concept.from_pretrained
        self.load_concept = load_concept
        self.rank = rank
        self.num_processes = num_processes
        self.overwrite = overwrite
        self.progress = progress
        self.batch_size = batch_size
        self._editors: dict[str | None, LatentEditor | Exception] = {}
        #: this process's pending items and finished ones with their records (:meth:`plan`)
        self._plan: tuple[list[EditItem], list[tuple[EditItem, ItemRecord]]] | None = None
        self._concept_ids: dict[tuple[str, str], Any] = {}
        self._digests: dict[tuple[Path, int, int], str] = {}

    def wav_path(self, item: EditItem) -> Path:
        return self.out / f"{item.id}.wav"

    def record_path(self, item: EditItem) -> Path:
        return self.out / "records" / f"{item.id}.json"

    def fingerprint_of(self, item: EditItem) -> dict[str, Any]:
        """What the item's finished record must match: :attr:`fingerprint`, plus the identity of
        the item's concept (see :func:`concept_identity`) when it has one."""
        concept = item.concept or self.default_concept
        if concept is None:
            return self.fingerprint
        return {**self.fingerprint, "concept": self._identity(concept, concept_identity)}

    def _setting_changes(
        self, record: ItemRecord, recorded: Mapping[str, Any], concept: str | None, now: Mapping[str, Any]
    ) -> list[str]:
        """What differs between a record's settings (``recorded``: ``record``'s, perhaps without
        its concept) and ``now`` (this run's, :meth:`fingerprint_of`), as ``"name: recorded →
        now"``, where a setting given at its editor's default equals one left out (``--guidance
        30`` is SteerMusic's default) and SteerMusic's fingerprint, which names no recipe, has
        the recipe its record names (or this run would) against a baseline's; ``concept`` is the
        item's concept reference, which picks the editor."""
        editor = BASELINES.get(self.recipe) or (SteerMusicPlus if concept else SteerMusic)
        defaults = {
            name: _jsonable(p.default)
            for name, p in inspect.signature(editor).parameters.items()
            if p.default is not inspect.Parameter.empty
        }

        def explicit(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
            settings = fingerprint.get("settings", {})
            kept = {k: v for k, v in settings.items() if k not in defaults or v != defaults[k]}
            return {**fingerprint, "settings": kept}

        recorded, now = explicit(recorded), explicit(now)
        # SteerMusic's fingerprints name no recipe (they are older than the baselines): against
        # a baseline's, the recipe its record names
        if "recipe" in now and "recipe" not in recorded:
            recorded["recipe"] = record.recipe
        if "recipe" in recorded and "recipe" not in now:
            now["recipe"] = self._recipe_of(concept)
        old, changes = recorded.get("concept"), []
        if concept is not None and _is_folder_digest(old):
            # recorded by an older steer, as a digest of every file of the folder: the same
            # files are the same concept; which file differs, that digest cannot tell
            if old != self._identity(concept, _folder_digest):
                changes.append(
                    "concept: a file of its folder changed since an older steer recorded it (that steer "
                    "counted every file, README.md included; steer now counts its config and weights)"
                )
            recorded["concept"] = now.get("concept")
        # offline builds were recorded unnamed ("AudioLDM2Backbone:None") before they were named
        kind, _, name = str(now.get("backbone")).partition(":")
        if recorded.get("backbone") == f"{kind}:None" and name in TINY:
            recorded["backbone"] = now["backbone"]
        return changes + _differences(recorded, now)

    def _recipe_of(self, concept: str | None) -> str:
        """The recipe that edits an item of ``concept`` (its reference, or ``None``), as its
        record names it: a baseline's name, else ``"steermusic_plus"`` with a concept."""
        return self.recipe if self.recipe in BASELINES else "steermusic_plus" if concept else "steermusic"

    def _identity(self, reference: str, rule: Callable[[str], Any]) -> Any:
        """``rule(reference)`` (:func:`concept_identity`, :func:`_folder_digest`), computed once a run."""
        key = (reference, rule.__name__)
        if key not in self._concept_ids:
            self._concept_ids[key] = rule(reference)
        return self._concept_ids[key]

    def plan(self) -> None:
        """Read which items are still to edit from the folder's records (every item's, so that
        every process of a launch comes to the same split), and deal them out round-robin:
        this process's :meth:`share` is every ``num_processes``-th of the pending items, and
        likewise of the finished ones (brought up to date, not edited). Dealing out the pending
        items, not the manifest, keeps a rerun's work even (a process whose items were all done
        waited idle for the others). Under a launcher every process must plan before any edits
        (``steer run`` plans before its last check that all processes agree); :meth:`run` plans
        where this was not called."""
        pending, finished = [], []
        for item in self.items:
            record = None if self.overwrite else self.finished(item)
            if record is None:
                pending.append(item)
            else:
                finished.append((item, record))
        turn = slice(self.rank, None, self.num_processes)
        self._plan = (pending[turn], finished[turn])

    def share(self) -> list[EditItem]:
        """This process's items (see :meth:`plan`): its pending items, then its finished ones."""
        pending, finished = self._planned()
        return pending + [item for item, _ in finished]

    def _planned(self) -> tuple[list[EditItem], list[tuple[EditItem, ItemRecord]]]:
        """This process's pending and finished items (:meth:`plan`, read now where not yet)."""
        if self._plan is None:
            self.plan()
        return self._plan

    def finished(self, item: EditItem) -> ItemRecord | None:
        """The item's record when it says ``"done"`` and its wav exists, else ``None``."""
        return finished_record(self.out, item)

    def _editor(self, concept: str | None) -> LatentEditor:
        """One editor per concept reference; a concept that fails to load fails every item
        that names it, without loading it again."""
        if concept not in self._editors:
            try:
                loaded = None if concept is None else self.load_concept(concept)
                self._editors[concept] = build_editor(self.backbone, self.settings, loaded, self.recipe)
            except Exception as error:  # noqa: BLE001 - recorded in each item's record
                self._editors[concept] = error
        editor = self._editors[concept]
        if isinstance(editor, Exception):
            raise ValueError(f"cannot use concept {concept!r}: {editor}") from editor
        return editor

    def _clean(self, item: EditItem) -> None:
        """Remove the temporary files an interrupted write of this item left behind: exactly the
        names steer's writers use (``.<name>.<pid>.tmp``, ``.<name>.partial``), never another
        file that starts like them."""
        for path in (self.wav_path(item), self.record_path(item)):
            if path.parent.is_dir():
                ours = re.compile(rf"\.{re.escape(path.name)}\.(\d+\.tmp|partial)")
                for stale in path.parent.glob(f".{path.name}.*"):
                    if ours.fullmatch(stale.name):
                        stale.unlink(missing_ok=True)

    def _scores(self, items: Sequence[EditItem], names: Sequence[str]) -> dict[str, dict[str, float | None]]:
        """Per item id, the named per-clip metrics of its wav as written (16-bit, clipped)
        against its source clip, scored as ``steer eval`` scores them (so that they agree), its
        warnings naming the item; ``ValueError`` when a file cannot be read."""
        from .evaluate import Pair, score_pairs  # evaluate imports this module

        pairs = [Pair(item.id, item.edit_type, item.audio, self.wav_path(item), item.target) for item in items]
        scores = score_pairs(pairs, {name: self.metrics[name] for name in names}, sample_rate=SCORING_RATE)
        if scores.unscored:  # a file gone or unreadable: no value rather than a NaN kept for good
            raise ValueError("; ".join(f"{item} is not scored: {why}" for item, why in scores.unscored.items()))
        return {i: {name: _finite_or_none(v) for name, v in values.items()} for i, values in scores.items.items()}

    def batches(self, items: Sequence[EditItem]) -> list[list[EditItem]]:
        """``items`` in groups of up to :attr:`batch_size` that one call can edit: the same
        concept and the same sample rate, channels and length (read from the files' headers;
        an item whose header cannot be read goes alone, to fail with the reader's error)."""
        if self.batch_size == 1:
            return [[item] for item in items]
        groups: dict[tuple[Any, ...], list[EditItem]] = {}
        batches: list[list[EditItem]] = []
        for item in items:
            try:
                info = sf.info(str(item.audio))
                shape: tuple[Any, ...] = (info.samplerate, info.channels, info.frames)
            except Exception:  # noqa: BLE001 - load_audio says what is wrong, in the record
                shape = ("alone", item.id)
            key = (item.concept or self.default_concept, *shape)
            group = groups.setdefault(key, [])
            if not group:
                batches.append(group)
            group.append(item)
            if len(group) == self.batch_size:
                del groups[key]  # full: the next item of this key starts a new batch
        return batches

    def edit_items(self, items: Sequence[EditItem]) -> list[ItemRecord]:
        """Edit items of one concept and one audio shape in one call, and write each one's wav
        and record (``"failed"`` with the error for an item whose wav must not be written (see
        :func:`wav_problem`), whose audio cannot be read or written, or whose edit fails
        (see :meth:`_edit_or_retry`)). Every item's output is checked before any record says
        ``"running"``."""
        records = [self._start(item) for item in items]
        for item, record in zip(items, records):
            self._clean(item)
            if record.status == "running":
                write_json(self.record_path(item), asdict(record))
        start = time.perf_counter()
        audios: dict[str, Audio] = {}
        for item, record in zip(items, records):
            if record.status == "failed":
                continue
            try:
                audios[item.id] = load_audio(item.audio)
            except Exception as error:  # noqa: BLE001 - one bad item must not stop the run
                _fail(record, error)
        edited = [(item, record) for item, record in zip(items, records) if item.id in audios]
        if edited:
            self._edit_or_retry(edited, [audios[item.id] for item, _ in edited])
        # the edit's time shared by the clips it edited (an item that failed before it took none of it)
        seconds = round((time.perf_counter() - start) / max(len(edited), 1), 3)
        for item, record in zip(items, records):
            record.seconds, record.finished_at = (seconds if item.id in audios else 0.0), _now()
            # a failed attempt leaves the run's own wav (an earlier edit) as it found it, or none
            record.owns_wav = record.owns_wav and self.wav_path(item).exists()
            write_json(self.record_path(item), asdict(record))
        return records

    def _edit_or_retry(self, edited: Sequence[tuple[EditItem, ItemRecord]], audios: Sequence[Audio]) -> None:
        """:meth:`_edit_batch`; when a batch's edit fails, each of its items again alone, so that
        one bad item (a prompt the text encoder refuses) fails by itself, with its own error."""
        for _, record in edited:
            record.batch = len(edited)
        try:
            self._edit_batch(edited, audios)
        except Exception as error:  # noqa: BLE001 - recorded in the item's record
            if len(edited) == 1:
                _fail(edited[0][1], error)
                return
            for one, audio in zip(edited, audios):
                self._edit_or_retry([one], [audio])

    def _start(self, item: EditItem) -> ItemRecord:
        """The item's record as it starts: ``"running"`` (its paths absolute, so that the record
        holds from any folder), or ``"failed"`` when its wav must not be written."""
        previous = read_record(self.record_path(item))
        concept = item.concept or self.default_concept
        audio = item.audio.resolve()
        record = ItemRecord(
            id=item.id,
            status="running",
            settings=self.fingerprint_of(item),
            attempt=1 + (previous.attempt if previous else 0),
            rank=self.rank,
            audio=str(audio),
            edit=str(self.wav_path(item).resolve()),
            source=item.source,
            target=item.target,
            concept=concept,
            edit_type=item.edit_type,
            recipe=self._recipe_of(concept),
            started_at=_now(),
            owns_wav=_owns_wav(self.wav_path(item), previous),
            audio_file=self._clip_identity(audio),
        )
        if not record.owns_wav and not self.overwrite:  # wav_problem's rule, with the record read above
            _fail(record, FileExistsError(_foreign_wav(self.wav_path(item))))
        return record

    def _edit_batch(self, edited: Sequence[tuple[EditItem, ItemRecord]], audios: Sequence[Audio]) -> None:
        """One edit of the items' clips (``(channels, samples)`` each, one shape); then each
        item's wav and metrics, into its record (an item whose metrics fail is done all the same,
        with those values missing, which a rerun scores: :meth:`_update_finished`)."""
        items = [item for item, _ in edited]
        editor = self._editor(items[0].concept or self.default_concept)
        # a compiled editor's calls were traced for full batches: a smaller one would trace (and
        # with inductor compile) them again for one call, so it gets copies of its last clip
        compiled = getattr(editor, "performance", None) is not None and editor.performance.compile
        padding = self.batch_size - len(items) if compiled else 0
        waveforms = [audio.waveform for audio in audios] + [audios[-1].waveform] * padding
        prompts = [(item.source, item.target) for item in items] + [(items[-1].source, items[-1].target)] * padding
        result = editor.edit(
            Audio(torch.stack(waveforms), audios[0].sample_rate),
            source=[source for source, _ in prompts],
            target=[target for _, target in prompts],
            seed=self.seed,
            progress=self.progress,
        )
        for (item, record), clip in zip(edited, result.audio[: len(items)], strict=True):
            try:
                save_audio(self.wav_path(item), clip, result.sample_rate)
            except Exception as error:  # noqa: BLE001 - one bad item must not stop the run
                _fail(record, error)
                continue
            record.status, record.sample_rate, record.samples = "done", result.sample_rate, clip.shape[-1]
            record.owns_wav = True
            if self.metrics:
                try:
                    record.metrics = self._scores([item], list(self.metrics))[item.id]
                except Exception as error:  # noqa: BLE001 - the edit stands: a rerun scores it
                    print(f"steer run: {item.id}: cannot score {', '.join(self.metrics)}: {error} "
                          "(the edit is kept; a rerun scores it)", flush=True)

    def run(self) -> RunCounts:
        """Edit this process's pending items, printing a line as each is done or failed, and
        bring its finished ones up to date (see :meth:`_update_finished`); returns what was done."""
        (self.out / "records").mkdir(parents=True, exist_ok=True)
        self.check_settings()
        counts = RunCounts()
        try:
            pending, finished = self._planned()
            for item, record in finished:
                self._update_finished(item, record)
                counts.skipped += 1
            process = f" on process {self.rank}" if self.num_processes > 1 else ""
            for batch in self.batches(pending):
                for item, record in zip(batch, self.edit_items(batch)):
                    # one line an item, so that a long run shows how far it is
                    place = f"({counts.done + counts.failed + 1} of {len(pending)} to edit{process})"
                    if record.status == "done":
                        counts.done += 1
                        print(f"steer run: {item.id} done in {record.seconds:.1f} s {place}", flush=True)
                    else:
                        counts.failed += 1
                        print(f"steer run: {item.id} failed {place}: {record.error}", flush=True)
        finally:
            self._plan = None  # a next run reads the folder again
            self.close()
        return counts

    def _update_finished(self, item: EditItem, record: ItemRecord) -> None:
        """Bring a finished item's record to the manifest and the metrics asked for, without
        editing again (:meth:`check_settings` refused changes that alter the edit): its edit type,
        which the summary groups by; its clip's path, size and mtime, where the same bytes moved
        or were touched, and its concept's identity, where an older steer recorded the same files
        as a digest of its folder (so that the next rerun reads neither again); and the values of
        the metrics it lacks, scored from its wav."""
        before = asdict(record)
        record.edit_type = item.edit_type
        audio = item.audio.resolve()
        now = self._clip_now(record, audio)
        if now is not None and now["sha256"] == record.audio_file["sha256"]:
            record.audio, record.audio_file = str(audio), now
        concept = item.concept or self.default_concept
        old = record.settings.get("concept")
        if concept is not None and _is_folder_digest(old) and old == self._identity(concept, _folder_digest):
            record.settings["concept"] = self.fingerprint_of(item)["concept"]
        missing = [name for name in self.metrics if name not in record.metrics]
        if missing:
            try:
                record.metrics.update(self._scores([item], missing)[item.id])
            except Exception as error:  # noqa: BLE001 - the edit stands; its summary lacks these values
                print(f"steer run: {item.id}: cannot score {', '.join(missing)}: {error}", flush=True)
        if asdict(record) != before:
            write_json(self.record_path(item), asdict(record))

    def check_settings(self) -> None:
        """Raise ``ValueError`` when the folder holds finished edits that resuming would mix with
        this run's: an item's made with other settings or from other prompts or another clip
        (:meth:`_input_changes`; ``overwrite`` redoes them, as deleting the item's wav redoes
        it), or an item's that the manifest does
        not hold made with other settings, even with ``overwrite``, which does not redo it
        (``steer eval`` reads every record of the folder). Every record is looked at, not only
        this process's share, so that every process of a launch comes to the same answer (and
        refuses before any edit)."""
        items = {item.id: item for item in self.items}
        changed = []
        for path in sorted((self.out / "records").glob("*.json")):
            record = read_record(path)
            item = items.get(record.id) if record is not None else None
            if record is None or record.status != "done":
                continue
            if item is not None and (self.overwrite or not self.wav_path(item).is_file()):
                continue  # edited again (its wav deleted to redo it): nothing of it is mixed in
            if item is None:
                recorded = {k: v for k, v in record.settings.items() if k != "concept"}  # concepts are per item
                differences = self._setting_changes(record, recorded, record.concept, self.fingerprint)
                which, fix = f"{record.id}, an item this manifest does not hold", "pass another --out"
            else:
                concept = item.concept or self.default_concept
                differences = self._setting_changes(record, record.settings, concept, self.fingerprint_of(item))
                which, fix = record.id, "pass another --out, or --overwrite to redo them"
                changed += [f"{item.id}'s {change}" for change in self._input_changes(record, item)]
            if differences:
                raise ValueError(f"{self.out} holds edits made with other settings ({which}: {'; '.join(differences)}): {fix}")
        if changed:
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            raise ValueError(
                f"{self.out} holds edits made from other inputs than the manifest's ({'; '.join(changed[:3])}{more}): "
                "delete their wavs to redo them (or pass --overwrite to redo every item), or pass another --out"
            )

    def _input_changes(self, record: ItemRecord, item: EditItem) -> list[str]:
        """How the item's own inputs differ from those its finished record was edited from: its
        prompts, or its clip's bytes (a clip moved or touched is the same; one that cannot be
        read, or whose record is older than :attr:`ItemRecord.audio_file`, is not known to
        differ)."""
        changes = [
            f"{name} prompt {getattr(record, name)!r} → {getattr(item, name)!r}"
            for name in ("source", "target")
            if getattr(record, name) != getattr(item, name)
        ]
        audio = item.audio.resolve()
        now = self._clip_now(record, audio)
        if now is not None and now["sha256"] != record.audio_file["sha256"]:
            changes.append(f"audio {record.audio} → {audio}" if record.audio != str(audio) else f"audio {audio} (its content)")
        return changes

    def _clip_now(self, record: ItemRecord, audio: Path) -> dict[str, Any] | None:
        """The item's clip (``audio``, resolved) as :attr:`ItemRecord.audio_file` would hold it
        now: at the record's path with the recorded size and mtime, with the recorded digest
        (the clip is not read); ``None`` for a record older than that field or a clip that cannot
        be read (:meth:`_clip_identity`)."""
        if record.audio_file is None:
            return None
        return self._clip_identity(audio, record.audio_file if record.audio == str(audio) else None)

    def _clip_identity(self, path: Path, recorded: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """A source clip (``path``, resolved) as :attr:`ItemRecord.audio_file` holds it: its size,
        mtime (ns) and the SHA-256 of its bytes, ``None`` when it cannot be read (the edit then
        fails reading it, saying why). The digest is ``recorded``'s where the size and mtime are
        its own, else read once a run per path, size and mtime (:meth:`check_settings`, which a
        launch may call twice, and the record's update reuse it; a clip rewritten meanwhile is
        read again)."""
        try:
            stat = path.stat()
            key = (path, stat.st_size, stat.st_mtime_ns)
            if recorded is not None and key[1:] == (recorded["size"], recorded["mtime_ns"]):
                return dict(recorded)
            if key not in self._digests:
                self._digests[key] = _sha256(path)
        except OSError:
            return None
        return {"size": key[1], "mtime_ns": key[2], "sha256": self._digests[key]}

    def close(self) -> None:
        """Release the editors (a LoRA concept's adapter leaves the backbone's denoiser, a
        compiled editor's hooks go)."""
        for editor in self._editors.values():
            close = getattr(editor, "close", None)  # an Editor's; DreamSoundEditing's, which holds ε' too
            if close is not None:
                close()
        self._editors.clear()


def _local_or_hub(name_or_path: str) -> str:
    """A local path made absolute (the same folder given relative or absolute is one backbone),
    or an offline build's name or a Hub repo id as it is (``"tiny"`` is the offline build, as
    :func:`backbones.load_backbone` reads it, even where the working folder holds a ``tiny``)."""
    from backbones.auto import TINY

    path = Path(name_or_path)
    return str(path.resolve()) if name_or_path not in TINY and path.exists() else name_or_path


def concept_identity(reference: str) -> dict[str, str] | str:
    """What a concept is, for a run's fingerprint: a local folder's files that make the edit
    (its config and weights, by name, each as the SHA-256 of its bytes: a retrained concept in
    the same folder differs, a moved one does not, and its ``README.md`` model card or other
    files beside it do not count), or a Hub repo id as it is."""
    from .concepts.concept import (
        ADAPTER_CONFIG_NAME,
        ADAPTER_WEIGHTS_NAME,
        CONFIG_NAME,
        WEIGHTS_NAME,
    )

    folder = Path(reference)
    if not folder.is_dir():
        return reference
    names = (CONFIG_NAME, WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME, ADAPTER_CONFIG_NAME)
    return {name: f"sha256:{_sha256(folder / name)}" for name in names if (folder / name).is_file()}


#: how an older steer's concept identity starts: a digest of every file of the folder
_OLD_CONCEPT_IDENTITY = "sha256:"


def _folder_digest(reference: str) -> str | None:
    """An older steer's concept identity: SHA-256 of the names and bytes of every file of the
    folder (``None`` for a Hub repo id), to accept the records it wrote for the same files."""
    folder = Path(reference)
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0")
        _digest_file(digest, file)
    return f"{_OLD_CONCEPT_IDENTITY}{digest.hexdigest()}"


def _is_folder_digest(identity: Any) -> bool:
    """Whether a recorded concept identity is an older steer's (:func:`_folder_digest`)."""
    return isinstance(identity, str) and identity.startswith(_OLD_CONCEPT_IDENTITY)


def _digest_file(digest: Any, path: Path) -> None:
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    _digest_file(digest, path)
    return digest.hexdigest()


_UNSET = object()


def _differences(recorded: Mapping[str, Any], now: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``"name: recorded → now"`` for each value that differs, nested mappings by dotted name
    (``settings.steps: 1 → 4``); a SHA-256 shortened to 12 digits."""

    def shown(value: Any) -> str:
        text = "(unset)" if value is _UNSET else repr(value)
        return re.sub(r"(sha256:[0-9a-f]{12})[0-9a-f]+", r"\1…", text)

    changes = []
    for key in sorted(set(recorded) | set(now)):
        old, new = recorded.get(key, _UNSET), now.get(key, _UNSET)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            changes += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append(f"{prefix}{key}: {shown(old)} → {shown(new)}")
    return changes


def _jsonable(value: Any) -> Any:
    """A setting as a run's fingerprint holds it: a dataclass (a Performance) as its non-default
    fields, so a field added later with a default does not change it; JSON's types."""
    return json.loads(json.dumps(_non_default(value) if is_dataclass(value) else value, default=str))


def _non_default(config: Any) -> dict[str, Any]:
    """A dataclass's fields that differ from their defaults."""
    return {
        f.name: getattr(config, f.name)
        for f in fields(config)
        if f.default is MISSING or getattr(config, f.name) != f.default
    }


def other_items_done(out: str | os.PathLike, items: Sequence[EditItem]) -> list[str]:
    """The ids of the finished edits in the run folder ``out`` (records saying ``"done"``) of
    items that ``items`` do not hold, left by a run of another manifest: ``steer eval``, which
    reads every record of a folder, scores them too."""
    ids = {item.id for item in items}
    records = (read_record(path) for path in sorted(Path(out, "records").glob("*.json")))
    return [r.id for r in records if r is not None and r.status == "done" and r.id not in ids]


def collect_records(out: str | os.PathLike, items: Sequence[EditItem]) -> list[ItemRecord | None]:
    """The record of each item in ``out`` (``None`` where there is none)."""
    return [read_record(Path(out) / "records" / f"{item.id}.json") for item in items]
