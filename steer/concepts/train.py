"""Learning a concept from a few reference clips (DreamSound's recipe, Plitsis et al., 2024).

Every step draws reference clips, a random crop of each, a prompt template, a timestep
t ~ U{0, …, T−1} and noise ε, and minimises the ε-prediction loss of DDPM (Ho et al., 2020,
eq. 14) through the personalised model: ‖ε'(√ᾱ_t x0 + √(1−ᾱ_t) ε, t, y) − ε‖², with AdamW
(β = 0.9, 0.999, weight decay 0.01, ε = 1e-8), gradients clipped to norm 1 and a constant learning
rate, as DreamSound's ``dreambooth_audioldm2.py`` does. One seeded CPU generator draws everything,
so a seed fixes the result, and a checkpoint holds its state so that a resumed run ends exactly
where an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from backbones import Backbone, to_mono
from backbones.auto import TINY
from backbones.saving import check_can_be_folder

from ..audio import Audio, load_audio
from ..editor import check_seed, check_whole_number, seeded_generator
from .concept import (
    DEFAULT_TEMPLATE,
    LORA_TARGETS,
    Concept,
    ConceptConfig,
    base_fingerprint,
    check_new_words,
    fingerprint_mismatch,
    nonfinite_key,
)

if TYPE_CHECKING:
    from .personalized import PersonalizedBackbone


@dataclass(frozen=True)
class MethodDefaults:
    """Steps, learning rate and batch size used when :func:`train_concept` is not given them."""

    steps: int
    lr: float
    batch_size: int


#: Defaults by method (batch 4 = DreamSound's ``train_batch_size=1`` × ``gradient_accumulation_steps=4``):
#: - dreambooth: 100 steps at 1e-5 (SteerMusic, section 5.1, following DreamSound's repository);
#: - lora: 500 steps at 1e-4 (diffusers' DreamBooth-LoRA example; rank 4, alpha = rank);
#: - textual_inversion: 500 steps at 5e-3 (Gal et al., 2022, use 5e-3 and 5000 steps).
DEFAULTS: dict[str, MethodDefaults] = {
    "dreambooth": MethodDefaults(steps=100, lr=1e-5, batch_size=4),
    "lora": MethodDefaults(steps=500, lr=1e-4, batch_size=4),
    "textual_inversion": MethodDefaults(steps=500, lr=5e-3, batch_size=4),
}
#: Overrides for the small mel-diffusion model (~4 M parameters), chosen on it: a "sks guitar"
#: concept from five 2.56-s sitar renderings (an instrument outside its vocabulary), scored by
#: the ε-loss on four held-out sitar melodies and, for drift, on piano clips with "a recording
#: of a piano" (base: 0.0634 / 0.0630). dreambooth at 1e-5 already gives −6 % / +4 % (1e-4:
#: −10 % / +16 %), so it keeps the paper's setting; LoRA at 1e-4 × 500 gives −3 % / +0.7 %, at
#: 1e-3 × 300 −5 % / +1.7 % (1e-2 × 100: −4 % / +5 %); textual inversion gains −1 % at 5e-2 × 500
#: (0 % drift: the denoiser is the base's) and less at 5e-3.
FAMILY_DEFAULTS: dict[tuple[str, str], MethodDefaults] = {
    ("mel-diffusion", "lora"): MethodDefaults(steps=300, lr=1e-3, batch_size=4),
    ("mel-diffusion", "textual_inversion"): MethodDefaults(steps=500, lr=5e-2, batch_size=4),
}
#: Crop length by family: AudioLDM2's 10.24 s (256 latent frames; DreamSound crops 10 s), the
#: mel-diffusion model's 2.56 s training crops.
CROP_SECONDS: dict[str, float] = {"audioldm2": 10.24, "mel-diffusion": 2.56}
#: Shorter reference clips are refused.
MIN_SECONDS = 0.5
#: A clip whose peak stays below this (−80 dBFS) is silent.
SILENCE_PEAK = 1e-4
#: DreamSound's ``max_grad_norm`` and AdamW settings.
MAX_GRAD_NORM = 1.0
ADAMW = {"betas": (0.9, 0.999), "weight_decay": 1e-2, "eps": 1e-8}
#: The largest learning rate AdamW can take: its first step scales the update by the float32
#: scalar lr / (1 - beta1), and torch refuses (crashes on) one past float32's largest.
MAX_LR = torch.finfo(torch.float32).max * (1 - ADAMW["betas"][0])


def defaults_for(method: str, family: str) -> MethodDefaults:
    """The default steps / lr / batch size of ``method`` on a backbone ``family``."""
    return FAMILY_DEFAULTS.get((family, method), DEFAULTS[method])


@dataclass(frozen=True)
class TrainState:
    """What a training callback sees after each step (``step`` is 0-based)."""

    step: int
    loss: float
    lr: float


@dataclass(frozen=True)
class Reference:
    """A reference clip, mono at the backbone's rate."""

    name: str
    waveform: Tensor  # (samples,)


