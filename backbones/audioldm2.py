"""AudioLDM2 (Liu et al., 2024, https://arxiv.org/abs/2308.05734) behind the :class:`Backbone` interface.

The adapter owns the components of a diffusers ``AudioLDM2Pipeline`` and reuses the pipeline's own
prompt encoding (CLAP + Flan-T5 → projection → 8 GPT-2 states), so its conditioning is exactly the
pipeline's. Audio enters through the AudioLDM mel front end and the VAE, and leaves through the
VAE and the HiFi-GAN vocoder. Latents are ``(B, 8, T, 16)``: 25 latent frames per second on axis
2, 16 frequency bins on axis 3.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AudioLDM2Pipeline
from torch import Tensor, nn
from transformers import GPT2LMHeadModel

from .base import Backbone
from .conditioning import Conditioning
from .mel import MelFrontEnd, to_mono


class AudioLDM2Backbone(Backbone):
    """AudioLDM2 (``cvssp/audioldm2``, ``-music``, ``-large``) as a score function.

    Args:
        pipe: a loaded ``AudioLDM2Pipeline``; its components are frozen and put in eval mode.
        mel: the mel front end; its band count must match the vocoder's input.

    Example:
        >>> from backbones import AudioLDM2Backbone
        >>> from backbones.tiny import tiny_audioldm2_pipeline
        >>> backbone = AudioLDM2Backbone.from_pipe(tiny_audioldm2_pipeline())
        >>> backbone.encode_audio(torch.zeros(1, 16000), 16000).shape
        torch.Size([1, 8, 25, 16])
    """

    family = "audioldm2"

    def __init__(self, pipe: AudioLDM2Pipeline, *, mel: MelFrontEnd = MelFrontEnd()) -> None:
        if pipe.vocoder.config.model_in_dim != mel.n_mels:
            raise ValueError(
                f"the vocoder expects {pipe.vocoder.config.model_in_dim} mel bands but the front "
                f"end makes {mel.n_mels}"
            )
        self.pipe = pipe
        self.mel = mel
        self.sample_rate = int(pipe.vocoder.config.sampling_rate)
        if self.sample_rate != mel.sample_rate:
            raise ValueError(
                f"the vocoder runs at {self.sample_rate} Hz but the mel front end at "
                f"{mel.sample_rate} Hz"
            )
        for module in self._modules():
            module.eval().requires_grad_(False)
        self._prompts: dict[str, Conditioning] = {}
        self._alphas_cumprod: Tensor | None = None

    def _modules(self) -> list[nn.Module]:
        return [c for c in self.pipe.components.values() if isinstance(c, nn.Module)]

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def from_pipe(cls, pipe: AudioLDM2Pipeline, **kwargs: Any) -> AudioLDM2Backbone:
        """Wrap an existing pipeline (its components are shared, not copied)."""
        return cls(pipe, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        torch_dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        **kwargs: Any,
    ) -> AudioLDM2Backbone:
        """Load a Hub repo id (e.g. ``"cvssp/audioldm2-music"``) or a folder saved by ``save_pretrained``.

        Extra keyword arguments go to ``AudioLDM2Pipeline.from_pretrained``.
        """
        name = str(name_or_path)
        try:
            # A saved pipeline may record its language model as GPT2Model, whose output has no
            # hidden-state generation path: load the LM-head class explicitly (same weights).
            language_model = GPT2LMHeadModel.from_pretrained(
                name, subfolder="language_model", dtype=torch_dtype
            )
            pipe = AudioLDM2Pipeline.from_pretrained(
                name, torch_dtype=torch_dtype, language_model=language_model, **kwargs
            )
        except (OSError, ValueError) as error:
            raise ValueError(
                f"could not load an AudioLDM2 pipeline from {name!r} ({error}). Pass a folder "
                "written by save_pretrained, a Hub repo id such as 'cvssp/audioldm2-music' that "
                "this machine can reach or has cached, or use the offline 'tiny' backbone."
            ) from error
        return cls(pipe.to(device))

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Save the underlying pipeline (safetensors), loadable with :meth:`from_pretrained`."""
        self.pipe.save_pretrained(path, safe_serialization=True)

    def to(self, device: torch.device | str) -> AudioLDM2Backbone:
        self.pipe.to(device)
        self._prompts = {p: c.to(device) for p, c in self._prompts.items()}
        self._alphas_cumprod = None
        return self

    # -- schedule -----------------------------------------------------------------------------
    @property
    def alphas_cumprod(self) -> Tensor:
        if self._alphas_cumprod is None or self._alphas_cumprod.device != self.device:
            self._alphas_cumprod = self.pipe.scheduler.alphas_cumprod.to(self.device, torch.float32)
        return self._alphas_cumprod

    @property
    def denoiser(self) -> nn.Module:
        return self.pipe.unet

    # -- conditioning -------------------------------------------------------------------------
    def encode_prompt(self, prompts: Sequence[str]) -> Conditioning:
        """Conditioning for ``prompts``; each distinct prompt is encoded once (by the pipeline's
        ``encode_prompt``, with its empty negative prompt) and cached."""
        return self.cached_prompts(prompts, self._prompts, self._encode_one)

    @torch.no_grad()
    def _encode_one(self, prompt: str) -> Conditioning:
        t5_states, t5_mask, gpt2_states = self.pipe.encode_prompt(
            prompt, self.device, num_waveforms_per_prompt=1, do_classifier_free_guidance=True
        )
        # The pipeline stacks [negative; positive] along the batch.
        fields = {
            "encoder_hidden_states": gpt2_states,
            "encoder_hidden_states_1": t5_states,
            "encoder_attention_mask_1": t5_mask,
        }
        return Conditioning(
            cond={k: v[1:] for k, v in fields.items()},
            uncond={k: v[:1] for k, v in fields.items()},
        )

    # -- score --------------------------------------------------------------------------------
    def predict_noise(
        self,
        x_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        guidance_scale: float | Tensor = 1.0,
    ) -> Tensor:
        unet = self.pipe.unet
        return self.guided(
            lambda x, t, kwargs: unet(x.to(unet.dtype), t, **kwargs, return_dict=False)[0],
            x_t,
            t,
            cond,
            guidance_scale,
        )

    # -- audio --------------------------------------------------------------------------------
    @property
    def _downsampling(self) -> int:
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    def encode_audio(self, waveform: Tensor, sample_rate: int) -> Tensor:
        """VAE latent ``(B, 8, frames / 4, 16)`` of a waveform at any rate and channel count.

        The waveform is mixed to mono, resampled to 16 kHz, mean-removed and scaled to peak 0.5;
        its log-mel is padded with silence to a multiple of the VAE's downsampling, and the
        posterior's mode (the deterministic choice) is scaled by the VAE's scaling factor.
        """
        waveform = to_mono(waveform, sample_rate, self.sample_rate).to(self.device)
        if waveform.shape[-1] < self.mel.n_fft:
            raise ValueError(
                f"audio is too short: {waveform.shape[-1]} samples at {self.sample_rate} Hz, "
                f"need at least {self.mel.n_fft}"
            )
        mel = self.mel(self.mel.normalize(waveform))
        missing = -mel.shape[2] % self._downsampling
        mel = F.pad(mel, (0, 0, 0, missing), value=self.mel.silence())
        vae = self.pipe.vae
        with torch.no_grad():
            latent = vae.encode(mel.to(vae.dtype)).latent_dist.mode()
        return latent.float() * vae.config.scaling_factor

    def decode_audio(self, latent: Tensor, num_samples: int | None = None) -> Tensor:
        """Waveform ``(B, samples)`` at 16 kHz: VAE decode to log-mel, then the HiFi-GAN vocoder.

        ``num_samples`` defaults to the mel frames times the hop (the vocoder adds a few samples
        of edge, which the pipeline trims too).
        """
        if num_samples is None:
            num_samples = latent.shape[2] * self._downsampling * self.mel.hop_length
        vae = self.pipe.vae
        mel = vae.decode(latent.to(vae.dtype) / vae.config.scaling_factor).sample
        waveform = self.pipe.vocoder(mel.squeeze(1).to(self.pipe.vocoder.dtype)).float()
        waveform = F.pad(waveform, (0, max(0, num_samples - waveform.shape[-1])))
        return waveform[..., :num_samples]

    # -- geometry -----------------------------------------------------------------------------
    def self_attention_modules(self) -> dict[str, nn.Module]:
        """Every ``attn1`` of the UNet's transformer blocks (48 in the full-size model)."""
        return {n: m for n, m in self.pipe.unet.named_modules() if n.endswith(".attn1")}
