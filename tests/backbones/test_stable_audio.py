"""The Stable Audio Open adapter against diffusers' StableAudioPipeline and the EDM closed forms."""

import math
import warnings

import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.models.embeddings import get_1d_rotary_pos_embed

from backbones.stable_audio import StableAudioBackbone
from backbones.tiny.stable_audio import tiny_stable_audio_pipeline
from hooks import FeatureCapture
from losses import FeatureRequest, NoiseRequest
from steer import Audio, SteerMusic
from steer.predictions import evaluate_requests

FRAMES = 22  # latent frames of about one second (2048 samples each at 44.1 kHz)


@pytest.fixture(scope="module")
def sa_pipe():
    """One tiny random Stable Audio pipeline for the module (treat as read-only)."""
    return tiny_stable_audio_pipeline(seed=0)


@pytest.fixture()
def backbone(sa_pipe) -> StableAudioBackbone:
    """A fresh adapter (empty prompt cache) over the shared tiny pipeline."""
    return StableAudioBackbone.from_pipe(sa_pipe)


def _latent(seed: int, batch: int = 1, frames: int = FRAMES) -> torch.Tensor:
    return torch.randn(batch, 64, frames, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _pipeline_guided_noise(pipe, x_vp, sigma, prompt, guidance):
    """ε̂ of a VP latent, computed the way StableAudioPipeline.__call__ runs one denoising step at
    noise level σ (scale_model_input = precondition_inputs, convert_model_output =
    precondition_outputs), then ε = (x − D) / σ."""
    do_cfg = guidance > 1.0
    seconds = x_vp.shape[-1] * pipe.vae.hop_length / pipe.vae.config.sampling_rate
    prompt_embeds = pipe.encode_prompt(prompt, "cpu", do_cfg)
    start, end = pipe.encode_duration(0.0, seconds, "cpu", False, 1)
    text_audio_duration_embeds = torch.cat([prompt_embeds, start, end], dim=1)
    audio_duration_embeds = torch.cat([start, end], dim=2)
    if do_cfg:  # no negative prompt: the unconditional cross-attention input is all zeros
        text_audio_duration_embeds = torch.cat(
            [torch.zeros_like(text_audio_duration_embeds), text_audio_duration_embeds]
        )
        audio_duration_embeds = torch.cat([audio_duration_embeds, audio_duration_embeds])
    rotary = get_1d_rotary_pos_embed(
        pipe.rotary_embed_dim,
        x_vp.shape[2] + audio_duration_embeds.shape[1],
        use_real=True,
        repeat_interleave_real=False,
    )
    x = x_vp * math.sqrt(1 + sigma**2)
    model_input = torch.cat([x, x]) if do_cfg else x
    model_input = pipe.scheduler.precondition_inputs(model_input, sigma)
    timestep = pipe.scheduler.precondition_noise(sigma)
    out = pipe.transformer(
        model_input,
        timestep,
        encoder_hidden_states=text_audio_duration_embeds,
        global_hidden_states=audio_duration_embeds,
        rotary_embedding=rotary,
        return_dict=False,
    )[0]
    if do_cfg:
        uncond, cond = out.chunk(2)
        out = uncond + guidance * (cond - uncond)
    denoised = pipe.scheduler.precondition_outputs(x, out, sigma)
    return (x - denoised) / sigma


def test_tiny_pipeline_is_seeded_and_leaves_the_global_rng_alone(sa_pipe):
    before = torch.random.get_rng_state()
    a, b = tiny_stable_audio_pipeline(seed=0), tiny_stable_audio_pipeline(seed=1)
    assert torch.equal(before, torch.random.get_rng_state())
    for name in ("vae", "text_encoder", "projection_model", "transformer"):
        same = dict(sa_pipe.components[name].state_dict())
        for key, value in a.components[name].state_dict().items():
            assert torch.equal(value, same[key]), (name, key)
        assert not all(
            torch.equal(v, b.components[name].state_dict()[k])
            for k, v in a.components[name].state_dict().items()
        ), name
        assert not any(m.training for m in a.components[name].modules()), name


def test_schedule_is_the_cosine_table_over_the_scheduler_range(backbone):
    sigmas, alpha_bar = backbone.sigmas.double(), backbone.alphas_cumprod.double()
    assert sigmas.shape == alpha_bar.shape == (1000,)
    assert sigmas[0].item() == pytest.approx(0.3, rel=1e-6)
    assert sigmas[-1].item() == pytest.approx(500.0, rel=1e-6)
    torch.testing.assert_close(alpha_bar, 1 / (1 + sigmas**2), rtol=1e-6, atol=0)
    steps = sigmas.atan().diff()  # evenly spaced in the DiT's noise input (2/π) · arctan σ
    torch.testing.assert_close(steps, torch.full_like(steps, steps.mean()), rtol=1e-4, atol=0)
    assert (alpha_bar.diff() < 0).all()
    assert 0.85 < alpha_bar[20] and alpha_bar[980] < 1e-3  # t in [20, 980]: light to heavy noise


def test_encode_prompt_is_the_pipelines_and_cached(backbone, sa_pipe, monkeypatch):
    calls = []
    original = sa_pipe.encode_prompt
    monkeypatch.setattr(
        sa_pipe, "encode_prompt", lambda *a, **k: calls.append(a[0]) or original(*a, **k)
    )
    cond = backbone.encode_prompt(["a violin melody", "a piano", "a violin melody"])
    assert calls == ["a violin melody", "a piano"]
    with torch.no_grad():
        reference = original("a violin melody", "cpu", False)
    assert cond.cond["text_states"].shape == (3, 128, 32)
    assert torch.equal(cond.cond["text_states"][:1], reference)
    assert torch.equal(cond.uncond["text_states"], torch.zeros(3, 128, 32))
    assert cond.cond["cross_attention_seconds"].flatten().tolist() == [1.0] * 3
    assert cond.uncond["cross_attention_seconds"].flatten().tolist() == [0.0] * 3


@pytest.mark.parametrize("guidance", [1.0, 3.0, 7.0])
@pytest.mark.parametrize("t", [20, 500, 980])
def test_predict_noise_equals_pipeline(backbone, sa_pipe, guidance, t):
    x = _latent(0)
    cond = backbone.encode_prompt(["a piano melody"])
    ours = backbone.predict_noise(x, torch.tensor([t]), cond, guidance)
    sigma = backbone.sigmas[t].item()
    reference = _pipeline_guided_noise(sa_pipe, x, sigma, "a piano melody", guidance)
    # float32 rounding of the two computations' D, multiplied by the guidance (the CFG mix) and
    # divided by σ below 1 (ε = (x − D) / σ): seen up to 1.3e-5 at t = 20 (σ = 0.33), guidance 7,
    # in both the newest and the lowest versions CI installs; the bound is 5-9× what was seen
    atol = 5e-6 * guidance / min(sigma, 1.0)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=atol)
    assert ours.dtype == torch.float32


