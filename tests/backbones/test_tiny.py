"""Tests for `backbones.tiny`: the offline AudioLDM2 pipeline mirrors the real layout and round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AudioLDM2Pipeline, DDIMScheduler
from transformers import GPT2LMHeadModel, RobertaTokenizer, T5Tokenizer

from backbones.tiny import tiny_audioldm2_pipeline

PROMPTS = ["a piano melody", "a violin melody"]


def _modules(pipe: AudioLDM2Pipeline) -> dict[str, torch.nn.Module]:
    return {name: c for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)}


@torch.no_grad()
def _encode(pipe: AudioLDM2Pipeline, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(T5 states (B, L, 32), mask (B, L), GPT2 states (B, 8, 16)), conditional part only."""
    return pipe.encode_prompt(prompts, torch.device("cpu"), 1, False)


def test_components_are_eval_float32_cpu_and_small(tiny_pipe: AudioLDM2Pipeline) -> None:
    modules = _modules(tiny_pipe)
    assert set(modules) == {
        "vae", "text_encoder", "text_encoder_2", "projection_model", "language_model", "unet", "vocoder"
    }
    for name, module in modules.items():
        assert not any(m.training for m in module.modules()), name
        for p in module.parameters():
            assert p.dtype == torch.float32 and p.device.type == "cpu", name
    # The real UNet has ~350 M parameters; the tiny one must stay tiny.
    assert sum(p.numel() for p in tiny_pipe.unet.parameters()) < 2_000_000
    assert type(tiny_pipe.language_model) is GPT2LMHeadModel


def test_same_seed_gives_identical_weights_and_different_seed_does_not() -> None:
    rng_before = torch.random.get_rng_state()
    a, b, c = (tiny_audioldm2_pipeline(seed=s) for s in (3, 3, 4))
    # Building must not consume the global RNG.
    assert torch.equal(rng_before, torch.random.get_rng_state())
    for name, module_a in _modules(a).items():
        sd_a, sd_b, sd_c = (m.state_dict() for m in (module_a, _modules(b)[name], _modules(c)[name]))
        assert sd_a.keys() == sd_b.keys() == sd_c.keys()
        assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a), name
    # A different seed changes every randomly initialised component.
    for name in ("vae", "text_encoder", "text_encoder_2", "language_model", "unet", "vocoder"):
        sd_a, sd_c = _modules(a)[name].state_dict(), _modules(c)[name].state_dict()
        assert not all(torch.equal(sd_a[k], sd_c[k]) for k in sd_a), name


def test_latent_layout_matches_audioldm2(tiny_pipe: AudioLDM2Pipeline) -> None:
    vae = tiny_pipe.vae
    assert vae.config.latent_channels == 8
    assert vae.config.scaling_factor != pytest.approx(0.18215)
    assert tiny_pipe.vae_scale_factor == 4
    with torch.no_grad():
        mel = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
        latent = vae.encode(mel).latent_dist.mode()
        assert latent.shape == (1, 8, 16, 16)
        assert vae.decode(latent).sample.shape == (1, 1, 64, 64)
        # Vocoder: mel (B, T, 64) -> (B, 160 T + 32) samples at 16 kHz. The real transposed-conv
        # kernels (16, 16, 8, 4, 4) add 32 samples beyond the hop of 160; the pipeline trims them.
        assert tiny_pipe.vocoder(torch.randn(1, 128, 64)).shape == (1, 128 * 160 + 32)
    assert tiny_pipe.vocoder.config.sampling_rate == 16000


def test_scheduler_is_the_real_ddim_schedule(tiny_pipe: AudioLDM2Pipeline) -> None:
    scheduler = tiny_pipe.scheduler
    assert isinstance(scheduler, DDIMScheduler)
    assert scheduler.config.num_train_timesteps == 1000
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.prediction_type == "epsilon"
    assert scheduler.betas[0].item() == pytest.approx(0.0015, rel=1e-5)
    assert scheduler.betas[-1].item() == pytest.approx(0.0195, rel=1e-5)


