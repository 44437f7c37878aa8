"""A small text-to-music diffusion model trained from scratch, behind the :class:`Backbone` interface.

It exists so that edits can be measured on a CPU without downloadable weights (the instrument-swap
benchmark). It is deliberately plain:

- **latent**: the AudioLDM log-mel (16 kHz, 64 bands, hop 160), standardised and folded 4 × 4
  into channels (space-to-depth, exactly invertible, no VAE): 2.56 s → ``(B, 16, 64, 16)``, i.e.
  25 latent frames per second on axis 2 and 16 frequency rows on axis 3, like AudioLDM2's;
- **denoiser**: a diffusers ``UNet2DConditionModel`` (self-attention ``attn1`` + cross-attention
  to the prompt in its attention blocks), ε-prediction, the AudioLDM2 noise schedule;
- **text**: a word-level :class:`~backbones.word_encoder.WordEncoder` trained with it;
- **vocoder**: Griffin–Lim on the mel pseudo-inverse (:class:`~backbones.griffin_lim.GriffinLimVocoder`).

Weights and config are saved with the Hugging Face Hub mixin (``config.json`` +
``model.safetensors``), which refuses to replace a model already in the folder unless asked
(:class:`~backbones.saving.SteerHubMixin`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from safetensors import SafetensorError
from torch import Tensor, nn

from .base import Backbone, unet_self_attention
from .conditioning import Conditioning, PromptCache
from .griffin_lim import GriffinLimVocoder
from .mel import MelFrontEnd, check_long_enough, to_mono
from .saving import SteerHubMixin
from .word_encoder import WordEncoder, WordEncoderConfig

#: the word states' padding mask (:attr:`backbones.Conditioning.masks`)
WORD_MASK = {"encoder_hidden_states": "encoder_attention_mask"}


def default_unet_config(*, channels: int = 16, text_dim: int = 64) -> dict[str, Any]:
    """The denoiser of the shipped model: ~4 M parameters, attention below full resolution."""
    return {
        "in_channels": channels,
        "out_channels": channels,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [32, 64, 128],
        "layers_per_block": 1,
        "norm_num_groups": 16,
        "cross_attention_dim": text_dim,
        "attention_head_dim": 4,
    }


MODEL_CARD = """---
{{ card_data }}
---

# Mel-diffusion backbone (steer)

A small text-to-music diffusion model trained from scratch so that music editing can be measured
offline on a CPU: a diffusers `UNet2DConditionModel` over the AudioLDM log-mel (16 kHz, 64 bands,
hop 10 ms) folded 4 × 4 into 16 latent channels, a word-level text encoder, ε-prediction with the
AudioLDM2 noise schedule, Griffin–Lim decoding.

```python
from backbones import load_backbone
backbone = load_backbone("weights/mel-diffusion-swap")  # a steer Backbone
```

It knows eight General-MIDI instruments (TimGM6mb soundfont) playing monophonic melodies from
music21's corpus, prompted as "a recording of a violin"; nothing else. `training.json` beside the
weights holds the data, the seed and the time it took (`benchmarks/swap/train_backbone.py`).

