"""The small mel-diffusion backbone: latent transform, guidance, vocoder, saving and loading."""

import json

import pytest
import torch

from backbones import MelFrontEnd, load_backbone
from backbones.griffin_lim import GriffinLimVocoder
from backbones.mel_diffusion import MelDiffusionBackbone, MelDiffusionModel, default_unet_config

WORDS = ["a", "recording", "of", "flute", "violin"]


@pytest.fixture(scope="module")
def backbone() -> MelDiffusionBackbone:
    torch.manual_seed(0)
    unet = default_unet_config()
    unet.update(block_out_channels=[16, 16, 32], norm_num_groups=8)
    return MelDiffusionBackbone(MelDiffusionModel(words=WORDS, unet=unet, mel_mean=-4.0, mel_std=2.5))


def test_latent_transform_is_exactly_invertible(backbone):
    log_mel = torch.randn(2, 1, 64, 64) * 3 - 4
    latent = backbone.mel_to_latent(log_mel)
    assert latent.shape == (2, 16, 16, 16)
    torch.testing.assert_close(backbone.latent_to_mel(latent), log_mel)
    # the time axis of the latent is axis 2: frames 4k..4k+3 fold into latent frame k
    edited = log_mel.clone()
    edited[:, :, 8:12] += 1
    changed = (backbone.mel_to_latent(edited) != latent).any(dim=(0, 1, 3))
    assert changed.nonzero().flatten().tolist() == [2]


def test_encode_audio_standardises_and_pads(backbone):
    latent = backbone.encode_audio(torch.randn(1, 2, 16300) * 0.1, 16000)  # 101 frames → 104
    assert latent.shape == (1, 16, 26, 16)
    silence = (MelFrontEnd().silence() - (-4.0)) / 2.5
    padded = backbone.latent_to_mel(latent)[0, 0, 101:]
    torch.testing.assert_close(padded, torch.full_like(padded, MelFrontEnd().silence()))
    assert latent.min() >= silence - 1e-5


def test_guidance_and_unknown_words(backbone):
    x, t = torch.randn(1, 16, 16, 16), torch.tensor([300])
    cond = backbone.encode_prompt(["a recording of a flute"])
    eps_c = backbone.predict_noise(x, t, cond, 1.0)
    eps_u = backbone.predict_noise(x, t, backbone.encode_prompt([""]), 1.0)
    torch.testing.assert_close(
        backbone.predict_noise(x, t, cond, 4.0), eps_u + 4.0 * (eps_c - eps_u), rtol=1e-5, atol=1e-5
    )
    with pytest.warns(UserWarning, match=r"vocabulary are read as <unk>: \['banjo'\]") as unknown:
        backbone.encode_prompt(["a recording of a banjo"])
    # past the 16 words it reads, a prompt was cut without a word: an edit towards it did nothing
    long = " ".join(["a recording of a flute"] * 4) + " violin"
    with pytest.warns(UserWarning, match=r"reads a prompt's first 16 words: 'recording of a flute violin' at the end of") as cut:
        backbone.encode_prompt([long])
    assert unknown[0].filename == cut[0].filename == __file__  # the caller's line, not the prompt cache's


def test_prompts_the_model_reads_as_one_warn_that_the_edit_does_nothing(backbone):
    """The warning compared the strings: "A Recording of a Flute!" edited nothing, without a word."""
    from steer import SteerMusic

    latent = torch.randn(1, 16, 8, 16, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match=r"the source and target prompts are the same.*written otherwise, they differ"):
        result = SteerMusic(backbone, steps=2).edit_latent(
            latent, source="a recording of a flute", target="A Recording of a Flute!"
        )
    assert torch.equal(result.latent, latent)


def test_griffin_lim_keeps_the_pitch():
    mel = MelFrontEnd()
    t = torch.arange(16000) / 16000
    tone = 0.5 * torch.sin(2 * torch.pi * 440 * t)[None]
    waveform = GriffinLimVocoder(mel)(mel(tone).squeeze(1))
    assert waveform.shape == (1, 16000)
    spectrum = torch.fft.rfft(waveform[0, 2000:14000]).abs()
    peak_hz = spectrum.argmax().item() * 16000 / 12000
    assert abs(peak_hz - 440) < 10


def test_save_and_load_round_trip(backbone, tmp_path):
    backbone.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["words"] == WORDS and config["mel_std"] == 2.5
    assert (tmp_path / "m" / "model.safetensors").is_file()
    loaded = load_backbone(str(tmp_path / "m"))
    assert isinstance(loaded, MelDiffusionBackbone)
    for (name, a), b in zip(backbone.model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), name
    x, t = torch.randn(1, 16, 8, 16), torch.tensor([10])
    torch.testing.assert_close(
        loaded.predict_noise(x, t, loaded.encode_prompt(["a recording of a violin"]), 3.0),
        backbone.predict_noise(x, t, backbone.encode_prompt(["a recording of a violin"]), 3.0),
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize("change", ["missing", "shape"])
def test_a_weights_file_missing_a_tensor_or_of_another_shape_is_refused(backbone, tmp_path, change):
    """A tensor missing from model.safetensors was left at its random initial value, without a
    word (the Hub mixin loads with strict=False); one of another shape raised torch's RuntimeError."""
    from safetensors.torch import load_file, save_file

    backbone.save_pretrained(tmp_path / "m")
    weights = load_file(tmp_path / "m" / "model.safetensors")
    name = next(name for name in weights if name.endswith("to_q.weight"))
    if change == "missing":
        del weights[name]
    else:
        weights[name] = weights[name][:-1]
    save_file(weights, tmp_path / "m" / "model.safetensors")
    with pytest.raises(ValueError, match=f"^could not load a mel-diffusion model from '{tmp_path / 'm'}' .*{name}"):
        load_backbone(str(tmp_path / "m"))


def test_latent_range_bounds_real_audio(backbone):
    low, high = backbone.latent_range
    loud = torch.sign(torch.randn(1, 16000)) * 0.9  # full-scale noise, the loudest kind of clip
    for waveform in (loud, torch.zeros(1, 16000), torch.sin(torch.arange(16000) * 0.3)[None]):
        latent = backbone.encode_audio(waveform, 16000)
        assert low - 1e-4 <= latent.min() and latent.max() <= high + 1e-4
    assert low == pytest.approx((MelFrontEnd().silence() + 4.0) / 2.5)
