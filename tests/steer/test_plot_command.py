"""``steer plot``: a source and its edit side by side; existing pictures are kept."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
import torch

from steer.cli import main
from steer.metrics import cqt_top1
from steer.plot import plot_comparison


def test_plot_writes_a_png_and_refuses_to_overwrite(tmp_path, capsys):
    t = np.arange(16000) / 16000
    sf.write(tmp_path / "src.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    t = np.arange(24000) / 24000  # another rate: the edit is resampled to the source's
    sf.write(tmp_path / "edit.wav", (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 24000)
    picture = tmp_path / "cmp.png"
    args = ["plot", str(tmp_path / "src.wav"), str(tmp_path / "edit.wav"), "-o", str(picture)]
    assert main(args) == 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    picture.write_bytes(b"keep me")
    assert main(args) == 2
    assert picture.read_bytes() == b"keep me" and "pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--title", "piano to violin"]) == 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _tone(f0: float, n: int = 16000, rate: int = 16000) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * f0 * np.arange(n) / rate)).astype(np.float32)


def _melody_inputs(monkeypatch) -> list[torch.Tensor]:
    """The waveforms steer.plot draws the melody lines of, as it passes them to cqt_top1."""
    import steer.plot

    seen = []

    def spy(waveform, **kwargs):
        seen.append(waveform.clone())
        return cqt_top1(waveform, **kwargs)

    monkeypatch.setattr(steer.plot, "cqt_top1", spy)
    return seen


def test_a_stereo_clip_is_drawn_as_its_mono_mix(tmp_path, monkeypatch):
    """A (channels, samples) clip was read as a batch of mono clips: only its left channel was
    drawn (a clip with a silent left channel had a flat melody line at bin 0)."""
    seen = _melody_inputs(monkeypatch)
    stereo = torch.from_numpy(np.stack([np.zeros(16000, np.float32), _tone(440)]))
    plot_comparison({"stereo": stereo, "right": stereo[1]}, 16000, tmp_path / "cmp.png")
    torch.testing.assert_close(seen[0], stereo.mean(0))
    assert cqt_top1(seen[0]).min() > 0  # the left channel alone is silence: bin 0 throughout

    sf.write(tmp_path / "src.wav", stereo.numpy().T, 16000)  # what `steer plot` reads
    sf.write(tmp_path / "edit.wav", _tone(330), 16000)
    seen.clear()
    assert main(["plot", str(tmp_path / "src.wav"), str(tmp_path / "edit.wav"), "-o", str(tmp_path / "cli.png")]) == 0
    torch.testing.assert_close(seen[0], stereo.mean(0), atol=1e-4, rtol=0)  # 16-bit file


@pytest.mark.parametrize(
    "clips, message",
    [
        ({}, "no clips to plot: pass a mapping of title to waveform"),
        ({"a": torch.zeros(2, 2, 16000)}, r"clip 'a' must be \(samples,\) or \(channels, samples\), got shape \(2, 2, 16000\)"),
    ],
)
def test_plot_comparison_refuses_what_it_cannot_draw(tmp_path, clips, message):
    with pytest.raises(ValueError, match=message):
        plot_comparison(clips, 16000, tmp_path / "cmp.png")
    assert not (tmp_path / "cmp.png").exists()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="writes into /proc, where no file can be created")
def test_plot_comparison_says_why_a_picture_cannot_be_written(tmp_path):
    """matplotlib's FileNotFoundError and OSError came through as tracebacks."""
    clips = {"a": torch.from_numpy(_tone(440))}
    with pytest.raises(ValueError, match=r"^cannot write /proc/cmp.png: No such file or directory$"):
        plot_comparison(clips, 16000, "/proc/cmp.png")
    long = tmp_path / ("p" * 256 + ".png")
    with pytest.raises(ValueError, match=r"^cannot write .*p\.png: File name too long$"):
        plot_comparison(clips, 16000, long)
    assert not any(tmp_path.iterdir())


def test_a_format_whose_tool_is_missing_is_a_one_line_error(tmp_path, capsys):
    """.pgf needs xelatex: savefig's RuntimeError was a traceback (status 1) after the work."""
    import shutil

    if shutil.which("xelatex"):
        pytest.skip("xelatex is installed: .pgf can be written here")
    sf.write(tmp_path / "src.wav", _tone(220), 16000)
    picture = tmp_path / "cmp.pgf"
    picture.write_bytes(b"keep me")
    assert main(["plot", str(tmp_path / "src.wav"), str(tmp_path / "src.wav"), "-o", str(picture), "--overwrite"]) == 2
    assert f"cannot write {picture} in its format (" in capsys.readouterr().err
    assert picture.read_bytes() == b"keep me"