- Used by: the SteerMusic paper's editing methods, {{ paper_url }}
"""


class MelDiffusionModel(
    nn.Module,
    SteerHubMixin,
    library_name="steer",
    tags=["audio", "music", "text-to-audio", "diffusion", "steer"],
    pipeline_tag="text-to-audio",
    paper_url="https://arxiv.org/abs/2504.10826",
    model_card_template=MODEL_CARD,
):
    """The trainable part: denoiser and text encoder, plus the settings that define the latent.

    Args:
        words: the text vocabulary.
        text_dim, text_layers: text encoder sizes.
        unet: ``UNet2DConditionModel`` config (see :func:`default_unet_config`).
        patch: space-to-depth factor folding the log-mel into latent channels.
        mel_mean, mel_std: standardisation of the log-mel (training-set statistics).
        beta_start, beta_end, num_train_timesteps: the scaled-linear noise schedule.
    """

    def __init__(
        self,
        *,
        words: list[str],
        text_dim: int = 64,
        text_layers: int = 2,
        unet: dict[str, Any] | None = None,
        patch: int = 4,
        mel_mean: float = -5.0,
        mel_std: float = 3.0,
        beta_start: float = 0.0015,
        beta_end: float = 0.0195,
        num_train_timesteps: int = 1000,
    ) -> None:
        super().__init__()
        unet = unet or default_unet_config(channels=patch * patch, text_dim=text_dim)
        if unet["in_channels"] != patch * patch:
            raise ValueError(f"a patch of {patch} needs a UNet with {patch * patch} input channels")
        self.patch = patch
        self.mel_mean = mel_mean
        self.mel_std = mel_std
        self.text_encoder = WordEncoder(WordEncoderConfig(words=list(words), dim=text_dim, layers=text_layers))
        self.unet = UNet2DConditionModel(**unet)
        self.schedule = (beta_start, beta_end, num_train_timesteps)

    def alphas_cumprod(self) -> Tensor:
        """ᾱ_t ``(num_train_timesteps,)``, float32 on the CPU; not a buffer, which casting the
        model to bf16 would round (ᾱ_0 became 1, and 1 − ᾱ_t was off by up to 100 %)."""
        beta_start, beta_end, steps = self.schedule
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float32) ** 2
        return torch.cumprod(1 - betas, 0)


class MelDiffusionBackbone(Backbone):
    """:class:`MelDiffusionModel` as a score function on 16 kHz mono audio; the model is shared,
    not copied, and is frozen (``requires_grad_(False)``) and put in eval mode.

    Example:
        >>> backbone = MelDiffusionBackbone(MelDiffusionModel(words=["a", "recording", "of", "flute"]))
        >>> latent = backbone.encode_audio(torch.zeros(1, 40960), 16000)
        >>> latent.shape
        torch.Size([1, 16, 64, 16])
        >>> backbone.decode_audio(latent).shape
        torch.Size([1, 40960])
    """

    family = "mel-diffusion"
    sample_rate = 16000
    latent_dims = 4

    def __init__(
        self, model: MelDiffusionModel, *, mel: MelFrontEnd = MelFrontEnd(), name_or_path: str | None = None
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.mel = mel
        self.name_or_path = name_or_path
        self.vocoder = GriffinLimVocoder(mel).to(self.device)
        self._prompts = PromptCache()
        self._alphas_cumprod = model.alphas_cumprod()

    @property
    def latent_range(self) -> tuple[float, float]:
        """Standardised log-mel bounds: silence below; above, the loudest possible band of a
        clip at the front end's peak (every STFT bin at peak · Σ window, through the widest filter)."""
        m = self.model
        loudest = self.mel.peak * torch.hann_window(self.mel.win_length).sum() * self.mel.filters().sum(0).max()
        low = (self.mel.silence() - m.mel_mean) / m.mel_std
        return low, (float(loudest.log()) - m.mel_mean) / m.mel_std

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        torch_dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> MelDiffusionBackbone:
        """Load a folder (or Hub repo) written by :meth:`save_pretrained`.

        Raises:
            ValueError: for a folder or repo that holds no such model (a corrupt file, weights
                missing or of another shape, or the ``config.json`` of another model, e.g. a
                diffusers pipeline's ``unet/``).
        """
        try:
            model = MelDiffusionModel.from_pretrained(str(name_or_path))
        # SafetensorError: a corrupt file; RuntimeError: weights missing, unexpected or of another shape
        except (OSError, ValueError, SafetensorError, RuntimeError) as error:
            said = " ".join(str(error).split())  # torch's names each weight on a line of its own
            raise ValueError(f"could not load a mel-diffusion model from {str(name_or_path)!r} ({said})") from error
        except TypeError as error:  # its config.json lacks the model's arguments: another model's
            parent = os.path.dirname(os.path.abspath(os.path.expanduser(name_or_path)))
            pipeline = os.path.isfile(os.path.join(parent, "model_index.json"))
            fix = (
                f"pass the diffusers pipeline's folder {parent} that holds it"
                if pipeline
                else "pass a folder written by save_pretrained"
            )
            raise ValueError(
                f"{str(name_or_path)!r} holds a config.json that is not a steer mel-diffusion model's ({error}): {fix}"
            ) from error
        return cls(model.to(device=device, dtype=torch_dtype), name_or_path=str(name_or_path))

    def save_pretrained(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Save the model into the folder ``path`` (``config.json``, ``model.safetensors`` and,
        where absent, a model card: :meth:`backbones.saving.SteerHubMixin.save_pretrained`),
        loadable with :meth:`from_pretrained`; returns it as a ``Path``.

        Raises:
            ValueError: before anything is written, for a path that is a file, lies under a file
                or cannot be written, or (without ``overwrite``) a folder already holding
                ``config.json`` or ``model.safetensors``; for a model holding a concept's adapter
                (:func:`~backbones.saving.check_no_adapters`).
        """
        return self.model.save_pretrained(path, overwrite=overwrite)

    def to(self, device: torch.device | str) -> MelDiffusionBackbone:
        """Move the model to ``device`` (the vocoder follows it, and prompts are encoded there
        again when next used, as after ``backbone.model.to(...)``)."""
        self.model.to(device)
        return self

    # -- schedule and model ------------------------------------------------------------------
    @property
    def alphas_cumprod(self) -> Tensor:
        if self._alphas_cumprod.device != self.device:
            self._alphas_cumprod = self._alphas_cumprod.to(self.device)
        return self._alphas_cumprod

    @property
    def denoiser(self) -> nn.Module:
        return self.model.unet

    # -- conditioning ------------------------------------------------------------------------
    def encode_prompt(self, prompts: Sequence[str]) -> Conditioning:
        """Word-encoder states ``(B, L, text_dim)`` and mask ``(B, L)``; ``""`` is unconditional."""
        return self._prompts.get(prompts, self._encode_one, (self.device, self.dtype))

    def _encode_one(self, prompt: str) -> Conditioning:
        encoder = self.model.text_encoder
        unknown = encoder.unknown_words(prompt)
        if unknown:
            warnings.warn(
                f"words outside this model's vocabulary are read as <unk>: {unknown}", stacklevel=4
            )
        if unread := encoder.unread_words(prompt):
            warnings.warn(
                f"this model reads a prompt's first {encoder.config.max_words} words: {' '.join(unread)!r} at the "
                f"end of {prompt!r} is left out; shorten the prompt",
                stacklevel=4,
            )
        return Conditioning(cond=self._encode([prompt]), uncond=self._encode([""]), masks=WORD_MASK)

    @torch.no_grad()
    def _encode(self, prompts: Sequence[str]) -> dict[str, Tensor]:
        encoder = self.model.text_encoder
        ids, mask = encoder.tokenize(prompts)
        return {"encoder_hidden_states": encoder(ids, mask), "encoder_attention_mask": mask}

    def predict_noise(
        self,
        x_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        guidance_scale: float | Tensor = 1.0,
    ) -> Tensor:
        unet = self.model.unet
        return self.guided(
            lambda x, t, kwargs: unet(x.to(self.dtype), t, **kwargs).sample, x_t, t, cond, guidance_scale
        )

    # -- audio ---------------------------------------------------------------------------------
    def mel_to_latent(self, log_mel: Tensor) -> Tensor:
        """``(B, 1, frames, 64)`` log-mel → ``(B, patch², frames / patch, 64 / patch)``."""
        m = self.model
        missing = -log_mel.shape[2] % m.patch
        log_mel = F.pad(log_mel, (0, 0, 0, missing), value=self.mel.silence())
        return F.pixel_unshuffle((log_mel - m.mel_mean) / m.mel_std, m.patch)

    def latent_to_mel(self, latent: Tensor) -> Tensor:
        """Inverse of :meth:`mel_to_latent`, ``(B, 1, frames, 64)``."""
        m = self.model
        return F.pixel_shuffle(latent.float(), m.patch) * m.mel_std + m.mel_mean

    def encode_audio(self, waveform: Tensor, sample_rate: int) -> Tensor:
        given = (waveform.shape[-1], sample_rate)
        waveform = to_mono(waveform, sample_rate, self.sample_rate).to(self.device)
        check_long_enough(waveform, self.sample_rate, self.mel.n_fft, given)
        return self.mel_to_latent(self.mel(self.mel.normalize(waveform)))

    def decode_audio(self, latent: Tensor, num_samples: int | None = None) -> Tensor:
        if num_samples is None:
            num_samples = latent.shape[2] * self.model.patch * self.mel.hop_length
        if self.vocoder.inverse.device != self.device:  # the model was moved
            self.vocoder.to(self.device)
        waveform = self.vocoder(self.latent_to_mel(latent.to(self.device)).squeeze(1))
        waveform = F.pad(waveform, (0, max(0, num_samples - waveform.shape[-1])))
        return waveform[..., :num_samples]

    # -- geometry ------------------------------------------------------------------------------
    def self_attention_modules(self) -> dict[str, nn.Module]:
        return unet_self_attention(self.model.unet)