def test_batched_rows_equal_single_rows(backbone):
    prompts = ["a piano", "a slow solo violin melody with a warm vibrato"]
    x, t, guidance = _latent(1, batch=2), torch.tensor([100, 900]), torch.tensor([2.0, 7.0])
    batch = backbone.predict_noise(x, t, backbone.encode_prompt(prompts), guidance)
    for i, prompt in enumerate(prompts):
        single = backbone.predict_noise(
            x[i : i + 1], t[i : i + 1], backbone.encode_prompt([prompt]), float(guidance[i])
        )
        torch.testing.assert_close(batch[i : i + 1], single, rtol=1e-5, atol=1e-5)
    other = backbone.predict_noise(x, t, backbone.encode_prompt(prompts[::-1]), guidance)
    assert (other - batch).abs().max() > 1e-3  # the prompt matters


def test_duration_conditioning_follows_the_latent_length(backbone, sa_pipe, monkeypatch):
    seen = []
    original = sa_pipe.encode_duration
    monkeypatch.setattr(
        sa_pipe, "encode_duration", lambda *a, **k: seen.append(a[:2]) or original(*a, **k)
    )
    cond = backbone.encode_prompt(["a"])
    backbone.predict_noise(_latent(2, frames=43), torch.tensor([300]), cond, 1.0)
    assert seen == [(0.0, pytest.approx(43 * 2048 / 44100))]


