"""A tiny, randomly initialised MusicLDM pipeline built offline in well under a second.

MusicLDM is AudioLDM's architecture retrained on music (`ucsd-reach/musicldm`): the same UNet,
VAE and vocoder, with a full `ClapModel` as text encoder (its text features, L2-normalised, are
the conditioning; its audio tower scores waveforms when several are generated per prompt) and a
`ClapFeatureExtractor`. The UNet is the tiny AudioLDM one (`backbones.tiny.audioldm`), every other
component the tiny AudioLDM2 one (`backbones.tiny.audioldm2`).

`MusicLDMPipeline` is deprecated in diffusers (it logs a warning when built).

References:
    MusicLDM (Chen et al., 2024), https://arxiv.org/abs/2308.01546
"""

from __future__ import annotations

from diffusers import MusicLDMPipeline

from .audioldm import _unet
from .audioldm2 import (
    _clap,
    _clap_feature_extractor,
    _roberta_tokenizer,
    _scheduler,
    _seeded,
    _vae,
    _vocoder,
)

__all__ = ["tiny_musicldm_pipeline"]


def tiny_musicldm_pipeline(*, seed: int = 0) -> MusicLDMPipeline:
    """A randomly initialised MusicLDM pipeline built offline, with the real latent layout.

    Seeding, modes and shapes are those of :func:`~backbones.tiny.audioldm.tiny_audioldm_pipeline`;
    the text encoder is a `ClapModel` whose `get_text_features` gives (B, 16).

    Example:
        >>> pipe = tiny_musicldm_pipeline(seed=0)
        >>> type(pipe.text_encoder).__name__, pipe.unet.config.class_embed_type
        ('ClapModel', 'simple_projection')
    """
    pipe = MusicLDMPipeline(
        vae=_seeded(seed, 0, _vae),
        text_encoder=_seeded(seed, 1, _clap),
        tokenizer=_roberta_tokenizer(),
        feature_extractor=_clap_feature_extractor(),
        unet=_seeded(seed, 5, _unet),
        scheduler=_scheduler(),
        vocoder=_seeded(seed, 6, _vocoder),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
