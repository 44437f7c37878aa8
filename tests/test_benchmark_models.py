"""The benchmark's real-size model runs, with and without its LoRA concept: prompts get
conditionings of the UNet's real widths."""

import torch

from benchmarks.models import RealSizeBackbone, lora_concept


def test_real_size_backbone_predicts_noise_from_its_own_conditioning():
    backbone = RealSizeBackbone.build()
    assert 340e6 < sum(p.numel() for p in backbone.denoiser.parameters()) < 355e6
    cond = backbone.encode_prompt(["a piano melody", "a guitar melody"])
    assert cond.cond["encoder_hidden_states"].shape == (2, 8, 768)
    assert cond.cond["encoder_hidden_states_1"].shape == (2, 16, 1024)
    x_t = torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eps = backbone.predict_noise(x_t, torch.tensor([10, 900]), cond, 3.0)
    assert eps.shape == x_t.shape and eps.isfinite().all()
    # the prompts reach the UNet: another prompt, another prediction
    with torch.no_grad():
        other = backbone.predict_noise(x_t, torch.tensor([10, 900]), backbone.encode_prompt(["a", "b"]), 3.0)
    assert (other - eps).abs().max() > 1e-4
    with lora_concept().apply(backbone) as personalized, torch.no_grad():
        personal = personalized.predict_noise(x_t, torch.tensor([10, 900]), cond, 3.0)
    torch.testing.assert_close(personal, eps)  # the adapter starts at B = 0: ε' = ε


def test_real_size_steermusic_plus_step_runs_on_a_small_latent():
    """What `pytest benchmarks --real-size` runs, one batched step on a 16×16 latent: the LoRA
    concept applies and PCon finds its layers in the real-size UNet."""
    from steer import SteerMusicPlus

    backbone = RealSizeBackbone.build()
    latent = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    with SteerMusicPlus(backbone, lora_concept(), steps=1, pcon_positions=8) as editor:
        result = editor.edit_latent(latent, source="a piano melody", target="a sks guitar melody")
    assert result.latent.isfinite().all() and (result.latent - latent).abs().max() > 1e-4
    assert result.history[0]["PersonalizedContrastiveLoss"] > 0
