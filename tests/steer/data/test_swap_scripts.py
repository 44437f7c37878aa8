"""The swap benchmark's scripts (benchmarks/swap/) refuse, before any work, what would replace a
user's files or crash late, and record every setting of a training run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.swap import evaluate, evaluate_concept, train_backbone, train_classifier
from steer.data import ManifestEntry, write_manifest
from steer.data._files import atomic_write_wav


@pytest.fixture
def torch_threads():
    """The scripts set torch's thread count (--threads) for the whole process: put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def short_clips(tmp_path) -> Path:
    """A manifest of two 1.28-s training clips (128 mel frames)."""
    t = np.arange(20480) / 16000
    entries = []
    for instrument, hz in [("piano", 262.0), ("violin", 392.0)]:
        audio = f"audio/{instrument}.wav"
        atomic_write_wav(tmp_path / audio, np.sin(2 * np.pi * hz * t).astype(np.float32), 16000)
        prompt = f"a recording of a {instrument}"
        entries.append(ManifestEntry(audio, "m", instrument, prompt, "train", "c"))
    return write_manifest(tmp_path / "manifest.jsonl", entries)


@pytest.mark.parametrize(
    "script, out, existing",
    [
        (train_backbone, "model", "model/training.json"),
        (train_classifier, "model", "model/model.safetensors"),
        (evaluate, "swap-benchmark.json", "swap-benchmark.json"),
        (evaluate_concept, "swap-concept.json", "swap-concept.json"),
    ],
)
def test_an_existing_out_is_refused_before_any_work(script, out, existing, tmp_path, capsys):
    existing = tmp_path / existing
    existing.parent.mkdir(exist_ok=True)
    existing.write_text("the user's\n")
    missing = str(tmp_path / "missing")  # any work would fail on these
    argv = ["--data", missing, "--out", str(tmp_path / out)]
    if script in (evaluate, evaluate_concept):
        argv += ["--backbone", missing, "--classifier", missing]
    with pytest.raises(SystemExit) as exit:
        script.main(argv)
    assert exit.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert existing.read_text() == "the user's\n"


def test_clips_shorter_than_the_crop_are_refused_with_the_fix(short_clips, tmp_path, torch_threads):
    argv = ["--data", str(short_clips), "--out", str(tmp_path / "model"), "--threads", "1"]
    fix = r"128 mel frames \(1.28 s\) long, shorter than --crop-frames 256: pass --crop-frames 128"
    with pytest.raises(SystemExit, match=fix):
        train_backbone.main(argv)
    assert not (tmp_path / "model").exists()


def test_training_records_every_setting(short_clips, tmp_path, torch_threads):
    out = tmp_path / "model"
    out.mkdir()
    (out / "training.json").write_text("{}\n")  # replaced: --overwrite
    argv = ["--data", str(short_clips), "--out", str(out), "--steps", "1", "--batch", "1"]
    argv += ["--threads", "1", "--crop-frames", "64", "--warmup", "1", "--ema", "0.5"]
    argv += ["--p-uncond", "0.25", "--overwrite"]
    with torch.random.fork_rng():  # the script seeds torch's global generator
        train_backbone.main(argv)
    record = json.loads((out / "training.json").read_text())
    assert record | {"final_loss": None, "seconds": None} == {
        "data": [str(short_clips)],
        "out": str(out),
        "steps": 1,
        "batch": 1,
        "lr": 1e-3,
        "warmup": 1,
        "ema": 0.5,
        "p_uncond": 0.25,
        "crop_frames": 64,
        "seed": 0,
        "threads": 1,
        "overwrite": True,
        "clips": 2,
        "final_loss": None,
        "seconds": None,
        "device": "cpu",
    }
    assert (out / "model.safetensors").is_file()