_NOT_A_REFERENCE = (
    "{what}: pass audio files or steer.Audio clips, e.g. Audio(waveform, sample_rate) for a (channels, samples) "
    "waveform"
)


def check_references(references: Sequence[str | os.PathLike | Audio]) -> list[tuple[str, Audio]]:
    """Read the reference clips as given, refusing unusable ones with an error that names them.

    Returns ``(name, clip)`` pairs: the path, or ``"reference clip <i>"`` for an :class:`Audio`.
    ``steer personalize`` calls it before it loads a model.

    Raises:
        TypeError: for a reference that is no path or :class:`Audio` (a bare waveform tensor).
        ValueError: for no clips, a missing path, a folder, a file that is not audio, a batch
            ``(B, channels, samples)`` of clips, or a clip shorter than :data:`MIN_SECONDS` or
            silent (peak below :data:`SILENCE_PEAK` after the channels are mixed to mono, as
            training reads it).
    """
    if isinstance(references, (str, os.PathLike, Audio)):
        references = [references]
    if isinstance(references, Tensor):
        raise TypeError(_NOT_A_REFERENCE.format(what="the references are a Tensor"))
    if not references:
        raise ValueError("no reference clips: pass one or more audio files")
    clips = []
    for i, reference in enumerate(references):
        if not isinstance(reference, (str, os.PathLike, Audio)):
            raise TypeError(_NOT_A_REFERENCE.format(what=f"reference {i} is a {type(reference).__name__}"))
        if isinstance(reference, Audio):
            name, audio = f"reference clip {i}", reference
            if audio.waveform.dim() != 2:
                raise ValueError(
                    f"{name} is a batch of {len(audio.waveform)} clips (shape {tuple(audio.waveform.shape)}): pass "
                    "each clip as its own reference, e.g. [Audio(w, sr) for w in batch.waveform]"
                )
        else:
            name, path = str(reference), Path(reference)
            if path.is_dir():
                raise ValueError(
                    f"{name} is a folder: pass the audio files in it as references (e.g. {path / '*.wav'})"
                )
            if not path.exists():
                raise ValueError(f"reference clip not found: {name}")
            try:
                audio = load_audio(path)
            except ValueError as error:
                raise ValueError(f"unusable reference clip: {error}") from error
        if audio.seconds < MIN_SECONDS:
            raise ValueError(
                f"{name} is too short: {audio.seconds:.2f} s; reference clips need at least {MIN_SECONDS} s"
            )
        peak = float(to_mono(audio.waveform[None], audio.sample_rate, audio.sample_rate).abs().max())
        if peak < SILENCE_PEAK:
            mixed = " once its channels are mixed to mono" if len(audio.waveform) > 1 else ""
            raise ValueError(f"{name} is silent{mixed} (peak {peak:.1e}): a concept needs a recording of it")
        clips.append((name, audio))
    return clips


