"""A tiny, randomly initialised AudioLDM2 pipeline that is built offline in well under a second.

It mirrors `cvssp/audioldm2-music` as diffusers 0.42 lays it out, only narrower:

- the module structure and names of `AudioLDM2UNet2DConditionModel` (block types, the per-block
  cross-attention pattern `[None, gpt2_dim, t5_dim]`, hence the 48 `attn1` self-attention modules),
- the latent layout: 8 latent channels, VAE downsampling 4, 64 mel bins -> 16 latent frequency bins,
  so 10.24 s of audio is a (B, 8, 256, 16) latent with axis 2 time and axis 3 frequency,
- the conditioning path: CLAP text features + Flan-T5 states -> `AudioLDM2ProjectionModel` -> GPT2
  generates 8 hidden states,
- the DDIM schedule (scaled_linear betas 0.0015 -> 0.0195 over 1000 steps, epsilon prediction),
- a HiFi-GAN vocoder with hop 160 at 16 kHz.

Only widths, depths and vocabularies are small. The tokenizers are built in memory from
character-level vocabularies, so that every English prompt tokenizes to distinct, non-unknown ids
and different prompts give different conditioning even with random weights.

References:
    AudioLDM 2 (Liu et al., 2023), https://arxiv.org/abs/2308.05734
    diffusers `scripts/convert_original_audioldm2_to_diffusers.py` (the real configs) and
    `tests/pipelines/audioldm2/test_audioldm2.py` (the idea of dummy components).
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import TypeVar

import torch
from diffusers import AudioLDM2Pipeline, AutoencoderKL, DDIMScheduler
from diffusers.pipelines.audioldm2 import AudioLDM2ProjectionModel, AudioLDM2UNet2DConditionModel
from tokenizers import pre_tokenizers
from transformers import (
    ClapAudioConfig,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapTextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    RobertaTokenizer,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

__all__ = ["tiny_audioldm2_pipeline"]

# Widths of the conditioning path. The UNet's cross-attention dims must equal them: the second
# transformer of each layer attends to the GPT2 states, the third to the T5 states.
_CLAP_PROJECTION_DIM = 16  # real: 512
_GPT2_DIM = 16  # real: 768 (GPT2 n_embd)
_T5_DIM = 32  # real: 1024 (Flan-T5-large d_model)

# Number of GPT2 hidden states generated per prompt (real AudioLDM2: 8, `sequence_gen_length`).
_GENERATED_TOKENS = 8
# Token budgets. T5's 128 is the real one (hard-coded in AudioLDM2). CLAP's real 512 is cut to 128
# because the pipeline always pads CLAP inputs to `model_max_length`; with one token per byte that
# still holds a 126-byte prompt.
_CLAP_MAX_LENGTH = 128
_T5_MAX_LENGTH = 128

# The learnt VAE scale of the real checkpoints is not 0.18215 (Stable Diffusion's); any code that
# hard-codes 0.18215 instead of reading `vae.config.scaling_factor` must fail against this one.
_VAE_SCALING_FACTOR = 0.5

_Module = TypeVar("_Module", bound=torch.nn.Module)


def tiny_audioldm2_pipeline(*, seed: int = 0) -> AudioLDM2Pipeline:
    """A randomly initialised AudioLDM2 pipeline built offline, with the real latent layout.

    Every component is initialised from its own seed derived from `seed` (so the same seed gives
    bitwise identical weights), is in eval mode, float32, on CPU. The global torch RNG is left as
    it was.

    Shapes: a log-mel "image" (B, 1, T, 64) encodes to a latent (B, 8, T / 4, 16); the UNet maps
    (B, 8, T / 4, 16) to the same shape; the vocoder maps a mel (B, T, 64) to (B, 160 * T + 32) samples
    at 16 kHz. The pipeline's `encode_prompt` returns T5 states (B, L, 32), their mask (B, L) and
    GPT2 states (B, 8, 16).

    Args:
        seed: seed of the random initialisation.

    Returns:
        An `AudioLDM2Pipeline` with a `GPT2LMHeadModel` language model and a `DDIMScheduler`.

    Example:
        >>> pipe = tiny_audioldm2_pipeline(seed=0)
        >>> pipe.unet.config.in_channels, pipe.vae.config.latent_channels, pipe.vae_scale_factor
        (8, 8, 4)
        >>> pipe("a piano melody", num_inference_steps=2, audio_length_in_s=1.28).audios.shape
        (1, 20480)
    """
    pipe = AudioLDM2Pipeline(
        vae=_seeded(seed, 0, _vae),
        text_encoder=_seeded(seed, 1, _clap),
        text_encoder_2=_seeded(seed, 2, _t5),
        projection_model=_seeded(seed, 3, _projection),
        language_model=_seeded(seed, 4, _gpt2),
        tokenizer=_roberta_tokenizer(),
        tokenizer_2=_t5_tokenizer(),
        feature_extractor=_clap_feature_extractor(),
        unet=_seeded(seed, 5, _unet),
        scheduler=_scheduler(),
        vocoder=_seeded(seed, 6, _vocoder),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _seeded(seed: int, offset: int, build: Callable[[], _Module]) -> _Module:
    """Build one module under its own seed, without disturbing the global RNG.

    Each component gets `seed * 1000 + offset` so that resizing one component does not change the
    weights of the others.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1000 + offset)
        module = build()
    # `.float()` rather than `.to(torch.float32)`: diffusers' `to` warns about casting, and the
    # modules are built float32 on CPU anyway unless the default dtype was changed.
    return module.float().eval()