@pytest.mark.parametrize("t", [0, 20, 500, 980, 999])
def test_perfect_denoiser_gives_back_the_noise(backbone, sa_pipe, monkeypatch, t):
    """With σ_data = 1 the DiT input c_in · x is x_VP, and the v-target that makes D = x0 is
    v = √ᾱ ε − √(1 − ᾱ) x0 (Salimans & Ho, 2022): a DiT returning it must yield ε exactly."""
    x0, noise = _latent(3), _latent(4)
    steps = torch.tensor([t])
    x_t = backbone.add_noise(x0, noise, steps)
    alpha_bar = backbone.alphas_cumprod[t].double()
    sigma = ((1 - alpha_bar) / alpha_bar).sqrt()
    v = (alpha_bar.sqrt() * noise.double() - (1 - alpha_bar).sqrt() * x0.double()).float()

    def perfect(hidden_states, timestep, **kwargs):
        torch.testing.assert_close(hidden_states, x_t, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(timestep.double(), 2 / math.pi * sigma.atan().view(1))
        return (v,)

    monkeypatch.setattr(sa_pipe.transformer, "forward", perfect)
    eps = backbone.predict_noise(x_t, steps, backbone.encode_prompt(["a"]), 1.0)
    torch.testing.assert_close(eps, noise, rtol=0, atol=1e-5)


def test_dds_with_equal_prompts_keeps_the_source(backbone):
    waveform = 0.3 * torch.sin(torch.arange(4410) * 0.06)[None].repeat(2, 1)  # 0.1 s stereo
    clip = Audio(waveform, 44100)
    source_latent = backbone.encode_audio(waveform[None], 44100)
    editor = SteerMusic(backbone, steps=3)
    with pytest.warns(UserWarning, match="the source and target prompts are the same"):
        same = editor.edit(clip, source="a piano melody", target="a piano melody")
    torch.testing.assert_close(same.latent, source_latent, rtol=0, atol=1e-6)
    assert same.audio.shape == (1, 2, 4410)
    moved = editor.edit(clip, source="a piano melody", target="a violin melody")
    assert (moved.latent - source_latent).abs().max() > 1e-3


def test_self_attention_features_drop_the_global_token(backbone):
    modules = backbone.self_attention_modules()
    assert list(modules) == [f"transformer_blocks.{i}.attn1" for i in range(24)]
    assert not any(m.is_cross_attention for m in modules.values())

    x = _latent(5, batch=2).requires_grad_(True)
    t = torch.tensor([200, 700])
    cond = backbone.encode_prompt(["a piano", "a cello"])
    request = NoiseRequest("edit", "target", 7.0)
    feature = FeatureRequest(request, layers=r"^transformer_blocks\.2[0-3]\.attn1$", grad=True)
    _, features = evaluate_requests(
        [request],
        models={"base": backbone},
        latents={"edit": x},
        prompts={"base": {"target": cond}},
        t=t,
        features=[feature],
    )
    maps = features[feature]
    assert list(maps) == [f"transformer_blocks.{i}.attn1" for i in range(20, 24)]
    for fmap in maps.values():
        assert fmap.shape == (2, FRAMES, 1, 16)  # (B, time, frequency, channels)

    with torch.no_grad(), FeatureCapture(backbone.denoiser, select=list(maps)) as capture:
        backbone.predict_noise(x, t, cond, 7.0)
    for name, fmap in maps.items():
        (raw,) = capture.features[name]
        assert raw.shape == (4, 1 + FRAMES, 16)  # [uncond; cond] rows, global token first
        torch.testing.assert_close(fmap.detach(), raw[2:, 1:, None], rtol=1e-5, atol=1e-5)

    sum(f.square().sum() for f in maps.values()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="do not match a latent of 22 frames"):
        backbone.feature_map(torch.zeros(1, FRAMES, 16), (1, 64, FRAMES))


def test_encode_and_decode_shapes(backbone, sa_pipe):
    time = torch.arange(4410) / 44100
    mono = 0.3 * torch.sin(2 * math.pi * 440 * time)[None]  # (1, 4410): 0.1 s, 2.15 frames
    stereo = torch.stack([mono, mono], dim=1)
    latent = backbone.encode_audio(mono, 44100)
    assert latent.shape == (1, 64, 3) and latent.dtype == torch.float32
    assert torch.equal(backbone.encode_audio(stereo, 44100), latent)  # mono duplicated
    with torch.no_grad():
        padded = torch.nn.functional.pad(stereo, (0, 3 * 2048 - 4410))
        expected = sa_pipe.vae.encode(padded).latent_dist.mean
    torch.testing.assert_close(latent, expected)

    half_rate = 0.3 * torch.sin(2 * math.pi * 440 * torch.arange(2205) / 22050)[None]
    resampled = backbone.encode_audio(half_rate, 22050)
    assert resampled.shape == latent.shape
    assert (resampled - latent).abs().mean() < 0.05 * latent.abs().mean()  # resampling ripple only

    with torch.no_grad():
        assert backbone.decode_audio(latent).shape == (1, 2, 3 * 2048)
        assert backbone.decode_audio(latent, 4410).shape == (1, 2, 4410)
        assert backbone.decode_audio(latent, 7000).shape == (1, 2, 7000)


def test_more_than_two_channels_are_encoded_as_their_mono_mix(backbone):
    """A 6-channel clip was refused with an internal message, where the mel backbones mix any
    channel count to mono: here the mix is duplicated to stereo, as mono is."""
    six = 0.1 * torch.randn(1, 6, 4096, generator=torch.Generator().manual_seed(0))
    mono = six.mean(dim=1)
    torch.testing.assert_close(backbone.encode_audio(six, 44100), backbone.encode_audio(mono, 44100))
    torch.testing.assert_close(backbone.encode_audio(six, 44100), backbone.encode_audio(mono[:, None].expand(-1, 2, -1), 44100))


def test_bad_input_is_a_clear_error(backbone, sa_pipe, tmp_path):
    with pytest.raises(ValueError, match=r"expected a waveform \(batch, samples\) or \(batch, channels, samples\), got \(100,\)"):
        backbone.encode_audio(torch.zeros(100), 44100)
    with pytest.raises(ValueError, match="empty"):
        backbone.encode_audio(torch.zeros(1, 0), 44100)
    with pytest.raises(ValueError, match=r"audio has no channels: got a waveform of shape \(1, 0, 100\)"):
        backbone.encode_audio(torch.zeros(1, 0, 100), 44100)  # its mean was NaN, encoded silently
    with pytest.raises(ValueError, match="could not load a Stable Audio pipeline"):
        StableAudioBackbone.from_pretrained(tmp_path / "missing")
    ddim = type(sa_pipe)(**{**sa_pipe.components, "scheduler": DDIMScheduler()})
    with pytest.raises(ValueError, match="DDIMScheduler has no EDM preconditioning"):
        StableAudioBackbone.from_pipe(ddim)


def test_save_and_load_round_trip(backbone, tmp_path):
    assert backbone.name_or_path is None
    backbone.save_pretrained(tmp_path / "pipe")
    assert list((tmp_path / "pipe" / "transformer").glob("*.safetensors"))
    loaded = StableAudioBackbone.from_pretrained(tmp_path / "pipe")
    assert loaded.name_or_path == str(tmp_path / "pipe")
    x, t = _latent(6), torch.tensor([400])
    a = backbone.predict_noise(x, t, backbone.encode_prompt(["a cello"]), 3.0)
    b = loaded.predict_noise(x, t, loaded.encode_prompt(["a cello"]), 3.0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_latents_stay_float32_with_a_bfloat16_model():
    backbone = StableAudioBackbone.from_pipe(tiny_stable_audio_pipeline().to(dtype=torch.bfloat16))
    assert backbone.dtype == torch.bfloat16
    cond = backbone.encode_prompt(["a"])
    eps = backbone.predict_noise(_latent(7), torch.tensor([500]), cond, 3.0)
    assert eps.dtype == torch.float32 and torch.isfinite(eps).all()
    assert backbone.encode_audio(torch.zeros(1, 2048), 44100).dtype == torch.float32


@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_samplers_end_where_the_pipelines_scheduler_ends(sa_pipe, monkeypatch, final):
    """Timestep 0 is σ_min = 0.3 (ᾱ ≈ 0.92), not a clean latent: with the pipeline's default
    ``final_sigmas_type="zero"`` sampling, SDEdit and both inversions end at σ = 0. A denoiser
    exact for one clean latent c (a point mass) then gives c back; before, sampling ended at
    σ_min, 0.96·c plus 0.29 of noise."""
    from steer.baselines import DDIMInversion, DDPMInversion, SDEdit
    from steer.sampling import sample

    pipe = tiny_stable_audio_pipeline(seed=0)
    pipe.scheduler.register_to_config(final_sigmas_type=final)
    backbone = StableAudioBackbone.from_pipe(pipe)
    clean = torch.full((1, 64, FRAMES), 0.7)

    def perfect(x_vp, t, fields):
        alpha_bar = backbone.alphas_cumprod[t].view(-1, 1, 1)
        return (x_vp - alpha_bar.sqrt() * clean) / (1 - alpha_bar).sqrt()

    monkeypatch.setattr(backbone, "_epsilon", perfect)
    results = {
        "sample": sample(backbone, "a", shape=(1, 64, FRAMES), steps=10, guidance_scale=1.0),
        "sdedit": SDEdit(backbone, steps=50, strength=0.02).edit_latent(clean, source="a", target="a").latent,
        "ddim": DDIMInversion(backbone, steps=10).edit_latent(clean, source="a", target="a").latent,
        "ddpm": DDPMInversion(backbone, steps=10).edit_latent(clean, source="a", target="a").latent,
    }
    sigma_min = backbone.sigmas[0].item()
    for name, latent in results.items():  # an inversion's round trip is exact at either end
        if final == "zero" or name in ("ddim", "ddpm"):
            torch.testing.assert_close(latent, clean, rtol=0, atol=1e-4, msg=name)
        else:  # ends on timestep 0's level: √ᾱ_0 c + √(1 − ᾱ_0) ε̂, as that scheduler does
            assert (latent - clean).abs().max() > 0.1, name
    assert backbone.final_alpha_cumprod.item() == (1.0 if final == "zero" else pytest.approx(1 / (1 + sigma_min**2)))


def test_a_clip_longer_than_the_model_was_trained_on_is_warned_of():
    """The pipeline refuses to generate past sample_size frames (47.55 s for Stable Audio Open);
    a 60-s clip was edited conditioned on 60 s without a word."""
    pipe = tiny_stable_audio_pipeline(seed=0)
    pipe.transformer.register_to_config(sample_size=4)  # 0.19 s, so that the test clip is short
    backbone = StableAudioBackbone.from_pipe(pipe)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backbone.encode_audio(torch.zeros(1, 2, 4 * 2048), 44100).shape[-1] == 4
    with pytest.warns(UserWarning, match=r"a clip of 0\.23 s is longer than the 0\.19 s this model was trained on") as seen:
        backbone.encode_audio(torch.zeros(1, 2, 4 * 2048 + 1), 44100)
    assert seen[0].filename == __file__