def _axes_limits(monkeypatch) -> list[list[tuple[float, float]]]:
    """Each picture's axes' x limits, as plot_comparison saves it."""
    from matplotlib.figure import Figure

    seen, save = [], Figure.savefig

    def spy(figure, *args, **kwargs):
        seen.append([tuple(map(float, axis.get_xlim())) for axis in figure.axes])
        return save(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return seen


def test_clips_of_different_lengths_share_the_time_axis(tmp_path, monkeypatch):
    """A 1-s edit was stretched to the width of a 2-s source: each spectrogram had its own axis."""
    limits = _axes_limits(monkeypatch)
    source, edit = torch.from_numpy(_tone(440, 32000)), torch.from_numpy(_tone(330, 16000))
    for clips in {"source": source, "edit": edit}, {"edit": edit, "source": source}:
        plot_comparison(clips, 16000, tmp_path / "cmp.png")
    for axes in limits:  # the melody lines were drawn against CQT frames, on an axis of their own
        assert axes == [(0.0, 2.0)] * 4  # seconds


def test_a_clip_holding_nan_is_named_and_drawn_blank(tmp_path, monkeypatch):
    """It was drawn black, with a flat melody line at bin 0, and no word of why."""
    seen = _melody_inputs(monkeypatch)
    edit = torch.from_numpy(_tone(330))
    edit[100:110] = torch.nan
    with pytest.warns(RuntimeWarning, match=r"^clip 'edit' has 10 of 16000 samples NaN or infinite: it is drawn blank$"):
        plot_comparison({"source": torch.from_numpy(_tone(440)), "edit": edit}, 16000, tmp_path / "cmp.png")
    assert len(seen) == 1  # the source's melody line alone


def _drawn(monkeypatch) -> list[tuple[list[str], list[dict[str, np.ndarray]]]]:
    """Each picture's column titles and, per column, its melody lines (label → y values)."""
    from matplotlib.figure import Figure

    seen, save = [], Figure.savefig

    def spy(figure, *args, **kwargs):
        top, bottom = figure.axes[: len(figure.axes) // 2], figure.axes[len(figure.axes) // 2 :]
        lines = [{line.get_label(): np.asarray(line.get_ydata(), float) for line in axis.lines} for axis in bottom]
        seen.append(([axis.get_title() for axis in top], lines))
        return save(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return seen


def test_silence_draws_no_melody_line_and_a_silent_clip_says_so(tmp_path, monkeypatch):
    """A silent edit had a melody line at bin 0 across the whole clip, though silence has none
    (its CQT-1 PCC is NaN)."""
    seen = _drawn(monkeypatch)
    source = torch.from_numpy(_tone(440, 32000))
    source[16000:] = 0  # a second of tone, a second of silence
    with pytest.warns(RuntimeWarning, match=r"^clip 'edit' is silent: it has no melody line$"):
        plot_comparison({"source": source, "edit": torch.zeros(32000)}, 16000, tmp_path / "cmp.png")
    [(titles, [source_lines, edit_lines])] = seen
    assert titles == ["source", "edit\n(silent: no melody line)"] and list(edit_lines) == ["source"]
    line = source_lines["source"]
    frames = np.arange(len(line)) * 512  # the CQT's hop at 16 kHz
    assert not np.isnan(line[frames < 16000 - 256]).any() and np.isnan(line[frames > 16000 + 256]).all()
    np.testing.assert_array_equal(edit_lines["source"], line)  # its grey copy beside the edit


def test_an_edit_is_resampled_straight_to_the_pictures_rate(tmp_path, monkeypatch):
    """It went through the source's rate first: from an 8-kHz source, a 48-kHz edit's 6-kHz
    partial was lost and its 2-kHz alias drawn instead."""
    seen = _melody_inputs(monkeypatch)
    sf.write(tmp_path / "src.wav", _tone(440, 8000, 8000), 8000)
    t = np.arange(48000) / 48000
    edit = (0.2 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    sf.write(tmp_path / "edit.wav", edit, 48000)
    assert main(["plot", str(tmp_path / "src.wav"), str(tmp_path / "edit.wav"), "-o", str(tmp_path / "cmp.png")]) == 0
    import torchaudio.functional

    expected = torchaudio.functional.resample(torch.from_numpy(edit), 48000, 16000)
    torch.testing.assert_close(seen[1], expected, rtol=0, atol=1e-4)  # 16-bit file: 3e-5 steps


def test_a_constant_clip_at_another_rate_is_drawn_silent(tmp_path, monkeypatch):
    """torchaudio's resampling ramps a constant clip's ends (its filter pads with zeros): a
    0.3 DC edit at 44.1 kHz got a melody line and no "silent" warning, which it gets at 16 kHz."""
    seen = _drawn(monkeypatch)
    sf.write(tmp_path / "src.wav", _tone(440, 88200, 44100), 44100)
    sf.write(tmp_path / "dc.wav", np.full(88200, 0.3, np.float32), 44100)
    with pytest.warns(RuntimeWarning, match=r"^clip 'edit: dc.wav' is silent: it has no melody line$"):
        assert main(["plot", str(tmp_path / "src.wav"), str(tmp_path / "dc.wav"), "-o", str(tmp_path / "cmp.png")]) == 0
    [(titles, [_, edit_lines])] = seen
    assert titles[1].endswith("(silent: no melody line)") and list(edit_lines) == ["source: src.wav"]


def test_names_and_titles_are_drawn_as_written(tmp_path, monkeypatch):
    """matplotlib read "$...$" in them as math: "take$\\alpha_1$.wav" was drawn "takeα₁.wav", and
    an unknown symbol stopped the plot with a parser's error naming neither."""
    from matplotlib.figure import Figure

    texts, save = [], Figure.savefig

    def spy(figure, *args, **kwargs):
        texts.extend([figure._suptitle.get_text()] + [axis.get_title() for axis in figure.axes])
        texts.extend(text.get_text() for axis in figure.axes if axis.get_legend() for text in axis.get_legend().get_texts())
        return save(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    sf.write(tmp_path / "take$\\alpha_1$.wav", _tone(440), 16000)
    sf.write(tmp_path / "a$\\foo$.wav", _tone(330), 16000)
    args = ["plot", str(tmp_path / "take$\\alpha_1$.wav"), str(tmp_path / "a$\\foo$.wav"), "-o", str(tmp_path / "p.png")]
    assert main([*args, "--title", "$\\bad$"]) == 0
    assert texts[:3] == ["$\\bad$", "source: take$\\alpha_1$.wav", "edit: a$\\foo$.wav"]
    assert "edit: a\\$\\foo\\$.wav" in texts  # a legend's text: "$" escaped, drawn as "$"
