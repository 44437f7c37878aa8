"""Fixtures for the concept tests: a tiny mel-diffusion backbone and short synthetic clips."""

from __future__ import annotations

from pathlib import Path

import pytest
from concept_helpers import tiny_mel_backbone, tone

from backbones.mel_diffusion import MelDiffusionBackbone
from steer import Audio, save_audio


@pytest.fixture()
def mel_backbone() -> MelDiffusionBackbone:
    return tiny_mel_backbone()


@pytest.fixture()
def clips() -> list[Audio]:
    return [tone(220.0, seed=0), tone(330.0, seconds=1.6, seed=1)]


@pytest.fixture()
def clip_files(tmp_path, clips) -> list:
    return [save_audio(tmp_path / f"ref{i}.wav", c.waveform, c.sample_rate) for i, c in enumerate(clips)]


@pytest.fixture()
def mel_folder(tmp_path, mel_backbone) -> Path:
    """The tiny mel-diffusion backbone saved as a local model folder (what ``--backbone`` takes)."""
    folder = tmp_path / "mel-base"
    mel_backbone.save_pretrained(folder)
    return folder