def load_references(
    references: Sequence[str | os.PathLike | Audio], sample_rate: int, *, keeps_level: bool = False
) -> list[Reference]:
    """The reference clips (see :func:`check_references`), mono at ``sample_rate``.

    Warns (``UserWarning``, once per clip) for a clip recorded below ``sample_rate`` (upsampled,
    it holds nothing above half its rate, and the concept learns that dull band as part of the
    sound) and, for a backbone that ``keeps_level`` (Stable Audio; the mel backbones scale each
    clip to one peak), for one whose mono samples reach beyond ±1 (its VAE was trained on audio
    within full scale)."""
    clips = []
    for name, audio in check_references(references):
        if audio.sample_rate < sample_rate:
            warnings.warn(
                f"{name} is at {audio.sample_rate} Hz, below the backbone's {sample_rate} Hz: upsampled, it holds "
                f"nothing above {audio.sample_rate // 2} Hz, and the concept learns that as part of the sound; "
                f"record it at {sample_rate} Hz or more",
                UserWarning,
                stacklevel=3,
            )
        # the peak as recorded (resampling overshoots a little at full scale), where it matters
        recorded = to_mono(audio.waveform[None], audio.sample_rate, audio.sample_rate) if keeps_level else None
        if recorded is not None and (peak := float(recorded.abs().max())) > 1:
            warnings.warn(
                f"{name} peaks at {peak:.3g}, beyond full scale (±1), which the backbone's VAE was trained within "
                "(it keeps a clip's level): normalise it (e.g. divide by its peak)",
                UserWarning,
                stacklevel=3,
            )
        clips.append(Reference(name, to_mono(audio.waveform[None], audio.sample_rate, sample_rate)[0]))
    return clips


def base_model_name(backbone: Backbone) -> str | None:
    """The base model's repo id or absolute path, when the backbone knows it."""
    from backbones.pipeline import PipelineBackbone  # diffusers: imported when a model is at hand

    name = backbone.name_or_path
    if name is None and isinstance(backbone, PipelineBackbone):
        name = backbone.pipe.name_or_path  # a pipeline the user loaded and wrapped with from_pipe
    return recorded_base_model(str(name)) if name else None


def recorded_base_model(name: str) -> str:
    """How a concept records its base model ``name``: a local folder by its absolute path (a
    relative one would mean another folder, or a Hub repo id, in another working directory; a
    concept pushed to the Hub still names it by its folder's name only), a repo id or an
    offline build's name as it is (``load_backbone`` builds ``tiny`` whatever folder is called so)."""
    return os.path.abspath(name) if name not in TINY and Path(name).exists() else name


@torch.no_grad()
def diffusion_loss(
    model: Backbone, latents: Tensor, prompts: Sequence[str], *, t: Tensor, noise: Tensor
) -> float:
    """The ε-prediction loss ‖ε(x_t, t, y) − ε‖² (mean) of ``model`` at fixed ``t`` and ``noise``.

    Args:
        latents: clean latents ``(B, ...)``; ``prompts``: one per row; ``t``: ``(B,)``;
            ``noise``: like ``latents``.
    """
    x_t = model.add_noise(latents, noise, t)
    return F.mse_loss(model.predict_noise(x_t, t, model.encode_prompt(list(prompts))), noise).item()


