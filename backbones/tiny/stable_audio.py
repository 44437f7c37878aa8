"""A tiny, randomly initialised Stable Audio Open pipeline, built offline in well under a second.

It mirrors `stabilityai/stable-audio-open-1.0` as diffusers 0.42 lays it out, only narrower:

- the module structure and names of `StableAudioDiTModel`: 24 `transformer_blocks`, each with a
  self-attention `attn1` (grouped-query, rotary) and a cross-attention `attn2`, one prepended
  global token carrying the seconds conditioning and the timestep,
- the latent layout: the Oobleck VAE's real downsampling ratios (2, 4, 4, 8, 8), hop 2048 at
  44.1 kHz stereo, 64 latent channels, so one second of audio is a (B, 64, 22) latent with time on
  the last axis,
- the conditioning path: T5 encoder states -> `StableAudioProjectionModel` (an identity text
  projection, as in the real model where T5-base's width equals the conditioning width) plus
  start/end-seconds embeddings for seconds in [0, 512],
- the scheduler: `CosineDPMSolverMultistepScheduler` with σ in [0.3, 500], σ_data 1,
  v-prediction.

Only widths, depths of the text encoder and vocabularies are small. The VAE encoder keeps 128
hidden channels because its last convolution emits the latent's mean and scale (2 × 64 channels);
it is the slowest part (about a second per second of audio on one CPU thread), so tests encode
short clips. The tokenizer is the character-level in-memory T5 tokenizer of the tiny AudioLDM2,
so every English prompt tokenizes to distinct, non-unknown ids.

References:
    Stable Audio Open (Evans et al., 2024), https://arxiv.org/abs/2407.14358
    diffusers `tests/pipelines/stable_audio/test_stable_audio.py` (the idea of dummy components).
"""

from __future__ import annotations

from diffusers import (
    AutoencoderOobleck,
    CosineDPMSolverMultistepScheduler,
    StableAudioDiTModel,
    StableAudioPipeline,
    StableAudioProjectionModel,
)
from transformers import T5Config, T5EncoderModel

from .audioldm2 import _seeded, _t5_tokenizer, _t5_vocab

__all__ = ["tiny_stable_audio_pipeline"]

# Width of the T5 states and of every conditioning token (real: 768 for both, so the projection's
# text branch is an identity).
_CONDITIONING_DIM = 32
# Latent channels of the Oobleck VAE, the DiT's input (real: 64).
_LATENT_CHANNELS = 64


def tiny_stable_audio_pipeline(*, seed: int = 0) -> StableAudioPipeline:
    """A randomly initialised Stable Audio Open pipeline built offline, with the real latent layout.

    Every component is initialised from its own seed derived from `seed` (so the same seed gives
    bitwise identical weights), is in eval mode, float32, on CPU. The global torch RNG is left as
    it was.

    Shapes: a stereo waveform (B, 2, 2048 · L) at 44.1 kHz encodes to a latent (B, 64, L) and back;
    the DiT maps (B, 64, L) to the same shape; the pipeline's `encode_prompt` returns projected T5
    states (B, 128, 32), and its `encode_duration` one (B, 1, 32) token each for the start and end
    seconds.

    Args:
        seed: seed of the random initialisation.

    Returns:
        A `StableAudioPipeline` with a `CosineDPMSolverMultistepScheduler`.

    Example:
        >>> pipe = tiny_stable_audio_pipeline(seed=0)
        >>> pipe.transformer.config.in_channels, pipe.vae.hop_length, pipe.vae.sampling_rate
        (64, 2048, 44100)
        >>> sum(name.endswith(".attn1") for name, _ in pipe.transformer.named_modules())
        24

    The pipeline's own `__call__` always generates the full 1024-frame window (47.55 s); with
    `output_type="latent"` it takes about a second on one CPU thread, decoding 47 s of audio three.
    """
    pipe = StableAudioPipeline(
        vae=_seeded(seed, 0, _vae),
        text_encoder=_seeded(seed, 1, _t5),
        projection_model=_seeded(seed, 2, _projection),
        tokenizer=_t5_tokenizer(),
        transformer=_seeded(seed, 3, _transformer),
        scheduler=_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _transformer() -> StableAudioDiTModel:
    """The DiT: (B, 64, L) latents, cross-attending (B, 130, 32) text + seconds tokens.

    Real: 24 layers, 24 query heads and 12 key/value heads of 64 channels, cross-attention width
    768, timestep projection 256. The tiny one keeps the 24 layers (so `attn1` module names match)
    and the 2 : 1 grouping of query to key/value heads. `sample_size` is the real 1024 latent
    frames (47.55 s): the pipeline reads its maximum duration from it.
    """
    return StableAudioDiTModel(
        sample_size=1024,
        in_channels=_LATENT_CHANNELS,
        num_layers=24,
        # Rotary embeddings cover half of each head, so the head width must be a multiple of 4.
        attention_head_dim=8,
        num_attention_heads=2,
        num_key_value_attention_heads=1,
        out_channels=_LATENT_CHANNELS,
        cross_attention_dim=16,
        time_proj_dim=16,
        # The global token is the start and end seconds embeddings side by side.
        global_states_input_dim=2 * _CONDITIONING_DIM,
        cross_attention_input_dim=_CONDITIONING_DIM,
    )


def _vae() -> AutoencoderOobleck:
    """Stereo waveform (B, 2, 2048 · L) <-> latent (B, 64, L) at 44.1 kHz: the real hop.

    Real: encoder_hidden_size 128, channel_multiples (1, 2, 4, 8, 16), decoder_channels 128. The
    encoder's width is its output's (mean and scale of 64 channels each); its deeper levels stay at
    that width, and the decoder is narrow.
    """
    return AutoencoderOobleck(
        encoder_hidden_size=2 * _LATENT_CHANNELS,
        downsampling_ratios=[2, 4, 4, 8, 8],
        channel_multiples=[1, 1, 1, 1, 1],
        decoder_channels=4,
        decoder_input_channels=_LATENT_CHANNELS,
        audio_channels=2,
        sampling_rate=44100,
    )


def _t5() -> T5EncoderModel:
    """T5 encoder: ids (B, L) -> states (B, L, 32). ReLU feed-forward as in T5-base (real: 768 wide,
    12 layers)."""
    config = T5Config(
        vocab_size=len(_t5_vocab()),
        d_model=_CONDITIONING_DIM,
        d_kv=8,
        d_ff=64,
        num_heads=4,
        num_layers=2,
        feed_forward_proj="relu",
    )
    return T5EncoderModel(config)


def _projection() -> StableAudioProjectionModel:
    """T5 states pass unchanged (equal widths); seconds in [0, 512] -> one (B, 1, 32) token each."""
    return StableAudioProjectionModel(
        text_encoder_dim=_CONDITIONING_DIM,
        conditioning_dim=_CONDITIONING_DIM,
        min_value=0,
        max_value=512,
    )


def _scheduler() -> CosineDPMSolverMultistepScheduler:
    """The real Stable Audio Open scheduler configuration."""
    return CosineDPMSolverMultistepScheduler(
        sigma_min=0.3,
        sigma_max=500,
        sigma_data=1.0,
        sigma_schedule="exponential",
        solver_order=2,
        prediction_type="v_prediction",
    )
