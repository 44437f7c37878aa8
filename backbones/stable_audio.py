"""Stable Audio Open (Evans et al., 2024, https://arxiv.org/abs/2407.14358) as a :class:`Backbone`.

The adapter owns the components of a diffusers ``StableAudioPipeline``: a DiT
(``StableAudioDiTModel``) over the latents of the Oobleck waveform VAE, conditioned on T5 states
and start/end-seconds embeddings (``StableAudioProjectionModel``), trained as an EDM-style
v-prediction model over a noise level σ (``CosineDPMSolverMultistepScheduler``). Latents are
``(B, 64, L)``: 44.1 kHz stereo, 2048 samples per latent frame (about 21.5 frames per second),
time on the last axis (axis 2), no scaling factor.

**The VP view.** The model sees ``x = x0 + σ·ε`` (variance exploding). Losses and editors work in
the variance-preserving view, so the adapter converts, with ``ᾱ = 1 / (1 + σ²)``::

    x_VP = √ᾱ · x0 + √(1 − ᾱ) · ε = x / √(1 + σ²)          (so x = x_VP / √ᾱ)
    D    = c_skip(σ) · x + c_out(σ) · F(c_in(σ) · x, c_noise(σ))  (the denoised estimate of x0)
    ε̂    = (x − D) / σ

where ``F`` is the DiT and ``c_skip``, ``c_out``, ``c_in``, ``c_noise`` are the scheduler's own
preconditioning (``precondition_outputs``, ``precondition_inputs``, ``precondition_noise``; for
Stable Audio Open with σ_data = 1: c_skip = 1/(σ²+1), c_out = −σ/√(σ²+1), c_in = 1/√(σ²+1),
c_noise = (2/π)·arctan σ). ε̂ is affine in ``F`` with the same coefficients for the conditional and
unconditional rows, so classifier-free guidance on ε̂ equals the pipeline's guidance on ``F``.

**The discrete schedule.** ``t = 0 … 999`` indexes σ values spaced evenly in the angle
φ = arctan σ (i.e. in the DiT's own noise input c_noise = 2φ/π) between the scheduler's σ_min and
σ_max: ``σ_t = tan(φ_min + (φ_max − φ_min) · t / 999)``, hence ``ᾱ_t = cos² φ_t``, the cosine
schedule of Nichol & Dhariwal (2021) cut to [σ_min, σ_max]. For Stable Audio Open (σ 0.3 … 500):
t = 20 → σ ≈ 0.33 (ᾱ ≈ 0.90), t = 500 → σ ≈ 1.34 (ᾱ ≈ 0.36), t = 980 → σ ≈ 38 (ᾱ ≈ 7·10⁻⁴),
t = 999 → σ = 500. The editor samples t uniformly, so the table sets how often each noise level
is visited: here 25 % of the steps have ᾱ < 0.1 (σ > 3), where x_t keeps little of the clip; the
scheduler's own 1000-step table, log-uniform in σ, would put 69 % of them there.

**The duration.** Stable Audio conditions on the seconds of audio the latent holds
(``seconds_start``, ``seconds_total``). Latents here hold exactly the clip (encode_audio pads to
whole frames), so every call conditions on start 0 and end ``L · 2048 / 44100`` seconds, read from
the latent length ``L`` at predict time: no state to set, and correct for any clip length.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from diffusers import StableAudioPipeline
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from torch import Tensor, nn

from .conditioning import Conditioning
from .pipeline import PipelineBackbone

# The DiT prepends one global token (the seconds embeddings plus the timestep embedding) to the
# latent frames; every self-attention output carries it first.
_GLOBAL_TOKENS = 1
_PRECONDITIONING = ("precondition_inputs", "precondition_noise", "precondition_outputs")


class StableAudioBackbone(PipelineBackbone):
    """Stable Audio Open (``stabilityai/stable-audio-open-1.0``) as a VP score function.

    Args:
        pipe: a loaded ``StableAudioPipeline`` whose scheduler has EDM preconditioning (Stable
            Audio Open's ``CosineDPMSolverMultistepScheduler``); its components are frozen and put
            in eval mode.
        name_or_path: the Hub repo id or folder the pipeline came from (``None`` for a pipeline
            object built in memory).
        num_train_timesteps: size of the discrete σ table (see the module docstring).

    Example:
        >>> from backbones.stable_audio import StableAudioBackbone
        >>> from backbones.tiny.stable_audio import tiny_stable_audio_pipeline
        >>> backbone = StableAudioBackbone.from_pipe(tiny_stable_audio_pipeline())
        >>> latent = torch.zeros(1, 64, 22)  # one second: 22 frames of 2048 samples at 44.1 kHz
        >>> backbone.decode_audio(latent, 44100).shape
        torch.Size([1, 2, 44100])
        >>> cond = backbone.encode_prompt(["a piano melody"])
        >>> backbone.predict_noise(latent, torch.tensor([500]), cond, 7.0).shape
        torch.Size([1, 64, 22])
    """

    family = "stable_audio"
    latent_dims = 3
    pipeline_class = StableAudioPipeline
    description = "a Stable Audio pipeline"
    example_repo = "stabilityai/stable-audio-open-1.0"
    loading_note = " The repo is gated: accept its licence and log in first."

    def __init__(
        self,
        pipe: StableAudioPipeline,
        *,
        name_or_path: str | None = None,
        num_train_timesteps: int = 1000,
    ) -> None:
        scheduler = pipe.scheduler
        if not all(hasattr(scheduler, name) for name in _PRECONDITIONING):
            raise ValueError(
                f"{type(scheduler).__name__} has no EDM preconditioning; give the pipeline Stable "
                "Audio Open's CosineDPMSolverMultistepScheduler"
            )
        super().__init__(pipe, name_or_path=name_or_path)
        self.sample_rate = int(pipe.vae.config.sampling_rate)
        self.channels = int(pipe.vae.config.audio_channels)
        # PCon's default layers: the later half of the DiT's blocks (a U-Net's up blocks' place).
        blocks = pipe.transformer.config.num_layers
        later = "|".join(str(i) for i in range(blocks // 2, blocks))
        self.decoder_self_attention = rf"^transformer_blocks\.({later})\.attn1$"
        sigma_min, sigma_max = scheduler.config.sigma_min, scheduler.config.sigma_max
        angle = torch.linspace(
            math.atan(sigma_min), math.atan(sigma_max), num_train_timesteps, dtype=torch.float64
        )
        # Both tables come from the same float64 angles: x = x_VP / √ᾱ and σ agree to rounding.
        self._tables = {
            "sigmas": angle.tan().float(),
            "alphas_cumprod": angle.cos().square().float(),
        }

    def _settings(self) -> dict[str, Any]:
        return {"num_train_timesteps": self.num_train_timesteps}

    def _table(self, name: str) -> Tensor:
        table = self._tables[name]
        if table.device != self.device:
            table = self._tables[name] = table.to(self.device)
        return table

    # -- schedule -----------------------------------------------------------------------------
    @property
    def alphas_cumprod(self) -> Tensor:
        """ᾱ_t = cos² φ_t = 1 / (1 + σ_t²), ``(1000,)``, decreasing (see the module docstring)."""
        return self._table("alphas_cumprod")

    @property
    def final_alpha_cumprod(self) -> Tensor:
        """Where the pipeline's scheduler ends: 1, on clean latents (σ = 0), with its default
        ``final_sigmas_type="zero"``; else ᾱ_0, the level of timestep 0 (σ_min: 0.3 for Stable
        Audio Open, ᾱ ≈ 0.92)."""
        if self.pipe.scheduler.config.get("final_sigmas_type", "zero") == "zero":
            return self.alphas_cumprod.new_ones(())
        return self.alphas_cumprod[0]

    @property
    def sigmas(self) -> Tensor:
        """σ_t = tan φ_t of each timestep, ``(1000,)``, from σ_min to σ_max."""
        return self._table("sigmas")

    @property
    def denoiser(self) -> nn.Module:
        return self.pipe.transformer

    # -- conditioning -------------------------------------------------------------------------
    def encode_one(self, prompt: str) -> Conditioning:
        """The conditioning of one prompt (uncached, differentiable; ``encode_prompt`` caches).

        Fields: ``text_states`` ``(1, 128, C)``, the pipeline's projected T5 states (padding
        tokens zeroed), and ``cross_attention_seconds`` ``(1, 1, 1)``, 1 where cross-attention
        sees the seconds tokens. The unconditional branch is the pipeline's default (no negative
        prompt): all cross-attention tokens zero, text and seconds alike, while the global token
        keeps the seconds.
        """
        text = self.pipe.encode_prompt(prompt, self.device, do_classifier_free_guidance=False)
        seconds = text.new_ones(1, 1, 1)
        return Conditioning(
            cond={"text_states": text, "cross_attention_seconds": seconds},
            uncond={"text_states": torch.zeros_like(text), "cross_attention_seconds": 0 * seconds},
        )

    # -- score --------------------------------------------------------------------------------
    def _epsilon(self, x_vp: Tensor, t: Tensor, fields: dict[str, Tensor]) -> Tensor:
        """ε̂ of VP latents ``(N, 64, L)`` at timesteps ``(N,)``: one DiT call (module docstring)."""
        pipe, scheduler, transformer = self.pipe, self.pipe.scheduler, self.pipe.transformer
        sigma = self.sigmas[t].view(-1, 1, 1)
        x = x_vp / self.alphas_cumprod[t].sqrt().view(-1, 1, 1)
        rows, frames = x.shape[0], x.shape[-1]
        # The pipeline's seconds conditioning; without a negative prompt it is not doubled.
        start, end = pipe.encode_duration(0.0, self._seconds(frames), x.device, False, rows)
        visible = fields["cross_attention_seconds"]
        cross = torch.cat([fields["text_states"], visible * start, visible * end], dim=1)
        rotary = get_1d_rotary_pos_embed(
            pipe.rotary_embed_dim,
            frames + _GLOBAL_TOKENS,
            use_real=True,
            repeat_interleave_real=False,
        )
        output = transformer(
            scheduler.precondition_inputs(x, sigma).to(self.dtype),
            scheduler.precondition_noise(sigma.flatten()),
            encoder_hidden_states=cross,
            global_hidden_states=torch.cat([start, end], dim=2),
            rotary_embedding=tuple(r.to(x.device) for r in rotary),
            return_dict=False,
        )[0].to(x.dtype)
        denoised = scheduler.precondition_outputs(x, output, sigma)
        return (x - denoised) / sigma

    def _seconds(self, frames: int) -> float:
        """Duration of a latent of ``frames`` frames, in seconds."""
        return frames * self.pipe.vae.hop_length / self.sample_rate

    # -- audio --------------------------------------------------------------------------------
    def encode_audio(self, waveform: Tensor, sample_rate: int) -> Tensor:
        """Latent ``(B, 64, ⌈samples / 2048⌉)`` float32 of a waveform at any rate.

        Args:
            waveform: ``(B, samples)`` (mono), or ``(B, channels, samples)`` with any number of
                channels. Stereo is kept; mono is duplicated to both channels; more than two
                (5.1, say, whose layout the array does not tell) are mixed to mono (their mean, as
                the mel backbones take every clip) and that is duplicated. The level is kept (the
                VAE reads [-1, 1]).
            sample_rate: its rate; resampled to 44.1 kHz.

        The end is padded with silence to whole latent frames; the latent is the posterior's mean
        (the deterministic choice). A clip longer than the DiT was trained on (its
        ``sample_size`` frames: 47.55 s for Stable Audio Open, the most the pipeline generates)
        is encoded with a warning: every prediction then conditions on a duration the model never saw.
        """
        if waveform.dim() == 2:
            waveform = waveform[:, None]
        if waveform.dim() != 3:
            raise ValueError(
                f"expected a waveform (batch, samples) or (batch, channels, samples), got {tuple(waveform.shape)}"
            )
        if waveform.shape[1] == 0:
            raise ValueError(f"audio has no channels: got a waveform of shape {tuple(waveform.shape)}")
        if waveform.shape[1] not in (1, self.channels):
            waveform = waveform.mean(dim=1, keepdim=True)
        if waveform.shape[-1] == 0:
            raise ValueError("audio is empty: give at least one sample")
        waveform = waveform.float()
        if sample_rate != self.sample_rate:  # before mono is duplicated: resampled once
            waveform = AF.resample(waveform, sample_rate, self.sample_rate)
        waveform = waveform.expand(-1, self.channels, -1)
        vae = self.pipe.vae
        waveform = F.pad(waveform, (0, -waveform.shape[-1] % vae.hop_length))
        with torch.no_grad():
            latent = vae.encode(waveform.to(self.device, vae.dtype)).latent_dist.mode()
        longest = int(self.pipe.transformer.config.sample_size)
        if latent.shape[-1] > longest:
            seconds = vae.hop_length / self.sample_rate
            warnings.warn(
                f"a clip of {latent.shape[-1] * seconds:.2f} s is longer than the {longest * seconds:.2f} s this "
                "model was trained on (the most its pipeline generates): it is edited conditioned on a duration "
                "the model never saw; edit it in pieces of that length at most",
                UserWarning,
                stacklevel=2,
            )
        return latent.float()

    def decode_audio(self, latent: Tensor, num_samples: int | None = None) -> Tensor:
        """Stereo waveform ``(B, 2, samples)`` at 44.1 kHz; ``num_samples`` defaults to
        ``L · 2048``, the latent's whole frames."""
        vae = self.pipe.vae
        if num_samples is None:
            num_samples = latent.shape[-1] * vae.hop_length
        waveform = vae.decode(latent.to(vae.dtype)).sample.float()
        waveform = F.pad(waveform, (0, max(0, num_samples - waveform.shape[-1])))
        return waveform[..., :num_samples]

    # -- geometry -----------------------------------------------------------------------------
    def self_attention_modules(self) -> dict[str, nn.Module]:
        """The ``attn1`` of every DiT block (24 in the real model), in forward order."""
        return {n: m for n, m in self.pipe.transformer.named_modules() if n.endswith(".attn1")}

    def feature_map(self, tokens: Tensor, latent_shape: Sequence[int]) -> Tensor:
        """A self-attention output ``(B, 1 + L, C)`` as ``(B, L, 1, C)``: the prepended global
        token is dropped; time is the latent's frames, frequency a single bin."""
        return super().feature_map(tokens[:, _GLOBAL_TOKENS:], latent_shape)

    def feature_grid(self, num_tokens: int, latent_shape: Sequence[int]) -> tuple[int, int]:
        """``(L, 1)``: the DiT attends over latent frames at full resolution."""
        frames = latent_shape[-1]
        if num_tokens != frames:
            raise ValueError(
                f"{num_tokens} frame tokens do not match a latent of {frames} frames (after the "
                f"{_GLOBAL_TOKENS} global token is dropped)"
            )
        return frames, 1
