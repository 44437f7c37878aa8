"""The ``steer`` command line: ``edit``, ``demo``, ``personalize``, ``run`` (a manifest, resumable,
sharded under ``accelerate launch``), ``eval`` (score folders of edits; several runs side by
side) and ``plot``.

Problems with the user's input (files, prompts, paths) are reported as one line on stderr with
exit status 2, checked before any model is loaded; an existing output is never overwritten
without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import itertools
import math
import os
import sys
import tempfile
import unicodedata
import warnings
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from backbones import load_backbone
from backbones.auto import TINY, backbone_family, repo_shaped
from backbones.mel import resample, to_mono
from backbones.saving import check_can_be_folder
from steer.data._files import atomic_write_text, model_source_problem

from .audio import (
    Audio,
    NonFiniteAudio,
    audio_format,
    check_format_takes,
    check_writable,
    load_audio,
    save_audio,
)
from .concepts.cli import add_personalize_parser, run_personalize
from .editor import check_seed
from .performance import PRESETS, compile_backends
from .runner import BASELINES, CONCEPT_RECIPES, RECIPES, build_editor

if TYPE_CHECKING:
    from accelerate import PartialState

    from .concepts.concept import ConceptConfig

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: the file in a ``steer run`` folder that one run at a time locks (:func:`run_folder_lock`)
RUN_LOCK = ".steer-run.lock"
#: how long ``steer run``'s processes wait for each other (a barrier, a gather) under a launcher:
#: one done with its share waits there while the others edit theirs
RUN_BARRIER_TIMEOUT = timedelta(days=7)
REPOSITORY = Path(__file__).resolve().parents[1]
#: The shipped small backbone, the instrument classifier and the demo's clips (a source and its
#: ground-truth swap), found in the source tree that this package was installed from.
SWAP_BACKBONE = REPOSITORY / "weights" / "mel-diffusion-swap"
CLASSIFIER = REPOSITORY / "weights" / "instrument-classifier"
DEMO_SOURCE = REPOSITORY / "examples" / "audio" / "hornpipe_piano.wav"
DEMO_TRUTH = REPOSITORY / "examples" / "audio" / "hornpipe_violin.wav"
DEMO_GUIDANCE, DEMO_LR = 7.5, 0.005
DEMO_PROMPTS = {"source": "a recording of a piano", "target": "a recording of a violin"}  # DEMO_SOURCE's edit
#: The training timesteps of every offline build (backbones.auto.TINY), which bound a baseline's
#: --steps: known before the backbone loads.
TINY_TIMESTEPS = 1000
#: ``steer edit``'s and ``steer run``'s backbone when neither --backbone nor a concept names one,
#: and its family (a concept of another family that records no base model needs --backbone).
DEFAULT_BACKBONE, DEFAULT_FAMILY = "cvssp/audioldm2-music", "audioldm2"


class UsageError(ValueError):
    """A problem with what the user asked for; printed as one line."""


def device_option(name: str) -> str:
    """The device ``--device name`` asks for (``auto``: CUDA where there is one), or a :class:`UsageError`."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(name).type
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: use cpu, cuda, cuda:N or auto")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return name


def _check_output(path: Path, overwrite: bool) -> None:
    """A file the command writes: in an existing folder, not a folder itself, replaced only with
    ``overwrite``, and one that can be created there (:func:`~steer.audio.check_writable`)."""
    # os.path's checks: Path's raise OSError for a name longer than the file system allows
    if not os.path.isdir(path.parent):
        if os.path.exists(path.parent):
            raise UsageError(f"{path.parent} is a file, not a folder: name an output in a folder")
        raise UsageError(f"output folder does not exist: {path.parent} (create it first)")
    if os.path.isdir(path):
        raise UsageError(f"{path} is a folder: name a file")
    if os.path.exists(path) and not overwrite:
        raise UsageError(f"{path} exists; pass --overwrite to replace it")
    check_writable(path)


