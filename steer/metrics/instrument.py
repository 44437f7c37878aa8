"""Which instrument plays? A small CNN on the AudioLDM log-mel, to measure edit fidelity.

An instrument-swap edit should end up sounding like the target instrument; the share of edits
this classifier labels as the target (:func:`steer.metrics.functional.instrument_accuracy`) is
the benchmark's fidelity score, the counterpart of CQT-1 PCC for the melody.

The network reads the same log-mel the editors see (:class:`backbones.MelFrontEnd` after
:meth:`~backbones.MelFrontEnd.normalize`: 16 kHz, 64 bands, hop 10 ms), standardised with
training-set statistics. Four 3 × 3 convolution blocks (batch norm, ReLU, 2 × 2 max pooling)
turn ``(B, 1, frames, 64)`` into ``(B, C, frames / 16, 4)``; the frequency rows are kept as
features and time is pooled globally (mean and max), so any clip length works. It was trained
on 2.56-s crops and is reliable from about 1 s. ``benchmarks/swap/train_classifier.py`` trains
it on rendered General-MIDI clips and on their Griffin–Lim round trips, so that edits decoded
by the mel-diffusion backbone's Griffin–Lim vocoder are judged by their instrument rather than
by the vocoder's phase artefacts.

The shipped weights are in ``weights/instrument-classifier`` (``config.json`` +
``model.safetensors`` + ``training.json``): 85 k parameters, 344 kB. Trained on Ryan's Mammoth
tunes only, they label every held-out clip (5.12 s) right — 640 clips of unseen Ryan's tunes
and 960 of 120 Bach chorales, clean and after a Griffin–Lim round trip alike; of the 2.56-s
halves, 3 of 1920 Bach halves are wrong (one held note of piano, guitar or marimba dying away,
heard as flute). They know General-MIDI renders of these eight instruments (TimGM6mb), not
recordings of real ones; measured limits: 0.5-s clips 98 %, white noise at 0 dB SNR 82 %.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from backbones.mel import MelFrontEnd, to_mono
from backbones.saving import SteerHubMixin

SAMPLE_RATE = 16000

MODEL_CARD = """---
{{ card_data }}
---

# Instrument classifier (steer)

A small CNN (four 3 × 3 convolution blocks, global pooling over time) on the AudioLDM log-mel
(16 kHz, 64 bands, hop 10 ms) that names the instrument playing a clip. `steer` uses it to score
the fidelity of instrument-swap edits: the share of edits classified as the target instrument.

```python
from steer.metrics import InstrumentClassifier
classifier = InstrumentClassifier.from_pretrained("weights/instrument-classifier")
classifier.predict(waveform, sample_rate=16000)  # (B, samples) -> ["violin", ...]
```

Trained by `benchmarks/swap/train_classifier.py` on General-MIDI renders (TimGM6mb soundfont) of
melodies from music21's corpus and on their Griffin–Lim round trips; `training.json` beside the
weights holds the command, the seed and the held-out accuracies. It knows those renders, not
recordings of real instruments.

