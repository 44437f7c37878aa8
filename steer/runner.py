"""Edit every clip of a manifest (:mod:`steer.manifest`): resumable, one record per clip,
sharded over processes.

:class:`ManifestRunner` writes ``OUT/<id>.wav`` and ``OUT/records/<id>.json`` per item, both
atomically. Before editing, an item's record says ``"running"`` with its attempt number, so a
killed run leaves evidence of what it was doing and a rerun counts the attempt; a rerun skips
items whose record says ``"done"`` and whose wav exists and redoes the rest. A wav is written
over only when it is the run's own (:attr:`ItemRecord.owns_wav`) or with ``overwrite``. Under
``accelerate launch`` item ``i`` belongs to process ``i % num_processes``.
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
import torchaudio.functional

from backbones import Backbone
from steer.data._files import atomic_write_text

from .audio import Audio, load_audio, save_audio
from .baselines import DDIMInversion, DDPMInversion, SDEdit
from .editor import Editor, LatentEditor
from .manifest import EditItem
from .metrics.functional import SCORING_RATE
from .recipes import SteerMusic, SteerMusicPlus

if TYPE_CHECKING:
    from torchmetrics import Metric

#: the paper's baselines by recipe name: they take a schedule's ``steps`` and ``guidance_scale``,
#: no concept and no execution path
BASELINES: dict[str, type[LatentEditor]] = {
    "sdedit": SDEdit,
    "ddim_inversion": DDIMInversion,
    "ddpm_inversion": DDPMInversion,
}
RECIPES = ("steermusic", "steermusic_plus", *BASELINES)
# -- editing ---------------------------------------------------------------------------------------
def build_editor(
    backbone: Backbone, settings: Mapping[str, Any], concept: Any = None, recipe: str = "steermusic"
) -> LatentEditor:
    """SteerMusic, SteerMusic+ with ``concept``, or a baseline of :data:`BASELINES`; ``settings``
    are its keyword arguments (``steps``, ``guidance_scale``, ``lr``, ...), missing ones take its
    defaults."""
    if recipe in BASELINES:
        if concept is not None:
            raise ValueError(f"recipe {recipe} takes no concept: use steermusic or steermusic_plus")
        return BASELINES[recipe](backbone, **settings)
    if concept is not None:
        return SteerMusicPlus(backbone, concept, **settings)
    return SteerMusic(backbone, **settings)


def check_concepts(items: Sequence[EditItem], recipe: str, default_concept: str | None) -> None:
    """Raise ``ValueError`` for an unknown recipe, for ``"steermusic_plus"`` when an item has
    no concept and there is no default, and for a baseline when there is a concept."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    missing = [item.id for item in items if item.concept is None]
    if recipe == "steermusic_plus" and default_concept is None and missing:
        raise ValueError(
            f"recipe steermusic_plus needs a concept for every item; {len(missing)} have none "
            f"(first: {missing[0]!r}): add 'concept' to them or pass --concept"
        )
    if recipe in BASELINES:
        named = [item.id for item in items if item.concept is not None]
        if default_concept is not None or named:
            which = "--concept is given" if default_concept is not None else (
                f"{len(named)} item(s) name one (first: {named[0]!r})"
            )
            raise ValueError(
                f"recipe {recipe} takes no concept, but {which}: edit those items with "
                f"steermusic or steermusic_plus"
            )


