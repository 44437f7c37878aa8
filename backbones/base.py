"""The one interface every latent audio diffusion backbone answers, in the variance-preserving view.

Losses and editors only ever call :meth:`Backbone.predict_noise` and read the schedule
(:attr:`Backbone.alphas_cumprod`, :meth:`Backbone.add_noise`), so a backbone with a v- or
EDM-parametrised model converts to ε-prediction inside its adapter, and a toy score function with
a closed-form ε drops in for tests (the k-diffusion idea of one wrapped call signature).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import einops
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from .adapter_state import State, adapter_state, is_adapter_layer, set_adapter_state
from .conditioning import Conditioning

#: The self-attention (``attn1``) modules of a diffusers U-Net's up blocks.
UP_BLOCK_SELF_ATTENTION = r"^up_blocks\..*\.attn1$"
#: The stages of a diffusers U-Net in the order its forward pass runs them (it registers the mid
#: block after the up blocks).
UNET_STAGES = ("down_blocks.", "mid_block.", "up_blocks.")


def unet_self_attention(unet: nn.Module) -> dict[str, nn.Module]:
    """Every ``attn1`` of a diffusers U-Net by qualified name, in forward order: down blocks, mid
    block, up blocks (:data:`UNET_STAGES`), each block's in registration order."""
    modules = {n: m for n, m in unet.named_modules() if n.endswith(".attn1")}

    def stage(name: str) -> int:
        return next((i for i, s in enumerate(UNET_STAGES) if name.startswith(s)), len(UNET_STAGES))

    return dict(sorted(modules.items(), key=lambda item: stage(item[0])))  # stable: keeps each stage's order


def checkpoint_call(module: nn.Module, *args: object, **kwargs: object) -> object:
    """``module(*args, **kwargs)`` under a non-reentrant ``torch.utils.checkpoint``, recomputed
    with the adapter state the forward ran with.

    A LoRA concept shares the base denoiser and switches its adapter on only during ε′'s calls,
    so by the backward pass the adapter is off again: the recomputation would run the base
    model. Run eagerly, the checkpointed function reads each peft layer's switches
    (``_active_adapter``, ``_disable_adapters``) at the forward and sets them again around the
    recomputation.

    Traced by ``torch.compile``, the checkpoint becomes a region of the compiled graph that the
    compiled backward pass recomputes, with the adapter state of the trace: no switching is
    needed. Hooks inside a region (a :class:`hooks.FeatureTap` recording PCon's features) are
    traced when dynamo's ``skip_fwd_side_effects_in_bwd_under_checkpoint`` is on (the compiled
    editors switch it on), but not inside nested regions: when traced, a module that checkpoints
    its own blocks (diffusers' transformers do) is called plainly, and its blocks are the
    regions. Eagerly the checkpoints nest, which keeps less (real-size UNet, CPU proxy: a
    SteerMusic+ step rose by 304 MiB nested, by 442 MiB with only the inner regions).

    A traced region keeps the outputs of the ops that may draw random numbers
    (:func:`keep_random`) and recomputes the rest. Run eagerly while a CUDA graph records
    (``Performance(step_graph=True)``), the recomputation does not restore the generators'
    states: they cannot be read during a capture, and a denoiser in eval mode draws nothing.
    """
    compiling = torch.compiler.is_compiling()
    if compiling and _checkpoints_inside(module):
        return module(*args, **kwargs)
    forward: list[tuple[nn.Module, State]] | None = None  # each peft layer and its state at the forward

    def run(*inputs: object, **options: object) -> object:
        nonlocal forward
        if torch.compiler.is_compiling():  # traced: the graph keeps its trace's adapter state
            return module(*inputs, **options)
        if forward is None:
            forward = [(m, adapter_state(m)) for m in module.modules() if is_adapter_layer(m)]
            return module(*inputs, **options)
        now = [(m, adapter_state(m)) for m, _ in forward]
        try:
            for m, state in forward:
                set_adapter_state(m, *state)
            return module(*inputs, **options)
        finally:
            for m, state in now:
                set_adapter_state(m, *state)

    if compiling:
        options: dict[str, object] = {"context_fn": KEEP_RANDOM}
    else:  # a generator's state cannot be read while a CUDA graph records (a step graph)
        options = {"preserve_rng_state": not _capturing()}
    return checkpoint(run, *args, use_reentrant=False, **options, **kwargs)