def _check_audio_output(path: Path, overwrite: bool, source: Path | None = None) -> None:
    """An edit's output: never the clip it edits, writable, a format soundfile writes."""
    if source is not None and os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source):
        raise UsageError(f"{path} is the input clip: name another output, the input is never replaced")
    _check_output(path, overwrite)
    try:
        audio_format(path)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _make_folder(folder: Path, option: str) -> None:
    """Create the folder a command writes into (its ``--out``), where missing; a one-line error
    where it is a file or cannot be made. Called after the command's other checks, so that a
    refused command leaves none behind."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"{option} {folder} is a file: name a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(
            f"cannot create {option} {folder}: {error.strerror or error}: name a folder where you can write"
        ) from None


def path_option(text: str) -> Path:
    """An argument naming a file or folder (argparse's ``type``): an empty one is refused, as
    ``Path("")`` is the current folder (``--out ""`` wrote the demo's files there)."""
    if not text:
        raise argparse.ArgumentTypeError("is empty: name a file or folder (. for the current folder)")
    return Path(text)


def _check_prompt(prompt: str, option: str) -> str:
    if not prompt.strip():
        raise UsageError(f"{option} is empty: describe the audio in words")
    return prompt


def _add_edit_options(
    parser: argparse.ArgumentParser,
    *,
    backbone: str,
    steps: int,
    guidance: str = "30; 15 with --concept; a baseline's sampling guidance: 12",
    lr: str = "0.02; 0.1 with --concept",
    baselines: bool = True,
    overwrite: str = "replace existing outputs",
) -> None:
    concept = "; with --concept, the base model the concept was learnt on" if baselines else ""
    parser.add_argument(
        "--backbone",
        help=f"Hub repo id, local folder saved with save_pretrained, or an offline build with random weights: "
        f"{', '.join(TINY)} ({backbone}{concept})",
    )
    parser.set_defaults(default_backbone=backbone)
    baseline_steps = "; a baseline's schedule steps (200)" if baselines else ""
    parser.add_argument("--steps", type=int, help=f"optimisation steps ({steps}){baseline_steps}")
    parser.set_defaults(default_steps=steps)
    parser.add_argument(
        "--guidance", type=float,
        help=f"classifier-free guidance ({guidance})",
    )
    parser.add_argument("--lr", type=float, help=f"learning rate of SGD ({lr})")
    parser.add_argument("--seed", type=int, default=0, help="seed for timesteps and noise")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="model weights")
    parser.add_argument(
        "--performance",
        choices=sorted(PRESETS),
        default="batched",
        help="execution path: reference (the authors' loop), batched, bf16, fp16 (with loss "
        "scaling), checkpointed (less memory for SteerMusic+), fused (bf16 + compile + fused kernels), "
        "fused-checkpointed (fused + checkpointed)",
    )
    parser.add_argument(
        "--compile-backend",
        help="torch.compile backend of the compiled paths (fused, fused-checkpointed): inductor "
        "(default; on one H100, real-size SteerMusic at batch 1: 22x the reference path's "
        "speed after a first edit of about 2 minutes); steer-cudagraphs (CUDA graphs of "
        "dynamo's graphs reading the weights in place, no code generation: 13x after about "
        "30 s); cudagraphs (torch's: the same, copying the weights into the graphs on every "
        "replay: 8x after about 40 s)",
    )
    parser.add_argument(
        "--autotune", action="store_true",
        help="with inductor (fused, fused-checkpointed): time candidate kernels for each matmul "
        "and convolution at the first edit and keep the fastest (inductor's max-autotune; a "
        "longer first edit; the gain is not yet measured at real size)",
    )
    parser.add_argument(
        "--step-graph", action="store_true",
        help="on CUDA, record the third step of an edit as one CUDA graph and replay it for the "
        "later steps, with no host work between them (any --performance but fp16; with the "
        "compiled paths, --compile-backend inductor or aot_eager; not yet measured on a GPU)",
    )
    parser.add_argument(
        "--fuse-projections", action="store_true",
        help="run each attention's query, key and value projections (cross-attention's key and "
        "value) as one matmul: fewer, larger kernels; one more copy of those weights in float32 "
        "(none where they are cast to bf16); layers "
        "with a LoRA adapter keep theirs unless --merge-lora merges it (not yet measured on a GPU)",
    )
    parser.add_argument(
        "--merge-lora", action="store_true",
        help="SteerMusic+ with a LoRA concept: run each adapted layer as one matmul with the "
        "adapter merged into a copy of its weight once an edit, so that the personalised "
        "model's call costs the base model's; one more copy of the adapted weights (not yet "
        "measured on a GPU)",
    )
    parser.add_argument("--overwrite", action="store_true", help=overwrite)
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steer", description="Music editing by score distillation.")
    commands = parser.add_subparsers(dest="command", required=True)

    edit = commands.add_parser("edit", help="edit a clip from a source prompt to a target prompt")
    edit.add_argument("input", type=path_option, help="audio file to edit (wav, flac, ogg, ...)")
    edit.add_argument("--source", required=True, help="prompt describing the input")
    edit.add_argument("--target", required=True, help="prompt describing the wanted result")
    edit.add_argument(
        "-o", "--output", type=path_option, required=True,
        help="where to write the edit, at the backbone's sample rate and channels (AudioLDM2: 16 kHz "
        "mono; Stable Audio: 44.1 kHz stereo)",
    )
    edit.add_argument(
        "--concept",
        help="a concept folder or Hub repo id: edit with SteerMusic+, or --recipe dreamsound (the target names "
        "its token)",
    )
    edit.add_argument(
        "--recipe", choices=RECIPES, default="steermusic",
        help="steermusic (SteerMusic+ with --concept), steermusic_plus (needs --concept), or one of "
        "the paper's baselines with ZETA's settings: sdedit, ddim_inversion, ddpm_inversion (ZETA), "
        "dreamsound (needs --concept: SteerMusic+'s baseline)",
    )
    _add_edit_options(edit, backbone=DEFAULT_BACKBONE, steps=400)

    demo = commands.add_parser(
        "demo", help="edit a shipped piano clip into a violin with the shipped offline model"
    )
    demo.add_argument("--out", type=path_option, default=Path("outputs/demo"), help="output folder")
    _add_edit_options(
        demo,
        backbone=str(SWAP_BACKBONE),
        steps=200,
        guidance=f"{DEMO_GUIDANCE}, chosen for the shipped backbone",
        lr=str(DEMO_LR),
        baselines=False,
    )
    add_personalize_parser(commands)

    run = commands.add_parser(
        "run",
        help="edit every clip of a manifest into a folder; rerun to resume; shards under accelerate launch",
    )
    run.add_argument("manifest", type=path_option, help="JSON Lines manifest, or ZoME-Bench's folder or metadata file")
    run.add_argument("--out", type=path_option, required=True, help="output folder (<id>.wav, records/, summary)")
    run.add_argument(
        "--recipe", choices=RECIPES, default="steermusic",
        help="steermusic (items naming a concept still use SteerMusic+), steermusic_plus (every item "
        "needs one), or a baseline with ZETA's settings: sdedit, ddim_inversion, ddpm_inversion (ZETA), "
        "dreamsound (every item needs a concept: SteerMusic+'s baseline)",
    )
    run.add_argument("--concept", help="the concept of items that name none (folder or Hub repo id)")
    run.add_argument("--metrics", default="", help="comma-separated metrics per clip, e.g. cqt1_pcc,log_mel")
    run.add_argument("--clap-model", help="CLAP model (Hub id or folder) for clap, fad and lpaps")
    run.add_argument(
        "--batch-size", type=int, default=1,
        help="edit up to this many clips of one concept and one length in a call, each as it "
        "is edited alone (default 1; on one H100 inductor-compiled SteerMusic took 25.8 ms a "
        "step for 8 clips against 8.5 ms for one; compiled, a last smaller batch is filled up "
        "with copies of a clip rather than compiled again)",
    )
    _add_edit_options(
        run, backbone=DEFAULT_BACKBONE, steps=400,
        overwrite="redo every item, finished ones too, and write over wavs in --out that steer run did not "
        "write (never a source clip); to redo some items only, delete their wavs",
    )

    evaluate = commands.add_parser(
        "eval", help="score folders of edits against their sources; several runs: one table comparing them"
    )
    evaluate.add_argument(
        "folder", type=path_option, nargs="*",
        help="'steer run' output folders (several, e.g. one per recipe: a table comparing them too)",
    )
    evaluate.add_argument("--manifest", type=path_option, help="with --edits: the manifest the edits were made from")
    evaluate.add_argument("--edits", type=path_option, help="with --manifest: a folder of <id>.wav edits")
    evaluate.add_argument("--metrics", default="cqt1_pcc,log_mel", help="comma-separated metric names")
    evaluate.add_argument("--clap-model", help="CLAP model (Hub id or folder) for clap, fad and lpaps")
    evaluate.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    evaluate.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    evaluate.add_argument(
        "--out", type=path_option,
        help="write eval.json and eval.md here instead of into the scored folder (several folders: "
        "one subfolder each, named as the folder), e.g. for a run folder you cannot write to",
    )
    evaluate.add_argument("--overwrite", action="store_true", help="replace an earlier eval.json / eval.md")

    plot = commands.add_parser("plot", help="picture of two clips: spectrograms and CQT top-1 melody lines")
    plot.add_argument("source", type=path_option, help="the source clip")
    plot.add_argument("edit", type=path_option, help="the edited clip")
    plot.add_argument(
        "-o", "--output", type=path_option, required=True,
        help="the picture to write: PNG, or any format matplotlib writes, by its suffix (.pdf, .svg, ...)",
    )
    plot.add_argument("--title", help="figure title")
    plot.add_argument("--overwrite", action="store_true", help="replace an existing picture")
    return parser


def apply_threads(threads: int | None) -> None:
    """Check ``--threads`` against the CPUs this process may use and apply it (``None``: PyTorch's choice)."""
    if threads is None:
        return
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if not 1 <= threads <= usable:
        raise UsageError(f"--threads must be between 1 and {usable} (the CPUs this process may use), got {threads}")
    torch.set_num_threads(threads)


def _edit_settings(args: argparse.Namespace, recipe: str = "steermusic") -> dict:
    """Check the editing options and apply --threads; the recipe's keyword arguments."""
    apply_threads(args.threads)
    _check_steps(args, recipe, TINY_TIMESTEPS if args.backbone in TINY else None)
    if args.lr is not None and not 0 < args.lr < math.inf:
        raise UsageError(f"--lr must be a positive finite number, got {args.lr}")
    if args.guidance is not None and not math.isfinite(args.guidance):
        raise UsageError(f"--guidance must be a finite number, got {args.guidance}")
    check_seed(args.seed, "--seed")
    if recipe in BASELINES:
        return _baseline_settings(args, recipe)
    performance = PRESETS[args.performance]
    if args.compile_backend is not None:
        if not performance.compile:
            raise UsageError(
                f"--compile-backend applies to the compiled paths: add --performance fused or "
                f"fused-checkpointed (got {args.performance})"
            )
        backends = compile_backends()
        if args.compile_backend not in backends:
            raise UsageError(f"unknown --compile-backend {args.compile_backend!r}: use one of {', '.join(backends)}")
        performance = dataclasses.replace(performance, compile_backend=args.compile_backend)
    if args.autotune:
        try:  # Performance refuses it off inductor's compiled paths
            performance = dataclasses.replace(performance, autotune=True)
        except ValueError:
            raise UsageError(
                f"--autotune tunes inductor's kernels: use it with --performance fused or "
                f"fused-checkpointed on the inductor backend (got --performance {args.performance}"
                f"{'' if args.compile_backend is None else ' --compile-backend ' + args.compile_backend})"
            ) from None
    if args.step_graph:
        try:  # Performance refuses fp16's loss scaling and the CUDA-graph backends
            performance = dataclasses.replace(performance, step_graph=True)
        except ValueError:
            raise UsageError(
                "--step-graph replays whole steps as one CUDA graph, which cannot hold fp16's loss "
                "scaling or the steer-cudagraphs and cudagraphs backends' own graphs: use another "
                f"--performance or --compile-backend (got --performance {args.performance}"
                f"{'' if args.compile_backend is None else ' --compile-backend ' + args.compile_backend})"
            ) from None
    if args.fuse_projections:
        performance = dataclasses.replace(performance, fuse_projections=True)
    if args.merge_lora:
        performance = dataclasses.replace(performance, merge_lora=True)
    try:
        performance.check_weights(DTYPES[args.dtype])
    except ValueError:
        raise UsageError(
            f"--performance {args.performance} computes in {performance.precision}, which cannot run "
            f"--dtype {args.dtype} weights: use --dtype float32 or "
            f"{'bfloat16' if performance.precision == 'bf16' else 'float16'}"
        ) from None
    settings = {"steps": args.default_steps if args.steps is None else args.steps, "performance": performance}
    if args.guidance is not None:
        settings["guidance_scale"] = args.guidance
    if args.lr is not None:
        settings["lr"] = args.lr
    return settings


def _check_steps(args: argparse.Namespace, recipe: str, timesteps: int | None) -> None:
    """Refuse a --steps below 1 or above what ``recipe`` runs: for a baseline, the backbone's
    training ``timesteps`` (``None`` where they are not known before it loads: checked again
    after), for the score-distillation loop sys.maxsize."""
    if args.steps is None:
        return
    if recipe in BASELINES:
        if args.steps < 1 or (timesteps is not None and args.steps > timesteps):
            most = "1000 on every adapter here" if timesteps is None else f"{timesteps} for {args.backbone}"
            raise UsageError(
                f"--steps must be between 1 and the backbone's training timesteps for {recipe} ({most}), "
                f"got {args.steps}"
            )
    elif not 1 <= args.steps <= sys.maxsize:
        raise UsageError(f"--steps must be between 1 and {sys.maxsize} (sys.maxsize), got {args.steps}")


def _baseline_settings(args: argparse.Namespace, recipe: str) -> dict:
    """A baseline's keyword arguments: the options it has, given; the others refused."""
    given = [
        option
        for option, value, default in (
            ("--lr", args.lr, None),
            ("--performance", args.performance, "batched"),
            ("--compile-backend", args.compile_backend, None),
            ("--autotune", args.autotune, False),
            ("--step-graph", args.step_graph, False),
            ("--fuse-projections", args.fuse_projections, False),
            ("--merge-lora", args.merge_lora, False),
        )
        if value != default
    ]
    if given:
        raise UsageError(
            f"{given[0]} applies to the score-distillation recipes (steermusic, steermusic_plus), "
            f"not to {recipe}: leave it out"
        )
    settings = {}
    if args.steps is not None:
        settings["steps"] = args.steps
    if args.guidance is not None:
        settings["guidance_scale"] = args.guidance
    return settings


@dataclasses.dataclass(frozen=True)
class _Editing:
    """What an edit runs, checked from the options before anything is loaded or written."""

    recipe: str
    device: str
    settings: dict


def _choose_backbone(args: argparse.Namespace, concept: ConceptConfig | None) -> str | None:
    """Set ``args.backbone`` when it was left out: the base model ``concept`` was learnt on where
    its config records one, else the command's default; then refuse a ``--backbone`` that names
    no folder here and no Hub repo id before any model loads (the Hub was asked in vain for 30 s).
    Returns a note saying which base model was taken from the concept, or ``None``."""
    note = None
    if args.backbone is None:
        base = concept.base_model if concept is not None else None
        if base is None and concept is not None and concept.family != DEFAULT_FAMILY:
            raise UsageError(
                f"the concept records no base model, and it was learnt on one of the {concept.family} family, "
                f"not {args.default_backbone}'s {DEFAULT_FAMILY}: pass --backbone with the model it was learnt on"
            )
        if base is None:
            args.backbone = args.default_backbone
        elif base in TINY or Path(base).is_dir() or repo_shaped(base):
            args.backbone, note = base, f"note: --backbone {base}, the base model the concept was learnt on"
        else:
            raise UsageError(
                f"the concept was learnt on the base model {base!r}, which is no folder here and no Hub "
                "repo id: pass --backbone with your copy of it"
            )
    if problem := model_source_problem(args.backbone, "--backbone"):
        raise UsageError(problem)
    if concept is not None and (problem := _family_problem(concept, args.backbone)):
        raise UsageError(problem)
    return note


def _family_problem(concept: ConceptConfig, backbone: str) -> str | None:
    """Why ``concept`` cannot be applied to ``backbone``, a model of another family, told from
    their files alone (:func:`~backbones.auto.backbone_family`; no model loads), or ``None``."""
    family = backbone_family(backbone)
    if family is None or family == concept.family:
        return None
    return (
        f"the concept was learnt on a backbone of the {concept.family} family "
        f"({concept.base_model or 'base model not recorded'}); --backbone {backbone} is one of the {family} "
        "family: pass the base model it was learnt on"
    )


def _editing(args: argparse.Namespace, target: str | None = None) -> _Editing:
    """The edit's recipe, backbone, device and settings; a ``--concept`` is checked against the
    ``target`` prompt from its config alone (folder or repo id, token in the prompt) before any
    model loads, and gives the backbone when ``--backbone`` is left out."""
    recipe = getattr(args, "recipe", "steermusic")
    concept_reference = getattr(args, "concept", None)
    if recipe in BASELINES and recipe not in CONCEPT_RECIPES and concept_reference:
        raise UsageError(f"--recipe {recipe} takes no --concept: use steermusic, steermusic_plus or dreamsound")
    if recipe in CONCEPT_RECIPES and not concept_reference:
        raise UsageError(f"--recipe {recipe} needs --concept (a concept folder or Hub repo id)")
    config = None
    if concept_reference and target is not None:
        from .concepts import check_concept_reference

        try:
            config = check_concept_reference(concept_reference, target)
        except ValueError as error:
            raise UsageError(f"--concept: {error}") from None
    if note := _choose_backbone(args, config):
        print(note, file=sys.stderr)
    device = device_option(args.device)
    return _Editing(recipe, device, _edit_settings(args, recipe))


def _edit(
    args: argparse.Namespace, editing: _Editing, audio: Audio, source: str, target: str, output: Path
) -> Path:
    recipe = editing.recipe
    backbone = load_backbone(args.backbone, torch_dtype=DTYPES[args.dtype], device=editing.device)
    _check_steps(args, recipe, backbone.num_train_timesteps)
    check_format_takes(output, backbone.channels, backbone.sample_rate)  # known now, found before the steps
    concept = None
    if getattr(args, "concept", None):
        from .concepts import Concept

        concept = Concept.from_pretrained(args.concept)
    editor = build_editor(backbone, editing.settings, concept, recipe)
    result = editor.edit(audio, source=source, target=target, seed=args.seed, progress=True)
    try:
        return save_audio(output, result.audio[0], result.sample_rate, overwrite=args.overwrite)
    except NonFiniteAudio as error:
        raise UsageError(f"{error}; lower {'--guidance' if recipe in BASELINES else '--lr or --guidance'}") from None


def _check_default_concept(concept: str | None, items: Sequence) -> tuple[ConceptConfig | None, dict[str, str]]:
    """Read ``steer run``'s ``--concept`` from its config alone, before any model loads (a
    misspelt folder would otherwise fail every item), and check the target prompt of every item
    that names no concept of its own. Returns its config (``None`` when there is no ``--concept``
    or no item uses it) and, by item id, why an item cannot use it (a target without its token:
    that item fails alone, as with an item's own concept, :func:`_items_concepts`)."""
    users = [item for item in items if item.concept is None]
    if concept is None or not users:
        return None, {}
    from .concepts import check_concept_reference
    from .concepts.concept import check_target

    try:
        config = check_concept_reference(concept)  # read once (a Hub concept: one request)
    except ValueError as error:
        raise UsageError(f"--concept: {error}") from None
    problems = {}
    for item in users:
        try:
            check_target(config, item.target)
        except ValueError as error:
            problems[item.id] = f"--concept: {error}"
    return config, problems


def _items_concepts(items: Sequence) -> tuple[dict[str, ConceptConfig], dict[str, str]]:
    """The configs of the items' own concepts by reference, each read once from its files alone
    (no model; a Hub concept: one request), and why an item cannot use its own concept, by item
    id: a concept that cannot be read, or a target prompt without its token."""
    from .concepts import check_concept_reference
    from .concepts.concept import check_target

    readings: dict[str, ConceptConfig | str] = {}  # a config, or why it cannot be read
    problems: dict[str, str] = {}
    for item in items:
        if item.concept is None:
            continue
        if item.concept not in readings:
            try:
                readings[item.concept] = check_concept_reference(item.concept)
            except (ValueError, OSError) as error:
                readings[item.concept] = str(error)
        reading = readings[item.concept]
        if isinstance(reading, str):
            problems[item.id] = reading
            continue
        try:
            check_target(reading, item.target)
        except ValueError as error:
            problems[item.id] = str(error)
    return {reference: r for reference, r in readings.items() if not isinstance(r, str)}, problems


def _items_concept(configs: dict[str, ConceptConfig], backbone: str | None) -> ConceptConfig | None:
    """For ``steer run`` without --backbone, where no item uses --concept: of the items' own
    concepts' ``configs`` (:func:`_items_concepts`), the one whose base model they agree on (it
    then gives the backbone, as --concept's does; a default-family concept that records none
    agrees with the default), else ``None`` (no item names a concept that can be read).
    Concepts learnt on different base models need --backbone."""
    if backbone is not None:
        return None
    bases = {}
    for config in configs.values():
        unrecorded_default = config.base_model is None and config.family == DEFAULT_FAMILY
        bases[(DEFAULT_BACKBONE if unrecorded_default else config.base_model, config.family)] = config
    if len(bases) > 1:
        named = ", ".join(sorted(f"{base or 'unrecorded'} ({family})" for base, family in bases))
        raise UsageError(f"the items' concepts were learnt on different base models ({named}): pass --backbone")
    return next(iter(bases.values()), None)


def _check_items(items: Sequence, problems: dict[str, str], out: Path, overwrite: bool) -> str | None:
    """Name, before any model loads, the items that ``steer run`` would start and that must fail:
    those with a concept ``problems`` (by id, :func:`_items_concepts`), whose audio file is
    missing, or whose wav is a file the run did not write (an item already done is skipped, and
    needs none of these, unless ``overwrite``). Refuses the run when every item must fail (none
    is done either: a rerun brings finished items up to date, scoring the metrics they lack);
    else returns a warning naming how many and the first (each fails alone, recorded), or
    ``None`` when none must."""
    from .runner import finished_record, wav_problem

    pending = [item for item in items if overwrite or finished_record(out, item) is None]
    failing = []
    for item in pending:
        if item.id in problems:
            failing.append((item.id, problems[item.id]))
        elif not os.path.isfile(item.audio):
            failing.append((item.id, f"input file not found: {item.audio}"))
        elif problem := wav_problem(out, item, overwrite=overwrite):
            failing.append((item.id, problem))
    if not failing:
        return None
    first = f"first: item {failing[0][0]!r}: {failing[0][1]}"
    if len(failing) == len(pending) == len(items):
        raise UsageError(f"none of the {len(pending)} item(s) to edit can be edited ({first}): fix the manifest")
    return (
        f"steer: warning: {len(failing)} of the {len(pending)} item(s) to edit cannot be edited and will fail "
        f"({first}); fix them in the manifest and run again to edit them"
    )


def _metric_names(text: str) -> list[str]:
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))  # once each
    if not names:
        return names
    from steer.metrics.collection import METRICS

    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise UsageError(f"unknown metric {unknown[0]!r}; choose from {', '.join(sorted(METRICS))}")
    return names