def check_batch_size(batch_size: int, recipe: str) -> None:
    """Raise ``ValueError`` for a batch size below 1, or above 1 for a baseline."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"the batch size must be a whole number >= 1, got {batch_size!r}")
    if batch_size > 1 and recipe in BASELINES:
        raise ValueError(
            f"recipe {recipe} edits one clip at a time (the clips of a batch would share its noise "
            "draws, so an edit would depend on the clips beside it): leave the batch size at 1"
        )


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
            batch's time over its items.
        batch: how many clips were edited together, this one included (not counting the
            copies that fill up a compiled editor's batch).
        recipe: what edited it: ``"steermusic"``, ``"steermusic_plus"`` or a baseline's name.
        settings: what made the edit (recipe settings, seed, backbone and its weights' dtype, the
            concept's content, a baseline's name): a rerun refuses to mix edits made with other
            settings into one folder.
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


def read_record(path: str | os.PathLike) -> ItemRecord | None:
    """The record at ``path``, or ``None`` when it is missing or unreadable."""
    try:
        return ItemRecord(**json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError, TypeError):
        return None


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
            ``"steermusic_plus"`` (every item needs a concept, its own or ``default_concept``), or
            a baseline of :data:`BASELINES` (no item may name a concept).
        settings: the recipe's keyword arguments (see :func:`build_editor`).
        seed: the seed of every edit.
        metrics: per-clip metrics (``torchmetrics`` metrics with ``values()``), by name, built
            at :data:`~steer.metrics.functional.SCORING_RATE`, which each clip is resampled to;
            each item's values go into its record.
        default_concept: the concept of items that name none.
        load_concept: turns a concept reference into a concept (default
            :meth:`steer.concepts.Concept.from_pretrained`); each reference is loaded once.
        rank, num_processes: this process and how many share the work.
        overwrite: redo items that are already done.
        progress: show a progress bar per edit.
        batch_size: edit up to this many items in one call, among those sharing a concept, a
            sample rate, a channel count and a length (each is edited as it is alone, up to
            rounding: see :class:`~steer.editor.Editor`); on a GPU several clips a call take
            less time each. With a compiled editor (``Performance.compile``) a smaller batch
            is filled up with copies of its last clip, whose edits are thrown away, so that
            the calls traced for a full batch serve it (instead of a trace, and with inductor
            minutes of compiling, for one call). Baselines edit one at a time.
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
        check_batch_size(batch_size, recipe)
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
        self._concept_ids: dict[str, str] = {}

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
        if concept not in self._concept_ids:
            self._concept_ids[concept] = concept_identity(concept)
        return {**self.fingerprint, "concept": self._concept_ids[concept]}

    def _same_settings(self, recorded: Mapping[str, Any], item: EditItem) -> bool:
        """Whether a record's settings are the item's now, where a setting given at its editor's
        default equals one left out (``--guidance 30`` is SteerMusic's default)."""
        editor = BASELINES.get(self.recipe) or (SteerMusicPlus if item.concept or self.default_concept else SteerMusic)
        defaults = {
            name: _jsonable(p.default)
            for name, p in inspect.signature(editor).parameters.items()
            if p.default is not inspect.Parameter.empty
        }

        def explicit(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
            settings = fingerprint.get("settings", {})
            kept = {k: v for k, v in settings.items() if k not in defaults or v != defaults[k]}
            return {**fingerprint, "settings": kept}

        return explicit(recorded) == explicit(self.fingerprint_of(item))

    def share(self) -> list[EditItem]:
        """This process's items: item ``i`` goes to process ``i % num_processes``."""
        return self.items[self.rank :: self.num_processes]

    def is_done(self, item: EditItem) -> bool:
        record = read_record(self.record_path(item))
        return record is not None and record.status == "done" and self.wav_path(item).is_file()

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

    def _scores(self, edited: torch.Tensor, source: torch.Tensor, target: str) -> dict[str, float | None]:
        """Per-clip metric values of one edit ``(samples,)`` against its source ``(samples',)``."""
        scores = {}
        for name, metric in self.metrics.items():
            metric.reset()
            metric.update(edited[None], source[None], target_prompts=[target])
            scores[name] = _finite_or_none(float(metric.values()[0]))
        return scores

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

    def _output_problem(self, item: EditItem, owns_wav: bool) -> str | None:
        """Why the item's wav must not be written, or ``None``: it is the item's own source
        clip, or a file that is not the run's own (see :attr:`ItemRecord.owns_wav`) and
        ``overwrite`` is off."""
        wav = self.wav_path(item)
        if wav.resolve() == item.audio.resolve():
            return f"{wav} is the item's own source audio: pass another --out"
        if not owns_wav and not self.overwrite:
            return f"{wav} exists and was not written by steer run: pass --overwrite to replace it, or another --out"
        return None

    def edit_items(self, items: Sequence[EditItem]) -> list[ItemRecord]:
        """Edit items of one concept and one audio shape in one call, and write each one's wav
        and record (``"failed"`` with the error for an item whose wav must not be written (see
        :meth:`_output_problem`), whose audio cannot be read or written, and for all of them
        when the edit fails). Every item's output is checked before any record says
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
        for _, record in edited:
            record.batch = len(edited)
        if edited:
            try:
                self._edit_batch(edited, [audios[item.id] for item, _ in edited])
            except Exception as error:  # noqa: BLE001 - recorded in each item's record
                for _, record in edited:
                    _fail(record, error)
        seconds = round((time.perf_counter() - start) / len(items), 3)
        for item, record in zip(items, records):
            record.seconds, record.finished_at = seconds, _now()
            # a failed attempt leaves the run's own wav (an earlier edit) as it found it, or none
            record.owns_wav = record.owns_wav and self.wav_path(item).exists()
            write_json(self.record_path(item), asdict(record))
        return records

    def _start(self, item: EditItem) -> ItemRecord:
        """The item's record as it starts: ``"running"`` (its paths absolute, so that the record
        holds from any folder), or ``"failed"`` when its wav must not be written."""
        previous = read_record(self.record_path(item))
        concept = item.concept or self.default_concept
        owned = previous is not None and (previous.status == "done" or previous.owns_wav)
        record = ItemRecord(
            id=item.id,
            status="running",
            settings=self.fingerprint_of(item),
            attempt=1 + (previous.attempt if previous else 0),
            rank=self.rank,
            audio=str(item.audio.resolve()),
            edit=str(self.wav_path(item).resolve()),
            source=item.source,
            target=item.target,
            concept=concept,
            edit_type=item.edit_type,
            recipe=self.recipe if self.recipe in BASELINES else "steermusic_plus" if concept else "steermusic",
            started_at=_now(),
            owns_wav=owned or not self.wav_path(item).exists(),
        )
        problem = self._output_problem(item, record.owns_wav)
        if problem is not None:
            _fail(record, FileExistsError(problem))
        return record

    def _edit_batch(self, edited: Sequence[tuple[EditItem, ItemRecord]], audios: Sequence[Audio]) -> None:
        """One edit of the items' clips (``(channels, samples)`` each, one shape); then each
        item's wav and metrics, into its record."""
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
        for (item, record), audio, clip in zip(edited, audios, result.audio[: len(items)], strict=True):
            saved_wav = False
            try:
                save_audio(self.wav_path(item), clip, result.sample_rate)
                saved_wav = True
                if self.metrics:
                    # score the file as written (16-bit, clipped), at steer eval's rate, so that it agrees
                    saved = load_audio(self.wav_path(item)).waveform.mean(0)
                    saved = torchaudio.functional.resample(saved, result.sample_rate, SCORING_RATE)
                    source = torchaudio.functional.resample(audio.waveform.mean(0), audio.sample_rate, SCORING_RATE)
                    record.metrics = self._scores(saved, source, item.target)
                record.status, record.sample_rate, record.samples = "done", result.sample_rate, clip.shape[-1]
                record.owns_wav = True
            except Exception as error:  # noqa: BLE001 - one bad item must not stop the run
                _fail(record, error)
                if saved_wav:  # a failed item leaves no wav: a rerun would take it for a foreign file
                    self.wav_path(item).unlink(missing_ok=True)

    def run(self) -> RunCounts:
        """Edit this process's pending items; returns what was done."""
        (self.out / "records").mkdir(parents=True, exist_ok=True)
        self.check_settings()
        counts = RunCounts()
        try:
            pending = []
            for item in self.share():
                if not self.overwrite and self.is_done(item):
                    counts.skipped += 1
                else:
                    pending.append(item)
            for batch in self.batches(pending):
                for item, record in zip(batch, self.edit_items(batch)):
                    if record.status == "done":
                        counts.done += 1
                    else:
                        counts.failed += 1
                        print(f"steer run: {item.id} failed: {record.error}", flush=True)
        finally:
            self.close()
        return counts

    def check_settings(self) -> None:
        """Raise ``ValueError`` when the folder holds finished edits made with other settings:
        resuming would mix them. Every item is looked at, not only this process's share, so that
        every process of a launch comes to the same answer (and refuses before any edit)."""
        if self.overwrite:
            return
        for item in self.items:
            record = read_record(self.record_path(item))
            if record is not None and record.status == "done" and not self._same_settings(record.settings, item):
                raise ValueError(
                    f"{self.out} holds edits made with other settings ({item.id}: {record.settings}; "
                    f"now: {self.fingerprint_of(item)}): pass another --out, or --overwrite to redo them"
                )

    def close(self) -> None:
        """Release the editors (a LoRA concept's adapter leaves the backbone's denoiser, a
        compiled editor's hooks go)."""
        for editor in self._editors.values():
            if isinstance(editor, Editor):
                editor.close()
        self._editors.clear()


def _local_or_hub(name_or_path: str) -> str:
    """A local path made absolute (the same folder given relative or absolute is one backbone),
    or a Hub repo id as it is."""
    path = Path(name_or_path)
    return str(path.resolve()) if path.exists() else name_or_path


def concept_identity(reference: str) -> str:
    """What a concept is, for a run's fingerprint: a local folder's content (SHA-256 of its
    files' names and bytes, so a retrained concept in the same folder differs and a moved one
    does not), or a Hub repo id as it is."""
    folder = Path(reference)
    if not folder.is_dir():
        return reference
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0")
        with file.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return f"sha256:{digest.hexdigest()}"


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


def collect_records(out: str | os.PathLike, items: Sequence[EditItem]) -> list[ItemRecord | None]:
    """The record of each item in ``out`` (``None`` where there is none)."""
    return [read_record(Path(out) / "records" / f"{item.id}.json") for item in items]
