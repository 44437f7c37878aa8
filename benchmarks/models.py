"""Models the step benchmarks run: the tiny offline AudioLDM2 (CPU, CI) and a real-size one.

The real-size model is AudioLDM2-music's UNet architecture with random weights (the weights
cannot be downloaded here, and speed does not depend on their values): block_out_channels
(128, 256, 384, 640), 2 layers per block, cross-attention dims [None, 768, 1024], 8 latent
channels, 8 heads, ~350 M parameters. Its text path is left out: prompts are encoded once per
edit, so each prompt gets a fixed random conditioning of the real widths (8 GPT-2 states of 768,
T5 states of 1024) instead.
"""

from __future__ import annotations

import argparse
import zlib

import torch
from diffusers.pipelines.audioldm2 import AudioLDM2UNet2DConditionModel

from backbones import AudioLDM2Backbone, Conditioning
from backbones.audioldm2 import T5_MASK
from backbones.tiny import tiny_audioldm2_pipeline
from steer import Concept, Editor, SteerMusic, SteerMusicPlus
from steer.concepts.concept import LORA_TARGETS, ConceptConfig
from steer.performance import Performance, compile_backends

#: 10.24 s of audio: (batch, channels, time, frequency).
REAL_LATENT = (8, 256, 16)
#: 1.28 s, keeping the tiny CPU benchmark within seconds.
TINY_LATENT = (8, 32, 16)

_GPT2_DIM, _T5_DIM, _T5_TOKENS, _GENERATED = 768, 1024, 16, 8


def real_size_unet(*, seed: int = 0) -> AudioLDM2UNet2DConditionModel:
    """AudioLDM2-music's UNet (conversion defaults) with random weights, float32, eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = AudioLDM2UNet2DConditionModel(
            sample_size=64,
            in_channels=8,
            out_channels=8,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(128, 256, 384, 640),
            layers_per_block=2,
            attention_head_dim=8,
            cross_attention_dim=tuple((None, _GPT2_DIM, _T5_DIM) for _ in range(4)),
            transformer_layers_per_block=1,
        )
    return unet.eval()


class RealSizeBackbone(AudioLDM2Backbone):
    """The tiny pipeline's audio path and schedule around the real-size UNet.

    ``encode_prompt`` gives each prompt a fixed random conditioning of the real widths (the
    text encoders would only run once per edit, outside the timed steps).
    """

    @classmethod
    def build(cls, *, seed: int = 0) -> RealSizeBackbone:
        """The tiny pipeline with the real-size UNet (random weights from ``seed``)."""
        pipe = tiny_audioldm2_pipeline(seed=seed)
        pipe.unet = real_size_unet(seed=seed)
        return cls(pipe)

    @torch.no_grad()
    def encode_one(self, prompt: str) -> Conditioning:
        generator = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))

        def fields() -> dict[str, torch.Tensor]:
            return {
                "encoder_hidden_states": torch.randn(1, _GENERATED, _GPT2_DIM, generator=generator),
                "encoder_hidden_states_1": torch.randn(1, _T5_TOKENS, _T5_DIM, generator=generator),
                "encoder_attention_mask_1": torch.ones(1, _T5_TOKENS, dtype=torch.long),
            }

        return Conditioning(cond=fields(), uncond=fields(), masks=T5_MASK).to(self.device)


def lora_concept(*, rank: int = 4, backbone: AudioLDM2Backbone | None = None, std: float = 0.0) -> Concept:
    """A LoRA concept on the attention projections (rank 4); applied, its adapter starts with
    B = 0, which costs the same as trained weights. With ``std`` > 0, B is drawn with that
    standard deviation (seeded) on ``backbone``'s denoiser instead, so that ε′ differs from ε
    as a trained concept's does (what the gradient agreement of SteerMusic+ needs)."""
    config = ConceptConfig(
        method="lora", token="sks", class_word="guitar", family="audioldm2", lora_rank=rank,
        lora_targets=LORA_TARGETS,
    )
    concept = Concept(config, {})
    if std == 0:
        return concept
    if backbone is None:
        raise ValueError("drawing B needs the backbone whose denoiser the concept adapts")
    generator = torch.Generator().manual_seed(0)
    with concept.apply(backbone) as personalized, torch.no_grad():
        for name, p in sorted(personalized.trainable_parameters().items()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * std)
        weights = personalized.concept_weights()
    return Concept(config, weights)


def device_option(name: str) -> torch.device:
    """A ``--device`` value (argparse's ``type``): a device this machine has, so that a script
    refuses a missing GPU before it builds a model."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise argparse.ArgumentTypeError(f"{name!r} is not a torch device: give cpu or cuda") from error
    if device.type not in ("cpu", "cuda"):  # mps, meta, ...: failed inside the model with a traceback
        raise argparse.ArgumentTypeError(f"{name!r}: the benchmarks run on cpu or cuda, not {device.type}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{name!r}: torch finds no CUDA GPU here; run on a GPU machine or give cpu")
    return device


def compile_backend_option(name: str) -> str:
    """A ``--compile-backend`` value (argparse's ``type``): a backend ``torch.compile`` has here
    (:func:`~steer.performance.compile_backends`), so that a typo is refused before a model is
    built or a case warms up."""
    if name not in (backends := compile_backends()):
        raise argparse.ArgumentTypeError(f"{name!r} is not a torch.compile backend here: use one of {', '.join(backends)}")
    return name


def build_backbone(*, real_size: bool, device: torch.device) -> AudioLDM2Backbone:
    """The benchmark's backbone on ``device``: real-size or the tiny offline one."""
    if real_size:
        return RealSizeBackbone.build().to(device)
    return AudioLDM2Backbone.from_pipe(tiny_audioldm2_pipeline()).to(device)


def make_editor(
    recipe: str, backbone: AudioLDM2Backbone, performance: Performance, steps: int, concept: Concept | None = None
) -> Editor:
    """The benchmarks' editor: ``"steermusic"``, or ``"steermusic_plus"`` with ``concept``
    (:func:`lora_concept` by default; close the editor to remove the adapter)."""
    if recipe == "steermusic":
        return SteerMusic(backbone, steps=steps, performance=performance)
    return SteerMusicPlus(backbone, concept or lora_concept(), steps=steps, performance=performance)
