"""MusicLDM (Chen et al., 2024, https://arxiv.org/abs/2308.01546) behind the :class:`Backbone` interface.

MusicLDM is AudioLDM's architecture trained on music: the UNet is conditioned on the L2-normalised
CLAP text features of the prompt (``ClapModel.get_text_features``) through its
``simple_projection`` class embedding, with no text cross-attention. Everything else is
:class:`~backbones.audioldm.AudioLDMBackbone`'s.
"""

from __future__ import annotations

import warnings

from diffusers import MusicLDMPipeline
from torch import Tensor

from .audioldm import AudioLDMBackbone
from .conditioning import Conditioning


class MusicLDMBackbone(AudioLDMBackbone):
    """MusicLDM (``ucsd-reach/musicldm``) as a score function.

    ``MusicLDMPipeline`` is deprecated in diffusers (no fixes after 0.33.1; it still loads in
    0.42 and logs a deprecation warning whenever a pipeline is built). Its prompt encoding does
    not run with transformers 5 (``get_text_features`` now returns an output object, which the
    pipeline calls ``.to`` on), so this adapter encodes prompts itself, step for step as the
    pipeline's ``_encode_prompt`` does, taking the features from the output's
    ``pooler_output`` (the projected, normalised features) as diffusers' AudioLDM2 pipeline does. The pipeline's ``__call__`` fails
    for the same reason; the adapter does not use it.

    Args:
        pipe: a loaded ``MusicLDMPipeline`` with a ``ClapModel`` text encoder.
        mel: the mel front end; its band count must match the vocoder's input.
        name_or_path: where the pipeline was loaded from (``None`` for an in-memory pipeline).

    Example:
        >>> from backbones import MusicLDMBackbone
        >>> from backbones.tiny import tiny_musicldm_pipeline
        >>> backbone = MusicLDMBackbone.from_pipe(tiny_musicldm_pipeline())
        >>> backbone.encode_prompt(["a piano melody"]).cond["class_labels"].shape
        torch.Size([1, 16])
    """

    family = "musicldm"
    pipeline_class = MusicLDMPipeline
    description = "a MusicLDM pipeline"
    example_repo = "ucsd-reach/musicldm"

    def encode_one(self, prompt: str) -> Conditioning:
        """CLAP text features ``(1, D)`` (unit norm) of ``prompt`` and of the empty negative prompt;
        a warning where the prompt is longer than the text encoder reads (it is cut, as the
        pipeline cuts it, but the pipeline's tokenizer says nothing)."""
        tokenizer = self.pipe.tokenizer
        most = tokenizer.model_max_length
        # cut one past the most: longer means cut by the encoder (and no tokenizer warning here)
        if len(tokenizer(prompt, truncation=True, max_length=most + 1).input_ids) > most:
            warnings.warn(
                f"MusicLDM's text encoder reads a prompt's first {most} tokens: the end of {prompt!r} is left "
                "out; shorten the prompt",
                stacklevel=4,
            )
        embeds = self._text_features(prompt, max_length=most)
        # As the pipeline does: the negative prompt is padded to the embedding width, not to the
        # tokenizer's length (the attention mask makes the padding length immaterial).
        negative = self._text_features("", max_length=embeds.shape[1])
        return Conditioning(cond={"class_labels": embeds}, uncond={"class_labels": negative})

    def _text_features(self, prompt: str, *, max_length: int) -> Tensor:
        """``get_text_features`` of one prompt padded to ``max_length`` tokens, ``(1, D)``."""
        inputs = self.pipe.tokenizer(
            [prompt], padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
        text_encoder = self.pipe.text_encoder
        output = text_encoder.get_text_features(
            inputs.input_ids.to(self.device), attention_mask=inputs.attention_mask.to(self.device)
        )
        return output.pooler_output.to(dtype=text_encoder.text_model.dtype)
