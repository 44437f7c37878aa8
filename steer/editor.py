"""The generic score-distillation editing loop.

Each step samples one timestep t and one noise ε per clip, noises the edited latent x and the
source latent x_src with the SAME (t, ε), evaluates the noise predictions every loss asks for in
batched calls, adds up the losses' gradients and takes an optimiser step on x (Niu et al., 2025,
"SteerMusic", https://arxiv.org/abs/2504.10826, section 4.1, generalised to any list of losses).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from backbones import Backbone, Conditioning
from backbones.conditioning import pad_to
from losses import DeltaDenoisingScore, LossContext, LossOutput, NoiseRequest, ScoreLoss
from losses.base import Fn
from losses.fused import noise_pair, triton_available

from .audio import Audio, load_audio
from .merged_lora import MergedLoRA
from .performance import CastOnce, Performance
from .predictions import Predictor, evaluate_requests, unique
from .projections import FusedProjections
from .sources import Fingerprint
from .step_graph import CUDAGraph, StepGraph


@dataclass(frozen=True, eq=False)  # holds tensors: == by identity (by field raised)
class EditState:
    """What a callback sees after each optimiser step.

    Attributes:
        step: 0-based step index.
        t: timesteps of this step, ``(B,)``.
        noise: ε of this step, ``(B, ...)``.
        latent: x after the step, ``(B, ...)`` (detached).
        gradient: the total gradient applied to x at this step, ``(B, ...)`` (non-finite at a
            step skipped for an fp16 overflow).
        losses: logged value of each loss (detached scalars), by loss name.
        lr: the learning rate used for this step.
    """

    step: int
    t: Tensor
    noise: Tensor
    latent: Tensor
    gradient: Tensor
    losses: dict[str, Tensor]
    lr: float


@dataclass(eq=False)  # holds tensors: == by identity (by field raised)
class EditResult:
    """The outcome of an edit.

    Attributes:
        latent: the edited latent, ``(B, ...)``.
        audio: the decoded waveform, ``(B, samples)`` or ``(B, channels, samples)`` as the
            backbone decodes (Stable Audio: stereo), or ``None`` when editing latents.
        sample_rate: sample rate of ``audio``.
        history: per step, each loss's logged value and their ``"total"``.
        skipped_steps: steps not taken because the fp16 loss-scaled backward overflowed
            (:attr:`~steer.performance.Performance.loss_scaling`); 0 on the other paths.
    """

    latent: Tensor
    audio: Tensor | None
    sample_rate: int
    history: list[dict[str, float]] = field(default_factory=list)
    skipped_steps: int = 0


Prompts = str | Sequence[str]

#: the editor's settings that may be set between edits (each edit checks them as the constructor does)
SETTINGS = ("steps", "lr", "optimizer", "lr_step_size", "lr_gamma", "t_min", "t_max", "performance")


@dataclass
class _Runtime:
    """What an edit's steps call: each model's predictor, and the losses' maths (compiled once
    per function where ``compiler`` is set)."""

    device: torch.device
    predictors: dict[str, Predictor]
    compiler: Callable[[Callable[..., Any]], Callable[..., Any]] | None
    merges: MergedLoRA | None = None
    weights: CastOnce | None = None
    projections: FusedProjections | None = None
    functions: dict[Callable[..., Any], Callable[..., Any]] = field(default_factory=dict)
    fingerprint: Fingerprint = field(default_factory=Fingerprint)
    built_for: tuple[Any, ...] = ()  # a kept runtime's device and settings (Editor._runtime)

    def compile(self, fn: Fn) -> Fn:
        if self.compiler is None:
            return fn
        if fn not in self.functions:
            self.functions[fn] = self.compiler(fn)
        return self.functions[fn]  # type: ignore[return-value]

    @contextlib.contextmanager
    def edit_weights(self) -> Iterator[None]:
        """The denoisers' weights as an edit runs them: LoRA adapters merged
        (:attr:`~steer.performance.Performance.merge_lora`), in the precision they run in
        (:attr:`~steer.performance.Performance.cast_weights`), then with their attention
        projections fused (:attr:`~steer.performance.Performance.fuse_projections`)."""
        with contextlib.ExitStack() as stack:
            for weights in (self.merges, self.weights, self.projections):
                if weights is not None:
                    stack.enter_context(weights.applied())
            yield

    def follow_weights(self) -> None:
        """Before each edit of a runtime kept between edits: where the denoisers' weights were
        changed in a way their version counters do not show since the last edit (a write
        through ``.data``; :class:`~steer.sources.Fingerprint`), make the merged, cast and fused
        copies again, in place at the addresses the compiled graphs read."""
        kept = [weights for weights in (self.merges, self.weights, self.projections) if weights is not None]
        params = unique(p for weights in kept for root in weights.modules for p in root.parameters())
        if kept and self.fingerprint.changed(params):
            for weights in kept:
                weights.refresh()

    def close(self) -> None:
        for predictor in self.predictors.values():
            predictor.close()


def prompt_list(prompts: Prompts, batch: int, role: str) -> list[str]:
    """One non-empty prompt per clip (a single string is repeated); a clear error otherwise."""
    if isinstance(prompts, (bytes, bytearray)) or not isinstance(prompts, (str, Sequence)):
        raise TypeError(f"the {role} prompt must be a string or a list of strings, got {type(prompts).__name__}")
    items = [prompts] * batch if isinstance(prompts, str) else list(prompts)
    if len(items) != batch:
        raise ValueError(f"got {len(items)} {role} prompts for {batch} clips")
    for prompt in items:
        if not isinstance(prompt, str):
            raise TypeError(f"the {role} prompts must be strings, got {type(prompt).__name__}")
        if not prompt.strip():
            raise ValueError(f"the {role} prompt is empty: describe the {role} audio in words")
    return items


def check_latent(latent: Tensor, backbone: Backbone) -> None:
    """Refuse a latent ``backbone`` cannot edit before the first step: not a real floating-point
    tensor ``(B, C, T)`` or ``(B, C, T, F)``, with other axes or channels than the backbone's denoiser
    takes (:attr:`~backbones.Backbone.latent_dims`, :attr:`~backbones.Backbone.latent_channels`),
    on another device than the denoiser (:attr:`~backbones.Backbone.device`; torch failed deep
    inside, "Tensor on device cpu is not on the expected device"), or holding NaN or infinite
    values (which the edit would carry to its end). The finiteness check reads one number from
    the device."""
    if not isinstance(latent, Tensor):
        raise TypeError(f"the latent must be a tensor (B, C, T) or (B, C, T, F), got {type(latent).__name__}")
    if not latent.is_floating_point():
        kind = "complex" if latent.is_complex() else "not floating point"
        raise TypeError(
            f"the latent is {kind} ({latent.dtype}): pass a real floating-point latent, e.g. from "
            "backbone.encode_audio"
        )
    if latent.dim() not in (3, 4):
        raise ValueError(
            f"the latent must be (B, C, T) or (B, C, T, F), got shape {tuple(latent.shape)}: a single "
            "clip needs its batch axis (latent[None])"
        )
    dims = backbone.latent_dims
    if dims is not None and latent.dim() != dims:
        wanted = "(B, C, T, F)" if dims == 4 else "(B, C, T)"
        raise ValueError(
            f"the latent has shape {tuple(latent.shape)}, but {type(backbone).__name__}'s denoiser "
            f"takes {dims}-D latents {wanted}: pass one from backbone.encode_audio"
            + (" (a single clip needs its batch axis, latent[None])" if latent.dim() < dims else "")
        )
    channels = backbone.latent_channels
    if channels is not None and latent.shape[1] != channels:
        raise ValueError(
            f"the latent of shape {tuple(latent.shape)} has {latent.shape[1]} channels (axis 1), but "
            f"{type(backbone).__name__}'s denoiser takes {channels}: pass (B, {channels}, ...), e.g. "
            "from backbone.encode_audio (a single clip needs its batch axis, latent[None])"
        )
    if latent.numel() == 0:
        empty = "no clip (batch axis 0)" if latent.shape[0] == 0 else "an empty axis"
        raise ValueError(
            f"the latent of shape {tuple(latent.shape)} has {empty}: pass at least one clip's latent, e.g. "
            "from backbone.encode_audio"
        )
    weights = next(backbone.denoiser.parameters(), None)  # a toy score function may have none
    if weights is not None and latent.device != weights.device:
        raise ValueError(
            f"the latent is on {latent.device}, but {type(backbone).__name__}'s denoiser is on "
            f"{backbone.device}: move it there, latent.to(backbone.device)"
        )
    if not torch.isfinite(latent).all():
        raise ValueError("the latent holds NaN or infinite values: pass a finite latent (the edit would keep them)")


def check_whole_number(name: str, value: int, low: int | None = None, high: int | None = None) -> None:
    """Refuse, by name, a count that is not a whole number in ``[low, high]`` (``None``: no bound
    on that side): ``True``, ``2.5``, ``4.0`` and ``torch.tensor(3)`` included, whose errors came
    from deep inside (slice indices, ``__round__``) or, for ``True``, none at all."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at most {high}" if low is None else f"at least {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bounds}, got {value}")


