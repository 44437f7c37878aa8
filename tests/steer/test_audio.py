import os
import re
import sys
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from steer import Audio, load_audio, save_audio
from steer.audio import NonFiniteAudio, check_format_takes, check_writable

linux = pytest.mark.skipif(sys.platform != "linux", reason="writes into /proc, where no file can be created")


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
    with pytest.raises(ValueError, match=r"^2 samples are NaN or infinite \(a diverged edit\?\): nothing written"):
        save_audio(tmp_path / "keep.wav", torch.tensor([0.1, float("nan"), float("inf")]), 8000)  # was full-scale DC
    (tmp_path / "folder.wav").mkdir()
    with pytest.raises(ValueError, match="folder.wav is a folder: name an audio file"):
        save_audio(tmp_path / "folder.wav", torch.zeros(10), 8000)
    with pytest.raises(ValueError, match="folder.wav is a folder: name an audio file"):
        load_audio(tmp_path / "folder.wav")
    with pytest.raises(ValueError, match=r"shape \(800, 2\) has more channels than samples"):
        save_audio(tmp_path / "t.wav", torch.zeros(800, 2), 8000)  # soundfile's error named a .partial file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.wav", "junk.wav", "keep.wav"]
    assert (tmp_path / "keep.wav").read_bytes() == b"precious"


def test_save_audio_refuses_what_audio_refuses_by_type(tmp_path):
    """A NumPy array was an AttributeError ('detach'); int16 samples were cast and clipped to ±1."""
    with pytest.raises(TypeError, match="torch.Tensor, got ndarray: wrap a NumPy array with torch.from_numpy"):
        save_audio(tmp_path / "a.wav", np.zeros(800, np.float32), 8000)
    with pytest.raises(ValueError, match="floating point in \\[-1, 1\\], got torch.int16: divide 16-bit samples by 32768"):
        save_audio(tmp_path / "a.wav", torch.full((800,), 1000, dtype=torch.int16), 8000)
    assert list(tmp_path.iterdir()) == []


def test_clips_compare_by_identity():
    """== compared the waveforms into a tensor, and Python's bool of it raised."""
    clip = Audio(torch.zeros(1, 100), 16000)
    assert clip == clip and clip != Audio(torch.zeros(1, 100), 16000)


def test_a_mono_waveform_becomes_one_channel_and_the_rate_an_int():
    audio = Audio(torch.zeros(800), np.int64(8000))
    assert audio.waveform.shape == (1, 800) and type(audio.sample_rate) is int and audio.seconds == 0.1
    assert Audio(torch.zeros(2, 2, 800), 8000).waveform.shape == (2, 2, 800)  # a batch stays


@pytest.mark.parametrize("waveform, rate, error, match", [
    (np.zeros((1, 800), np.float32), 8000, TypeError, "torch.Tensor, got ndarray: wrap a NumPy array"),
    (torch.zeros(1, 800, dtype=torch.int16), 8000, ValueError, "floating point .* torch.int16: divide 16-bit"),
    (torch.zeros(1, 800, dtype=torch.complex64), 8000, ValueError, r"torch.complex64: a recording is real: pass its real part"),
    (torch.zeros(1, 1, 1, 800), 8000, ValueError, r"\(channels, samples\), got shape \(1, 1, 1, 800\)"),
    (torch.tensor([[0.0, float("nan")]]), 8000, ValueError, "NaN or infinite"),
    (torch.tensor([[0.0, float("-inf")]]), 8000, ValueError, "NaN or infinite"),
    (torch.zeros(800, 2), 8000, ValueError, r"shape \(800, 2\) has more channels than samples: pass \(channels, samples\)"),
    (torch.zeros(1, 800, 2), 8000, ValueError, "more channels than samples"),
    (torch.zeros(1, 800), 0, ValueError, r"positive whole number of Hz below 2\*\*31, got 0"),
    (torch.zeros(1, 800), 2**31, ValueError, "got 2147483648"),
    (torch.zeros(1, 800), 22050.5, ValueError, "got 22050.5"),
    (torch.zeros(1, 800), True, ValueError, "got True"),
])
def test_unusable_clips_are_refused_when_made(waveform, rate, error, match):
    with pytest.raises(error, match=match):
        Audio(waveform, rate)


def test_a_clip_on_the_meta_device_is_refused_by_name():
    """It failed with "Tensor.item() cannot be called on meta tensors"."""
    with pytest.raises(ValueError, match="^Audio's waveform is on the meta device, which holds no samples: pass a clip on cpu"):
        Audio(torch.zeros(1, 800, device="meta"), 8000)