def _run_metrics(names: Sequence[str], clap_model: str | None, device: str | torch.device) -> dict:
    """``steer run``'s metrics, built (a missing --clap-model or package refused) before the
    backbone loads and before --out is made."""
    if not names:
        return {}
    from steer.metrics.collection import build_metrics
    from steer.metrics.functional import SCORING_RATE

    try:
        return build_metrics(names, sample_rate=SCORING_RATE, clap_model=clap_model, device=device)
    except ValueError as error:
        raise UsageError(f"--metrics: {error}") from None


def _check_run_summary(out: Path, overwrite: bool) -> None:
    """Refuse a ``--out`` holding a summary file that ``steer run`` did not write, unless ``overwrite``."""
    from .evaluate import RUN_SUMMARY_FILES, is_run_summary

    for name in RUN_SUMMARY_FILES:
        path = out / name
        if path.exists() and not overwrite and not is_run_summary(path):
            raise UsageError(
                f"{path} exists and was not written by steer run, which writes its summary there: "
                "pass --overwrite to replace it, or another --out"
            )


def _run(args: argparse.Namespace) -> int:
    """Edit a manifest's items; under ``accelerate launch`` each process takes every n-th of the
    items still to edit (:meth:`~steer.runner.ManifestRunner.plan`).
    Returns the exit status: 2 when the run is refused, 1 when any item failed (the summary
    written all the same), else 0.

    Under a launcher every process checks the input and the folder (every item's record, not
    only its own) before any edit, and when any one refuses all do, with status 2, the main
    process saying why. The summary is written by the main process from the records on disk
    once every process is done: the records already are the run's state (a rerun resumes from
    them), they cover items finished by earlier runs too, and reading them needs no collective
    beyond a barrier.
    """
    with contextlib.ExitStack() as held:  # the --out folder's lock, released however the run ends
        return _run_holding(args, held)