def check_settings(
    *,
    steps: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    crop_seconds: float | None = None,
    checkpoint_every: int = 1,
    keep_checkpoints: int = 0,
    rank: int | None = None,
    alpha: float | None = None,
    seed: int = 0,
    as_flags: bool = False,
) -> None:
    """Refuse the first training setting of the wrong type or out of range with a ``ValueError``
    that names it (as ``steer personalize``'s option, e.g. ``--batch-size``, with ``as_flags``);
    ``None`` (a default :func:`train_concept` fills in) passes. ``steer personalize`` calls it
    before it loads a model."""

    def named(name: str) -> str:
        return "--" + name.replace("_", "-") if as_flags else name

    counts = (
        ("steps", steps, 0),
        ("batch_size", batch_size, 1),
        ("checkpoint_every", checkpoint_every, 1),
        ("keep_checkpoints", keep_checkpoints, 0),
        ("rank", rank, 1),
    )
    for name, value, low in counts:
        if value is not None:
            check_whole_number(named(name), value, low)
    reals = (
        ("lr", lr, f"a positive number <= {MAX_LR:.4g} (AdamW's first step, lr / (1 - beta1), must fit a float32)",
         lambda v: 0 < v <= MAX_LR),
        ("crop_seconds", crop_seconds, f"a finite number of seconds >= {MIN_SECONDS} (the shortest reference clip)",
         lambda v: MIN_SECONDS <= v < math.inf),
        ("alpha", alpha, "a positive finite number", lambda v: 0 < v < math.inf),
    )
    for name, value, rule, ok in reals:
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real) or not ok(value)):
            raise ValueError(f"{named(name)} must be {rule}, got {value!r}")
    check_seed(seed, named("seed"))


