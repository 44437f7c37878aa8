"""The MusicLDM adapter against diffusers' own MusicLDMPipeline code as the oracle.

The pipeline's ``_encode_prompt`` calls ``.to`` on ``ClapModel.get_text_features``'s result, a
tensor in transformers 4 and an output object in 5; the oracle runs the pipeline's own code with
that one call shimmed back to the tensor (its ``pooler_output``).
"""

import warnings

import pytest
import torch
from diffusers import DDIMScheduler, MusicLDMPipeline
from perfect_denoiser import make_perfect

from backbones import MusicLDMBackbone, load_backbone
from backbones.base import UP_BLOCK_SELF_ATTENTION
from backbones.tiny import tiny_musicldm_pipeline
from losses import FeatureRequest, NoiseRequest
from steer.predictions import evaluate_requests


@pytest.fixture(scope="module")
def tiny_musicldm_pipe():
    """One tiny random pipeline for the module (treat as read-only)."""
    return tiny_musicldm_pipeline(seed=0)


@pytest.fixture()
def backbone(tiny_musicldm_pipe) -> MusicLDMBackbone:
    return MusicLDMBackbone.from_pipe(tiny_musicldm_pipe)


def _shimmed(pipe, monkeypatch):
    """The pipeline with ``get_text_features`` returning a tensor, as in transformers 4 (the
    text encoder is shared: encode with the adapter first)."""
    encoder = pipe.text_encoder
    original = encoder.get_text_features
    monkeypatch.setattr(encoder, "get_text_features", lambda *a, **k: original(*a, **k).pooler_output)
    return pipe


def _pipeline_guided_noise(pipe, x, t, prompt, guidance):
    """ε̂ computed the way MusicLDMPipeline.__call__ does in its denoising loop."""
    cfg = guidance > 1.0
    with torch.no_grad():
        embeds = pipe._encode_prompt(prompt, torch.device("cpu"), 1, cfg)
        latent_in = pipe.scheduler.scale_model_input(torch.cat([x] * 2) if cfg else x, t)
        out = pipe.unet(latent_in, t, encoder_hidden_states=None, class_labels=embeds, return_dict=False)[0]
    if not cfg:
        return out
    uncond, cond = out.chunk(2)
    return uncond + guidance * (cond - uncond)


def test_the_pipeline_cannot_encode_prompts_with_transformers_5(tiny_musicldm_pipe):
    """Upstream behaviour, kept visible: why the adapter encodes prompts itself. If this starts
    passing through, the adapter can call the pipeline's ``_encode_prompt`` again."""
    with pytest.raises(AttributeError, match="has no attribute 'to'"):
        tiny_musicldm_pipe._encode_prompt("a piano", torch.device("cpu"), 1, True)


def test_encode_prompt_equals_pipeline(backbone, tiny_musicldm_pipe, monkeypatch):
    cond = backbone.encode_prompt(["a violin melody"])
    with torch.no_grad():
        embeds = _shimmed(tiny_musicldm_pipe, monkeypatch)._encode_prompt("a violin melody", torch.device("cpu"), 1, True)
    assert torch.equal(cond.cond["class_labels"], embeds[1:])
    torch.testing.assert_close(cond.uncond["class_labels"], embeds[:1], rtol=0, atol=0)
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(2))  # CLAP's normalised features


@pytest.mark.parametrize("guidance", [1.0, 3.0, 30.0])
def test_predict_noise_equals_pipeline(backbone, tiny_musicldm_pipe, monkeypatch, guidance):
    x = torch.randn(1, 8, 32, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    ours = backbone.predict_noise(x, t, backbone.encode_prompt(["a piano melody"]), guidance)
    reference = _pipeline_guided_noise(_shimmed(tiny_musicldm_pipe, monkeypatch), x, t, "a piano melody", guidance)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_different_prompts_give_different_noise(backbone):
    x, t = torch.randn(1, 8, 16, 16), torch.tensor([300])
    a = backbone.predict_noise(x, t, backbone.encode_prompt(["a piano melody"]), 5.0)
    b = backbone.predict_noise(x, t, backbone.encode_prompt(["a violin melody"]), 5.0)
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_a_perfect_denoiser_gives_back_the_noise(tiny_musicldm_pipe, kind, monkeypatch):
    scheduler = DDIMScheduler.from_config(tiny_musicldm_pipe.scheduler.config, prediction_type=kind)
    pipe = MusicLDMPipeline(**{**tiny_musicldm_pipe.components, "scheduler": scheduler})
    backbone = MusicLDMBackbone.from_pipe(pipe)
    generator = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(2, 8, 8, 16, generator=generator), torch.randn(2, 8, 8, 16, generator=generator)
    t = torch.tensor([20, 980])
    x_t = backbone.add_noise(x0, eps, t)
    torch.testing.assert_close(x_t, scheduler.add_noise(x0, eps, t), rtol=1e-6, atol=1e-6)
    cond = backbone.encode_prompt(["a", "b"])
    make_perfect(monkeypatch, pipe.unet, eps if kind == "epsilon" else scheduler.get_velocity(x0, eps, t))
    torch.testing.assert_close(backbone.predict_noise(x_t, t, cond, 3.0), eps, rtol=1e-5, atol=1e-5)


def test_pcon_features_are_time_frequency_maps(backbone):
    x = torch.randn(1, 8, 32, 16, generator=torch.Generator().manual_seed(3))
    request = NoiseRequest("edit", "target", 1.0)
    feature = FeatureRequest(request, UP_BLOCK_SELF_ATTENTION)
    _, features = evaluate_requests(
        [request],
        models={"base": backbone},
        latents={"edit": x},
        prompts={"base": {"target": backbone.encode_prompt(["a piano"])}},
        t=torch.tensor([100]),
        features=[feature],
    )
    shapes = {tuple(f.shape) for f in features[feature].values()}
    assert len(features[feature]) == 9
    assert shapes == {(1, 4, 2, 40), (1, 8, 4, 24), (1, 16, 8, 16)}


def test_save_and_load_round_trip(backbone, tmp_path, diffusers_log):
    backbone.save_pretrained(tmp_path / "pipe")
    loaded = load_backbone(str(tmp_path / "pipe"))
    assert "MusicLDMPipeline has been deprecated" in diffusers_log.text
    assert type(loaded) is MusicLDMBackbone and loaded.name_or_path == str(tmp_path / "pipe")
    x, t = torch.randn(1, 8, 16, 16), torch.tensor([400])
    a = backbone.predict_noise(x, t, backbone.encode_prompt(["a cello"]), 3.0)
    b = loaded.predict_noise(x, t, loaded.encode_prompt(["a cello"]), 3.0)
    # Equal weights (checked by diffusers' loader), yet CLAP's pooled features differ in the last
    # bit between the built and the loaded module (6e-8 measured): not bitwise, but far below
    # what a wrongly loaded component would give.
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_loading_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="could not load a MusicLDM pipeline from .*ucsd-reach/musicldm"):
        MusicLDMBackbone.from_pretrained(tmp_path / "missing")


def test_a_prompt_longer_than_the_text_encoder_reads_is_warned_of(backbone):
    """The pipeline's CLAP tokenizer cut it without a word (AudioLDM's and AudioLDM2's say so)."""
    most = backbone.pipe.tokenizer.model_max_length
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbone.encode_prompt(["a recording of a violin"])
    with pytest.warns(UserWarning, match=f"reads a prompt's first {most} tokens: the end of 'a a a") as seen:
        backbone.encode_prompt([" ".join(["a"] * (most + 1))])
    assert seen[0].filename == __file__  # the caller's line, not the prompt cache's
