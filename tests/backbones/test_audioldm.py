"""The AudioLDM adapter against diffusers' own AudioLDMPipeline as the oracle."""

import pytest
import torch
from diffusers import AudioLDMPipeline, DDIMScheduler
from perfect_denoiser import make_perfect

from backbones import AudioLDMBackbone, load_backbone
from backbones.base import UP_BLOCK_SELF_ATTENTION
from backbones.tiny import tiny_audioldm_pipeline
from losses import FeatureRequest, NoiseRequest
from steer.predictions import evaluate_requests


@pytest.fixture(scope="module")
def tiny_audioldm_pipe():
    """One tiny random pipeline for the module (treat as read-only)."""
    return tiny_audioldm_pipeline(seed=0)


@pytest.fixture()
def backbone(tiny_audioldm_pipe) -> AudioLDMBackbone:
    return AudioLDMBackbone.from_pipe(tiny_audioldm_pipe)


def _pipeline_guided_noise(pipe, x, t, prompt, guidance):
    """ε̂ computed the way AudioLDMPipeline.__call__ does in its denoising loop."""
    cfg = guidance > 1.0
    with torch.no_grad():
        embeds = pipe._encode_prompt(prompt, torch.device("cpu"), 1, cfg)
        latent_in = pipe.scheduler.scale_model_input(torch.cat([x] * 2) if cfg else x, t)
        out = pipe.unet(latent_in, t, encoder_hidden_states=None, class_labels=embeds).sample
    if not cfg:
        return out
    uncond, cond = out.chunk(2)
    return uncond + guidance * (cond - uncond)


def test_encode_prompt_equals_pipeline(backbone, tiny_audioldm_pipe):
    cond = backbone.encode_prompt(["a violin melody"])
    with torch.no_grad():
        embeds = tiny_audioldm_pipe._encode_prompt("a violin melody", torch.device("cpu"), 1, True)
    assert torch.equal(cond.cond["class_labels"], embeds[1:])
    assert torch.equal(cond.uncond["class_labels"], embeds[:1])
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(2))  # the pipeline's L2 normalisation


@pytest.mark.parametrize("guidance", [1.0, 3.0, 30.0])
def test_predict_noise_equals_pipeline(backbone, tiny_audioldm_pipe, guidance):
    x = torch.randn(1, 8, 32, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    ours = backbone.predict_noise(x, t, backbone.encode_prompt(["a piano melody"]), guidance)
    reference = _pipeline_guided_noise(tiny_audioldm_pipe, x, t, "a piano melody", guidance)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_batched_rows_equal_single_rows(backbone):
    prompts = ["a piano", "a slow solo violin melody with a warm vibrato and reverb"]
    x = torch.randn(2, 8, 32, 16, generator=torch.Generator().manual_seed(1))
    t, guidance = torch.tensor([100, 900]), torch.tensor([2.0, 7.0])
    batch = backbone.predict_noise(x, t, backbone.encode_prompt(prompts), guidance)
    for i, prompt in enumerate(prompts):
        single = backbone.predict_noise(x[i : i + 1], t[i : i + 1], backbone.encode_prompt([prompt]), float(guidance[i]))
        torch.testing.assert_close(batch[i : i + 1], single, rtol=1e-5, atol=1e-5)
    assert (batch[0] - batch[1]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_a_perfect_denoiser_gives_back_the_noise(tiny_audioldm_pipe, kind, monkeypatch):
    """x_t from a known (x0, ε); a UNet answering exactly in its parametrisation (ε, or the
    scheduler's own v) must come out of predict_noise as ε, guided or not."""
    scheduler = DDIMScheduler.from_config(tiny_audioldm_pipe.scheduler.config, prediction_type=kind)
    pipe = AudioLDMPipeline(**{**tiny_audioldm_pipe.components, "scheduler": scheduler})
    backbone = AudioLDMBackbone.from_pipe(pipe)
    generator = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(3, 8, 8, 16, generator=generator), torch.randn(3, 8, 8, 16, generator=generator)
    t = torch.tensor([20, 500, 980])
    x_t = backbone.add_noise(x0, eps, t)
    torch.testing.assert_close(x_t, scheduler.add_noise(x0, eps, t), rtol=1e-6, atol=1e-6)
    cond = backbone.encode_prompt(["a", "b", "c"])
    make_perfect(monkeypatch, pipe.unet, eps if kind == "epsilon" else scheduler.get_velocity(x0, eps, t))
    for guidance in (1.0, 3.0):
        torch.testing.assert_close(backbone.predict_noise(x_t, t, cond, guidance), eps, rtol=1e-5, atol=1e-5)


def test_unsupported_parametrisations_are_refused(tiny_audioldm_pipe):
    scheduler = DDIMScheduler.from_config(tiny_audioldm_pipe.scheduler.config, prediction_type="sample")
    with pytest.raises(ValueError, match="prediction_type is 'sample'; steer reads epsilon and v_prediction"):
        AudioLDMBackbone.from_pipe(AudioLDMPipeline(**{**tiny_audioldm_pipe.components, "scheduler": scheduler}))


def test_pcon_features_are_time_frequency_maps_with_a_gradient(backbone):
    """Up-block self-attention outputs of the conditional branch as (B, T, F, C) maps."""
    x = torch.randn(2, 8, 32, 16, generator=torch.Generator().manual_seed(3), requires_grad=True)
    request = NoiseRequest("edit", "target", 3.0)
    feature = FeatureRequest(request, UP_BLOCK_SELF_ATTENTION, grad=True)
    _, features = evaluate_requests(
        [request],
        models={"base": backbone},
        latents={"edit": x},
        prompts={"base": {"target": backbone.encode_prompt(["a piano", "a violin"])}},
        t=torch.tensor([100, 800]),
        features=[feature],
    )
    shapes = {name.split(".attentions")[0]: tuple(f.shape) for name, f in features[feature].items()}
    assert len(features[feature]) == 9  # three attention up blocks of three layers
    # time-major and halving both axes per level: (32, 16) latent frames -> (4, 2), (8, 4), (16, 8)
    assert shapes == {"up_blocks.0": (2, 4, 2, 40), "up_blocks.1": (2, 8, 4, 24), "up_blocks.2": (2, 16, 8, 16)}
    sum(f.square().sum() for f in features[feature].values()).backward()
    assert x.grad is not None and x.grad[0].abs().sum() > 0 and x.grad[1].abs().sum() > 0


def test_save_and_load_round_trip(backbone, tmp_path, diffusers_log):
    backbone.save_pretrained(tmp_path / "pipe")
    assert list((tmp_path / "pipe" / "unet").glob("*.safetensors"))
    loaded = load_backbone(str(tmp_path / "pipe"))
    # diffusers' deprecation warning reaches the user (steer does not silence it)
    assert "AudioLDMPipeline has been deprecated" in diffusers_log.text
    assert type(loaded) is AudioLDMBackbone
    assert (backbone.name_or_path, loaded.name_or_path) == (None, str(tmp_path / "pipe"))
    x, t = torch.randn(1, 8, 16, 16), torch.tensor([400])
    a = backbone.predict_noise(x, t, backbone.encode_prompt(["a cello"]), 3.0)
    b = loaded.predict_noise(x, t, loaded.encode_prompt(["a cello"]), 3.0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_loading_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="could not load an AudioLDM pipeline from .*cvssp/audioldm-s-full-v2"):
        AudioLDMBackbone.from_pretrained(tmp_path / "missing")
