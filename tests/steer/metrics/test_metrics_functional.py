"""CQT-1 PCC on synthetic tones whose pitches are known, so each number has a reason."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from steer.metrics import (
    CQT1PCC,
    LogMelDistance,
    cqt1_pcc,
    cqt1_pcc_batch,
    cqt_min_seconds,
    cqt_top1,
    functional,
    log_mel_distance,
    lpaps_distance,
)
from steer.metrics.functional import _cqt, _pearson

SR = 16000


def tones(midi: list[int], *, seconds_each: float = 0.4, sample_rate: int = SR) -> np.ndarray:
    """A sequence of pure tones, float32."""
    n = round(seconds_each * sample_rate)
    t = np.arange(n) / sample_rate
    return np.concatenate(
        [0.5 * np.sin(2 * np.pi * 440 * 2 ** ((p - 69) / 12) * t) for p in midi]
    ).astype(np.float32)


MELODY = [60, 64, 67, 72, 69, 65, 62, 71, 60, 76]


def expected_bin(midi: int) -> float:
    return 24 * math.log2(440 * 2 ** ((midi - 69) / 12) / 65)


def test_top1_finds_the_pitch_of_a_tone():
    top = cqt_top1(tones([69], seconds_each=2.0))  # 440 Hz -> bin 24 log2(440/65) = 66.2
    assert top.dtype == torch.int64
    assert top.shape == (2 * SR // 512 + 1,)  # centred frames, hop 512
    assert (top[3:-3] == 66).all()


def test_top1_follows_a_melody():
    top = cqt_top1(tones(MELODY)).numpy()
    frames_per_note = 0.4 * SR / 512
    mids = [int((i + 0.5) * frames_per_note) for i in range(len(MELODY))]
    np.testing.assert_allclose(top[mids], [expected_bin(p) for p in MELODY], atol=0.6)


def test_a_clip_with_itself_is_exactly_one():
    x = tones(MELODY)
    assert cqt1_pcc(x, x) == 1.0


def test_silence_gives_nan():
    x = tones(MELODY)
    assert math.isnan(cqt1_pcc(np.zeros_like(x), x))  # a constant top-1 sequence (all bin 0)
    assert math.isnan(cqt1_pcc(x, np.zeros_like(x)))
    assert math.isnan(cqt1_pcc(np.zeros_like(x), np.zeros_like(x)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_clip_holding_a_non_finite_sample_gives_nan(bad):
    """A diverged edit has no melody line (its argmax over a NaN spectrum scored 0.875)."""
    x = tones(MELODY)
    y = x.copy()
    y[5] = bad
    assert math.isnan(cqt1_pcc(x, y)) and math.isnan(cqt1_pcc(y, x))
    rows = cqt1_pcc_batch(np.stack([x, y, x]), np.stack([x, x, x[::-1].copy()]))
    assert rows[0] == 1.0 and math.isnan(rows[1]) and rows[2] < 0.5


def test_transposition_keeps_the_contour_and_reversal_breaks_it():
    x = tones(MELODY)
    fifth_up = tones([p + 7 for p in MELODY])
    assert cqt1_pcc(x, fifth_up) > 0.99  # Pearson ignores a constant shift of bins
    assert cqt1_pcc(x, tones(MELODY[::-1])) < 0.0
    assert abs(cqt1_pcc(x, tones([64, 64, 71, 60, 67, 72, 60, 65, 76, 62]))) < 0.5


def test_the_longer_clip_is_cut_to_the_shorter():
    x = tones(MELODY)
    longer = np.concatenate([x, np.zeros(3 * SR, np.float32)])  # silence: bin 0, far from all
    assert cqt1_pcc(x, longer) > 0.99  # 1.0 up to the last frame, which sees the silence
    assert cqt1_pcc(longer, x) == cqt1_pcc(x, longer)


def test_numpy_torch_and_batch_agree():
    a, b = tones(MELODY), tones(MELODY[::-1])
    single = cqt1_pcc(a, b)
    assert cqt1_pcc(torch.from_numpy(a), torch.from_numpy(b)) == single
    batch = cqt1_pcc_batch(np.stack([a, a, np.zeros_like(a)]), np.stack([b, a, a]))
    assert batch.shape == (3,) and batch.dtype == torch.float64
    assert batch[0].item() == pytest.approx(single, abs=1e-12)
    assert batch[1].item() == 1.0
    assert math.isnan(batch[2].item())


def test_other_sample_rates_are_resampled_to_16k():
    x16 = tones(MELODY)
    x44 = tones(MELODY, sample_rate=44100)
    assert cqt1_pcc(x16, x44, sample_rate=16000) < 1.0  # 44.1 kHz read as 16 kHz: wrong pitches
    assert cqt_top1(x44, sample_rate=44100).shape == cqt_top1(x16).shape
    assert cqt1_pcc_batch(x16[None], x16[None]).item() == 1.0
    top16, top44 = cqt_top1(x16), cqt_top1(x44, sample_rate=44100)
    assert (top16 == top44).float().mean() > 0.9


def test_pearson_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 128, (2, 5, 200))
    ours = _pearson(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    reference = [np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, reference, rtol=1e-12)


def test_the_cqt_kernel_is_built_once():
    assert _cqt(torch.device("cpu")) is _cqt(torch.device("cpu"))


def test_bad_shapes_are_refused():
    x = tones(MELODY)
    with pytest.raises(ValueError, match="batch"):
        cqt1_pcc(x[None], x[None])
    with pytest.raises(ValueError, match="batch"):
        cqt1_pcc_batch(x, x)
    with pytest.raises(ValueError, match="shape"):
        cqt_top1(np.zeros((1, 1, 100), np.float32))


def test_a_clip_too_short_for_the_cqt_is_refused_and_its_pcc_is_nan():
    shortest = 8224  # 257 samples after the CQT's 5 halvings (its lowest octave), at 16 kHz
    assert cqt_min_seconds() == shortest / SR
    long_enough, short = tones([69], seconds_each=shortest / SR), tones([69], seconds_each=(shortest - 1) / SR)
    assert cqt_top1(long_enough).shape == (shortest // 512 + 1,)
    with pytest.raises(ValueError) as error:
        cqt_top1(short)
    assert str(error.value) == (  # 0.514 s and "at least 0.514 s" read alike
        "a clip of 0.5139 s is too short for the CQT of the melody line (CQT-1 PCC, steer plot), which reads "
        "at least 0.5140 s (8224 samples at 16000 Hz; the clip holds 8223)"
    )
    with pytest.raises(ValueError, match=r"0\.500 s is too short"):  # 8000 samples at 16 kHz, from 22.05 kHz
        cqt_top1(tones([69], seconds_each=0.5, sample_rate=22050), sample_rate=22050)
    x = tones(MELODY)
    with pytest.warns(RuntimeWarning, match="CQT-1 PCC is NaN: a clip of 0.5139 s is too short"):
        assert math.isnan(cqt1_pcc(x, short))
    with pytest.warns(RuntimeWarning, match="CQT-1 PCC is NaN"):
        pcc = cqt1_pcc_batch(np.stack([short, short]), np.stack([short, short]))
    assert pcc.shape == (2,) and pcc.isnan().all()


def test_clips_too_short_for_the_log_mel_distance_give_nan_with_a_warning():
    """Under one STFT window the log-mel distance raised ("clips must hold at least 1024
    samples"), and one such clip stopped a whole `steer eval`."""
    x = tones([69], seconds_each=1.0)
    assert math.isfinite(log_mel_distance(x[:1024], x[:1024]))
    with pytest.warns(RuntimeWarning, match=r"^log-mel distance is NaN: a clip of 0\.0639 s is too short .* at least 0\.0640 s \(1024 samples at 16000 Hz; the clip holds 1023\)$"):
        assert math.isnan(log_mel_distance(x[:1023], x))
    with pytest.warns(RuntimeWarning, match=r"a clip of 0\.013 s is too short"):
        batch = log_mel_distance(np.stack([x[:200]] * 2), np.stack([x[:200]] * 2))
    assert batch.shape == (2,) and batch.isnan().all()
    metric = LogMelDistance(sample_rate=SR)
    with pytest.warns(RuntimeWarning, match="log-mel distance is NaN"):
        metric.update(torch.from_numpy(x[None, :500]), torch.from_numpy(x[None]))
    metric.update(torch.from_numpy(x[None]), torch.from_numpy(x[None]))
    assert metric.values()[0].isnan() and metric.values()[1] == 0.0


def test_a_constant_clip_has_no_melody_line_as_silence():
    """A DC offset leaked into the lowest CQT bins: its top bin wandered (7, 0, 1, 5) and its
    CQT-1 PCC against a melody was -0.41, where silence gives NaN."""
    x = tones(MELODY)
    for rate in (SR, 22050):
        dc = np.full(2 * rate, 0.3, np.float32)
        assert (cqt_top1(dc, sample_rate=rate) == 0).all()
        assert math.isnan(cqt1_pcc(tones(MELODY, sample_rate=rate), dc, sample_rate=rate))
    batch = cqt1_pcc_batch(np.stack([x, np.full_like(x, -0.2)]), np.stack([x, x]))
    assert batch[0] == 1.0 and batch[1].isnan()


def test_the_cqt_is_the_authors_one_zero_padded():
    """The authors' eval/CQT1_PCC.py builds CQT2010 with pad_mode='constant' (nnAudio's default
    reflects): the first and last frames' top bins differed in 1.5 % of frames."""
    from nnAudio.features import CQT2010

    authors = CQT2010(sr=16000, fmin=65, fmax=2100, n_bins=128, bins_per_octave=24, norm=1, basis_norm=1,
                      window="hann", pad_mode="constant", earlydownsample=True, verbose=False)
    x = torch.randn(3, 2 * SR, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cqt_top1(x), authors(x).argmax(dim=1))


def test_a_constant_clip_at_another_rate_has_no_melody_line_in_the_metric_or_steer_eval(tmp_path):
    """CQT1PCC and steer eval resample to 16 kHz first, which made a 44.1-kHz DC clip's ends ramp:
    it gained a melody line (PCC -0.09 against a tone) where a constant clip has none."""
    from steer.audio import save_audio
    from steer.evaluate import Pair, evaluate

    rate = 44100
    dc, melody = torch.full((1, 2 * rate), 0.3), torch.from_numpy(tones(MELODY, sample_rate=rate))[None]
    metric = CQT1PCC(sample_rate=rate)
    metric.update(dc, melody)
    assert metric.values()[0].isnan()
    save_audio(tmp_path / "dc.wav", dc, rate)
    save_audio(tmp_path / "melody.wav", melody, rate)
    pairs = [Pair("dc", None, tmp_path / "melody.wav", tmp_path / "dc.wav", "a violin")]
    assert evaluate(pairs, ["cqt1_pcc"])["items"]["dc"]["cqt1_pcc"] is None


@pytest.mark.parametrize("metric", [CQT1PCC, LogMelDistance])
def test_an_empty_batch_is_refused_naming_the_shape(metric):
    with pytest.raises(ValueError, match=r"^edited holds no clips \(shape \(0, 2000\)\): pass at least one clip$"):
        metric(sample_rate=SR).update(torch.zeros(0, 2000), torch.zeros(0, 2000))


@pytest.mark.parametrize("metric", [CQT1PCC, LogMelDistance])
def test_integer_pcm_is_refused_with_the_scaling_that_fixes_it(metric):
    """int16 samples were taken as floats 32768 times too loud: CLAP-based scores moved (one went
    from -0.25 to 0.06), and a stereo int16 clip failed inside torch's mean."""
    pcm = torch.full((1, 2, 2000), 1000, dtype=torch.int16)
    with pytest.raises(ValueError, match=r"^edited must hold floating-point samples in \[-1, 1\], got torch.int16: divide 16-bit samples by 32768"):
        metric(sample_rate=SR).update(pcm, pcm.float() / 32768)
    with pytest.raises(ValueError, match=r"^a waveform must hold floating-point samples in \[-1, 1\], got torch.int16: divide 16-bit"):
        cqt1_pcc(pcm[0, 0].numpy(), pcm[0, 0].numpy() / 32768, sample_rate=SR)


def test_lpaps_distance_takes_features_on_two_devices():
    """An edit's features on one device and its source's on another met in one subtraction
    ("Expected all tensors to be on the same device"); the meta device stands in for a GPU."""
    edit = [torch.randn(2, 3, 4, 4, device="meta"), torch.randn(2, 5, 2, 2, device="meta")]
    source = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)]
    distance = lpaps_distance(edit, source)
    assert distance.device.type == "meta" and distance.shape == (2,)