@pytest.mark.parametrize("shape", [(0,), (1, 0), (2, 0), (0, 0), (0, 800), (2, 1, 0), (0, 1, 800)])
def test_an_empty_clip_is_refused_as_holding_no_samples(shape):
    """(1, 0) was refused as having "more channels than samples", and (0,) was accepted."""
    with pytest.raises(ValueError, match=rf"^Audio's waveform of shape {re.escape(str(shape))} holds no samples: pass a clip"):
        Audio(torch.zeros(shape), 8000)


@pytest.mark.parametrize("channels", [1, 2])
def test_an_empty_file_is_refused_as_holding_no_samples(tmp_path, channels):
    sf.write(tmp_path / "empty.wav", np.zeros((0, channels), np.float32), 16000)
    with pytest.raises(ValueError, match=r"^audio file is empty: .*empty\.wav holds no samples; name a file that holds audio$"):
        load_audio(tmp_path / "empty.wav")


def test_a_float_file_holding_nan_is_refused_by_name(tmp_path):
    data = np.zeros((100, 1), np.float32)
    data[50] = np.nan
    sf.write(tmp_path / "nan.wav", data, 8000, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"nan\.wav: the audio holds NaN"):
        load_audio(tmp_path / "nan.wav")


def test_samples_beyond_full_scale_are_clipped_with_a_warning_counting_them(tmp_path):
    """The baselines' edits on the mel backbone peak at 3 to 9: they were clipped without a word."""
    waveform = torch.tensor([[0.5, 2.0, -3.0, 0.25]])
    with pytest.warns(RuntimeWarning, match=r"^loud.wav: 2 of 4 samples \(50 %\) lie beyond ±1 \(peak 3\) and are clipped to ±1 in the file$"):
        save_audio(tmp_path / "loud.wav", waveform, 16000)
    written, _ = sf.read(tmp_path / "loud.wav", dtype="float32")
    np.testing.assert_allclose(written, [0.5, 1.0, -1.0, 0.25], atol=1 / 32768)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_audio(tmp_path / "full.wav", torch.tensor([[1.0, -1.0, 0.5]]), 16000)  # full scale is no clipping


@linux
def test_a_file_that_cannot_be_written_is_a_value_error_naming_it(tmp_path):
    """soundfile's errors named the temporary ``.x.wav.partial`` ("System error."), and a name
    whose temporary name was over 255 bytes raised a second error from the cleanup."""
    with pytest.raises(ValueError, match=r"^cannot write /proc/x.wav: no file can be created in /proc \(No such file or directory\): choose a folder"):
        save_audio("/proc/x.wav", torch.zeros(10), 8000)
    with pytest.raises(ValueError, match=r"^cannot write /proc/x.wav: no file can be created in /proc"):
        check_writable("/proc/x.wav")
    too_long = tmp_path / ("a" * 252 + ".wav")
    with pytest.raises(ValueError, match=r"^cannot write .*a\.wav: File name too long$"):
        save_audio(too_long, torch.zeros(10), 8000)
    with pytest.raises(ValueError, match=r"its name is 256 bytes long, more than the 255 a file name may have: shorten it$"):
        check_writable(too_long)
    longest = tmp_path / ("b" * 247 + ".wav")  # 251 bytes: ".{name}.partial" would be 260
    assert check_writable(longest) == longest and save_audio(longest, torch.zeros(10), 8000) == longest
    assert sf.info(longest).frames == 10
    assert [p.name for p in tmp_path.iterdir()] == [longest.name]  # no temporary file left


def test_checking_a_folder_never_touches_a_file_another_process_writes(tmp_path):
    """Under ``accelerate launch`` every process checks ``--out`` at once: a probe of one fixed
    name, made and removed by each, was removed under another's feet (refusing the whole run)."""
    other = tmp_path / ".summary.json.partial"  # what a probe of the old fixed name would remove
    other.write_bytes(b"another process's")
    assert check_writable(tmp_path / "summary.json") == tmp_path / "summary.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name] and other.read_bytes() == b"another process's"
    with pytest.raises(ValueError, match=r"^cannot write .*x\.wav: no file can be created in .*no-such \(No such file"):
        check_writable(tmp_path / "no-such" / "x.wav")  # was a FileNotFoundError