@contextmanager
def modes_kept(*modules: nn.Module) -> Iterator[None]:
    """Give every submodule of ``modules`` its train/eval mode and every parameter its
    ``requires_grad`` back on exit: for building a view (an adapter over shared modules,
    which sets them to eval and frozen) without changing the modules its user holds."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    grads = [(p, p.requires_grad) for module in modules for p in module.parameters()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad in grads:
            p.requires_grad_(requires_grad)


def _capturing() -> bool:
    """Whether the current CUDA stream records a CUDA graph."""
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def keep_random(ctx: object, op: object, *args: object, **kwargs: object) -> CheckpointPolicy:
    """The selective-checkpoint policy of traced regions: keep the outputs of the ops torch tags
    ``nondeterministic_seeded`` (those that may draw random numbers: attention, which can drop
    out, among them), recompute the others.

    A recomputed random op must draw the numbers its forward drew, so AOTAutograd wraps each in
    ops that save and restore a generator's state: ``run_and_save_rng_state`` and
    ``run_with_rng_state``, which CUDA graphs cannot capture (a CUDA-graph backend then runs the
    whole graph and its backward kernel by kernel), or on CUDA, with torch's graph-safe RNG
    functionalization (its default), a generator state per op that the graphs take as inputs
    and every replay sets. Kept, they are not recomputed: the graphs hold no generator state,
    and the backward pass does not run attention's forward again (a SteerMusic+ ε′ call on the
    real-size AudioLDM2 UNet: 96 attention calls, 47.9 of its 341 GFLOP), for the memory of
    their outputs (``(B, heads, tokens, head_dim)`` and a log-sum-exp each).
    """
    if torch.Tag.nondeterministic_seeded in getattr(op, "tags", ()):
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


#: ``torch.utils.checkpoint``'s ``context_fn`` for :func:`keep_random`; its ``cache_hash``
#: names it to AOTAutograd's cache (change it with the policy)
KEEP_RANDOM = functools.partial(create_selective_checkpoint_contexts, keep_random)
KEEP_RANDOM.cache_hash = "steer.keep_random.v1"  # type: ignore[attr-defined]


def _checkpoints_inside(module: nn.Module) -> bool:
    """Whether ``module`` or a module inside it checkpoints its own blocks."""
    return any(getattr(m, "gradient_checkpointing", False) for m in module.modules())


class Backbone(ABC):
    """A text-conditioned latent audio diffusion model behind one call signature.

    Subclasses set :attr:`family` (a short name used in saved concept files) and
    :attr:`sample_rate`, and implement the abstract methods. Latents are ``(B, C, T, F)`` or
    ``(B, C, T)`` tensors with time on axis 2; all public methods take and return float32
    latents whatever the model's own dtype.
    """

    family: str
    sample_rate: int
    #: Audio channels :meth:`decode_audio` returns (1: mono).
    channels: int = 1
    #: Axes of the latents the denoiser takes, batch included: 4 for ``(B, C, T, F)`` (a U-Net
    #: over mel latents), 3 for ``(B, C, T)`` (a 1-D latent); ``None`` where unknown. Editors
    #: check a latent against it before the first step.
    latent_dims: int | None = None
    #: Regular expression over :meth:`self_attention_modules` naming the decoder side of the
    #: network, where feature losses (PCon) read by default: a U-Net's up blocks (the authors'
    #: choice on AudioLDM2); a DiT names its later blocks.
    decoder_self_attention: str = UP_BLOCK_SELF_ATTENTION
    #: Bounds of clean latents where the representation has them (samplers clamp x̂_0 to them);
    #: ``None`` for learned latent spaces without hard bounds.
    latent_range: tuple[float, float] | None = None
    #: The Hub repo id or folder the model was loaded from; ``None`` when it was built in memory
    #: (``from_pipe``, the tiny builds). Concept files record it as the base model.
    name_or_path: str | None = None

    # -- schedule ---------------------------------------------------------------------------
    @property
    @abstractmethod
    def alphas_cumprod(self) -> Tensor:
        """ᾱ_t for t = 0 … T−1, float32, shape ``(T,)``, on :attr:`device`."""

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    @property
    def final_alpha_cumprod(self) -> Tensor:
        """ᾱ of the clean end of the samplers' paths (:mod:`steer.sampling`: where sampling lands
        and inversion starts), a 0-d float32 tensor on :attr:`device`: ᾱ_0, the level of
        timestep 0, as diffusers' ``DDIMScheduler`` with ``set_alpha_to_one=False`` (AudioLDM2's
        configuration, where ᾱ_0 ≈ 0.9985); a backbone whose timestep 0 is itself noisy gives 1."""
        return self.alphas_cumprod[0]

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε (DDPM, eq. 4), with ``t`` of shape ``(B,)``."""
        alpha_bar = self.alphas_cumprod[t].view(-1, *([1] * (x0.dim() - 1)))
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    # -- model ----------------------------------------------------------------------------------
    @property
    @abstractmethod
    def denoiser(self) -> nn.Module:
        """The network whose forward hooks expose self-attention features."""

    @property
    def device(self) -> torch.device:
        """The denoiser's device, read from its first parameter; the CPU for a denoiser without
        parameters (a toy score function)."""
        first = next(self.denoiser.parameters(), None)
        return torch.device("cpu") if first is None else first.device

    @property
    def dtype(self) -> torch.dtype:
        """The denoiser's dtype, read from its first parameter: O(1), unlike diffusers'
        ``ModelMixin.dtype``, which walks every module (4.4 ms per call on the real-size
        AudioLDM2 UNet, 24 ms with a LoRA concept); float32 for a denoiser without parameters
        (a toy score function). Not meant for diffusers' layerwise casting, where weights are
        stored in another dtype than they compute in."""
        first = next(self.denoiser.parameters(), None)
        return torch.float32 if first is None else first.dtype

    @property
    def latent_channels(self) -> int | None:
        """Channels (axis 1) of the latents the denoiser takes, where the backbone knows them
        (by default a diffusers denoiser's ``config.in_channels``), else ``None``; editors check
        a latent against it before the first step."""
        channels = getattr(getattr(self.denoiser, "config", None), "in_channels", None)
        return channels if isinstance(channels, int) else None

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether denoiser calls with gradients keep only each block's inputs and recompute the
        rest in the backward pass (diffusers' gradient checkpointing, non-reentrant); settable.
        Calls without gradients are unaffected."""
        return bool(getattr(self.denoiser, "is_gradient_checkpointing", False))

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enabled: bool) -> None:
        denoiser = self.denoiser
        if not getattr(denoiser, "_supports_gradient_checkpointing", False):
            raise ValueError(
                f"the denoiser of {type(self).__name__} ({type(denoiser).__name__}) does not support "
                "gradient checkpointing: leave it off"
            )
        if enabled:
            denoiser.enable_gradient_checkpointing(self._checkpoint)
        else:
            denoiser.disable_gradient_checkpointing()

    @staticmethod
    def _checkpoint(module: nn.Module, *args: object) -> object:
        """``module(*args)`` recomputed in the backward pass (given to diffusers'
        ``enable_gradient_checkpointing``); adapters override it where their blocks call
        modules unusually."""
        return checkpoint_call(module, *args)

    @abstractmethod
    def encode_prompt(self, prompts: Sequence[str]) -> Conditioning:
        """Text conditioning for ``len(prompts)`` prompts, unconditional part included (no grad)."""

    @abstractmethod
    def predict_noise(
        self,
        x_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        guidance_scale: float | Tensor = 1.0,
    ) -> Tensor:
        """Classifier-free-guided ε̂ = ε_∅ + g · (ε_y − ε_∅), in one batched denoiser call.

        Args:
            x_t: noisy latents, ``(B, ...)``.
            t: integer timesteps, ``(B,)``.
            cond: conditioning of batch size ``B``.
            guidance_scale: ``g``, a float or a ``(B,)`` tensor (one per row). A float ``g == 1``
                skips the unconditional branch; a tensor never does (reading its values would
                wait for the device), even when every row is 1.

        Returns:
            ε̂ with the shape and dtype of ``x_t``. Differentiable with respect to ``x_t``.

        The denoiser sees the rows ``[unconditional (B); conditional (B)]`` in one batch, or only
        the conditional rows when ``g == 1`` (see :meth:`conditional_rows`); hooks rely on it.
        """

    @staticmethod
    def conditional_rows(batch: int, guidance_scale: float | Tensor) -> slice:
        """Rows of the denoiser batch that hold the conditional branch of a ``predict_noise`` call."""
        return slice(0, batch) if _unguided(guidance_scale) else slice(batch, 2 * batch)

    @staticmethod
    def guided(
        denoise: Callable[[Tensor, Tensor, dict[str, Tensor]], Tensor],
        x_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        guidance_scale: float | Tensor,
    ) -> Tensor:
        """Classifier-free guidance around one denoiser call, in the row layout of
        :meth:`conditional_rows`: ``denoise(x, t, kwargs)`` maps ``(N, ...)`` to ε ``(N, ...)``.

        Adapters implement :meth:`predict_noise` with it, giving only their denoiser call.

        Raises:
            ValueError: where ``t`` is not ``(B,)`` or ``cond`` does not hold ``B`` prompts for the
                ``B`` rows of ``x_t`` (torch failed inside the denoiser).
        """
        batch = x_t.shape[0]
        if t.shape != (batch,) or len(cond) != batch:
            raise ValueError(
                f"predict_noise takes x_t (B, ...), t (B,) and the conditioning of B prompts, got x_t of shape "
                f"{tuple(x_t.shape)}, t of shape {tuple(t.shape)} and a conditioning of batch size {len(cond)}: give one "
                "timestep and one prompt per row, e.g. t.expand(B) and encode_prompt([prompt] * B)"
            )
        if _unguided(guidance_scale):
            return denoise(x_t, t, cond.conditional_batch()).to(x_t.dtype)
        out = denoise(torch.cat([x_t, x_t]), torch.cat([t, t]), cond.guidance_batch()).to(x_t.dtype)
        eps_uncond, eps_cond = out.chunk(2)
        if isinstance(guidance_scale, Tensor):
            guidance_scale = guidance_scale.view(-1, *([1] * (x_t.dim() - 1))).to(x_t)
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    # -- audio ----------------------------------------------------------------------------------
    @abstractmethod
    def encode_audio(self, waveform: Tensor, sample_rate: int) -> Tensor:
        """Latent of a waveform ``(B, channels, samples)`` or ``(B, samples)`` at any rate."""

    @abstractmethod
    def decode_audio(self, latent: Tensor, num_samples: int | None = None) -> Tensor:
        """Waveform at :attr:`sample_rate`, cut or padded to ``num_samples``: ``(B, samples)``
        for a mono backbone, ``(B, channels, samples)`` when :attr:`channels` > 1."""

    # -- self-attention geometry ---------------------------------------------------------------
    @abstractmethod
    def self_attention_modules(self) -> dict[str, nn.Module]:
        """The denoiser's self-attention modules by qualified name, in the order the forward pass
        calls them (a U-Net's mid block between its down and up blocks, whatever the order its
        modules are registered in): feature losses read and sum layers in this order."""

    def feature_map(self, tokens: Tensor, latent_shape: Sequence[int]) -> Tensor:
        """A self-attention output ``(B, N, C)`` as a ``(B, time, frequency, C)`` map.

        The default reshapes the tokens with :meth:`feature_grid`; adapters whose attention
        sees extra tokens (a prepended global token, say) drop them here.
        """
        time, freq = self.feature_grid(tokens.shape[1], latent_shape)
        return einops.rearrange(tokens, "b (t f) c -> b t f c", t=time, f=freq)

    def feature_grid(self, num_tokens: int, latent_shape: Sequence[int]) -> tuple[int, int]:
        """(time, frequency) sizes of a self-attention feature map of ``num_tokens`` tokens.

        The default fits 2-D U-Nets that halve both latent axes per level and flatten tokens
        time-major: the level ``r`` with ``⌈T/2^r⌉ · ⌈F/2^r⌉ == num_tokens``.
        """
        time, freq = latent_shape[-2], latent_shape[-1]
        h, w = time, freq
        # integer steps (⌈h/2⌉ = −(−h // 2)): symbolic sizes in a compiled call stay symbolic
        while h * w != num_tokens:
            if h == w == 1:
                raise ValueError(
                    f"{num_tokens} tokens match no resolution level of a latent with (time, frequency) "
                    f"= ({time}, {freq})"
                )
            h, w = -(-h // 2), -(-w // 2)
        return h, w


def _unguided(guidance_scale: float | Tensor) -> bool:
    """A plain number 1 skips the unconditional branch (a tensor never does: no device sync)."""
    return isinstance(guidance_scale, (int, float)) and guidance_scale == 1
