"""A tiny, randomly initialised AudioLDM pipeline built offline in well under a second.

It mirrors `cvssp/audioldm-s-full-v2` as diffusers 0.42 lays it out, only narrower:

- a `UNet2DConditionModel` whose only text input is the CLAP text embedding, added to the time
  embedding ("simple_projection" class embedding, concatenated: `class_embeddings_concat`); its
  attention blocks have no text to attend to, so `attn1` and `attn2` both attend to the latent
  (`cross_attention_dim` = the block widths, as the conversion script sets it);
- the latent layout, VAE, HiFi-GAN vocoder, RoBERTa tokenizer and DDIM schedule of the tiny
  AudioLDM2 (`backbones.tiny.audioldm2`, whose builders are reused): 8 latent channels, 64 mel
  bins -> 16 latent frequency bins, 25 latent frames per second;
- `ClapTextModelWithProjection` as the text encoder (the pipeline L2-normalises its `text_embeds`).

`AudioLDMPipeline` is deprecated in diffusers (it logs a warning when built).

References:
    AudioLDM (Liu et al., 2023), https://arxiv.org/abs/2301.12503
    diffusers `scripts/convert_original_audioldm_to_diffusers.py` (the real configs).
"""

from __future__ import annotations

from diffusers import AudioLDMPipeline, UNet2DConditionModel
from transformers import ClapTextModelWithProjection

from .audioldm2 import (
    _CLAP_PROJECTION_DIM,
    _clap_text_config,
    _roberta_tokenizer,
    _scheduler,
    _seeded,
    _vae,
    _vocoder,
)

__all__ = ["tiny_audioldm_pipeline"]

# Real: (128, 256, 384, 640); the 1 : 2 : 3 : 5 ratio is kept.
_BLOCK_OUT_CHANNELS = (8, 16, 24, 40)


def tiny_audioldm_pipeline(*, seed: int = 0) -> AudioLDMPipeline:
    """A randomly initialised AudioLDM pipeline built offline, with the real latent layout.

    Every component is initialised from its own seed derived from `seed` (the same seed gives
    bitwise identical weights), in eval mode, float32, on CPU; the global torch RNG is left as
    it was.

    Shapes: a log-mel (B, 1, T, 64) encodes to a latent (B, 8, T / 4, 16); the UNet maps
    (B, 8, T / 4, 16) to the same shape, conditioned on CLAP text embeddings (B, 16) passed as
    `class_labels`; the vocoder maps a mel (B, T, 64) to (B, 160 * T + 32) samples at 16 kHz.

    Example:
        >>> pipe = tiny_audioldm_pipeline(seed=0)
        >>> pipe.unet.config.class_embed_type, pipe.unet.config.projection_class_embeddings_input_dim
        ('simple_projection', 16)
        >>> pipe("a piano melody", num_inference_steps=2, audio_length_in_s=1.28).audios.shape
        (1, 20480)
    """
    pipe = AudioLDMPipeline(
        vae=_seeded(seed, 0, _vae),
        text_encoder=_seeded(seed, 1, lambda: ClapTextModelWithProjection(_clap_text_config())),
        tokenizer=_roberta_tokenizer(),
        unet=_seeded(seed, 5, _unet),
        scheduler=_scheduler(),
        vocoder=_seeded(seed, 6, _vocoder),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _unet() -> UNet2DConditionModel:
    """The AudioLDM denoiser (MusicLDM's too): (B, 8, h, w) latents, CLAP embedding (B, 16).

    Attention on the three lower levels (the conversion script's `attention_resolutions`
    [8, 4, 2]), one transformer per layer: 2 * 3 (down) + 1 (mid) + 3 * 3 (up) = 16 `attn1`
    modules, as in the real UNet.
    """
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=8,
        out_channels=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=_BLOCK_OUT_CHANNELS,
        layers_per_block=2,
        norm_num_groups=8,
        # Legacy diffusers naming: the number of heads (real: 8); one keeps the CPU forward short.
        attention_head_dim=1,
        cross_attention_dim=_BLOCK_OUT_CHANNELS,
        class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=_CLAP_PROJECTION_DIM,
        class_embeddings_concat=True,
    )