@pytest.mark.parametrize("limit", [AttributeError, -1])
def test_a_system_that_tells_no_name_limit_still_writes(tmp_path, monkeypatch, limit):
    """``os.pathconf`` is missing on Windows and answers -1 where names have no fixed limit: the
    temporary name's loop never ended, and every write raised AttributeError on Windows."""
    def pathconf(folder, name):
        if limit is AttributeError:
            raise AttributeError("module 'os' has no attribute 'pathconf'")
        return limit

    monkeypatch.setattr(os, "pathconf", pathconf)
    path = tmp_path / "x.wav"
    assert check_writable(path) == path and save_audio(path, torch.zeros(10), 8000) == path
    assert sf.info(path).frames == 10


@pytest.mark.parametrize("name, waveform, rate, message", [
    ("a.wav", torch.zeros(10), 16000.7, r"^cannot write .*a.wav: the sample rate must be a positive whole number of Hz below 2\*\*31, got 16000.7$"),  # was a TypeError
    ("a.wav", torch.zeros(10), 0, r"^cannot write .*a.wav: .* got 0$"),  # was libsndfile's error naming a.wav.partial
    ("a.wav", torch.zeros(10), 10**10, r"^cannot write .*a.wav: .* got 10000000000$"),  # was an OverflowError
    ("a.mp3", torch.zeros(10), 96000, r"^cannot write .*a.mp3 as MP3 at 96000 Hz: MPEG-1/2/2.5 only supports sample rates of 8000, "),
    ("a.wav", torch.zeros(1, 0), 16000, r"^cannot write .*a.wav: the waveform of shape \(1, 0\) has no samples$"),  # said "more channels than samples"
])
def test_what_soundfile_cannot_write_is_refused_naming_the_file(tmp_path, name, waveform, rate, message):
    with pytest.raises(ValueError, match=message):
        save_audio(tmp_path / name, waveform, rate)
    assert not any(tmp_path.iterdir())


def test_a_single_bad_sample_is_counted_in_the_singular(tmp_path):
    # NonFiniteAudio: the CLI tells a diverged edit apart by it, to suggest a lower --lr
    with pytest.raises(NonFiniteAudio, match=r"^1 sample is NaN or infinite \(a diverged edit\?\): nothing written"):
        save_audio(tmp_path / "a.wav", torch.tensor([0.0, float("nan")]), 8000)


def test_an_input_name_too_long_for_the_file_system_is_not_found(tmp_path):
    """Path.is_dir raised OSError("File name too long")."""
    path = tmp_path / ("i" * 300 + ".wav")
    with pytest.raises(ValueError, match=f"^input file not found: {path}$"):
        load_audio(path)


def test_the_formats_refused_are_named_from_what_libsndfile_writes(tmp_path, monkeypatch):
    """`-o x.mp4` was told "use .wav, .flac or .ogg" while `-o x.mp3` worked: the list was
    fixed, not the installed library's."""
    from steer.audio import audio_format, writable_suffixes

    suffixes = writable_suffixes()
    assert suffixes[:3] == [".wav", ".flac", ".ogg"] and ".raw" not in suffixes  # RAW needs a rate and encoding
    assert all(audio_format(tmp_path / f"x{suffix}") for suffix in suffixes)
    message = f"unsupported audio format '.mp4': use {', '.join(suffixes)} (what soundfile {sf.__version__} "
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        save_audio(tmp_path / "x.mp4", torch.zeros(10), 8000)
    # a libsndfile without MP3 (before 1.1) reports none, and the list leaves it out
    monkeypatch.setattr(sf, "available_formats", lambda: {"WAV": "WAV (Microsoft)", "FLAC": "FLAC"})
    assert writable_suffixes() == [".wav", ".flac"]


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile (before 1.1) has no MP3")
def test_mp3_is_written_where_libsndfile_has_it(tmp_path):
    waveform = 0.3 * torch.sin(2 * torch.pi * 440 * torch.arange(16000) / 16000)
    audio = load_audio(save_audio(tmp_path / "a.mp3", waveform, 16000))
    assert audio.sample_rate == 16000 and audio.waveform.abs().max() > 0.1


def test_a_format_is_checked_for_the_channels_and_rate_it_will_be_given(tmp_path):
    check_format_takes(tmp_path / "a.xi", 1, 16000)  # .xi writes mono
    check_format_takes(tmp_path / "a.flac", 2, 44100)
    with pytest.raises(ValueError, match=r"^cannot write .*a\.xi as XI: the format takes no 2-channel audio at 44100 Hz"):
        check_format_takes(tmp_path / "a.xi", 2, 44100)
    assert list(tmp_path.iterdir()) == []  # written in memory alone