def _run_holding(args: argparse.Namespace, held: contextlib.ExitStack) -> int:
    """:func:`_run`, whose main process takes ``--out``'s lock into ``held`` once the checks pass."""
    from accelerate import PartialState
    from accelerate.utils import gather_object, parse_flag_from_env

    from .evaluate import is_per_clip, other_items_note, write_run_summary
    from .manifest import read_edit_manifest
    from .runner import (
        ManifestRunner,
        RunCounts,
        check_batch_size,
        check_concepts,
        check_outputs,
        other_items_done,
    )

    # Without cpu=True, processes started by torchrun on a machine without CUDA would each
    # believe they are alone (accelerate only sets up gloo for CPUs when asked to).
    cpu = args.device == "cpu" or not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU")
    # torch.distributed.nn's functions take the default process group as a default argument when
    # the module is first imported (diffusers imports it, through torch._dynamo, as the backbone
    # loads). Imported once the group exists, they would hold it past destroy_process_group, and
    # its gloo threads would outlive _leave and race the interpreter's exit: now and then a
    # process aborted there ("terminate called without an active exception"). By importlib, as a
    # plain import would make ``torch`` a local name of this function.
    if torch.distributed.is_available():
        importlib.import_module("torch.distributed.nn")

    # A process done with its share waits in the closing barrier for the others, for as long as
    # their edits take: torch's default timeouts (10 min with NCCL, 30 with gloo) ended the run
    # with a traceback and no summary when one process had that much more to edit.
    state = PartialState(cpu=cpu, timeout=RUN_BARRIER_TIMEOUT)
    refusal = None
    try:
        items = read_edit_manifest(args.manifest)
        names = _metric_names(args.metrics)
        check_concepts(items, args.recipe, args.concept)
        default_concept, default_problems = _check_default_concept(args.concept, items)
        configs, problems = _items_concepts(items)
        problems.update(default_problems)
        note = _choose_backbone(args, default_concept or _items_concept(configs, args.backbone))
        for item in items:  # an item's own concept of another family than the backbone's
            if item.concept in configs and item.id not in problems:
                if problem := _family_problem(configs[item.concept], args.backbone):
                    problems[item.id] = problem
        check_outputs(items, args.out)  # first: _check_items took a source clip for a foreign wav
        warning = _check_items(items, problems, args.out, args.overwrite)
        for line in (warning, note):
            if line and state.is_main_process:
                print(line, file=sys.stderr)
        settings = _edit_settings(args, args.recipe)
        device = state.device if args.device == "auto" else device_option(args.device)
        try:
            check_batch_size(args.batch_size)
        except ValueError as error:
            raise UsageError(f"--batch-size: {error}") from error
        _check_run_summary(args.out, args.overwrite)
        metrics = _run_metrics(names, args.clap_model, device)
        _make_folder(args.out, "--out")
        check_writable(args.out / "summary.json")
        if state.is_main_process:  # one launch at a time: a second's processes all refuse
            held.enter_context(run_folder_lock(args.out))
    except ValueError as error:
        refusal = str(error)
    if _refused(state, refusal):
        return 2
    backbone = load_backbone(args.backbone, torch_dtype=DTYPES[args.dtype], device=device)
    runner = ManifestRunner(
        items,
        args.out,
        backbone=backbone,
        recipe=args.recipe,
        settings=settings,
        seed=args.seed,
        metrics={name: m for name, m in metrics.items() if is_per_clip(m)},
        default_concept=args.concept,
        rank=state.process_index,
        num_processes=state.num_processes,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
    )
    try:
        _check_steps(args, args.recipe, backbone.num_train_timesteps)
        runner.check_settings()
        runner.plan()  # by every process before any edits: the next gather waits for all
    except ValueError as error:
        refusal = str(error)
    if _refused(state, refusal):
        return 2
    counts = runner.run()
    state.wait_for_everyone()
    everyone = gather_object([counts])
    if state.is_main_process:
        total = RunCounts(*(sum(getattr(c, f) for c in everyone) for f in ("done", "skipped", "failed")))
        sets = {name: m for name, m in metrics.items() if not is_per_clip(m)}
        others = other_items_done(args.out, items)
        summary = write_run_summary(args.out, items, names, total, set_metrics=sets, others=others)
        print(
            f"steer run: {total.done} done, {total.skipped} skipped, {total.failed} failed "
            f"({summary['done']}/{summary['items']} items done in {args.out}; see summary.md)"
        )
        if others:
            print(other_items_note(args.out, others))
    _leave(state)
    return 1 if sum(c.failed for c in everyone) else 0


