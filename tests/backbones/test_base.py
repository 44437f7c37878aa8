"""What the Backbone base class reads from any denoiser."""

import torch
from torch import nn

from backbones import Backbone, Conditioning


class ScoreFunction(Backbone):
    """A toy score function: ε̂ = x_t, a denoiser without parameters."""

    family = "toy"
    sample_rate = 100

    def __init__(self, denoiser: nn.Module) -> None:
        self._denoiser = denoiser

    @property
    def alphas_cumprod(self):
        return torch.linspace(0.99, 0.01, 10)

    @property
    def denoiser(self):
        return self._denoiser

    def encode_prompt(self, prompts):
        return Conditioning(cond={"y": torch.zeros(len(prompts), 1)}, uncond={"y": torch.zeros(len(prompts), 1)})

    def predict_noise(self, x_t, t, cond, guidance_scale=1.0):
        return x_t

    def encode_audio(self, waveform, sample_rate):
        return waveform.reshape(waveform.shape[0], 1, -1)

    def decode_audio(self, latent, num_samples=None):
        return latent.reshape(latent.shape[0], -1)[:, :num_samples]

    def self_attention_modules(self):
        return {}


def test_a_denoiser_without_parameters_is_float32_on_the_cpu():
    """It was a bare StopIteration from ``next(parameters())``."""
    toy = ScoreFunction(nn.Identity())
    assert (toy.dtype, toy.device) == (torch.float32, torch.device("cpu"))
    assert ScoreFunction(nn.Linear(1, 1).double()).dtype == torch.float64


def test_latent_channels_come_from_a_diffusers_config(tiny_backbone):
    assert tiny_backbone.latent_channels == tiny_backbone.denoiser.config.in_channels == 8
    assert ScoreFunction(nn.Identity()).latent_channels is None
