"""Side-by-side pictures of clips: log-mel spectrograms with the CQT top-1 melody line on top.

Like the SteerMusic paper's Figure 5: each column is a clip (source, edit, ground truth, …); the
top row shows its log-mel, the bottom row the index of the loudest CQT bin per frame (the
sequence whose correlation is the CQT-1 PCC metric), with the first clip's line repeated in grey
so melody drift is visible at a glance. Silence has no melody: a frame without energy (see
:data:`SILENCE_FLOOR`) leaves a gap in the line, and a clip silent throughout has none, as its
title says. Every panel shares one time axis, in seconds, so a shorter clip is drawn shorter.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from backbones import MelFrontEnd, to_mono
from steer.metrics import cqt_top1
from steer.metrics.functional import CQT_HOP, CQT_SAMPLE_RATE


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

    Warns:
        RuntimeWarning: naming each clip holding NaN or infinite samples (a diverged edit),
            whose panels show nothing of it, and each clip silent throughout, which has no
            melody line; their titles say so too.
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
    titles = {}
    for name, waveform in clips.items():
        if bad := int((~torch.isfinite(waveform)).sum()):
            problem = f"{bad} of {waveform.numel()} samples NaN or infinite"
            warnings.warn(f"clip {name!r} has {problem}: it is drawn blank", RuntimeWarning, stacklevel=2)
            titles[name] = f"{name}\n({problem})"
    # a non-finite or silent clip has no melody line (its CQT's arg-max would draw a false one)
    lines = {}
    for name, waveform in waves.items():
        if name in titles:
            continue
        line = _melody_line(waveform)
        if line.isnan().all():
            warnings.warn(f"clip {name!r} is silent: it has no melody line", RuntimeWarning, stacklevel=2)
            titles[name] = f"{name}\n(silent: no melody line)"
        else:
            lines[name] = line
    first = next(iter(waves))

    fig, axes = plt.subplots(
        2, len(waves), figsize=(4 * len(waves), 5), squeeze=False, sharex=True, sharey="row"
    )

    def seconds(line: Tensor) -> Tensor:  # CQT frame i is centred on sample i · hop
        return torch.arange(len(line)) * CQT_HOP / CQT_SAMPLE_RATE

    # names and titles are the user's text, drawn as written: "$" would start matplotlib's math
    for column, (name, waveform) in enumerate(waves.items()):
        log_mel = mel(mel.normalize(waveform[None]))[0, 0]
        axes[0, column].imshow(log_mel.T.numpy(), origin="lower", aspect="auto", cmap="magma",
                               extent=(0, waveform.shape[-1] / mel.sample_rate, 0, mel.n_mels))
        axes[0, column].set_title(titles.get(name, name), parse_math=False)
        if column and first in lines:
            axes[1, column].plot(seconds(lines[first]), lines[first].numpy(), color="0.75", label=_literal(first))
        if name in lines:
            axes[1, column].plot(seconds(lines[name]), lines[name].numpy(), color="C0", label=_literal(name))
        axes[1, column].set_xlabel("seconds")
        if axes[1, column].lines:
            axes[1, column].legend(loc="upper right", fontsize="small")
    # imshow sets its own axis' limits, which sharex hands to every panel: the longest clip's
    axes[0, 0].set_xlim(0, max(w.shape[-1] for w in waves.values()) / mel.sample_rate)
    axes[0, 0].set_ylabel("mel band")
    axes[1, 0].set_ylabel("top-1 CQT bin (¼ tones over 65 Hz)")
    if title:
        fig.suptitle(title, parse_math=False)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as error:
        raise ValueError(f"cannot write {path}: {error.strerror or error}") from None
    except RuntimeError as error:  # a format whose tool is missing: .pgf without xelatex, say
        raise ValueError(f"cannot write {path} in its format ({error}): end it in .png, .pdf or .svg") from None
    finally:
        plt.close(fig)
    return path


def _literal(text: str) -> str:
    """``text`` as a legend label draws it as written (a legend's texts take no ``parse_math``)."""
    return text.replace("$", r"\$")


#: Samples within this of their level (−80 dBFS, about 3 steps of a 16-bit file) are silence.
SILENCE_FLOOR = 1e-4


def _melody_line(waveform: Tensor) -> Tensor:
    """:func:`~steer.metrics.cqt_top1` of a 16-kHz ``(samples,)`` clip as floats, NaN at each frame
    whose hop of samples (centred on it) lies within :data:`SILENCE_FLOOR` of its level (silence,
    or a constant offset), where the arg-max would draw a false line at bin 0."""
    line = cqt_top1(waveform).double()
    # (frames, hop): frame i is centred on sample i * hop; the edges repeated add no energy
    padded = torch.nn.functional.pad(waveform[None, None], (CQT_HOP // 2, CQT_HOP // 2), mode="replicate")[0, 0]
    hops = padded.unfold(0, CQT_HOP, CQT_HOP)[: len(line)]
    silent = (hops.amax(-1) - hops.amin(-1)) / 2 < SILENCE_FLOOR
    return line.masked_fill(silent, torch.nan)