@contextlib.contextmanager
def run_folder_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.steer-run.lock`` (an advisory lock, ``flock``) while a ``steer run`` writes into
    ``out`` (a killed run's file is taken over: the lock went with its process); a
    :class:`UsageError` naming the process that holds it. Two runs on one folder
    without a launcher edited every item twice, and one removed the other's temporary files
    mid-write (it died on the rename). Where the system has no ``flock`` (Windows), nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = out / RUN_LOCK
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise UsageError(
                f"another steer run ({holder}) is writing into {out}: wait for it to end, or pass another --out "
                f"(under a launcher, one launch edits a folder with all its processes)"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"process {os.getpid()}\n")
        lock.flush()
        try:
            yield
        finally:  # removed while held: no file is left behind a finished run
            path.unlink(missing_ok=True)
            fcntl.flock(lock, fcntl.LOCK_UN)


def _refused(state: PartialState, refusal: str | None) -> bool:
    """Whether any process refused the run (``refusal``: this one's reason, or ``None``). If so
    the main process prints the first reason, by rank, as :func:`main` prints an error, before
    all leave together: a process that left first could have the launcher end the main one
    before it said why."""
    from accelerate.utils import gather_object

    refusals = [r for r in gather_object([refusal]) if r is not None]
    if not refusals:
        return False
    if state.is_main_process:
        print(f"steer: error: {refusals[0]}", file=sys.stderr, flush=True)
    _leave(state)
    return True


def _leave(state: PartialState) -> None:
    """Leave together and take the process group down, as accelerate's own end_training() does:
    a process exiting while another still holds its gloo connections can abort that one."""
    state.wait_for_everyone()
    state.destroy_process_group()


def _eval(args: argparse.Namespace) -> None:
    from .evaluate import (
        comparison_table,
        evaluate,
        markdown_table,
        pairs_from_manifest,
        pairs_from_run,
    )
    from .runner import write_json

    names = _metric_names(args.metrics)
    if not names:
        raise UsageError("--metrics is empty: name at least one metric")
    apply_threads(args.threads)
    if (args.manifest is None) != (args.edits is None):
        raise UsageError("--manifest and --edits go together")
    if bool(args.folder) == (args.manifest is not None):
        raise UsageError("give 'steer run' folders, or --manifest and --edits, not both")
    # every folder and output is checked before anything is scored or written
    jobs = []
    for folder in args.folder:
        if folder.is_file():
            raise UsageError(
                f"{folder} is a file, not a 'steer run' folder: to score a manifest's edits, pass "
                f"--manifest {folder} --edits FOLDER"
            )
        if not folder.is_dir():
            raise UsageError(f"folder not found: {folder}")
        jobs.append((folder, *pairs_from_run(folder)))
    if args.manifest is not None:
        jobs.append((args.edits, *pairs_from_manifest(args.manifest, args.edits)))
    if len({folder.resolve() for folder, _, _ in jobs}) < len(jobs):
        raise UsageError("a folder is given twice")
    device = device_option(args.device)
    reports = _eval_reports([folder for folder, _, _ in jobs], args.out, args.overwrite)
    # every folder is scored before any is written: one that cannot be scored stops them all
    from steer.metrics.collection import build_metrics
    from steer.metrics.functional import SCORING_RATE

    metrics = build_metrics(names, sample_rate=SCORING_RATE, clap_model=args.clap_model, device=device)  # once
    results = {
        str(folder): evaluate(pairs, names, missing=missing, metrics=metrics) for folder, pairs, missing in jobs
    }
    for (folder, _, missing), report in zip(jobs, reports, strict=True):
        _make_folder(report, "--out")  # each just before its report: an interrupted eval leaves no empty one
        result = results[str(folder)]
        table = markdown_table(result["groups"], names)
        if missing:
            # a run's failed edits are often the hard ones: the means above leave them out
            table += f"\n{len(missing)} item(s) have no edit in {folder} (first: {missing[0]}); the means leave them out.\n"
        if result["unscored"]:
            first = next(iter(result["unscored"].items()))
            table += f"\n{len(result['unscored'])} item(s) could not be scored in {folder} (first: {first[0]}: {first[1]}).\n"
        write_json(report / "eval.json", result)
        atomic_write_text(report / "eval.md", table)
        if len(jobs) > 1:
            print(f"## {folder}\n")
        print(table, end="")
        print(f"wrote {report / 'eval.json'} and {report / 'eval.md'}")
    if len(results) > 1:
        print(f"\n## {len(results)} runs compared\n")
        print(comparison_table(results, names), end="")


def _eval_reports(folders: list[Path], out: Path | None, overwrite: bool) -> list[Path]:
    """The folder each scored folder's ``eval.json`` and ``eval.md`` go to: the folder itself, or
    ``out`` (several folders: ``out/<folder name>``, once the names are told apart); every report
    file checked as an output (:func:`_check_output`), a report folder not yet there as a folder
    that can be made (the caller makes it just before writing, so a refusal leaves none)."""
    if out is None:
        reports = folders
    elif os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} is a file: name a folder")
    elif len(folders) == 1:
        reports = [out]
    else:
        # the name as given (a link keeps its own), compared as a file system blind to case and
        # to Unicode normalisation would (macOS's): such a one would take two reports as one
        names = [Path(os.path.abspath(folder)).name for folder in folders]
        keys = [unicodedata.normalize("NFC", name).casefold() for name in names]
        twice = next((key for key in keys if keys.count(key) > 1), None)
        if twice is not None:
            spellings = sorted({name for name, key in zip(names, keys, strict=True) if key == twice})
            alike = " and ".join(map(repr, spellings))
            alike += " (one name where case is not told apart)" if len(spellings) > 1 else ""
            raise UsageError(
                f"--out: several scored folders are named {alike}, and each one's report goes to "
                f"{out}/<folder name>: score them one at a time, each with its own --out"
            )
        reports = [out / name for name in names]
    for report in reports:
        if not os.path.isdir(report):  # only an --out folder can be missing: made before writing
            try:
                check_can_be_folder(report, "--out folder", another="another --out")
            except ValueError as error:
                raise UsageError(str(error)) from None
            continue
        for path in (report / "eval.json", report / "eval.md"):
            try:
                check_writable(path)  # first: where none can be written, --overwrite would not help
                _check_output(path, overwrite)
            except UsageError:
                raise
            except ValueError as error:  # no file can be made there
                hint = "" if out is not None else ", or pass --out to write the report to another folder"
                raise UsageError(f"{error}{hint}") from None
    return reports