def _unet() -> AudioLDM2UNet2DConditionModel:
    """The denoiser: (B, 8, h, w) latents, cross-attending GPT2 (B, 8, 16) and T5 (B, L, 32) states.

    Block types follow the conversion script's `attention_resolutions` [8, 4, 2] on 4 levels: the
    first down block and the last up block have no attention. Each attention layer holds three
    transformers: self-attention only (`None`), GPT2 cross-attention, T5 cross-attention; that makes
    2 * 3 * 3 (down) + 3 (mid) + 3 * 3 * 3 (up) = 48 `attn1` modules, as in the real UNet.
    Channels keep the real 1 : 2 : 3 : 5 ratio (real: 128, 256, 384, 640).
    """
    return AudioLDM2UNet2DConditionModel(
        sample_size=64,
        in_channels=8,
        out_channels=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16, 24, 40),
        layers_per_block=2,
        norm_num_groups=8,
        # Legacy diffusers naming: this is the number of heads (real: 8). One head halves the CPU
        # time of a forward against two: attention at 128 x 8 latent positions dominates it.
        attention_head_dim=1,
        cross_attention_dim=tuple((None, _GPT2_DIM, _T5_DIM) for _ in range(4)),
        transformer_layers_per_block=1,
    )


def _vae() -> AutoencoderKL:
    """Mel "image" (B, 1, T, 64) <-> latent (B, 8, T / 4, 16): three levels, two downsamplings.

    Real: block_out_channels (128, 256, 512), 2 layers per block.
    """
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=8,
        sample_size=64,
        scaling_factor=_VAE_SCALING_FACTOR,
    )


def _vocoder() -> SpeechT5HifiGan:
    """HiFi-GAN: mel (B, T, 64) -> waveform (B, 160 * T + 32) at 16 kHz (the pipeline trims to 160 * T).

    Upsample rates and kernels are the real ones (5 * 4 * 2 * 2 * 2 = 160 = the STFT hop); the
    initial channel count (real: 1024) is the smallest that survives five halvings.
    """
    config = SpeechT5HifiGanConfig(
        model_in_dim=64,
        sampling_rate=16000,
        upsample_initial_channel=32,
        upsample_rates=[5, 4, 2, 2, 2],
        upsample_kernel_sizes=[16, 16, 8, 4, 4],
        resblock_kernel_sizes=[3, 7, 11],
        resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        normalize_before=False,
    )
    return SpeechT5HifiGan(config)


def _clap_text_config() -> ClapTextConfig:
    """CLAP's RoBERTa text tower: ids (B, 128) -> pooled state projected to (B, 16)."""
    return ClapTextConfig(
        vocab_size=len(_roberta_vocab()),
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_hidden_layers=2,
        # RoBERTa positions start after the padding index, hence the + 2.
        max_position_embeddings=_CLAP_MAX_LENGTH + 2,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        projection_dim=_CLAP_PROJECTION_DIM,
    )


def _clap() -> ClapModel:
    """CLAP: text ids (B, 128) -> text features (B, 16); the audio tower is only used for scoring."""
    text_config = _clap_text_config()
    audio_config = ClapAudioConfig(
        spec_size=64,
        window_size=4,
        num_mel_bins=64,
        patch_size=4,
        patch_stride=4,
        patch_embeds_hidden_size=8,
        hidden_size=16,
        depths=[1, 1],
        num_attention_heads=[2, 2],
        projection_dim=_CLAP_PROJECTION_DIM,
    )
    return ClapModel(
        ClapConfig(
            text_config=text_config.to_dict(),
            audio_config=audio_config.to_dict(),
            projection_dim=_CLAP_PROJECTION_DIM,
        )
    )