@pytest.mark.parametrize(
    "metric, batched",
    [(cqt1_pcc, False), (cqt1_pcc_batch, True), (log_mel_distance, False), (log_mel_distance, True)],
)
def test_two_clip_metrics_move_the_reference_to_the_estimates_device(metric, batched, monkeypatch):
    """A CPU source and a CUDA edit crashed ``cqt1_pcc`` (examples/compose_an_editor.py --device
    cuda). No second real device exists on CPU, so this checks that each metric puts its pair on
    one device through ``_on_device_of`` (whose move the doctest and the LPAPS test above show on
    the meta device) with the estimate first, and the GPU test below runs it for real."""
    x, y = tones(MELODY), tones(MELODY[::-1])
    if batched:
        x, y = np.stack([x, y]), np.stack([y, y])
    reference, estimate = torch.from_numpy(x), torch.from_numpy(y)
    seen = []

    def spy(estimate: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append((estimate, reference))
        return estimate, reference

    monkeypatch.setattr(functional, "_on_device_of", spy)
    if metric is log_mel_distance:
        metric(estimate, reference)
    else:
        metric(reference, estimate)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], (estimate, reference))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_two_clip_metrics_take_a_cpu_source_and_a_cuda_edit():
    source, edit = torch.from_numpy(tones(MELODY)), torch.from_numpy(tones(MELODY[::-1]))
    on_cpu = cqt1_pcc(source, edit)
    assert cqt1_pcc(source, edit.cuda()) == pytest.approx(on_cpu, abs=0.05)
    assert cqt1_pcc(source.cuda(), edit) == pytest.approx(on_cpu, abs=0.05)
    batch = cqt1_pcc_batch(source[None], edit[None].cuda())
    assert batch.device.type == "cpu" and batch.item() == pytest.approx(on_cpu, abs=0.05)
    assert log_mel_distance(edit.cuda(), source) == pytest.approx(log_mel_distance(edit, source), rel=1e-4)
    features = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)]
    cuda = lpaps_distance([f.cuda() for f in features], [f.flip(0) for f in features])
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), lpaps_distance(features, [f.flip(0) for f in features]))
