"""CLAP score and LPAPS with a tiny random CLAP saved to disk and loaded back by path."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
import torch
import torchaudio.functional as AF
from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor

from backbones.tiny.audioldm2 import _clap, _clap_feature_extractor, _roberta_tokenizer
from steer.metrics import (
    LPAPS,
    ClapAudioEmbedding,
    ClapEncoder,
    CLAPScore,
    FrechetAudioDistance,
    build_metrics,
    lpaps_distance,
)

SR = 16000


@pytest.fixture(scope="module")
def clap_path(tmp_path_factory) -> str:
    """A tiny random ClapModel + ClapProcessor (2 audio stages, 16-dim embeddings) on disk."""
    path = tmp_path_factory.mktemp("tiny-clap")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _clap().eval().save_pretrained(path)
    ClapProcessor(feature_extractor=_clap_feature_extractor(), tokenizer=_roberta_tokenizer()).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def clap(clap_path) -> ClapEncoder:
    return ClapEncoder.from_pretrained(clap_path)


@pytest.fixture(scope="module", params=["rand_trunc", "fusion"])
def one_second_clap(request) -> ClapEncoder:
    """A tiny random CLAP whose feature extractor reads 1 s (LAION's: 10 s), so that clips longer
    than that, which it crops at random (``rand_trunc``) or cuts into random chunks (``fusion``,
    with a fusion audio tower), are cheap to score."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = _clap().config
        audio_config = config.audio_config.to_dict() | {"enable_fusion": request.param == "fusion"}
        model = ClapModel(ClapConfig(
            text_config=config.text_config.to_dict(), audio_config=audio_config, projection_dim=config.projection_dim
        ))
    extractor = ClapFeatureExtractor(
        feature_size=64, sampling_rate=48000, hop_length=790, max_length_s=1, truncation=request.param
    )
    return ClapEncoder(model=model, processor=ClapProcessor(feature_extractor=extractor, tokenizer=_roberta_tokenizer()))


def tones(*freqs: float, seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(round(seconds * SR)) / SR
    return torch.stack([0.5 * torch.sin(2 * math.pi * f * t) for f in freqs])  # (B, samples)


PROMPTS = ["a solo piano", "violin and cello", "drums"]


def test_clap_score_is_the_cosine_of_clap_embeddings(clap_path):
    metric = CLAPScore(sample_rate=SR, model=clap_path)
    audio = tones(220, 440, 330)
    metric.update(audio, audio, target_prompts=PROMPTS)

    model, processor = ClapModel.from_pretrained(clap_path), ClapProcessor.from_pretrained(clap_path)
    inputs = processor(audio=list(AF.resample(audio, SR, 48000).numpy()), sampling_rate=48000, return_tensors="pt")
    text = processor(text=PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        a = model.get_audio_features(**inputs).pooler_output
        t = model.get_text_features(**text).pooler_output
    by_hand = (a * t).sum(-1) / (a.norm(dim=-1) * t.norm(dim=-1))

    values = metric.values()
    assert values.shape == (3,)
    assert ((values >= -1) & (values <= 1)).all()
    torch.testing.assert_close(values, by_hand.double(), atol=1e-6, rtol=0)
    assert metric.compute().item() == pytest.approx(by_hand.mean().item(), abs=1e-6)


def test_clap_score_reads_stereo_as_its_mono_mix(clap):
    metric = CLAPScore(sample_rate=SR, model=clap)
    left, right = tones(220), tones(440)
    metric.update(torch.stack([left, right], dim=1), left, target_prompts=PROMPTS[:1])
    metric.update((left + right) / 2, left, target_prompts=PROMPTS[:1])
    first, second = metric.values()
    assert first.item() == pytest.approx(second.item(), abs=1e-6)


def test_clap_score_needs_one_prompt_per_clip(clap):
    metric = CLAPScore(sample_rate=SR, model=clap)
    with pytest.raises(ValueError, match="target_prompts"):
        metric.update(tones(220), tones(220))
    with pytest.raises(ValueError, match="2 clips but 1 target prompts"):
        metric.update(tones(220, 330), tones(220, 330), target_prompts=["piano"])


def test_lpaps_of_a_clip_with_itself_is_zero_and_grows_with_noise(clap):
    metric = LPAPS(sample_rate=SR, model=clap)
    clean = tones(220, 440, 330)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    means = []
    for scale in (0.0, 0.01, 0.1, 1.0):
        metric.reset()
        metric.update(clean + scale * noise, clean)
        means.append(metric.compute().item())
    assert means[0] == 0.0
    assert all(x < y for x, y in pairwise(means))
    assert means[-1] <= 4 * 2  # each of the 2 stages lies in [0, 4]


def test_a_prompt_longer_than_the_text_encoder_reads_is_cut_there(clap):
    """A prompt past the position embeddings (128 tokens in the tiny CLAP) raised an index error,
    which stopped a whole steer eval; it is scored on what the encoder reads."""
    longest = clap.model.config.text_config.max_position_embeddings - 2
    words = "a slow violin melody with warm vibrato and a long hall reverb " * 40
    tokens = clap.processor.tokenizer(words)["input_ids"]
    assert len(tokens) > longest
    cut = clap.processor.tokenizer.decode(tokens[1 : longest - 1])
    torch.testing.assert_close(clap.text_embeddings([words]), clap.text_embeddings([cut]), rtol=0, atol=1e-6)


def test_a_metric_set_to_train_keeps_its_network_in_eval_mode(clap):
    """A parent module's .train() reached CLAP: dropout on, LPAPS of a clip with itself above 0."""
    clean = tones(220, 440, 330)
    holder = torch.nn.ModuleDict({"lpaps": LPAPS(sample_rate=SR, model=clap), "clap": CLAPScore(sample_rate=SR, model=clap)})
    holder["clap"].update(clean, clean.flip(-1), target_prompts=PROMPTS)
    before = holder["clap"].values()
    holder.train()
    assert holder["lpaps"].training and not [n for n, m in holder.named_modules() if m.training and n.count(".") > 1]
    holder["lpaps"].update(clean, clean)
    assert holder["lpaps"].compute().item() == 0.0
    holder["clap"].reset()
    holder["clap"].update(clean, clean.flip(-1), target_prompts=PROMPTS)
    torch.testing.assert_close(holder["clap"].values(), before, rtol=0, atol=0)


def test_lpaps_distance_matches_the_per_channel_cosine_form():
    """Σ_stages mean_c (2 − 2 cos(a_c, b_c)), each channel's map normalised over positions."""
    generator = torch.Generator().manual_seed(1)
    a = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in ((2, 4, 3, 5), (2, 6, 2, 2))]
    b = [torch.randn(x.shape, generator=generator, dtype=torch.float64) for x in a]
    expected = sum(
        (2 - 2 * torch.cosine_similarity(x.flatten(2), y.flatten(2), dim=-1)).mean(-1)
        for x, y in zip(a, b)
    )
    torch.testing.assert_close(lpaps_distance(a, b), expected, rtol=1e-9, atol=1e-12)
    # a positive gain on one channel's map changes nothing: the normalisation is over positions
    scaled = [a[0] * torch.tensor([1.0, 3.0, 0.5, 2.0], dtype=torch.float64)[None, :, None, None], a[1]]
    torch.testing.assert_close(lpaps_distance(scaled, b), lpaps_distance(a, b), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="stage"):
        lpaps_distance(a, b[:1])
    # one clip against a batch of 2 broadcast to 2 distances, as if each were the pair's
    one = [x[:1] for x in a]
    with pytest.raises(ValueError, match=r"^stage 0: expected two \(B, C, H, W\) maps of one shape, got \(1, 4, 3, 5\) and \(2, 4, 3, 5\)"):
        lpaps_distance(one, b)
    with pytest.raises(ValueError, match=r"^stage 1: .* got \(2, 6, 4\) and \(2, 6, 4\)"):
        lpaps_distance([a[0], a[1].flatten(2)], [b[0], b[1].flatten(2)])
    # one map for a list of them: "Boolean value of Tensor with more than one value is ambiguous"
    with pytest.raises(TypeError, match=r"^expected a list of tensors on each side, .* got a tensor: .* \[features\] for one stage$"):
        lpaps_distance(a[0], b[0])
    with pytest.raises(TypeError, match=r"got \['list'\]"):
        lpaps_distance([a], [b])


def test_lpaps_averages_overlapping_windows_as_the_reference(clap):
    metric = LPAPS(sample_rate=SR, model=clap, window_seconds=0.5, overlap=0.1)
    edited, source = tones(300, seconds=1.2), tones(310, seconds=1.2)
    metric.update(edited, source)
    edited48, source48 = (AF.resample(x, SR, 48000) for x in (edited, source))
    window, hop = 24000, 21600  # starts at 0, 0.45 and 0.9 s
    by_hand = [
        lpaps_distance(clap.audio_stages(edited48[:, s : s + window]), clap.audio_stages(source48[:, s : s + window]))
        for s in (0, hop, 2 * hop)
    ]
    torch.testing.assert_close(metric.values(), sum(by_hand) / 3, rtol=1e-12, atol=0)


def test_build_metrics_shares_one_clap_model(clap_path):
    metrics = build_metrics(["clap", "fad", "lpaps", "cqt1_pcc"], sample_rate=SR, clap_model=clap_path)
    assert list(metrics) == ["clap", "fad", "lpaps", "cqt1_pcc"]
    assert metrics["clap"].clap is metrics["lpaps"].clap is metrics["fad"].embedding.clap
    # two notes a clip: a steady tone's melody line is one bin throughout, whose PCC is NaN
    audio = torch.cat([tones(220, 440, 330, 550, seconds=0.5), tones(330, 550, 440, 660, seconds=0.5)], dim=-1)
    for metric in metrics.values():
        metric.update(audio, audio, target_prompts=PROMPTS + ["flute"])
    assert metrics["fad"].compute().item() == pytest.approx(0.0, abs=1e-6)
    assert metrics["lpaps"].compute().item() == 0.0
    assert metrics["cqt1_pcc"].compute().item() == 1.0


def test_a_folder_without_clap_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot load a CLAP model"):
        build_metrics(["clap"], sample_rate=SR, clap_model=str(tmp_path))


def _long_clips(n: int, seconds: float = 1.6) -> torch.Tensor:
    """``(n, samples)`` noise bursts that change over time, so that every crop embeds differently."""
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(n, round(seconds * SR), generator=generator)
    envelope = torch.linspace(0, 1, noise.shape[-1]) ** torch.arange(1, n + 1)[:, None]
    return 0.3 * noise * envelope


def test_clips_longer_than_clap_reads_score_alike_whatever_the_rng_and_the_batch(one_second_clap):
    """Clips over the extractor's max_length_s were cropped (rand_trunc) or chunked (fusion) at
    positions drawn from numpy's global RNG: scores changed from call to call and with the batch."""
    clips, prompts = _long_clips(3), PROMPTS
    metric = CLAPScore(sample_rate=SR, model=one_second_clap)
    np.random.seed(0)
    metric.update(clips, clips, target_prompts=prompts)
    np.random.seed(1)
    for i in (2, 1, 0):  # alone, in another order, from another RNG state
        metric.update(clips[i : i + 1], clips[i : i + 1], target_prompts=prompts[i : i + 1])
    values = metric.values()
    torch.testing.assert_close(values[:3], values[3:].flip(0), rtol=0, atol=1e-6)
    assert len(set(values[:3].tolist())) == 3

    twice = CLAPScore(sample_rate=SR, model=one_second_clap)
    twice.update(clips[[0, 0]], clips[[0, 0]], target_prompts=prompts[:2])
    assert twice.values()[0].item() == pytest.approx(values[0].item(), abs=1e-6)

    state = np.random.get_state()
    expected = np.random.random_sample()
    np.random.set_state(state)
    metric.update(clips, clips, target_prompts=prompts)
    assert np.random.random_sample() == expected  # numpy's global RNG is left as it was


def test_fad_of_identical_sets_of_long_clips_is_zero(one_second_clap):
    fad = FrechetAudioDistance(sample_rate=SR, embedding=ClapAudioEmbedding(one_second_clap))
    clips = _long_clips(4)
    fad.update(clips, clips.clone())
    assert fad.compute().item() == pytest.approx(0.0, abs=1e-6)  # was 0.006 (rand_trunc), 0.05 (fusion)


@pytest.mark.parametrize("cut", [1, 160, 800, 4000])
def test_lpaps_compares_clips_of_different_lengths_over_their_common_start(clap, cut):
    """Each clip was windowed on its own and its last window padded by repetition, so a copy
    trimmed by 160 samples scored 0.047 instead of 0 (0.48 for 800)."""
    metric = LPAPS(sample_rate=SR, model=clap, window_seconds=0.5, overlap=0.1)
    clip = tones(220, 470, seconds=1.2) + 0.02 * torch.randn(2, round(1.2 * SR), generator=torch.Generator().manual_seed(4))
    metric.update(clip[:, :-cut], clip)
    metric.update(clip, clip[:, :-cut])
    assert metric.values().tolist() == [0.0] * 4
    metric.update(clip[:, :-cut], clip[:, 1:])  # the common start of two different clips
    by_hand = LPAPS(sample_rate=SR, model=clap, window_seconds=0.5, overlap=0.1)
    by_hand.update(clip[:, :-cut], clip[:, 1 : clip.shape[-1] - cut + 1])
    torch.testing.assert_close(metric.values()[4:], by_hand.values(), rtol=1e-12, atol=0)
    assert (by_hand.values() > 0).all()


@pytest.mark.parametrize("shape", [(0, SR), (1, 0)], ids=["no clips", "a clip of no samples"])
def test_empty_batches_and_clips_are_refused_naming_the_shape(clap, shape):
    """They raised torch's "cannot reshape tensor of 0 elements" from deep inside the model."""
    waveform = torch.zeros(shape)
    metrics = {
        CLAPScore(sample_rate=SR, model=clap): "edited holds clips of no samples (shape (1, 0))",
        LPAPS(sample_rate=SR, model=clap): "edited (1, 0) and source (1, 0) have none",
        FrechetAudioDistance(sample_rate=SR, embedding=ClapAudioEmbedding(clap)): "edited holds clips of no samples",
    }
    for metric, message in metrics.items():
        with pytest.raises(ValueError) as error:
            metric.update(waveform, waveform, target_prompts=["x"] * shape[0])
        assert (message if shape[0] else "edited holds no clips (shape (0, 16000))") in str(error.value)


def test_clips_shorter_than_one_clap_window_score_nan_with_a_warning(clap):
    """A 3-sample edit of a 1-s source scored LPAPS 0.0 (the best), its common start repeated to
    CLAP's input length on both sides; the CLAP score of such a clip was a buzz's."""
    source = tones(220)
    window = -(-clap.shortest * SR // clap.sample_rate)  # the STFT window at the clips' rate, rounded up
    lpaps, score = LPAPS(sample_rate=SR, model=clap), CLAPScore(sample_rate=SR, model=clap)
    with pytest.warns(RuntimeWarning, match=r"LPAPS is NaN: a clip of 0\.000\d* s is too short for LPAPS, which reads at least 0\.021"):
        lpaps.update(source[:, :3], source)
    with pytest.warns(RuntimeWarning, match="the CLAP score is NaN: a clip of"):
        score.update(source[:, :3], source, target_prompts=["piano"])
    lpaps.update(source[:, :window], source)
    score.update(source[:, :window], source, target_prompts=["piano"])
    assert lpaps.values()[0].isnan() and score.values()[0].isnan()
    assert lpaps.values()[1] == 0.0 and score.values()[1].isfinite()