def _plot(args: argparse.Namespace) -> None:
    from matplotlib.backend_bases import FigureCanvasBase

    from steer.metrics.functional import SCORING_RATE  # the picture's rate too (its mel and CQT: 16 kHz)

    from .plot import plot_comparison

    _check_output(args.output, args.overwrite)
    formats = FigureCanvasBase.get_supported_filetypes()
    if args.output.suffix.lstrip(".").lower() not in formats:
        raise UsageError(
            f"cannot tell the picture's format from {args.output.name!r}: end it in .png, .pdf or .svg"
        )
    source, edit = load_audio(args.source), load_audio(args.edit)
    # each straight to the picture's rate: the edit through the source's rate lost (or, from a
    # low one, aliased) what lies above that rate's band; a constant clip stays constant (silent)
    clips = {
        f"source: {args.source.name}": resample(source.waveform, source.sample_rate, SCORING_RATE),
        f"edit: {args.edit.name}": resample(edit.waveform, edit.sample_rate, SCORING_RATE),
    }
    plot_comparison(clips, SCORING_RATE, args.output, title=args.title)
    print(f"wrote {args.output}")


def _demo(args: argparse.Namespace) -> None:
    """Edit the shipped piano clip towards "a recording of a violin"; compare with the real violin."""
    from steer.metrics import cqt1_pcc

    from .plot import plot_comparison

    # The paper's guidance 30 and learning rate 0.02 overshoot with the small shipped backbone;
    # these were chosen on training melodies (benchmarks/swap/evaluate.py --split train).
    args.guidance = DEMO_GUIDANCE if args.guidance is None else args.guidance
    args.lr = DEMO_LR if args.lr is None else args.lr
    editing = _editing(args)
    names = ("source.wav", "edit.wav", "ground_truth.wav", "comparison.png")
    outputs = [args.out / name for name in names]
    # the folders this run makes, deepest first
    created = list(itertools.takewhile(lambda folder: not os.path.exists(folder), (args.out, *args.out.parents)))
    try:
        _make_folder(args.out, "--out")
        for path in outputs:
            _check_output(path, args.overwrite)
        # made aside and moved in together at the end, so a run cut short leaves none of them
        # (a rerun would find a lone edit.wav and refuse it)
        with tempfile.TemporaryDirectory(prefix=".demo-", dir=args.out) as aside:
            staged = {name: Path(aside) / name for name in names}
            source, truth = load_audio(DEMO_SOURCE), load_audio(DEMO_TRUTH)
            try:
                _edit(args, editing, source, DEMO_PROMPTS["source"], DEMO_PROMPTS["target"], staged["edit.wav"])
            except UsageError as error:  # a diverged edit: named where the user would look for it
                raise UsageError(str(error).replace(str(staged["edit.wav"]), str(outputs[1]))) from None
            edit = load_audio(staged["edit.wav"])
            save_audio(staged["source.wav"], source.waveform, source.sample_rate)
            save_audio(staged["ground_truth.wav"], truth.waveform, truth.sample_rate)
            # the edit is at the backbone's rate and channels (Stable Audio: 44.1 kHz stereo): score
            # and draw it as the mono clips are, at their rate
            edited = to_mono(edit.waveform[None], edit.sample_rate, source.sample_rate)
            clips = {"source (piano)": source.waveform, "edit → violin": edited, "ground truth (violin)": truth.waveform}
            plot_comparison(clips, source.sample_rate, staged["comparison.png"], title="steer demo: SteerMusic, piano → violin")
            for path in outputs:  # again: one may have appeared during the edit
                _check_output(path, args.overwrite)
            for path in outputs:
                os.replace(staged[path.name], path)
    except BaseException:  # refused, failed or interrupted: remove the folders made for nothing
        for folder in created:
            try:
                folder.rmdir()
            except OSError:  # holds something: not ours to remove
                break
        raise
    print(f"wrote {', '.join(str(p) for p in outputs[:3])} and {outputs[3]}")
    melody = cqt1_pcc(source.waveform[0], edited[0], sample_rate=source.sample_rate)
    reference = cqt1_pcc(source.waveform[0], truth.waveform[0], sample_rate=source.sample_rate)
    print(f"melody kept (CQT-1 PCC, source vs edit): {melody:.3f}; source vs the real violin: {reference:.3f}")
    if args.backbone in TINY:
        print(
            f"note: the '{args.backbone}' backbone has random weights, so the edit is noise or near silence; it shows "
            "that the whole pipeline runs offline, not what an edit sounds like."
        )
    elif CLASSIFIER.is_dir():
        from steer.metrics.instrument import InstrumentClassifier

        classifier = InstrumentClassifier.from_pretrained(CLASSIFIER).eval()
        heard = classifier.predict(edit.waveform, edit.sample_rate)[0]
        print(f"the instrument classifier hears the edit as: {heard}")


