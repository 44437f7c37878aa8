"""``steer plot``: a source and its edit side by side; existing pictures are kept."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from steer.cli import main


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