def train_concept(
    backbone: Backbone,
    references: Sequence[str | os.PathLike | Audio],
    *,
    token: str,
    class_word: str | None,
    method: str = "lora",
    steps: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    rank: int = 4,
    alpha: float | None = None,
    crop_seconds: float | None = None,
    templates: Sequence[str] = (DEFAULT_TEMPLATE,),
    base_model: str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
    keep_checkpoints: int = 2,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[TrainState], None] | None = None,
) -> Concept:
    """Learn a concept from reference clips on ``backbone`` (left unchanged).

    Args:
        backbone: the base model (float32 weights; apply the concept to any dtype later).
        references: audio files (any format soundfile reads) or :class:`~steer.Audio` clips, at
            least 0.5 s each; longer ones are randomly cropped to ``crop_seconds``.
        token: the new word naming the concept (``"sks"``).
        class_word: the kind of sound (``"guitar"``), or ``None``.
        method: ``"lora"``, ``"dreambooth"`` or ``"textual_inversion"``.
        steps, lr, batch_size: default to :func:`defaults_for` ``(method, backbone.family)``;
            ``steps=0`` returns the untrained concept (its initial weights).
        seed: seeds the crops, prompts, timesteps, noise and a LoRA's initial A.
        rank, alpha: LoRA rank and scale (alpha defaults to the rank, as diffusers' scripts do).
        crop_seconds: training clip length, at least :data:`MIN_SECONDS`; defaults to
            :data:`CROP_SECONDS` of the family, and is shortened to the shortest reference.
        templates: a list of prompts with ``{token}`` and ``{class_word}``; one is drawn per clip.
        base_model: the base model's repo id or path for the config and model card (read from
            the backbone when it knows it); a local folder is recorded by its absolute path.
        checkpoint_dir: save the training state there every ``checkpoint_every`` steps (the last
            ``keep_checkpoints`` of this run are kept; 0 keeps all). Without ``resume`` it must
            not hold an earlier run's checkpoints; other files there are left alone.
        resume: continue from the newest checkpoint in ``checkpoint_dir`` (same settings and
            base model required; ``steps`` may grow); without one, start from scratch.
        progress: show a progress bar.
        callback: called with a :class:`TrainState` after every step.

    Returns:
        the learnt :class:`Concept`.

    Raises:
        TypeError: for a reference that is no path or :class:`~steer.Audio` (:func:`check_references`).
        ValueError: for a setting of the wrong type or out of range (:func:`check_settings`),
            unusable references (:func:`check_references`), and training that diverges (a step's
            loss, a learnt weight or the learnt weights' loss on one more batch that is not
            finite: it names the step; lower ``lr``).
    """
    from .personalized import PersonalizedBackbone, family_of  # diffusers: imported when a model is at hand

    if method not in DEFAULTS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(DEFAULTS)}")
    family_of(backbone, method)  # unsupported backbones and methods fail before any work
    check_new_words(token, class_word, templates)
    defaults = defaults_for(method, backbone.family)
    steps = defaults.steps if steps is None else steps
    lr = defaults.lr if lr is None else lr
    batch_size = defaults.batch_size if batch_size is None else batch_size
    crop_seconds = CROP_SECONDS.get(backbone.family, 10.24) if crop_seconds is None else crop_seconds
    check_settings(
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        crop_seconds=crop_seconds,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        rank=rank if method == "lora" else None,
        alpha=alpha if method == "lora" else None,
        seed=seed,
    )
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir to resume from")
    if checkpoint_dir is not None:
        check_checkpoint_dir(Path(checkpoint_dir), resume=resume)
        if checkpoint_every > steps:
            warnings.warn(
                f"checkpoint_every={checkpoint_every} is more than steps={steps}: no checkpoint will be saved in "
                f"{checkpoint_dir} (steer personalize --checkpoint-every)",
                stacklevel=3,
            )
    if backbone.dtype != torch.float32:
        raise ValueError(f"train concepts on a float32 backbone (got {backbone.dtype}); apply them in any dtype")
    clips = load_references(references, backbone.sample_rate, keeps_level=backbone.family == "stable_audio")
    crop, shortest = round(crop_seconds * backbone.sample_rate), min(clips, key=lambda c: len(c.waveform))
    segment = min(crop, len(shortest.waveform))
    if segment < crop and any(len(c.waveform) > segment for c in clips):
        warnings.warn(
            f"every clip trains in crops of {segment / backbone.sample_rate:.2f} s, the length of the shortest "
            f"reference {shortest.name}, not crop_seconds={crop_seconds:g}: leave it out or give clips of "
            f"{crop_seconds:g} s or more to train on longer crops (steer personalize --crop-seconds to set them)",
            UserWarning,
            stacklevel=3,
        )
    lora = method == "lora"
    config = ConceptConfig(
        method=method,
        token=token,
        class_word=class_word,
        family=backbone.family,
        base_model=recorded_base_model(base_model) if base_model else base_model_name(backbone),
        base_fingerprint=base_fingerprint(backbone.denoiser),
        lora_rank=rank if lora else None,
        lora_alpha=(alpha if alpha is not None else float(rank)) if lora else None,
        lora_targets=LORA_TARGETS if lora else None,
        templates=templates,  # the config refuses a str, whose tuple would be its characters
    )
    settings: dict[str, Any] = {
        "method": method,
        "token": token,
        "class_word": class_word,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "crop_seconds": segment / backbone.sample_rate,
        "templates": list(config.templates),
        "references": [Path(c.name).name for c in clips],
        "references_sha256": _digest(c.waveform for c in clips),
        "optimizer": "AdamW(betas=(0.9, 0.999), weight_decay=0.01, eps=1e-8), max_grad_norm=1",
    }
    # what a checkpoint was trained on: resuming on another base model is refused
    base = {"family": backbone.family, "fingerprint": config.base_fingerprint}
    if lora:
        settings.update(rank=rank, alpha=config.lora_alpha)
    for template in config.templates:  # fail before training on a template with unknown fields
        try:
            config.prompt(template)
        except (KeyError, IndexError) as error:
            raise ValueError(f"the template {template!r} has a field other than {{token}} and {{class_word}}") from error

    devices = [backbone.device] if backbone.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        # a fresh LoRA's A is drawn from the global generator, seeded as seeded_generator seeds
        # the CPU's (every bit of the seed counting)
        torch.manual_seed(seeded_generator(seed).initial_seed())
        personalized = PersonalizedBackbone(backbone, Concept(config, {}))
    params: dict[str, nn.Parameter] = {}
    try:
        params = personalized.trainable_parameters()
        for p in params.values():
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(list(params.values()), lr=lr, **ADAMW)
        generator = seeded_generator(seed)
        keep_rows = _frozen_rows(personalized, params)
        batches = _Batches(personalized, clips, segment, config, batch_size)
        start, loss = 0, None
        folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if resume:
            start, loss = _resume(folder, params, optimizer, generator, settings, steps, backbone)
        desc = f"learning '{config.prompt()}'"

        def check_learnt() -> None:
            """Refuse learnt weights that are not finite, or whose loss on one more batch (the
            first step's crops, from a generator of their own) is not: finite weights can
            still overflow."""
            key = nonfinite_key(personalized.concept_weights())
            if key is not None:
                raise ValueError(_diverged(steps, f"the weight {key} is not finite", lr, folder))
            with torch.no_grad():
                after = batches.loss(seeded_generator(seed)).item()
            if not math.isfinite(after):
                raise ValueError(_diverged(steps, f"the loss of the learnt weights is {after}", lr, folder))

        with tqdm(total=steps, initial=start, desc=desc, disable=not progress, leave=False) as bar:
            for step in range(start, steps):
                loss = _train_step(batches, generator, optimizer, params, keep_rows)
                if not math.isfinite(loss):
                    raise ValueError(_diverged(step + 1, f"the loss is {loss}", lr, folder))
                if step == steps - 1:  # before the last checkpoint, which a resume would take as done
                    check_learnt()
                bar.update(1)
                if step % 10 == 0 or step == steps - 1:
                    bar.set_postfix(loss=f"{loss:.4g}")
                if folder is not None and (step + 1) % checkpoint_every == 0:
                    _save_checkpoint(folder, step + 1, loss, params, optimizer, generator, settings, base, keep_checkpoints)
                if callback is not None:
                    callback(TrainState(step=step, loss=loss, lr=lr))
        if start >= steps > 0:  # resumed from the last checkpoint: checked as if just learnt
            check_learnt()
        weights = personalized.concept_weights()
    finally:
        for p in params.values():
            p.requires_grad_(False)
        personalized.close()
    training = {**settings, "steps": steps, "final_loss": loss}  # None when no step ran
    return Concept(ConceptConfig(**{**config.to_dict(), "training": training}), weights)


