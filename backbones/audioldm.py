"""AudioLDM (Liu et al., 2023, https://arxiv.org/abs/2301.12503) behind the :class:`Backbone` interface.

AudioLDM conditions its UNet on one vector per prompt: the L2-normalised CLAP text embedding,
which the UNet projects and concatenates to its time embedding (``class_embed_type=
"simple_projection"``, ``class_embeddings_concat``). There is no cross-attention to text: the
pipeline passes ``encoder_hidden_states=None``, so each transformer block's ``attn2`` attends to
the latent as ``attn1`` does. Audio, latents and schedule are the AudioLDM family's
(:mod:`backbones.mel_vae`): ``(B, 8, T, 16)`` latents, 25 frames per second on axis 2.
"""

from __future__ import annotations

from diffusers import AudioLDMPipeline
from torch import Tensor

from .conditioning import Conditioning
from .mel_vae import MelVAEBackbone


class AudioLDMBackbone(MelVAEBackbone):
    """AudioLDM (``cvssp/audioldm-s-full-v2``, ``-m-full``, ``-l-full``) as a score function.

    ``AudioLDMPipeline`` is deprecated in diffusers (no fixes after 0.33.1; it still loads and
    runs in 0.42 and logs a deprecation warning whenever a pipeline is built). Prefer
    :class:`~backbones.AudioLDM2Backbone` for new work.

    Args:
        pipe: a loaded ``AudioLDMPipeline``; its components are frozen and put in eval mode.
        mel: the mel front end; its band count must match the vocoder's input.
        name_or_path: where the pipeline was loaded from (``None`` for an in-memory pipeline).

    Example:
        >>> from backbones import AudioLDMBackbone
        >>> from backbones.tiny import tiny_audioldm_pipeline
        >>> backbone = AudioLDMBackbone.from_pipe(tiny_audioldm_pipeline())
        >>> backbone.encode_prompt(["a piano melody"]).cond["class_labels"].shape
        torch.Size([1, 16])
    """

    family = "audioldm"
    pipeline_class = AudioLDMPipeline
    description = "an AudioLDM pipeline"
    example_repo = "cvssp/audioldm-s-full-v2"

    def encode_one(self, prompt: str) -> Conditioning:
        """CLAP text embeddings ``(1, D)``, L2-normalised, by the pipeline's own ``_encode_prompt``
        (its only prompt encoder) with the empty negative prompt."""
        embeds = self.pipe._encode_prompt(
            prompt, self.device, num_waveforms_per_prompt=1, do_classifier_free_guidance=True
        )
        # The pipeline stacks [negative; positive] along the batch.
        return Conditioning(cond={"class_labels": embeds[1:]}, uncond={"class_labels": embeds[:1]})

    def _denoise(self, x: Tensor, t: Tensor, kwargs: dict[str, Tensor]) -> Tensor:
        """``unet(x, t, encoder_hidden_states=None, class_labels=…)``, as the pipeline calls it."""
        return self.pipe.unet(x.to(self.dtype), t, encoder_hidden_states=None, **kwargs, return_dict=False)[0]