def check_seed(seed: int, name: str = "seed") -> None:
    """Refuse a seed that is not a 64-bit integer, by name (PyTorch's error was "Overflow when
    unpacking long long")."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not -(2**63) <= seed < 2**64:
        raise ValueError(f"{name} must be an integer from -2**63 to 2**64 - 1 (a 64-bit seed), got {seed!r}")


def check_callback(callback: object) -> None:
    """Refuse a ``callback`` that is neither ``None`` nor callable, before any step (``True``
    failed after the first step's work with "'bool' object is not callable")."""
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a function taking the step's state, or None, got {callback!r}")


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (checked by :func:`check_seed`), every one
    of its 64 bits counting.

    PyTorch takes a seed as its 64-bit two's complement, so ``-1`` and ``2**64 - 1`` (or
    ``-2**63`` and ``2**63``) are the same seed. CUDA's Philox generator is keyed by all 64 bits
    and is given the seed as it is. The CPU's Mersenne Twister reads only the low 32 bits (5 and
    ``2**32 + 5`` drew the same edit), so on the CPU a seed outside ``[0, 2**32)`` is replaced by
    a 32-bit hash of its 64 bits (:func:`_cpu_seed`); seeds inside keep their draws unchanged.
    """
    check_seed(seed)
    seed = int(seed) % 2**64
    if torch.device(device).type == "cpu":
        seed = _cpu_seed(seed)
    return torch.Generator(device=device).manual_seed(seed)


def _cpu_seed(seed: int) -> int:
    """A 64-bit ``seed`` as the 32 bits the CPU's Mersenne Twister reads: itself below ``2**32``,
    else the high half of SplitMix64's finaliser (https://prng.di.unimi.it/splitmix64.c), in
    which every bit of the seed moves about half of them (seeds ``2**32`` apart differ)."""
    if seed < 2**32:
        return seed
    mask = 2**64 - 1
    seed = ((seed ^ (seed >> 30)) * 0xBF58476D1CE4E5B9) & mask
    seed = ((seed ^ (seed >> 27)) * 0x94D049BB133111EB) & mask
    return (seed ^ (seed >> 31)) >> 32


class LatentEditor(ABC):
    """An editor of latents with the audio boundary around it.

    Subclasses set :attr:`backbone` and implement :meth:`edit_latent`; :meth:`edit` encodes the
    audio, edits the latent and decodes to the input's duration, the same for every method.
    """

    backbone: Backbone
    #: what is fixed once set when the editor is built, why (for the refusal), and the settings
    #: that may be set between edits instead
    _fixed: tuple[str, ...] = ()
    _fixed_because = "its models are made then"
    _settings: tuple[str, ...] = ()

    def __setattr__(self, name: str, value: object) -> None:
        if name in self._fixed and name in self.__dict__:
            kind = type(self).__name__
            raise AttributeError(
                f"{kind}.{name} is fixed when the editor is built ({self._fixed_because}): build a new {kind} "
                f"instead; only its settings ({', '.join(self._settings)}) may be set between edits"
            )
        super().__setattr__(name, value)

    @abstractmethod
    def edit_latent(
        self,
        latent: Tensor,
        *,
        source: Prompts,
        target: Prompts,
        seed: int = 0,
        callback: Callable[[Any], None] | None = None,
        progress: bool = False,
    ) -> EditResult:
        """Edit a latent ``(B, ...)``; ``audio`` of the result is left ``None``."""

    def edit(
        self,
        audio: Audio | str | os.PathLike,
        *,
        source: Prompts,
        target: Prompts,
        seed: int = 0,
        callback: Callable[[Any], None] | None = None,
        progress: bool = False,
    ) -> EditResult:
        """Edit a clip (or a batch of equal-length clips) from ``source`` towards ``target``.

        Args:
            audio: an :class:`Audio`, waveform ``(channels, samples)`` (one clip) or
                ``(B, channels, samples)``, or an audio file's path (read with :func:`load_audio`).
            source: the prompt describing the input (one, or one per clip).
            target: the prompt describing the wanted output.
            seed: seeds the method's randomness: the same seed gives the same edit.
            callback: called with the method's state after every step.
            progress: show a progress bar.

        Returns:
            the edited latent and its audio, ``(B, samples)`` or ``(B, channels, samples)`` as
            the backbone decodes, at the backbone's sample rate, of the input's duration.
        """
        if isinstance(audio, (str, os.PathLike)):
            audio = load_audio(audio)
        if not isinstance(audio, Audio):
            raise TypeError(f"edit takes an Audio or a file's path, got {type(audio).__name__}: pass "
                            "steer.Audio(waveform, sample_rate), or a latent to edit_latent")
        waveform = audio.waveform if audio.waveform.dim() == 3 else audio.waveform[None]
        latent = self.backbone.encode_audio(waveform, audio.sample_rate)
        result = self.edit_latent(
            latent, source=source, target=target, seed=seed, callback=callback, progress=progress
        )
        num_samples = round(audio.seconds * self.backbone.sample_rate)
        with torch.no_grad():
            result.audio = self.backbone.decode_audio(result.latent, num_samples)
        return result


class Editor(LatentEditor):
    """Optimise a latent with a weighted sum of score-distillation losses.

    Args:
        backbone: the diffusion model (the ``"base"`` model of every request).
        losses: the loss terms; their gradients (already weighted) are summed.
        steps: optimisation steps.
        lr: learning rate.
        optimizer: ``"sgd"`` or ``"adam"``.
        lr_step_size, lr_gamma: multiply the learning rate by ``lr_gamma`` every
            ``lr_step_size`` steps taken (StepLR; fp16 steps skipped for an overflow do not count).
        t_min, t_max: timesteps are drawn uniformly from the integers ``t_min … t_max``
            (inclusive, out of the backbone's training timesteps).
        performance: the execution path (:class:`~steer.performance.Performance`, or a
            preset's name: :meth:`~steer.performance.Performance.preset`): batched calls
            (default) or the authors' reference loop, precision, compilation, fused kernels.
            Every path applies the same gradient up to rounding; in half precision that rounding
            can outweigh the prompts' effect of a random model (tiny random AudioLDM/MusicLDM
            builds at guidance 30: gradient cosines of 0.05–0.4 with ``reference`` in one probe).

    The settings (:data:`SETTINGS`: ``steps``, ``lr``, ``optimizer``, ``lr_step_size``,
    ``lr_gamma``, ``t_min``, ``t_max``, ``performance``) may be set between edits; each edit
    checks them as the constructor does. The backbone and the losses are fixed when the editor is
    built (the requests, loss names and models of its edits are worked out from them then):
    setting them is an ``AttributeError``; build a new editor instead.

    A batch of clips is edited as each clip is alone with the same seed, up to rounding: every
    clip gets the timesteps and noise one clip would draw, and the library's losses give each
    clip the gradient it gets alone (batching is for speed only; fp16's loss scaling skips a step
    for all clips when one overflows).

    Example:
        >>> from backbones import load_backbone
        >>> from losses import DeltaDenoisingScore
        >>> backbone = load_backbone("tiny")  # random weights: a shape check, not an edit
        >>> editor = Editor(backbone, losses=[DeltaDenoisingScore(guidance_scale=30)], steps=2)
        >>> result = editor.edit_latent(torch.zeros(1, 8, 16, 16), source="a piano", target="a violin")
        >>> result.latent.shape, len(result.history)
        (torch.Size([1, 8, 16, 16]), 2)
    """

    #: what is fixed when the editor is built: recipes add what they work out from their concept
    _fixed: tuple[str, ...] = ("backbone", "losses", "requests", "feature_requests", "loss_names")
    _fixed_because = "its requests, loss names and models are worked out then"
    _settings = SETTINGS
    #: a recipe's keyword arguments that its losses and models are made from when it is built
    #: (not kept on the editor): setting one on the editor is refused, as it would change nothing
    #: (only on the class that declares them: a subclass of a recipe may store such a value)
    _built_from: tuple[str, ...] = ()

    def __init__(
        self,
        backbone: Backbone,
        *,
        losses: Sequence[ScoreLoss],
        steps: int = 400,
        lr: float = 0.02,
        optimizer: str = "sgd",
        lr_step_size: int = 20,
        lr_gamma: float = 0.9,
        t_min: int = 20,
        t_max: int = 980,
        performance: Performance | str = Performance(),
    ) -> None:
        if isinstance(losses, ScoreLoss):
            raise TypeError(f"losses must be a list of ScoreLoss objects: write losses=[{type(losses).__name__}(...)]")
        losses = () if losses is None else tuple(losses)  # a generator is read once
        if not losses:
            raise ValueError("an editor needs at least one loss")
        for loss in losses:
            if not isinstance(loss, ScoreLoss):
                raise TypeError(
                    f"losses must be ScoreLoss objects (losses.DeltaDenoisingScore(), ...), got {type(loss).__name__}"
                )
        sample_rate = getattr(backbone, "sample_rate", None)
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Integral) or sample_rate <= 0:
            raise ValueError(
                f"{type(backbone).__name__}.sample_rate must be a positive whole number of Hz, got "
                f"{sample_rate!r}: set it in the backbone class, as every Backbone subclass must"
            )
        self.backbone = backbone
        self.losses = losses
        self.steps = steps
        self.lr = lr
        self.optimizer = optimizer
        self.lr_step_size = lr_step_size
        self.lr_gamma = lr_gamma
        self.t_min = t_min
        self.t_max = t_max
        self.performance = performance  # a preset's name becomes its Performance
        self._check_settings()
        self.performance.check_weights(backbone.dtype)
        self._compiled: _Runtime | None = None
        self.requests = unique(r for loss in self.losses for r in loss.requests)
        self.feature_requests = unique(f for loss in self.losses for f in loss.feature_requests)
        names = [loss.name for loss in self.losses]
        if "total" in names:  # the history's sum of every loss: it overwrote that loss's values
            raise ValueError(
                f"the loss {type(self.losses[names.index('total')]).__name__} is named 'total', the name the "
                "history gives the sum of the losses: give it another name"
            )
        self.loss_names = [
            name if names.count(name) == 1 else f"{name}.{i}" for i, name in enumerate(names)
        ]
        _check_feature_requests(self.loss_names, self.losses)

    def __setattr__(self, name: str, value: object) -> None:
        if name in type(self).__dict__.get("_built_from", ()):  # a subclass may keep its own values
            kind = type(self).__name__
            raise AttributeError(
                f"{kind}'s {name} is used when the editor is built (its losses and models are made from it), so "
                f"setting it on the editor would change nothing: build a new {kind}(..., {name}=...); only its settings "
                f"({', '.join(SETTINGS)}) may be set between edits"
            )
        super().__setattr__(name, value)

    @property
    def performance(self) -> Performance:
        """The execution path; set it between edits to a :class:`~steer.performance.Performance`
        or a preset's name (:meth:`~steer.performance.Performance.preset`)."""
        return self._performance

    @performance.setter
    def performance(self, performance: Performance | str) -> None:
        if isinstance(performance, str):
            performance = Performance.preset(performance)
        elif not isinstance(performance, Performance):
            raise TypeError(
                f"performance must be a Performance or a preset's name ('bf16', ...), got {type(performance).__name__}"
            )
        self._performance = performance

    def _check_settings(self) -> None:
        """Refuse, by name, settings (:data:`SETTINGS`) an edit cannot run with: when the editor
        is built, and before each edit, as they may be set in between."""
        steps, lr, lr_step_size, lr_gamma, t_min, t_max = (
            self.steps, self.lr, self.lr_step_size, self.lr_gamma, self.t_min, self.t_max
        )
        for name, value in (("steps", steps), ("t_min", t_min), ("t_max", t_max), ("lr_step_size", lr_step_size)):
            check_whole_number(name, value)
        if not 0 <= steps <= sys.maxsize:
            raise ValueError(f"steps must be between 0 and {sys.maxsize} (sys.maxsize), got {steps}")
        for name, value in (("lr", lr), ("lr_gamma", lr_gamma)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
        if not 0 < lr < math.inf:
            raise ValueError(f"the learning rate must be a positive finite number, got {lr}")
        if lr_step_size < 1:
            raise ValueError(f"lr_step_size must be at least 1 step, got {lr_step_size}")
        if not 0 < lr_gamma < math.inf:
            raise ValueError(f"lr_gamma must be a positive finite number, got {lr_gamma}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}: use 'sgd' or 'adam'")
        timesteps = self.backbone.num_train_timesteps
        if not 0 <= t_min <= t_max < timesteps:
            raise ValueError(f"need 0 <= t_min <= t_max < {timesteps}, got {t_min}, {t_max}")

    def __enter__(self) -> Editor:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _runtime(self, models: dict[str, Backbone], device: torch.device) -> Iterator[_Runtime]:
        """Each model's :class:`~steer.predictions.Predictor` (observing the modules its feature
        requests select) and the losses' compiled maths.

        Eager ones last one edit (the hooks go after it). Compiled ones last until
        :meth:`close`: their graphs hold the hooks and are reused by every edit, until an edit
        on another device or with another :attr:`performance` (``step_graph`` aside, where it
        changes no compile setting) builds new ones.
        """

        def build() -> _Runtime:
            features = {name: [f for f in self.feature_requests if f.request.model == name] for name in models}
            compiler = self.performance.compiler(device, checkpointing=self._checkpointing(models))
            checkpointing = self.performance.checkpointing
            with contextlib.ExitStack() as made:  # a predictor that fails closes those made before it
                predictors = {}
                for name, model in models.items():
                    predictors[name] = Predictor(model, features[name], compiler, checkpointing=checkpointing)
                    made.callback(predictors[name].close)
                made.pop_all()
            denoisers = [model.denoiser for model in models.values()]
            adapters = [name for model in models.values() if (name := getattr(model, "adapter_name", None))]
            if self.performance.merge_lora and not adapters:
                warnings.warn(
                    "merge_lora merges a LoRA concept's adapter, and this editor has none (no concept, "
                    "or one learnt by textual inversion or DreamBooth): it runs as it would without",
                    UserWarning,
                    stacklevel=5,
                )
            casts = self.performance.weight_casts(denoisers)
            return _Runtime(
                device, predictors, compiler, self.performance.lora_merges(denoisers, adapters), casts,
                self.performance.projection_fusion(denoisers, casts),
            )

        if not self.performance.compile:
            self._drop_compiled()  # compiled by an earlier performance: its hooks would stay
            runtime = build()
            try:
                yield runtime
            finally:
                runtime.close()
            return
        # what the kept runtime is built from: every setting but step_graph, which changes only
        # whether the compiled calls run as CUDA graphs (cuda_graphs)
        built_for = (
            device,
            replace(self.performance, step_graph=False),
            self.performance.cuda_graphs(device),
            self._checkpointing(models),
        )
        if self._compiled is None or self._compiled.built_for != built_for:
            self._drop_compiled()
            self._compiled = build()
            self._compiled.built_for = built_for
        self._compiled.follow_weights()
        yield self._compiled

    def _checkpointing(self, models: dict[str, Backbone]) -> bool:
        """Whether the compiled calls run checkpointed blocks: asked by :attr:`performance`, or a
        model's checkpointing is on already (set by the user, or by another open editor)."""
        return self.performance.checkpointing or any(model.gradient_checkpointing for model in models.values())

    def close(self) -> None:
        """Remove the hooks a compiled editor keeps between edits and release its compiled
        functions (dynamo's own caches stay until ``torch._dynamo.reset()``); recipes release
        more; idempotent."""
        self._drop_compiled()

    def _drop_compiled(self) -> None:
        if self._compiled is not None:
            self._compiled.close()
            self._compiled = None

    def models(self) -> dict[str, Backbone]:
        """Backbone by model name used in requests."""
        return {"base": self.backbone}

    def prompt_roles(self, source: list[str], target: list[str]) -> dict[str, list[str]]:
        """Prompts by role (one per clip) that requests may name; recipes add roles."""
        return {"source": source, "target": target}

    def edit_latent(
        self,
        latent: Tensor,
        *,
        source: Prompts,
        target: Prompts,
        seed: int = 0,
        callback: Callable[[EditState], None] | None = None,
        progress: bool = False,
    ) -> EditResult:
        """Run the loop on a latent ``(B, ...)``; ``callback`` gets an :class:`EditState` per step.

        ``audio`` of the result is left ``None`` (:meth:`edit` fills it).
        """
        self._check_settings()
        check_latent(latent, self.backbone)
        check_callback(callback)
        # the loop backpropagates (PCon through the denoiser), also when called under no_grad or
        # inference_mode; the prompts and the latent's copy are made here as normal tensors (the
        # denoiser's weights must have been made so too: _check_differentiable_weights)
        with torch.inference_mode(False), torch.enable_grad():
            batch = latent.shape[0]
            texts = self.prompt_roles(
                prompt_list(source, batch, "source"), prompt_list(target, batch, "target")
            )
            models = self.models()
            from .concepts.personalized import remove_collected_adapters  # steer.concepts imports this module

            for model in models.values():  # those of personalised models collected since (unclosed)
                remove_collected_adapters(model.denoiser)
            self._check_requests(models, texts)
            self._check_differentiable_weights(models)
            for name, model in models.items():
                self.performance.check_weights(model.dtype, name)
            self.performance.check(latent.device)  # before any prompt is encoded
            prompts = {
                model: {
                    role: self.performance.conditioning(models[model].encode_prompt(texts[role]))
                    for role in unique(r.prompt for r in self.requests if r.model == model)
                }
                for model in unique(r.model for r in self.requests)
            }
            self._warn_if_no_delta(texts, prompts)
            source_latent = latent.detach().to(torch.float32, copy=True)
            x = source_latent.clone().requires_grad_(True)
            with self._runtime(models, x.device) as runtime, runtime.edit_weights():
                return self._loop(x, source_latent, prompts, models, runtime, seed, callback, progress)

    def _check_requests(self, models: dict[str, Backbone], roles: dict[str, list[str]]) -> None:
        """Refuse a loss asking for a model or a prompt role this editor does not give (see
        :meth:`models` and :meth:`prompt_roles`), before the first step."""
        fix = "or use SteerMusicPlus, which gives what its personalised losses ask for"
        for loss, name in zip(self.losses, self.loss_names):
            for request in (*loss.requests, *(f.request for f in loss.feature_requests)):
                if request.model not in models:
                    raise ValueError(
                        f"the loss {name} asks for the model {request.model!r}, which {type(self).__name__} "
                        f"does not hold (it holds {', '.join(map(repr, models))}): override "
                        f"Editor.models() to add it, {fix}"
                    )
                if request.prompt not in roles:
                    raise ValueError(
                        f"the loss {name} asks for the prompt role {request.prompt!r}, which "
                        f"{type(self).__name__} does not give (it gives {', '.join(map(repr, roles))}): "
                        f"override Editor.prompt_roles() to add it, {fix}"
                    )

    def _check_differentiable_weights(self, models: dict[str, Backbone]) -> None:
        """Refuse, before the first step, a loss backpropagating through a denoiser (a feature
        request with ``grad=True``: PCon's) whose weights are inference tensors, made under
        ``torch.inference_mode()``: autograd cannot save them for the backward, which failed at
        the first step with "Inference tensors cannot be saved for backward"."""
        for loss, name in zip(self.losses, self.loss_names):
            for model in unique(f.request.model for f in loss.feature_requests if f.grad):
                made = next((n for n, p in models[model].denoiser.named_parameters() if p.is_inference()), None)
                if made is not None:
                    raise ValueError(
                        f"the loss {name} backpropagates through the {model!r} model's denoiser, whose weights "
                        f"({made}, ...) were made under torch.inference_mode(), and autograd cannot save them: "
                        "load the backbone and build the editor outside torch.inference_mode() "
                        "(torch.no_grad() is fine)"
                    )

    def _warn_if_no_delta(self, roles: dict[str, list[str]], prompts: dict[str, dict[str, Conditioning]]) -> None:
        """Warn, before the steps are spent, when every loss is a delta score between one model's
        predictions (DDS, as in SteerMusic) and a clip's source and target prompts are the same as
        the model reads them (``prompts``: the encodings by model and role, a row per clip; "a
        piano" and "A Piano!" are one prompt to a model that reads neither case nor punctuation):
        x starts at the source latent, so the clip's delta is zero and it never moves. Each clip is
        checked on its own, so a batch warns as the clip alone would. SteerMusic+ compares two
        models, whose delta on one prompt is not zero."""

        def same(a: Conditioning, b: Conditioning, row: int) -> bool:  # cond and uncond have the same fields
            return a.cond.keys() == b.cond.keys() and all(
                _same_row(x[k], y[k], row) for x, y in ((a.cond, b.cond), (a.uncond, b.uncond)) for k in x
            )

        def no_delta(loss: ScoreLoss, row: int) -> bool:
            if not isinstance(loss, DeltaDenoisingScore):
                return False
            target, source = loss.target, loss.source
            same_call = (target.model, target.guidance_scale) == (source.model, source.guidance_scale)
            return same_call and same(prompts[target.model][target.prompt], prompts[source.model][source.prompt], row)

        batch = len(next(iter(roles.values())))
        rows = [row for row in range(batch) if all(no_delta(loss, row) for loss in self.losses)]
        if not rows:
            return
        why = ""
        if any(roles[loss.target.prompt][row] != roles[loss.source.prompt][row] for loss in self.losses for row in rows):
            why = (
                " (written otherwise, they differ only in what the model does not read: case or "
                "punctuation, or words past those it reads)"
            )
        which, clip = ("", "the clip") if len(rows) == batch else (
            f" for clip{'s' * (len(rows) > 1)} {', '.join(map(str, rows))} of the batch of {batch}",
            "those clips" if len(rows) > 1 else "that clip",
        )
        warnings.warn(
            f"the source and target prompts are the same{which}, so the delta score between them is zero "
            f"and the {self.steps} step{'s' * (self.steps != 1)} would leave {clip} as it is: describe the wanted result "
            f"in the target prompt{why}",
            UserWarning,
            stacklevel=3,
        )

    def _loop(
        self,
        x: Tensor,
        source_latent: Tensor,
        prompts: dict[str, dict[str, Conditioning]],
        models: dict[str, Backbone],
        runtime: _Runtime,
        seed: int,
        callback: Callable[[EditState], None] | None,
        progress: bool,
    ) -> EditResult:
        """The steps on x ``(B, ...)``, initialised at the source latent."""
        backbone, performance, batch = self.backbone, self.performance, x.shape[0]
        graphed = performance.step_graphs(x.device)
        # a step graph reads the learning rate from the device, where it is set before each step
        optimizer = self._optimizer(x, torch.tensor(self.lr, device=x.device) if graphed else self.lr)
        scaler = performance.grad_scaler(x.device)
        scale = scaler.get_scale() if scaler is not None else None
        taken_steps = skipped = 0
        generator = seeded_generator(seed, x.device)
        history: list[dict[str, Tensor]] = []
        # steps with a non-finite prediction, counted on the device (the gradients zero its entries)
        nonfinite_steps = torch.zeros((), device=x.device)
        x.grad = torch.zeros_like(x)  # the score gradients below are added into it

        def step(index: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
            """One step on x: its (t, ε) and the losses' values."""
            # drawn for one clip and given to each: a clip of a batch is edited as it is alone
            t = torch.randint(self.t_min, self.t_max + 1, (1,), generator=generator, device=x.device)
            t = t.repeat(batch)
            noise = torch.randn((1, *x.shape[1:]), generator=generator, device=x.device)
            noise = noise.expand(x.shape).contiguous()
            noisy_latent, noisy_source = self._noise(x, source_latent, noise, t)
            with performance.autocast(x.device), performance.guarding(index):
                predictions, features = evaluate_requests(
                    self.requests,
                    models=models,
                    latents={"edit": noisy_latent, "source": noisy_source},
                    prompts=prompts,
                    t=t,
                    features=self.feature_requests,
                    batched=performance.batched,
                    predictors=runtime.predictors,
                )
            _check_predictions(predictions, models, x)
            if predictions:  # compiled with the losses' maths: 2 eager ops a step where it was 9
                nonfinite_steps.add_(runtime.compile(_any_nonfinite)(*predictions.values()))
            context = LossContext(
                t=t,
                alpha_bar=backbone.alphas_cumprod[t],
                noise=noise,
                latent=x,
                noisy_latent=noisy_latent,
                predictions=predictions,
                features=features,
                generator=generator,
                compile=runtime.compile,
            )
            outputs = [loss(_declared(context, loss, name)) for loss, name in zip(self.losses, self.loss_names)]
            _check_outputs(self.loss_names, outputs, x)

            optimizer.zero_grad(set_to_none=False)
            differentiable = [o.loss for o in outputs if o.loss is not None]
            scaled = scaler is not None and bool(differentiable)
            if differentiable:
                loss = torch.stack(differentiable).sum()
                # into x only: a denoiser whose weights require grad (PCon backpropagates through
                # one) is left without .grad
                (scaler.scale(loss) if scaled else loss).backward(inputs=[x])
                if scaled:
                    scaler.unscale_(optimizer)  # x.grad back to the loss's scale; overflow noted
            # Score-distillation gradients skip the denoiser's Jacobian: adding them to x.grad is
            # what backpropagating the usual surrogate (grad.detach() * x).sum() would do.
            for o in outputs:
                if o.gradient is not None:
                    x.grad += o.gradient
            if scaled:
                scaler.step(optimizer)  # not taken if the scaled backward overflowed in fp16
                scaler.update()
            else:
                optimizer.step()
            # detached: a custom loss's value still holding its graph kept each step's alive
            values = dict(zip(self.loss_names, (o.value.detach() for o in outputs)))
            values["total"] = torch.stack(list(values.values())).sum()
            return t, noise, values

        run = StepGraph(step, CUDAGraph(x.device, [generator])) if graphed else step
        bar = tqdm(range(self.steps), desc="editing", disable=not progress, leave=False)
        for index in bar:
            lr = self._set_lr(optimizer, taken_steps)
            t, noise, values = run(index)
            taken = True
            if scaler is not None:  # the scale halves exactly when a scaled step was not taken
                scale, previous = scaler.get_scale(), scale
                taken = scale >= previous
            skipped += not taken
            taken_steps += taken
            history.append(values)
            if progress and (index % 10 == 0 or index == self.steps - 1):
                bar.set_postfix(loss=f"{values['total'].item():.4g}")
            if callback is not None:
                callback(
                    EditState(
                        step=index,
                        t=t,
                        noise=noise,
                        latent=x.detach().clone(),
                        gradient=x.grad.detach().clone(),
                        losses=dict(values),  # a copy: a callback's changes stay out of the history
                        lr=lr,
                    )
                )
        bar.close()
        numbers, nonfinite, bad_steps = _read(history, x, nonfinite_steps)
        if bad_steps and not nonfinite:  # a non-finite latent makes its predictions so: warned of below
            left = "the clip is returned unedited" if bad_steps == self.steps else "the edit went less far than asked"
            warnings.warn(
                f"{bad_steps} of the {self.steps} steps had noise predictions holding NaN or infinite values, "
                f"whose entries the score gradients set to zero ({left} there). The model's weights or the "
                "source are one cause, fp16 overflow another: edit in bf16 or float32",
                RuntimeWarning,
                stacklevel=3,
            )
        if nonfinite:
            cause = (
                "Compiled code the C++ compiler got wrong is one cause (steer.toolchain checks for a "
                "known one); edit it again with Performance(compile_backend='aot_eager'), or without "
                "compile, to tell"
                if performance.compile
                else "The edit diverged: edit it again with a lower lr or guidance_scale"
            )
            warnings.warn(
                f"the edited latent holds non-finite values after {self.steps} step{'s' * (self.steps != 1)} on "
                f"{self.performance!r}, so its audio is noise. {cause}",
                RuntimeWarning,
                stacklevel=3,
            )
        if skipped and 2 * skipped >= self.steps:
            left = "the clip is returned unedited" if skipped == self.steps else "the edit went less far than asked"
            warnings.warn(
                f"{skipped} of the {self.steps} steps were skipped, their fp16 loss-scaled gradients overflowing "
                f"(the scaler halves its scale each time): {left}. Edit in bf16, or with more steps",
                RuntimeWarning,
                stacklevel=3,
            )
        return EditResult(
            latent=x.detach(),
            audio=None,
            sample_rate=backbone.sample_rate,
            history=numbers,
            skipped_steps=skipped,
        )

    def _set_lr(self, optimizer: torch.optim.Optimizer, taken_steps: int) -> float:
        """Set the learning rate of the step after ``taken_steps`` steps taken (``lr`` times
        ``lr_gamma`` every ``lr_step_size`` of them, as ``torch.optim.lr_scheduler.StepLR``) and
        return it; a tensor learning rate is filled in place, where a step graph reads it."""
        lr = self.lr * self.lr_gamma ** (taken_steps // self.lr_step_size)
        group = optimizer.param_groups[0]
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
        return lr

    def _noise(self, x: Tensor, source: Tensor, noise: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """x_t and x_src_t with the same (t, ε): one fused kernel where it runs, else add_noise twice.

        The kernel computes the base class's formula, so a backbone that overrides ``add_noise``
        keeps its own.
        """
        backbone = self.backbone
        if (
            self.performance.fused
            and triton_available(x.device)
            and type(backbone).add_noise is Backbone.add_noise
        ):
            return noise_pair(x, source, noise, backbone.alphas_cumprod[t])
        return backbone.add_noise(x, noise, t), backbone.add_noise(source, noise, t)

    def _optimizer(self, x: Tensor, lr: float | Tensor) -> torch.optim.Optimizer:
        # fused=True: one kernel for the whole update (CPU and CUDA support it for SGD and Adam);
        # a step graph's too, as the unfused updates read a tensor learning rate on the host
        fused = self.performance.fused or isinstance(lr, Tensor) or None
        if self.optimizer == "adam":
            return torch.optim.Adam([x], lr=lr, fused=fused, capturable=isinstance(lr, Tensor))
        return torch.optim.SGD([x], lr=lr, fused=fused)


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Declared(Mapping[K, V], Generic[K, V]):
    """The entries of ``values`` a loss declared (``keys``), the mapping it reads them from; any
    other key is a ``KeyError`` naming the loss and what it declared (a bare ``KeyError:
    NoiseRequest(...)`` named neither, or the read worked only while another loss declared it)."""

    def __init__(self, values: Mapping[K, V], keys: tuple[K, ...], loss: str, what: str, attribute: str) -> None:
        self._values, self._keys = values, keys
        self._loss, self._what, self._attribute = loss, what, attribute

    def __getitem__(self, key: K) -> V:
        if key not in self._keys:
            declared = ", ".join(map(str, self._keys)) or "none"
            raise KeyError(
                f"the loss {self._loss} reads {self._what} {key}, which is not among its {self._attribute} "
                f"({declared}): add it to {self._loss}'s {self._attribute}"
            )
        return self._values[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _declared(context: LossContext, loss: ScoreLoss, name: str) -> LossContext:
    """``context`` as the loss ``name`` sees it: the predictions and features it declared."""
    return replace(
        context,
        predictions=_Declared(context.predictions, loss.requests, name, "the prediction", "requests"),
        features=_Declared(context.features, loss.feature_requests, name, "the features of", "feature_requests"),
    )


def _check_feature_requests(names: list[str], losses: list[ScoreLoss]) -> None:
    """Refuse a loss reading features from a prediction it does not request itself, when the
    editor is made: it failed at the first step ("features requested from a prediction nobody
    requested"), or worked only while another loss happened to request the prediction."""
    for name, loss in zip(names, losses):
        for feature in loss.feature_requests:
            if feature.request not in loss.requests:
                raise ValueError(
                    f"the loss {name} reads features from {feature.request}, which is not among its "
                    f"requests: add it to {name}'s requests"
                )


def _any_nonfinite(*predictions: Tensor) -> Tensor:
    """Whether any entry of the predictions is NaN or infinite, ``()`` bool."""
    return torch.stack([~torch.isfinite(p).all() for p in predictions]).any()


def _same_row(a: Tensor, b: Tensor, row: int) -> bool:
    """Whether row ``row`` of two conditioning fields ``(B, ...)`` is one input to the denoiser:
    equal once both are zero-padded along dim 1 to the longer, as a batch pads its rows."""
    a, b = a[row : row + 1], b[row : row + 1]
    if a.dim() >= 2 and a.shape[1] != b.shape[1]:
        length = max(a.shape[1], b.shape[1])
        a, b = pad_to(a, length), pad_to(b, length)
    return torch.equal(a, b)


def _check_predictions(predictions: dict[NoiseRequest, Tensor], models: dict[str, Backbone], x: Tensor) -> None:
    """Refuse a noise prediction not shaped like the latent (metadata only: no device sync)."""
    for request, prediction in predictions.items():
        if prediction.shape != x.shape:
            raise ValueError(
                f"{type(models[request.model]).__name__}.predict_noise (model {request.model!r}) returned "
                f"a prediction of shape {tuple(prediction.shape)} for a latent of shape {tuple(x.shape)}: "
                "it must return ε̂ shaped like x_t"
            )


def _check_outputs(names: list[str], outputs: list[LossOutput], x: Tensor) -> None:
    """Refuse a loss output the step cannot apply as :class:`~losses.LossOutput` documents it
    (metadata only: no device sync): a value or loss that is not a scalar tensor, a loss with no
    graph back to the latent (autograd's "element 0 of tensors does not require grad" named no
    loss), a gradient not shaped like the latent ``x`` (it would be broadcast, one clip's to the
    whole batch)."""
    for name, output in zip(names, outputs):
        if not isinstance(output, LossOutput):
            raise TypeError(f"the loss {name} returned a {type(output).__name__}: return a losses.LossOutput")
        if not isinstance(output.value, Tensor) or output.value.dim() != 0:
            what = (
                f"of shape {tuple(output.value.shape)}"
                if isinstance(output.value, Tensor)
                else f"that is a {type(output.value).__name__}"
            )
            raise ValueError(
                f"the loss {name} returned a value {what}: LossOutput.value must be a detached "
                "scalar tensor (the mean over the clips, say)"
            )
        if output.loss is not None and (not isinstance(output.loss, Tensor) or output.loss.dim() != 0):
            raise ValueError(
                f"the loss {name} returned a differentiable loss that is not a scalar tensor: LossOutput.loss "
                "must be the sum of the clips' terms"
            )
        if output.loss is not None and not output.loss.requires_grad:
            raise ValueError(
                f"the loss {name} returned a LossOutput.loss with no path back to the latent (it does not "
                "require grad): compute it from context.latent, context.noisy_latent or features requested "
                "with grad=True (the predictions carry no gradient), or return LossOutput.gradient instead"
            )
        if output.gradient is not None and not (
            isinstance(output.gradient, Tensor) and output.gradient.is_floating_point()
        ):
            what = output.gradient.dtype if isinstance(output.gradient, Tensor) else type(output.gradient).__name__
            raise TypeError(
                f"the loss {name} returned a gradient of {what}: LossOutput.gradient must be a real floating-point "
                "tensor shaped like the latent"
            )
        if output.gradient is not None and output.gradient.shape != x.shape:
            raise ValueError(
                f"the loss {name} returned a gradient of shape {tuple(output.gradient.shape)} for a latent "
                f"of shape {tuple(x.shape)}: LossOutput.gradient must be shaped like the latent"
            )


def _read(
    history: list[dict[str, Tensor]], latent: Tensor, nonfinite_steps: Tensor
) -> tuple[list[dict[str, float]], bool, int]:
    """Each step's loss values as numbers, whether any of ``latent``'s values is not finite, and
    ``nonfinite_steps`` (a count, ``()``), read from the device in one copy: reading them one by
    one waited for the device once per value (4 a step for SteerMusic+, 1 600 an edit)."""
    names = list(history[0]) if history else []
    values = [step[name] for step in history for name in names]
    nonfinite = (~torch.isfinite(latent)).any().to(torch.float32)
    # stack promotes: a count of 401 steps stays whole beside bf16 values
    flat = torch.stack([*values, nonfinite, nonfinite_steps.to(torch.float32)]).tolist()
    bad_steps = round(flat.pop())
    found = bool(flat.pop())
    rows = [dict(zip(names, flat[i * len(names) : (i + 1) * len(names)])) for i in range(len(history))]
    return rows, found, bad_steps
