"""AudioLDM2 (Liu et al., 2024, https://arxiv.org/abs/2308.05734) behind the :class:`Backbone` interface.

The adapter owns the components of a diffusers ``AudioLDM2Pipeline`` and reuses the pipeline's own
prompt encoding (CLAP + Flan-T5 → projection → 8 GPT-2 states), so its conditioning is exactly the
pipeline's. Audio enters through the AudioLDM mel front end and the VAE, and leaves through the
VAE and the HiFi-GAN vocoder (shared with AudioLDM and MusicLDM in :mod:`backbones.mel_vae`).
Latents are ``(B, 8, T, 16)``: 25 latent frames per second on axis 2, 16 frequency bins on axis 3.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from diffusers import AudioLDM2Pipeline, Transformer2DModel
from torch import Tensor, nn
from transformers import GPT2LMHeadModel

from .base import checkpoint_call
from .conditioning import Conditioning
from .mel_vae import MelVAEBackbone

#: the T5 states' padding mask (:attr:`backbones.Conditioning.masks`)
T5_MASK = {"encoder_hidden_states_1": "encoder_attention_mask_1"}


class AudioLDM2Backbone(MelVAEBackbone):
    """AudioLDM2 (``cvssp/audioldm2``, ``-music``, ``-large``) as a score function.

    Args:
        pipe: a loaded ``AudioLDM2Pipeline``; its components are frozen and put in eval mode.
        mel: the mel front end; its band count must match the vocoder's input.
        name_or_path: where the pipeline was loaded from (``None`` for an in-memory pipeline).

    Example:
        >>> from backbones import AudioLDM2Backbone
        >>> from backbones.tiny import tiny_audioldm2_pipeline
        >>> backbone = AudioLDM2Backbone.from_pipe(tiny_audioldm2_pipeline())
        >>> backbone.encode_audio(torch.zeros(1, 16000), 16000).shape
        torch.Size([1, 8, 25, 16])
    """

    family = "audioldm2"
    pipeline_class = AudioLDM2Pipeline
    description = "an AudioLDM2 pipeline"
    example_repo = "cvssp/audioldm2-music"

    @staticmethod
    def _checkpoint(module: nn.Module, *args: Any) -> Any:
        """:func:`~backbones.base.checkpoint_call` of ``module(*args)``, with AudioLDM2's
        transformer calls named.

        AudioLDM2's blocks (diffusers 0.42) give each ``Transformer2DModel`` seven positional
        arguments written for a signature without ``added_cond_kwargs``, so from the fourth on
        they land one parameter off (the cross-attention mask becomes the self-attention mask
        and the call fails); here they are passed by name, with ``return_dict=False`` (the
        blocks take item 0 of the result; the default output class is deprecated, warns on each
        call and breaks a compiled graph).
        """
        if isinstance(module, Transformer2DModel) and len(args) == 7:
            hidden, states, timestep, labels, attention_kwargs, mask, states_mask = args
            return checkpoint_call(
                module, hidden, encoder_hidden_states=states, timestep=timestep, class_labels=labels,
                cross_attention_kwargs=attention_kwargs, attention_mask=mask, encoder_attention_mask=states_mask,
                return_dict=False,
            )
        return checkpoint_call(module, *args)

    @classmethod
    def _load_pipeline(cls, name: str, *, torch_dtype: torch.dtype, **kwargs: Any) -> AudioLDM2Pipeline:
        # A saved pipeline may record its language model as GPT2Model, whose output has no
        # hidden-state generation path: load the LM-head class explicitly (same weights).
        # where the files come from is the pipeline's too (local_files_only: offline, no retries)
        hub = {key: kwargs[key] for key in ("local_files_only", "revision", "cache_dir", "token") if key in kwargs}
        language_model = GPT2LMHeadModel.from_pretrained(name, subfolder="language_model", dtype=torch_dtype, **hub)
        return AudioLDM2Pipeline.from_pretrained(name, dtype=torch_dtype, language_model=language_model, **kwargs)

    def encode_one(self, prompt: str) -> Conditioning:
        """GPT-2 states ``(1, 8, D)``, T5 states ``(1, L, D')`` and their mask ``(1, L)``, by the
        pipeline's ``encode_prompt``; the unconditional part is the empty prompt encoded alone,
        the same for every prompt.

        The pipeline's own negative prompt is padded to its prompt's T5 length, and GPT-2 numbers
        its positions through that padding: its ε_∅ changed with the prompt's length, and the DDS
        delta of a source and a target of different lengths gained (1 − g)·(ε_∅,tgt − ε_∅,src),
        29 times that difference at guidance 30."""
        return Conditioning(cond=self._encode_alone(prompt), uncond=self._encode_alone(""), masks=T5_MASK)

    def _encode_alone(self, prompt: str) -> dict[str, Tensor]:
        """The UNet's text fields of one prompt, without padding: the pipeline's GPT-2 states, T5
        states and their mask."""
        with warnings.catch_warnings():
            # diffusers 0.42's pipeline passes past_key_values to GPT-2, which transformers 5.24
            # deprecates with a FutureWarning on every prompt: nothing a user can act on
            # (pyproject.toml keeps transformers below 5.40, which removes it)
            warnings.filterwarnings("ignore", message="`past_key_values` is deprecated", category=FutureWarning)
            t5_states, t5_mask, gpt2_states = self.pipe.encode_prompt(
                prompt, self.device, num_waveforms_per_prompt=1, do_classifier_free_guidance=False
            )
        return {"encoder_hidden_states": gpt2_states, "encoder_hidden_states_1": t5_states, "encoder_attention_mask_1": t5_mask}
