"""The AudioLDM family behind the :class:`Backbone` interface: mel → VAE latent → UNet → VAE → HiFi-GAN.

AudioLDM, AudioLDM2 and MusicLDM share everything but the text conditioning: the mel front end
(:mod:`backbones.mel`), a mel VAE with a learnt scaling factor, a 2-D UNet over ``(B, C, T, F)``
latents (time on axis 2, frequency on axis 3), a discrete VP schedule and a SpeechT5 HiFi-GAN
vocoder. :class:`MelVAEBackbone` holds all of that once; an adapter overrides only how a prompt
becomes denoiser inputs (:meth:`MelVAEBackbone.encode_one`) and, where needed, the denoiser call
(:meth:`MelVAEBackbone._denoise`).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from torch import Tensor, nn

from .base import unet_self_attention
from .conditioning import Conditioning
from .mel import MelFrontEnd, check_long_enough, to_mono
from .pipeline import PipelineBackbone

#: Model parametrisations the adapters turn into ε (the scheduler's ``prediction_type``).
PREDICTION_TYPES = ("epsilon", "v_prediction")


class MelVAEBackbone(PipelineBackbone):
    """A diffusers pipeline of the AudioLDM family as a score function.

    Subclasses set :attr:`family`, :attr:`pipeline_class`, :attr:`description` and
    :attr:`example_repo`, and implement :meth:`encode_one`.

    Args:
        pipe: a loaded pipeline with ``vae``, ``unet``, ``scheduler`` and ``vocoder``; its
            components are frozen and put in eval mode.
        mel: the mel front end; its band count and rate must match the vocoder's.
        name_or_path: the Hub repo id or folder the pipeline was loaded from (``None`` when it
            was built in memory); concept files record it as the base model.
    """

    latent_dims = 4

    def __init__(
        self,
        pipe: DiffusionPipeline,
        *,
        mel: MelFrontEnd = MelFrontEnd(),
        name_or_path: str | None = None,
    ) -> None:
        if pipe.vocoder.config.model_in_dim != mel.n_mels:
            raise ValueError(
                f"the vocoder expects {pipe.vocoder.config.model_in_dim} mel bands but the front "
                f"end makes {mel.n_mels}"
            )
        self.sample_rate = int(pipe.vocoder.config.sampling_rate)
        if self.sample_rate != mel.sample_rate:
            raise ValueError(
                f"the vocoder runs at {self.sample_rate} Hz but the mel front end at "
                f"{mel.sample_rate} Hz"
            )
        prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"the scheduler's prediction_type is {prediction_type!r}; steer reads "
                f"{' and '.join(PREDICTION_TYPES)} models"
            )
        super().__init__(pipe, name_or_path=name_or_path)
        self.mel = mel
        self._alphas_cumprod: Tensor | None = None

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
    @abstractmethod
    def encode_one(self, prompt: str) -> Conditioning:
        """The denoiser inputs of one prompt and of the empty negative prompt, batch size 1,
        as the pipeline encodes them (uncached, differentiable)."""

    def _settings(self) -> dict[str, Any]:
        return {"mel": self.mel}

    # -- score --------------------------------------------------------------------------------
    def _denoise(self, x: Tensor, t: Tensor, kwargs: dict[str, Tensor]) -> Tensor:
        """The UNet's raw output for latents ``(N, C, T, F)``, as the pipeline calls it."""
        return self.pipe.unet(x.to(self.dtype), t, **kwargs, return_dict=False)[0]

    def _epsilon(self, x: Tensor, t: Tensor, kwargs: dict[str, Tensor]) -> Tensor:
        """ε from the UNet output. For v-prediction (Salimans & Ho, 2022, section 4)
        v = √ᾱ·ε − √(1−ᾱ)·x_0 and x_t = √ᾱ·x_0 + √(1−ᾱ)·ε give ε = √ᾱ·v + √(1−ᾱ)·x_t; the map
        is affine in the output, so guiding ε equals guiding the raw outputs as the pipeline does."""
        out = self._denoise(x, t, kwargs)
        if self.pipe.scheduler.config.get("prediction_type", "epsilon") == "epsilon":
            return out
        alpha_bar = self.alphas_cumprod[t].view(-1, *([1] * (x.dim() - 1)))
        return alpha_bar.sqrt() * out + (1 - alpha_bar).sqrt() * x

    # -- audio --------------------------------------------------------------------------------
    @property
    def _downsampling(self) -> int:
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    def encode_audio(self, waveform: Tensor, sample_rate: int) -> Tensor:
        """VAE latent ``(B, C, frames / d, n_mels / d)`` of a waveform at any rate and channel
        count (``d`` the VAE's downsampling: 4, so ``(B, 8, frames / 4, 16)`` for the real models).

        The waveform is mixed to mono, resampled to the vocoder's rate, mean-removed and scaled
        to peak 0.5; its log-mel is padded with silence to a multiple of ``d``, and the
        posterior's mode (the deterministic choice) is scaled by the VAE's scaling factor.
        """
        given = (waveform.shape[-1], sample_rate)
        waveform = to_mono(waveform, sample_rate, self.sample_rate).to(self.device)
        check_long_enough(waveform, self.sample_rate, self.mel.n_fft, given)
        mel = self.mel(self.mel.normalize(waveform))
        missing = -mel.shape[2] % self._downsampling
        mel = F.pad(mel, (0, 0, 0, missing), value=self.mel.silence())
        vae = self.pipe.vae
        with torch.no_grad():
            latent = vae.encode(mel.to(vae.dtype)).latent_dist.mode()
        return latent.float() * vae.config.scaling_factor

    def decode_audio(self, latent: Tensor, num_samples: int | None = None) -> Tensor:
        """Waveform ``(B, samples)``: VAE decode to log-mel, then the HiFi-GAN vocoder.

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
        """Every ``attn1`` of the UNet's transformer blocks, in forward order (down blocks, mid
        block, up blocks: :func:`~backbones.base.unet_self_attention`)."""
        return unet_self_attention(self.pipe.unet)