def _diverged(step: int, what: str, lr: float, folder: Path | None) -> str:
    again = f"train again with a learning rate below lr={lr:g} (steer personalize --lr)"
    if folder is not None and folder.is_dir() and saved_checkpoints(folder):  # a rerun there is refused
        again += f" and another checkpoint_dir ({folder} holds this run's checkpoints)"
    return f"training diverged at step {step}: {what}; {again}"


@dataclass(frozen=True)
class _Batches:
    """What training draws its batches from: random crops of the reference ``clips``, ``segment``
    samples long, each with a prompt of one of the ``config``'s templates."""

    personalized: PersonalizedBackbone
    clips: list[Reference]
    segment: int
    config: ConceptConfig
    batch_size: int

    def loss(self, generator: torch.Generator) -> Tensor:
        """The denoising loss (a 0-d tensor) of the concept's weights on a fresh batch drawn
        from ``generator``: its crops and prompts, then its timesteps and noise."""
        personalized, base, config = self.personalized, self.personalized.base, self.config
        waveforms, prompts = [], []
        for index in torch.randint(len(self.clips), (self.batch_size,), generator=generator).tolist():
            clip = self.clips[index].waveform
            offset = int(torch.randint(len(clip) - self.segment + 1, (1,), generator=generator))
            waveforms.append(clip[offset : offset + self.segment])
            template = config.templates[int(torch.randint(len(config.templates), (1,), generator=generator))]
            prompts.append(config.prompt(template))
        with torch.no_grad():
            latents = base.encode_audio(torch.stack(waveforms), base.sample_rate)
        t = torch.randint(base.num_train_timesteps, (self.batch_size,), generator=generator).to(latents.device)
        noise = torch.randn(latents.shape, generator=generator).to(latents.device)
        eps = personalized.predict_noise(
            base.add_noise(latents, noise, t), t, personalized.training_conditioning(prompts)
        )
        return F.mse_loss(eps.float(), noise)