def _one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """A warning as the command line shows it: ``steer: warning: <message>``, the category named
    where it is not a UserWarning, without the file and source line of Python's format."""
    kind = "" if category is UserWarning else f"{category.__name__}: "
    return f"steer: warning: {kind}{message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``steer`` command ``argv`` (default: the process's arguments); returns its exit
    status. Warnings show as one line each (:func:`_one_line_warning`) while it runs; the
    warnings filters (``-W``, ``PYTHONWARNINGS``) apply as always, and the earlier format is
    restored when it returns."""
    previous, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = previous


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        if getattr(args, "concept", None) is not None and not args.concept.strip():  # it was read as no --concept
            raise UsageError("--concept is empty: name a concept folder or Hub repo id, or leave --concept out")
        if args.command == "edit":
            _check_audio_output(args.output, args.overwrite, source=args.input)
            source = _check_prompt(args.source, "--source")
            target = _check_prompt(args.target, "--target")
            editing = _editing(args, target)
            audio = load_audio(args.input)
            path = _edit(args, editing, audio, source, target, args.output)
            print(f"wrote {path}")
        elif args.command == "personalize":
            run_personalize(args)
        elif args.command == "run":
            return _run(args)
        elif args.command == "eval":
            _eval(args)
        elif args.command == "plot":
            _plot(args)
        else:
            _demo(args)
    except ValueError as error:  # UsageError and the library's input checks
        print(f"steer: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # one line, not a traceback; every output is written whole or not at all
        print(f"\nsteer: interrupted; {getattr(interrupt, 'left', None) or _after_interrupt(args)}", file=sys.stderr)
        return 130
    return 0


def _after_interrupt(args: argparse.Namespace) -> str:
    """What an interrupted command leaves, and how to go on."""
    if args.command == "run":
        if args.overwrite:
            return (
                "run it again without --overwrite to keep the edits it finished and redo the rest (refused while "
                "edits of the old settings remain), or with --overwrite to redo every item"
            )
        return "run the same command again to resume: finished edits are kept, the interrupted ones redone"
    if args.command == "personalize" and args.checkpoint_dir is not None:
        from .concepts.train import saved_checkpoints

        if saved := saved_checkpoints(args.checkpoint_dir) if args.checkpoint_dir.is_dir() else []:
            also = ""
            if not args.overwrite and args.output.is_dir() and any(args.output.iterdir()):  # the checkpoints' folder
                also = f" (and --overwrite: {args.output} now holds files, which it keeps)"
            return f"add --resume{also} to go on from the newest checkpoint, {saved[-1]}"
        return f"no checkpoint was saved in {args.checkpoint_dir} yet, and no concept"
    if args.command == "eval":
        return "only the eval.json and eval.md it said it wrote were written"
    return "nothing was written"


if __name__ == "__main__":
    sys.exit(main())
