"""Side-by-side pictures of clips: log-mel spectrograms with the CQT top-1 melody line on top.

Like the SteerMusic paper's Figure 5: each column is a clip (source, edit, ground truth, …); the
top row shows its log-mel, the bottom row the index of the loudest CQT bin per frame (the
sequence whose correlation is the CQT-1 PCC metric), with the first clip's line repeated in grey
so melody drift is visible at a glance.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from backbones import MelFrontEnd, to_mono
from steer.metrics import cqt_top1


def plot_comparison(
    clips: Mapping[str, Tensor],
    sample_rate: int,
    path: str | os.PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Write a picture comparing clips.

    Args:
        clips: title → waveform ``(samples,)`` or ``(channels, samples)``, in display order; a
            clip of several channels is drawn as their mean (its mono mix).
        sample_rate: their sample rate.
        path: the picture to write (its folder must exist): PNG, or any format matplotlib
            writes, by its suffix.
        title: a figure title.

    Raises:
        ValueError: for no clips, a clip of another shape, a missing output folder, or a file
            that cannot be written there.
    """
    if not clips:
        raise ValueError("no clips to plot: pass a mapping of title to waveform")
    for name, waveform in clips.items():
        if waveform.dim() not in (1, 2):
            raise ValueError(
                f"clip {name!r} must be (samples,) or (channels, samples), got shape {tuple(waveform.shape)}"
            )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ValueError("plotting needs matplotlib: pip install matplotlib") from error
    path = Path(path)
    if not os.path.isdir(path.parent):  # Path.is_dir raises OSError for a name too long
        raise ValueError(f"output folder does not exist: {path.parent}")
    mel = MelFrontEnd()
    # (1, channels, samples): to_mono reads a 2-D tensor as a batch of mono clips, not as channels
    waves = {name: to_mono(w.reshape(1, -1, w.shape[-1]), sample_rate, mel.sample_rate)[0] for name, w in clips.items()}
    lines = {name: cqt_top1(w) for name, w in waves.items()}
    reference = next(iter(lines.values()))

    fig, axes = plt.subplots(2, len(waves), figsize=(4 * len(waves), 5), squeeze=False, sharey="row")
    for column, (name, waveform) in enumerate(waves.items()):
        log_mel = mel(mel.normalize(waveform[None]))[0, 0]
        axes[0, column].imshow(log_mel.T.numpy(), origin="lower", aspect="auto", cmap="magma",
                               extent=(0, waveform.shape[-1] / mel.sample_rate, 0, mel.n_mels))
        axes[0, column].set_title(name)
        axes[0, column].set_xlabel("seconds")
        line = torch.as_tensor(lines[name])
        if column:
            axes[1, column].plot(torch.as_tensor(reference).numpy(), color="0.75", label=next(iter(waves)))
        axes[1, column].plot(line.numpy(), color="C0", label=name)
        axes[1, column].set_xlabel("CQT frame (32 ms)")
        axes[1, column].legend(loc="upper right", fontsize="small")
    axes[0, 0].set_ylabel("mel band")
    axes[1, 0].set_ylabel("top-1 CQT bin (¼ tones over 65 Hz)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as error:
        raise ValueError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        plt.close(fig)
    return path