def _t5() -> T5EncoderModel:
    """Flan-T5 encoder: ids (B, L) -> states (B, L, 32). Gated-GELU feed-forward as in Flan-T5."""
    config = T5Config(
        vocab_size=len(_t5_vocab()),
        d_model=_T5_DIM,
        d_kv=8,
        d_ff=64,
        num_heads=4,
        num_layers=2,
        feed_forward_proj="gated-gelu",
    )
    return T5EncoderModel(config)


def _projection() -> AudioLDM2ProjectionModel:
    """Projects CLAP (B, 1, 16) and T5 (B, L, 32) states to GPT2's width, with learnt SOS/EOS."""
    return AudioLDM2ProjectionModel(
        text_encoder_dim=_CLAP_PROJECTION_DIM,
        text_encoder_1_dim=_T5_DIM,
        langauge_model_dim=_GPT2_DIM,  # sic: diffusers' spelling
    )


def _gpt2() -> GPT2LMHeadModel:
    """GPT2 that generates 8 hidden states (B, 8, 16) from the projected prompt.

    The pipeline calls the LM-head class (a bare `GPT2Model` fails in `generate_language_model`).
    Its positions must cover CLAP (1 + 2 SOS/EOS) + T5 (128 + 2) + 8 generated states.
    """
    config = GPT2Config(
        vocab_size=64,  # never used: the model is driven by `inputs_embeds`
        # GPT2's BOS/EOS id is its last token (50256 in the real vocabulary).
        bos_token_id=63,
        eos_token_id=63,
        n_embd=_GPT2_DIM,
        n_head=2,
        n_layer=2,
        n_positions=256,
    )
    model = GPT2LMHeadModel(config)
    # The pipeline reads the default number of generated states from the model config.
    model.config.max_new_tokens = _GENERATED_TOKENS
    return model


def _scheduler() -> DDIMScheduler:
    """The real AudioLDM2 schedule, as the conversion script builds it."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0015,
        beta_end=0.0195,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        steps_offset=1,
        clip_sample=False,
        set_alpha_to_one=False,
    )


def _clap_feature_extractor() -> ClapFeatureExtractor:
    """Feature extractor for CLAP scoring (only used with `num_waveforms_per_prompt > 1`).

    Waveform at 48 kHz -> features (B, 1, 61, 64). A hop of 7900 keeps 10 s within the tiny audio
    tower's 64 frames; "rand_trunc" gives the single mel channel of the unfused CLAP that AudioLDM2
    uses (the default "fusion" stacks 4).
    """
    return ClapFeatureExtractor(feature_size=64, sampling_rate=48000, hop_length=7900, truncation="rand_trunc")


def _roberta_vocab() -> dict[str, int]:
    """RoBERTa's special tokens (in RoBERTa's order) plus the 256 byte-level symbols, no merges.

    Without merges every prompt becomes one token per UTF-8 byte: nothing is ever unknown.
    """
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    return {token: index for index, token in enumerate([*specials, *symbols, "<mask>"])}


def _roberta_tokenizer() -> RobertaTokenizer:
    """Byte-level BPE tokenizer for CLAP: text -> (B, 128) ids, padded to `model_max_length`."""
    return RobertaTokenizer(vocab=_roberta_vocab(), merges=[], model_max_length=_CLAP_MAX_LENGTH)


def _t5_vocab() -> list[tuple[str, float]]:
    """T5's special tokens (<pad>=0, </s>=1, <unk>=2), the word-start marker and printable characters.

    Covers printable ASCII and the Latin-1 supplement, each as its own unigram piece.
    """
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    characters = [c for c in string.printable if not c.isspace()] + [chr(i) for i in range(0xA1, 0x100)]
    return [*specials, ("▁", -1.0), *[(c, -2.0) for c in characters]]


def _t5_tokenizer() -> T5Tokenizer:
    """Character-level unigram tokenizer for Flan-T5: text -> (B, L) ids, L <= 128."""
    return T5Tokenizer(vocab=_t5_vocab(), extra_ids=0, model_max_length=_T5_MAX_LENGTH)
