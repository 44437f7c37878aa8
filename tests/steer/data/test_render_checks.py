"""``render_dataset`` and ``python -m steer.data`` refuse impossible settings before writing
anything, name the limit a window no melody can fill runs into, and clips are read at the rate a
model asks for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import steer.data.melodies
from steer.data import iter_melodies, list_works, load_clip, render_dataset
from steer.data.__main__ import main
from steer.data._files import atomic_write_wav


@pytest.mark.parametrize("rate", [0, -16000])
def test_a_sample_rate_below_one_is_refused_before_the_config_is_written(rate, tmp_path):
    with pytest.raises(ValueError, match=f"sample_rate must be a positive number of Hz, got {rate}"):
        render_dataset(tmp_path, n_melodies=1, sample_rate=rate)
    assert not list(tmp_path.iterdir())  # no render_config.json locking the folder


def test_an_out_that_is_a_file_is_refused(tmp_path, capsys):
    out = tmp_path / "data"
    out.write_text("the user's\n")
    with pytest.raises(SystemExit) as exit:
        main(["--out", str(out), "--n-melodies", "1"])
    assert exit.value.code == 2 and f"{out} is a file, not a dataset folder" in capsys.readouterr().err
    assert out.read_text() == "the user's\n"


@pytest.fixture
def three_works(monkeypatch) -> list[steer.data.melodies.Melody]:
    """A collection of Ryan's first three works, and their melodies."""
    works = list_works("ryansMammoth")[:3]
    monkeypatch.setattr(steer.data.melodies, "list_works", lambda collection: works)
    return list(iter_melodies("ryansMammoth"))


@pytest.mark.parametrize("seconds", [600, 0.001])
def test_a_window_no_melody_can_fill_names_the_limit(seconds, three_works, tmp_path):
    longest = max(m.quarters for m in three_works) * 60 / 100  # seconds at the default 100 qpm
    with pytest.raises(ValueError) as error:
        render_dataset(tmp_path, n_melodies=1, seconds=seconds)
    message = str(error.value)
    assert message.startswith("collection 'ryansMammoth' has only 0 usable melodies, 1 asked for: ")
    assert f"a {seconds:g} s window starting on a note in which notes sound 60% of the time" in message
    assert "3 distinct pitches or more start" in message
    assert f"the longest of the {len(three_works)} melodies tried lasts {longest:.1f} s at 100 qpm" in message
    assert not (tmp_path / "render_config.json").exists()


def test_clips_are_read_at_the_rate_asked(tmp_path):
    def tone(rate: int) -> np.ndarray:
        return (0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)

    for rate in 16000, 22050:
        atomic_write_wav(tmp_path / f"{rate}.wav", tone(rate), rate)
    native = load_clip(tmp_path / "16000.wav", 16000)
    assert torch.equal(native, torch.from_numpy(tone(16000)))  # sample for sample
    resampled = load_clip(tmp_path / "22050.wav", 16000)
    assert resampled.shape == (16000,) and resampled.dtype == torch.float32
    assert (resampled - native)[100:-100].abs().max() < 1e-2  # the same tone, away from the edges
