"""The shipped small backbone really learned: its samples sound like the prompted instrument.

Uses the weights in ``weights/`` (the mel-diffusion backbone and the instrument classifier),
which ``benchmarks/swap/train_backbone.py`` and ``train_classifier.py`` produced.
"""

from pathlib import Path

import pytest
import torch

from backbones import load_backbone
from backbones.mel_diffusion import MelDiffusionBackbone
from steer.metrics.instrument import InstrumentClassifier
from steer.sampling import sample

WEIGHTS = Path(__file__).resolve().parents[2] / "weights"
INSTRUMENTS = ["piano", "violin", "flute", "acoustic guitar", "church organ", "trumpet", "clarinet", "marimba"]


@pytest.fixture(scope="module")
def backbone() -> MelDiffusionBackbone:
    return load_backbone(str(WEIGHTS / "mel-diffusion-swap"))


def test_loads_from_the_shipped_files(backbone):
    assert isinstance(backbone, MelDiffusionBackbone)
    assert sum(f.stat().st_size for f in (WEIGHTS / "mel-diffusion-swap").iterdir()) < 30e6
    latent = backbone.encode_audio(torch.zeros(1, 40960), 16000)
    assert latent.shape == (1, 16, 64, 16)


def test_samples_are_heard_as_the_prompted_instrument(backbone):
    classifier = InstrumentClassifier.from_pretrained(WEIGHTS / "instrument-classifier").eval()
    prompts = [f"a recording of {'an' if i[0] in 'aeiou' else 'a'} {i}" for i in INSTRUMENTS]
    latents = sample(backbone, prompts, shape=(len(prompts), 16, 64, 16), steps=15, guidance_scale=3.0, seed=0)
    with torch.no_grad():
        heard = classifier.predict(backbone.decode_audio(latents), 16000)
    correct = sum(h == i for h, i in zip(heard, INSTRUMENTS))
    assert correct >= 5, list(zip(INSTRUMENTS, heard))  # chance is 1 in 8