- Code: {{ repo_url | default("the `steer` repository, `steer/metrics/instrument.py`", true) }}
- Scores edits for: SteerMusic, {{ paper_url }}
"""


class InstrumentClassifier(
    nn.Module,
    SteerHubMixin,
    library_name="steer",
    tags=["audio", "music", "audio-classification", "instrument-recognition", "steer"],
    pipeline_tag="audio-classification",
    paper_url="https://arxiv.org/abs/2504.10826",
    model_card_template=MODEL_CARD,
):
    """Instrument classifier on 16 kHz mono audio.

    Saved and loaded with the Hugging Face Hub mixin (``config.json`` + ``model.safetensors``);
    :meth:`~backbones.saving.SteerHubMixin.save_pretrained` refuses to replace a classifier
    already in the folder unless given ``overwrite=True``, and returns the folder;
    :meth:`~backbones.saving.SteerHubMixin.from_pretrained` expands ``~`` in a folder's path.

    Args:
        classes: instrument names, in the order of the logits.
        channels: output channels of the four convolution blocks.
        mel_mean, mel_std: standardisation of the normalised log-mel (training-set statistics).
        dropout: before the linear head (training only).

    Example:
        >>> classifier = InstrumentClassifier(classes=["piano", "violin"]).eval()
        >>> classifier.logits(torch.randn(3, 16000)).shape
        torch.Size([3, 2])
        >>> len(classifier.predict(torch.randn(2, 44100), sample_rate=44100))
        2
    """

    def __init__(
        self,
        *,
        classes: Sequence[str],
        channels: Sequence[int] = (16, 32, 64, 96),
        mel_mean: float = -5.5,
        mel_std: float = 2.5,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        classes = list(classes)
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError(f"need two or more distinct class names, got {classes}")
        if len(channels) != 4:
            raise ValueError(f"expected four block widths, got {list(channels)}")
        self.classes = classes
        self.mel_mean = mel_mean
        self.mel_std = mel_std
        self.mel = MelFrontEnd()
        blocks, previous = [], 1
        for width in channels:
            blocks += [
                nn.Conv2d(previous, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            previous = width
        self.features = nn.Sequential(*blocks)
        rows = -(-self.mel.n_mels // 16)  # frequency rows left after four 2× poolings
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * previous * rows, len(classes)))

    @property
    def min_samples(self) -> int:
        """The shortest clip accepted, at 16 kHz (one STFT window)."""
        return self.mel.n_fft

    def forward(self, log_mel: Tensor) -> Tensor:
        """Logits ``(B, classes)`` of normalised log-mels ``(B, 1, frames, 64)``."""
        x = self.features((log_mel - self.mel_mean) / self.mel_std)  # (B, C, frames / 16, 4)
        x = x.permute(0, 2, 1, 3).flatten(2)  # (B, time, C · 4): frequency rows are features
        return self.head(torch.cat([x.mean(1), x.amax(1)], dim=1))

    def log_mel(self, waveform: Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE) -> Tensor:
        """The network's input: ``(samples,)``, ``(B, samples)`` or ``(B, channels, samples)``
        audio at ``sample_rate`` → normalised log-mel ``(B, 1, frames, 64)``."""
        if isinstance(waveform, np.ndarray):
            waveform = torch.from_numpy(np.ascontiguousarray(waveform))
        device = next(self.parameters()).device
        waveform = to_mono(waveform.to(device), sample_rate, SAMPLE_RATE)
        if not torch.isfinite(waveform).all():
            raise ValueError("audio holds NaN or infinite samples; an instrument cannot be named")
        if waveform.shape[-1] < self.min_samples:
            raise ValueError(
                f"audio is too short to classify: {waveform.shape[-1]} samples at {SAMPLE_RATE} Hz, "
                f"need at least {self.min_samples} (about 1 s or more for a reliable answer)"
            )
        return self.mel(self.mel.normalize(waveform))

    def logits(self, waveform: Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE) -> Tensor:
        """Class logits ``(B, classes)`` of audio (see :meth:`log_mel` for the shapes accepted)."""
        return self(self.log_mel(waveform, sample_rate))

    def probabilities(self, waveform: Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE) -> Tensor:
        """Softmax of :meth:`logits`, ``(B, classes)`` in the order of :attr:`classes`."""
        return self.logits(waveform, sample_rate).softmax(dim=-1)

    @torch.no_grad()
    def predict(self, waveform: Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE) -> list[str]:
        """The most probable instrument name of each clip."""
        return [self.classes[i] for i in self.logits(waveform, sample_rate).argmax(-1).tolist()]

    def class_index(self, names: Sequence[str]) -> Tensor:
        """Indices ``(N,)`` of instrument names; an unknown name is a ``ValueError``."""
        lookup = {name: i for i, name in enumerate(self.classes)}
        unknown = sorted({n for n in names if n not in lookup})
        if unknown:
            raise ValueError(f"instruments {unknown} are not among this classifier's {self.classes}")
        return torch.tensor([lookup[n] for n in names], dtype=torch.long)

    def extra_repr(self) -> str:
        return f"classes={self.classes}"

