import numpy as np
import pytest
import soundfile as sf
import torch

from steer import load_audio, save_audio


def test_round_trip(tmp_path):
    waveform = torch.sin(torch.linspace(0, 100, 8000))[None] * 0.5
    path = save_audio(tmp_path / "a.wav", waveform, 8000)
    audio = load_audio(path)
    assert audio.sample_rate == 8000 and audio.waveform.shape == (1, 8000)
    torch.testing.assert_close(audio.waveform, waveform, atol=1e-4, rtol=0)


def test_stereo_is_channels_first(tmp_path):
    sf.write(tmp_path / "s.flac", np.zeros((1000, 2), dtype=np.float32), 44100)
    assert load_audio(tmp_path / "s.flac").waveform.shape == (2, 1000)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="input file not found"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="cannot read audio"):
        load_audio(tmp_path / "junk.wav")
    with pytest.raises(ValueError, match="output folder does not exist"):
        save_audio(tmp_path / "nope" / "a.wav", torch.zeros(10), 8000)
    (tmp_path / "keep.wav").write_bytes(b"precious")
    with pytest.raises(ValueError, match="exists"):
        save_audio(tmp_path / "keep.wav", torch.zeros(10), 8000, overwrite=False)
    assert (tmp_path / "keep.wav").read_bytes() == b"precious"
    with pytest.raises(ValueError, match="unsupported audio format"):
        save_audio(tmp_path / "a.xyz", torch.zeros(10), 8000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.wav", "keep.wav"]