def _train_step(
    batches: _Batches,
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer,
    params: dict[str, nn.Parameter],
    keep_rows: tuple[Tensor, Tensor] | None,
) -> float:
    """One optimiser step on a fresh batch; returns the loss."""
    loss = batches.loss(generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward(inputs=list(params.values()))  # not into base weights a user left trainable
    if keep_rows is not None:  # textual inversion: only the token's row learns
        mask, original = keep_rows
        params["token_embedding"].grad[mask] = 0
    torch.nn.utils.clip_grad_norm_(list(params.values()), MAX_GRAD_NORM)
    optimizer.step()
    if keep_rows is not None:  # undo AdamW's weight decay on the other rows
        with torch.no_grad():
            params["token_embedding"][mask] = original[mask]
    return loss.item()


def _frozen_rows(personalized: PersonalizedBackbone, params: dict[str, nn.Parameter]) -> tuple[Tensor, Tensor] | None:
    if "token_embedding" not in params:  # not a whole closed-vocabulary table: nothing to keep
        return None
    weight = params["token_embedding"]
    mask = torch.ones(len(weight), dtype=torch.bool, device=weight.device)
    mask[personalized.token_id] = False
    return mask, weight.detach().clone()


def _digest(waveforms) -> str:
    digest = hashlib.sha256()
    for waveform in waveforms:
        digest.update(waveform.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# -- checkpoints ------------------------------------------------------------------------------------
# A checkpoint is a folder `checkpoint-<step>` with the learnt tensors (trainable.safetensors), the
# optimiser's and the generator's state (state.safetensors) and the settings and the base model's
# family and fingerprint (trainer_state.json).
# It is written under a temporary name and renamed, so a crash never leaves half a checkpoint.
# Only folders holding those three files and nothing else count: other tools' `checkpoint-<n>`
# folders are never read or pruned (one named as this run's would be is refused before training).
_CHECKPOINT_FILES = ("trainable.safetensors", "state.safetensors", "trainer_state.json")


def saved_checkpoints(folder: Path) -> list[Path]:
    """The whole checkpoints (``checkpoint-<step>`` folders holding every checkpoint file and
    nothing else) in ``folder``, oldest first."""
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and _is_checkpoint(p)]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def _is_checkpoint(path: Path) -> bool:
    return path.is_dir() and sorted(p.name for p in path.iterdir()) == sorted(_CHECKPOINT_FILES)


def check_checkpoint_dir(folder: Path, *, resume: bool) -> None:
    """Refuse a ``checkpoint_dir`` that cannot be a folder (see
    :func:`~backbones.saving.check_can_be_folder`), one holding a folder of a checkpoint's name
    that is not a steer checkpoint (another tool's: a checkpoint would replace it, pruning would
    delete it), and a run that does not resume one holding an earlier run's checkpoints:
    pruning the oldest would delete the new ones, and a later resume would continue the wrong
    run."""
    check_can_be_folder(folder, "checkpoint_dir")
    names = re.compile(r"checkpoint-\d{6}")  # what this run writes, replaces and prunes
    foreign = sorted(p.name for p in folder.glob("checkpoint-*") if names.fullmatch(p.name) and not _is_checkpoint(p))
    if foreign:
        raise ValueError(
            f"checkpoint_dir {folder} holds {foreign[0]}, which is not a steer checkpoint (it holds other files "
            f"than {', '.join(_CHECKPOINT_FILES)}), and a checkpoint of that name would replace it: use another folder"
        )
    if resume:
        return
    found = saved_checkpoints(folder) if folder.is_dir() else []
    if found:
        raise ValueError(
            f"checkpoint_dir {folder} already holds checkpoints of a run (newest: {found[-1].name}): pass "
            "resume=True (steer personalize --resume) to continue it with the same settings, or use another folder"
        )


def _save_checkpoint(
    folder: Path,
    step: int,
    loss: float,
    params: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    settings: dict[str, Any],
    base: dict[str, Any],
    keep: int,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"checkpoint-{step:06d}"
    partial = folder / f".checkpoint-{step:06d}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    save_file({n: p.detach().cpu().contiguous() for n, p in params.items()}, partial / "trainable.safetensors")
    state = optimizer.state_dict()
    tensors = {"generator": generator.get_state()}
    for index, values in state["state"].items():
        tensors.update({f"optimizer.{index}.{k}": v.detach().cpu().contiguous() for k, v in values.items()})
    save_file(tensors, partial / "state.safetensors")
    meta = {
        "step": step,
        "loss": loss,
        "settings": settings,
        "base": base,
        "param_groups": state["param_groups"],
        "names": list(params),
    }
    (partial / "trainer_state.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    for old in saved_checkpoints(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)


def _resume(
    folder: Path,
    params: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    settings: dict[str, Any],
    steps: int,
    backbone: Backbone,
) -> tuple[int, float | None]:
    """Load the newest checkpoint into the run; returns the step to continue from (0: none) and
    the loss of the step before it (``None`` for none, or a checkpoint of a steer that did not
    record it). A checkpoint of another base model than ``backbone`` is refused (those of a
    steer that did not record the base are not checked)."""
    found = saved_checkpoints(folder) if folder.is_dir() else []
    if not found:  # a first run of a job that always resumes; or a misspelt folder
        where = "holds no checkpoint" if folder.is_dir() else "does not exist"
        warnings.warn(
            f"resuming, but checkpoint_dir {folder} {where}: training starts from step 0 (to continue an "
            "earlier run, pass the folder its checkpoints are in)",
            stacklevel=4,
        )
        return 0, None
    latest = found[-1]
    meta, trainable, tensors = _read_checkpoint(latest)
    base = meta.get("base")
    if base is not None:
        mismatch = (
            f"its family is {base['family']}, this backbone's {backbone.family}"
            if base["family"] != backbone.family
            else fingerprint_mismatch(backbone.denoiser, base["fingerprint"])
        )
        if mismatch is not None:
            raise ValueError(
                f"cannot resume from {latest}: it was trained on another base model ({mismatch}); resume on "
                "the base model it started from, or use another checkpoint_dir"
            )
    saved = meta["settings"]
    changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != _jsonable(settings.get(k)))
    if changed:
        raise ValueError(
            f"cannot resume from {latest}: it was trained with other settings ({', '.join(changed)}); "
            "use another checkpoint_dir or the same settings"
        )
    if meta["names"] != list(params):
        raise ValueError(f"cannot resume from {latest}: it holds other parameters than this run trains")
    if meta["step"] > steps:
        raise ValueError(
            f"cannot resume from {latest}: it is at step {meta['step']}, past steps={steps}; pass "
            f"steps={meta['step']} or more (steer personalize --steps {meta['step']})"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(trainable[name])
    generator.set_state(tensors.pop("generator"))
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"]), meta.get("loss")


def _read_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Tensor]]:
    """A checkpoint's ``trainer_state.json``, trainable weights and optimiser state; a damaged
    file (cut, or not what steer writes) is a ``ValueError`` naming it and the way on."""
    fix = f"delete {folder} to resume from the checkpoint before it, or use another checkpoint_dir"
    path = folder / "trainer_state.json"
    try:
        meta = json.loads(path.read_bytes())
        if not isinstance(meta, dict) or not {"step", "settings", "names", "param_groups"} <= meta.keys():
            raise ValueError("not the JSON object of a steer checkpoint")
        path = folder / "trainable.safetensors"
        trainable = load_file(path)
        path = folder / "state.safetensors"
        tensors = load_file(path)
        if "generator" not in tensors:
            raise ValueError("no generator state")
    except (OSError, ValueError, SafetensorError) as error:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
        raise ValueError(f"cannot resume from {folder}: {path.name} is damaged ({error}); {fix}") from None
    return meta, trainable, tensors


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))
