"""Shared fixtures: a tiny random AudioLDM2 (built once per session), a LoRA concept that changes
its UNet, and an analytic backbone whose noise prediction is known in closed form; an aten-op
counter (:class:`OpCounts`, the ``op_counts`` fixture); diffusers' log records (``diffusers_log``);
``no_model_loads``, which fails a test that loads a backbone."""

from __future__ import annotations

import collections
import logging
import zlib
from collections.abc import Iterator, Sequence

import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from backbones import AudioLDM2Backbone, Backbone, Conditioning
from backbones.tiny import tiny_audioldm2_pipeline
from steer import Concept
from steer.concepts.concept import LORA_TARGETS, ConceptConfig


class AnalyticBackbone(Backbone):
    """A backbone whose data distribution for prompt y is a point mass at μ_y.

    Then ε(x_t, y) = (x_t − √ᾱ_t μ_y) / √(1 − ᾱ_t) exactly, the unconditional μ_∅ is 0, and the
    DDS gradient is w(t) · √ᾱ/√(1−ᾱ) · ((x − x_src) − g (μ_tgt − μ_src)): DDS moves x from x_src
    along μ_tgt − μ_src, which tests can check without a trained model.
    """

    family = "analytic"
    sample_rate = 100

    def __init__(self, shape: Sequence[int] = (2, 6, 4)) -> None:
        self.shape = tuple(shape)
        #: scales every prediction (1: the exact one); a plain attribute, as a module's settings are
        self.gain = 1.0
        self._denoiser = nn.Linear(1, 1)
        betas = torch.linspace(0.0015**0.5, 0.0195**0.5, 1000) ** 2
        self._alphas_cumprod = torch.cumprod(1 - betas, 0)

    @property
    def alphas_cumprod(self) -> Tensor:
        return self._alphas_cumprod

    @property
    def denoiser(self) -> nn.Module:
        return self._denoiser

    def mean(self, prompt: str) -> Tensor:
        generator = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
        return torch.randn(self.shape, generator=generator)

    def encode_prompt(self, prompts: Sequence[str]) -> Conditioning:
        mu = torch.stack([self.mean(p) for p in prompts])
        return Conditioning(cond={"mu": mu}, uncond={"mu": torch.zeros_like(mu)})

    def predict_noise(self, x_t, t, cond, guidance_scale=1.0):
        a = self.alphas_cumprod[t].view(-1, *([1] * (x_t.dim() - 1)))
        g = guidance_scale
        if isinstance(g, Tensor):
            g = g.view(-1, *([1] * (x_t.dim() - 1)))
        mu = g * cond.cond["mu"] + (1 - g) * cond.uncond["mu"]
        return self.gain * (x_t - a.sqrt() * mu) / (1 - a).sqrt()

    def encode_audio(self, waveform: Tensor, sample_rate: int) -> Tensor:
        return waveform.reshape(waveform.shape[0], *self.shape)

    def decode_audio(self, latent: Tensor, num_samples: int | None = None) -> Tensor:
        return latent.reshape(latent.shape[0], -1)[:, :num_samples]

    def self_attention_modules(self) -> dict[str, nn.Module]:
        return {}


@pytest.fixture(scope="session")
def tiny_pipe():
    """One tiny random AudioLDM2 pipeline for the session (treat as read-only)."""
    return tiny_audioldm2_pipeline(seed=0)


@pytest.fixture()
def tiny_backbone(tiny_pipe) -> AudioLDM2Backbone:
    """A fresh adapter (empty prompt cache) over the shared tiny pipeline."""
    return AudioLDM2Backbone.from_pipe(tiny_pipe)


@pytest.fixture()
def lora(tiny_backbone, request):
    """A LoRA concept applied to the tiny AudioLDM2 whose adapter changes the UNet (random B
    instead of peft's zeros); SteerMusicPlus gets the same ε′ (and one adapter) every time.
    Its target modules are :data:`LORA_TARGETS`, or the fixture's parameter (``indirect``)."""
    config = ConceptConfig(
        method="lora", token="sks", class_word="guitar", family="audioldm2", lora_rank=2,
        lora_targets=getattr(request, "param", LORA_TARGETS),
    )
    concept = Concept(config, {})
    # peft draws lora_A from the global generator: seed it here, so that every test gets the same
    # ε′ whatever ran before it in its process (test order, xdist's share of the tests)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        applied = concept.apply(tiny_backbone)
    with applied as personalized:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in personalized.trainable_parameters().items():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        yield _AppliedOnce(concept.token, personalized)


class OpCounts(TorchDispatchMode):
    """Counts the aten ops run inside it (``counts``, by op name) and their matmuls."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def matmuls(self) -> int:
        return self.counts["aten.mm"] + self.counts["aten.addmm"]


class _AppliedOnce:
    """A concept that :meth:`apply` gives the same applied model every time."""

    def __init__(self, token: str, personalized) -> None:
        self.token = token
        self.personalized = personalized

    def apply(self, backbone):
        return self.personalized


@pytest.fixture()
def analytic_backbone() -> AnalyticBackbone:
    return AnalyticBackbone()


class DynamoWatch:
    """What dynamo compiled since the :func:`dynamo` fixture reset it."""

    def __init__(self) -> None:
        from torch._dynamo import reset
        from torch._dynamo.utils import counters

        reset()
        counters.clear()
        self._counters = counters

    def breaks(self) -> list[str]:
        """Why graphs broke (a graph break runs the rest of the call eagerly, unnoticed)."""
        return [reason.splitlines()[0] for reason in self._counters["graph_break"]]

    def graphs(self) -> int:
        """Graphs compiled."""
        return self._counters["stats"]["unique_graphs"]


@pytest.fixture()
def dynamo() -> DynamoWatch:
    """A fresh dynamo (no cached graphs, no counts) and what it compiles from here on."""
    return DynamoWatch()


@pytest.fixture()
def op_counts() -> type[OpCounts]:
    """:class:`OpCounts`: ``with op_counts() as ops: ...`` then ``ops.counts``, ``ops.matmuls``."""
    return OpCounts


@pytest.fixture()
def diffusers_log(caplog) -> Iterator[pytest.LogCaptureFixture]:
    """``caplog`` that also hears diffusers' loggers: they do not propagate to the root logger,
    the only one caplog listens to before pytest 9.2."""
    logger = logging.getLogger("diffusers")
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


@pytest.fixture()
def no_model_loads(monkeypatch) -> None:
    """Make every ``load_backbone`` the command lines call fail the test: for checks that must
    refuse bad input before any model loads."""

    def load_backbone(*args, **kwargs):
        raise AssertionError("a model was loaded")

    for name in ("backbones.load_backbone", "steer.cli.load_backbone"):
        monkeypatch.setattr(name, load_backbone)