def test_unet_attention_layout_and_forward_shape(tiny_pipe: AudioLDM2Pipeline) -> None:
    unet = tiny_pipe.unet
    attn1 = {name: m for name, m in unet.named_modules() if name.endswith("transformer_blocks.0.attn1")}
    # Same count as the full-size UNet: 2*3*3 (down) + 3 (mid) + 3*3*3 (up).
    assert len(attn1) == 48
    assert sum(n.startswith("down_blocks.") for n in attn1) == 18
    assert sum(n.startswith("mid_block.") for n in attn1) == 3
    assert sum(n.startswith("up_blocks.") for n in attn1) == 27
    assert not any(m.is_cross_attention for m in attn1.values())

    # Per layer: self-attention only, then GPT2 (16) and T5 (32) cross-attention.
    attn2_kv_dims = [
        m.to_k.in_features for name, m in unet.named_modules() if name.endswith("transformer_blocks.0.attn2")
    ]
    channels = [m.query_dim for m in attn1.values()]
    assert attn2_kv_dims == [c if i % 3 == 0 else (16, 32)[i % 3 - 1] for i, c in enumerate(channels)]

    t5_states, mask, gpt2_states = _encode(tiny_pipe, PROMPTS)
    latent = torch.randn(2, 8, 256, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eps = unet(
            latent,
            torch.tensor([500]),
            encoder_hidden_states=gpt2_states,
            encoder_hidden_states_1=t5_states,
            encoder_attention_mask_1=mask,
        ).sample
    assert eps.shape == (2, 8, 256, 16)
    assert torch.isfinite(eps).all()


def test_tokenizers_cover_english_and_pass_the_pipeline_checks(tiny_pipe: AudioLDM2Pipeline) -> None:
    assert type(tiny_pipe.tokenizer) is RobertaTokenizer
    assert type(tiny_pipe.tokenizer_2) is T5Tokenizer
    text = "Upbeat Jazz trio: piano, bass & drums (120 BPM) -- café-style!"
    for tokenizer in (tiny_pipe.tokenizer, tiny_pipe.tokenizer_2):
        ids = tokenizer(text).input_ids
        assert tokenizer.unk_token_id not in ids
        # Nothing dropped either (a BPE without an unknown token silently skips what it lacks).
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
        a, b = (tokenizer(p).input_ids for p in PROMPTS)
        assert a != b


def test_clap_audio_tower_reads_the_feature_extractor_output(tiny_pipe: AudioLDM2Pipeline) -> None:
    # The pipeline scores waveforms with CLAP when num_waveforms_per_prompt > 1.
    rng = np.random.default_rng(0)
    waveforms = [rng.standard_normal(48000 * 2).astype(np.float32) for _ in range(2)]
    features = tiny_pipe.feature_extractor(waveforms, sampling_rate=48000, return_tensors="pt")
    assert features.input_features.shape == (2, 1, 61, 64)
    with torch.no_grad():
        audio_embeds = tiny_pipe.text_encoder.get_audio_features(input_features=features.input_features)
    assert getattr(audio_embeds, "pooler_output", audio_embeds).shape == (2, 16)


def test_different_prompts_give_different_conditioning(tiny_pipe: AudioLDM2Pipeline) -> None:
    t5_states, mask, gpt2_states = _encode(tiny_pipe, PROMPTS)
    # "a piano melody" is 15 T5 tokens + </s>, "a violin melody" one more: padded to 17.
    assert t5_states.shape == (2, 17, 32)
    assert mask.sum(dim=1).tolist() == [16, 17]
    assert gpt2_states.shape == (2, 8, 16)
    assert (t5_states[0] - t5_states[1]).abs().max() > 1e-3
    assert (gpt2_states[0] - gpt2_states[1]).abs().max() > 1e-3
    # The same prompts again give the same conditioning (eval mode: no dropout).
    again = _encode(tiny_pipe, PROMPTS)
    assert all(torch.equal(x, y) for x, y in zip(again, (t5_states, mask, gpt2_states), strict=True))


def test_gpt2_states_of_a_padded_prompt_depend_on_its_batch(tiny_pipe: AudioLDM2Pipeline) -> None:
    """Upstream behaviour, kept visible: T5 pads a batch to its longest prompt, and GPT2 then
    generates after the padding with shifted positions, so a shorter prompt's GPT2 states change
    with its batch companions. The longest prompt of a batch is unaffected. Real AudioLDM2 does
    the same; code that caches conditioning per prompt must encode prompts one at a time (or
    batch only prompts of equal T5 length) to be batch-independent.
    """
    _, _, batched = _encode(tiny_pipe, PROMPTS)  # T5 lengths 16 and 17
    _, _, piano = _encode(tiny_pipe, PROMPTS[:1])
    _, _, violin = _encode(tiny_pipe, PROMPTS[1:])
    torch.testing.assert_close(violin[0], batched[1])
    assert (piano[0] - batched[0]).abs().max() > 1e-3


def test_save_and_load_round_trip(tiny_pipe: AudioLDM2Pipeline, tmp_path: Path) -> None:
    tiny_pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["language_model"] == ["transformers", "GPT2LMHeadModel"]

    # As the loader does it: the language model passed explicitly, in case a saved pipeline
    # would bring back a bare GPT2Model.
    loaded = AudioLDM2Pipeline.from_pretrained(
        tmp_path, language_model=GPT2LMHeadModel.from_pretrained(tmp_path, subfolder="language_model")
    )
    assert type(loaded.language_model) is GPT2LMHeadModel
    assert loaded.language_model.config.max_new_tokens == 8
    assert type(loaded.tokenizer) is RobertaTokenizer and type(loaded.tokenizer_2) is T5Tokenizer
    assert loaded.tokenizer.model_max_length == tiny_pipe.tokenizer.model_max_length
    assert loaded.tokenizer_2.model_max_length == tiny_pipe.tokenizer_2.model_max_length
    for prompt in PROMPTS:
        assert loaded.tokenizer(prompt).input_ids == tiny_pipe.tokenizer(prompt).input_ids
        assert loaded.tokenizer_2(prompt).input_ids == tiny_pipe.tokenizer_2(prompt).input_ids
    assert loaded.vae.config.scaling_factor == tiny_pipe.vae.config.scaling_factor

    for name, module in _modules(tiny_pipe).items():
        original, reloaded = module.state_dict(), _modules(loaded)[name].state_dict()
        assert original.keys() == reloaded.keys(), name
        assert all(torch.equal(original[k], reloaded[k]) for k in original), name

    for a, b in zip(_encode(tiny_pipe, PROMPTS), _encode(loaded, PROMPTS), strict=True):
        assert torch.equal(a, b)


def test_full_pipeline_call_returns_the_requested_length(tiny_pipe: AudioLDM2Pipeline) -> None:
    audio = tiny_pipe(
        "a piano melody",
        num_inference_steps=2,
        audio_length_in_s=1.28,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(0),
    ).audios
    assert audio.shape == (1, int(1.28 * 16000))
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
