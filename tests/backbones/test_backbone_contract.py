"""The contract every backbone keeps, checked by running the same composed editors on each.

A new backbone joins :data:`CASES`; if it breaks what losses and editors rely on (shapes and
dtypes of the noise prediction, a VP schedule, self-attention features that carry the gradient to
the latent, an exactly zero delta score for equal prompts, an exact DDPM-inversion round trip,
decoding to the input's duration, a batch of clips encoded as each alone,
SteerMusic+ with a LoRA concept, a textual-inversion concept that touches only its own token),
it fails here.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from backbones import Backbone, Conditioning, load_backbone
from losses import FeatureRequest, NoiseRequest
from steer import Audio, DDPMInversion, SteerMusic, SteerMusicPlus
from steer.concepts import Concept
from steer.performance import Performance
from steer.predictions import evaluate_requests

SHIPPED = Path(__file__).parents[2] / "weights" / "mel-diffusion-swap"
CASES = ["tiny", "tiny-audioldm", "tiny-musicldm", "tiny-stable-audio", "mel-diffusion-swap"]
# Words the shipped mel-diffusion model knows; any text suits the tiny models.
SOURCE, TARGET = "a recording of a piano", "a recording of a violin"
TOKEN, CLASS_WORD = "sks", "violin"


def _clip() -> Audio:
    """1.3 s of a harmonic tone at 22.05 kHz: neither rate nor length is any model's own."""
    rate = 22050
    t = torch.arange(round(1.3 * rate)) / rate
    wave = sum(torch.sin(2 * math.pi * k * 220.0 * t) / k for k in range(1, 5))
    return Audio((0.4 * wave / wave.abs().max())[None].float(), rate)


CLIP = _clip()


def _load(case: str, torch_dtype: torch.dtype = torch.float32) -> Backbone:
    return load_backbone(str(SHIPPED) if case == "mel-diffusion-swap" else case, torch_dtype=torch_dtype)


@pytest.fixture(scope="module", params=CASES)
def backbone(request) -> Backbone:
    return _load(request.param)


@pytest.fixture(scope="module")
def latent(backbone) -> torch.Tensor:
    return backbone.encode_audio(CLIP.waveform[None], CLIP.sample_rate)


def test_the_schedule_is_a_vp_table(backbone):
    a = backbone.alphas_cumprod
    assert a.dtype == torch.float32 and a.dim() == 1 and backbone.num_train_timesteps == len(a) > 980
    assert (a > 0).all() and (a <= 1).all() and (a.diff() < 0).all()
    x0, noise, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5), torch.tensor([20, 980])
    expected = a[t].sqrt()[:, None, None] * x0 + (1 - a[t]).sqrt()[:, None, None] * noise
    torch.testing.assert_close(backbone.add_noise(x0, noise, t), expected)


def test_half_precision_weights_keep_the_schedule_exact(backbone, request):
    half = _load(request.node.callspec.params["backbone"], torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert torch.equal(half.alphas_cumprod, backbone.alphas_cumprod)


def test_prompts_encoded_before_a_cast_are_encoded_again_after_it(backbone, latent, request):
    """A prompt encoded before the model was cast was cached in the old dtype, and its next
    prediction failed inside the denoiser (float != BFloat16); new prompts worked."""
    case = request.node.callspec.params["backbone"]
    cast = _load(case)
    cast.encode_prompt([SOURCE])
    (cast.pipe if hasattr(cast, "pipe") else cast.model).to(torch.bfloat16)
    t = torch.tensor([300])
    eps = cast.predict_noise(latent, t, cast.encode_prompt([SOURCE]), 3.0)
    half = _load(case, torch.bfloat16)
    assert torch.equal(eps, half.predict_noise(latent, t, half.encode_prompt([SOURCE]), 3.0))


def test_latents_and_noise_predictions(backbone, latent):
    assert latent.dtype == torch.float32 and latent.dim() == backbone.latent_dims and latent.shape[0] == 1
    assert latent.shape[1] == backbone.latent_channels
    assert torch.isfinite(latent).all()
    x = torch.cat([latent, latent + torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))])
    t = torch.tensor([20, 980])
    cond = backbone.encode_prompt([SOURCE, TARGET])
    for guidance in (1.0, 7.5, torch.tensor([3.0, 7.5])):
        eps = backbone.predict_noise(x, t, cond, guidance)
        assert eps.shape == x.shape and eps.dtype == torch.float32 and torch.isfinite(eps).all()
    # a row does not depend on the rows it is batched with (the editor stacks requests)
    for i, prompt in enumerate([SOURCE, TARGET]):
        single = backbone.predict_noise(x[i : i + 1], t[i : i + 1], backbone.encode_prompt([prompt]), float(guidance[i]))
        torch.testing.assert_close(eps[i : i + 1], single, rtol=1e-4, atol=1e-4)


def test_a_prediction_is_refused_where_t_or_the_prompts_do_not_give_one_per_row(backbone, latent):
    """torch failed inside the denoiser ("The size of tensor a (208) must match the size of tensor
    b (104)", "zero-dimensional tensor ... cannot be concatenated")."""
    x = torch.cat([latent, latent])
    for t, prompts in [(torch.tensor([10, 10]), [SOURCE]), (torch.tensor(10), [SOURCE, TARGET])]:
        with pytest.raises(ValueError, match=rf"^predict_noise takes x_t \(B, ...\), t \(B,\) and the conditioning of B prompts, got x_t of shape {re.escape(str(tuple(x.shape)))}, t of shape {re.escape(str(tuple(t.shape)))} and a conditioning of batch size {len(prompts)}"):
            backbone.predict_noise(x, t, backbone.encode_prompt(prompts), 3.0)


def test_a_latent_of_the_other_rank_is_refused_by_name(backbone, latent):
    """It was the denoiser's own error ("The size of tensor a (64) must match ... dimension 1",
    "expected input[1, 4, 8, 16] to have 8 channels") after the prompts were encoded."""
    other = latent[..., 0] if latent.dim() == 4 else latent[..., None]
    with pytest.raises(ValueError, match=re.escape(f"takes {latent.dim()}-D latents")):
        SteerMusic(backbone, steps=1).edit_latent(other, source=SOURCE, target=TARGET)


def test_prompts_pad_to_one_length_without_changing_the_prediction(backbone, latent):
    """Every field whose length varies with the prompt is masked (``Conditioning.masks``), so
    compiled editors pad prompts to one length (static shapes) and predict the same noise."""
    short, long = (backbone.encode_prompt([p]) for p in (SOURCE, f"{SOURCE} {TARGET}"))
    varying = {k for k in short.cond if short.cond[k].dim() > 1 and short.cond[k].shape[1] != long.cond[k].shape[1]}
    masked = {*short.masks, *short.masks.values()}
    assert varying <= masked, f"unmasked fields vary in length: {varying - masked}"
    cond = Conditioning.cat([short, long])
    padded = cond.padded(32)
    assert {padded.cond[k].shape[1] % 32 for k in short.masks} <= {0}
    x = torch.cat([latent, latent])
    t = torch.tensor([300, 700])
    plain = backbone.predict_noise(x, t, cond, torch.tensor([1.0, 7.5]))
    # rounding: 0 on AudioLDM2, 1.8e-5 on mel-diffusion; the padding seen (masks all ones): 0.18-8.3
    torch.testing.assert_close(backbone.predict_noise(x, t, padded, torch.tensor([1.0, 7.5])), plain, rtol=1e-4, atol=1e-4)


def test_self_attention_features_carry_the_gradient_to_the_latent(backbone, latent):
    modules = backbone.self_attention_modules()
    assert modules and any(n.endswith("attn1") for n in modules)
    x = latent.clone().requires_grad_(True)
    noisy = backbone.add_noise(x, torch.randn_like(x), torch.tensor([500]))
    request = NoiseRequest("edit", "target", 3.0)
    feature = FeatureRequest(request, ".", grad=True)  # every self-attention module
    _, features = evaluate_requests(
        [request],
        models={"base": backbone},
        latents={"edit": noisy},
        prompts={"base": {"target": backbone.encode_prompt([TARGET])}},
        t=torch.tensor([500]),
        features=[feature],
    )
    maps = features[feature]
    assert maps.keys() == modules.keys()
    for name, f in maps.items():
        assert f.dim() == 4 and f.shape[0] == 1, (name, f.shape)  # (B, T, F, C)
        assert f.shape[1] <= x.shape[2], (name, f.shape)  # time is never finer than the latent's
    sum(f.square().mean() for f in maps.values()).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_equal_prompts_give_an_exactly_zero_delta_score(backbone, latent):
    states = []
    with pytest.warns(UserWarning, match="the source and target prompts are the same, so the delta score between them is zero"):
        result = SteerMusic(backbone, steps=2).edit_latent(latent, source=SOURCE, target=SOURCE, callback=states.append)
    assert all(torch.equal(s.gradient, torch.zeros_like(latent)) for s in states)
    assert torch.equal(result.latent, latent)


def test_ddpm_inversion_with_equal_prompts_returns_the_latent(backbone, latent):
    """The inversion baselines use only ``predict_noise`` and the schedule: on every backbone
    (3-D latents, v-prediction converted to ε, the mel model's clamped estimates) DDPM inversion
    and sampling with one prompt and guidance retrace the source."""
    editor = DDPMInversion(backbone, steps=10, guidance_scale_inversion=3.0, guidance_scale=3.0)
    result = editor.edit_latent(latent, source=SOURCE, target=SOURCE)
    torch.testing.assert_close(result.latent, latent, rtol=0, atol=1e-3 * latent.abs().max().item())


def test_an_edit_keeps_the_input_duration(backbone):
    result = SteerMusic(backbone, steps=1).edit(CLIP, source=SOURCE, target=TARGET)
    samples = round(CLIP.seconds * backbone.sample_rate)
    expected = (1, samples) if backbone.channels == 1 else (1, backbone.channels, samples)
    assert tuple(result.audio.shape) == expected and result.sample_rate == backbone.sample_rate
    assert torch.isfinite(result.audio).all()


def test_a_batch_of_clips_encodes_as_each_clip_alone(backbone, latent):
    # (B, 1, samples) at a rate not the model's: mono and resampling, as `steer run --batch-size` gives them
    other = 0.5 * CLIP.waveform.flip(-1)
    batch = backbone.encode_audio(torch.stack([CLIP.waveform, other]), CLIP.sample_rate)
    assert batch.shape == (2, *latent.shape[1:])
    torch.testing.assert_close(batch[:1], latent, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(batch[1:], backbone.encode_audio(other[None], CLIP.sample_rate), rtol=1e-4, atol=1e-4)


def test_steermusic_plus_with_a_lora_concept(backbone, latent):
    layers = backbone.decoder_self_attention
    matched = [n for n in backbone.self_attention_modules() if re.search(layers, n)]
    assert 0 < len(matched) < len(backbone.self_attention_modules()), f"PCon's default layers {layers!r}"
    concept = Concept.train(backbone, [CLIP], token=TOKEN, class_word=CLASS_WORD, method="lora", steps=1, progress=False)
    before = backbone.predict_noise(latent, torch.tensor([300]), backbone.encode_prompt([TARGET]), 3.0)
    editor = SteerMusicPlus(backbone, concept, steps=2, pcon_positions=8)
    states = []
    target = f"a recording of a {TOKEN} {CLASS_WORD}"
    with editor:
        result = editor.edit_latent(latent, source=SOURCE, target=target, callback=states.append)
    assert all(s.losses["PersonalizedContrastiveLoss"] > 0 for s in states)
    assert torch.isfinite(result.latent).all() and not torch.equal(result.latent, latent)
    # gradient checkpointing recomputes ε′'s blocks in the backward pass, adapter on: same gradient
    checkpointed = []
    with SteerMusicPlus(backbone, concept, steps=1, pcon_positions=8, performance=Performance(checkpointing=True)) as e:
        e.edit_latent(latent, source=SOURCE, target=target, callback=checkpointed.append)
    torch.testing.assert_close(checkpointed[0].gradient, states[0].gradient, rtol=1e-5, atol=1e-6)
    assert not backbone.gradient_checkpointing
    assert sum(len(m._forward_hooks) for m in backbone.denoiser.modules()) == 0
    # closing ε' leaves the base model as it was
    after = backbone.predict_noise(latent, torch.tensor([300]), backbone.encode_prompt([TARGET]), 3.0)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_weights_cast_once_give_autocasts_edit_bit_for_bit(backbone, latent):
    """bf16 with the matmul and convolution weights cast once per edit (the default) against
    autocast casting them on every call: SteerMusic+ with a LoRA concept (its adapter's weights
    cast too, PCon's backward through ε′) applies the same gradients exactly; during the edit the
    modules hold bf16 copies, after it their own float32 parameters."""
    concept = Concept.train(backbone, [CLIP], token=TOKEN, class_word=CLASS_WORD, method="lora", steps=1, progress=False)
    target = f"a recording of a {TOKEN} {CLASS_WORD}"
    parameters = dict(backbone.denoiser.named_parameters())
    runs = {}
    for cast in (True, False):
        states, dtypes = [], set()

        def seen(state, states=states, dtypes=dtypes):
            states.append(state)
            dtypes.update(p.dtype for m in backbone.denoiser.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters())

        performance = Performance(precision="bf16", cast_weights=cast)
        with SteerMusicPlus(backbone, concept, steps=2, pcon_positions=8, performance=performance) as editor:
            result = editor.edit_latent(latent, source=SOURCE, target=target, callback=seen)
        runs[cast] = result.latent, [s.gradient for s in states]
        assert dtypes == ({torch.bfloat16} if cast else {torch.float32})
        after = dict(backbone.denoiser.named_parameters())
        assert after.keys() == parameters.keys() and all(after[n] is p for n, p in parameters.items())
    assert all(torch.equal(a, b) for a, b in zip(runs[True][1], runs[False][1], strict=True))
    assert torch.equal(runs[True][0], runs[False][0]) and not torch.equal(runs[True][0], latent)


# The tiny AudioLDM2 runs the same test, with more checks, in tests/steer/test_paths.py
# (test_compiled_checkpointing_recomputes_for_the_same_gradient). Tracing the tiny diffusers
# models takes 30-55 s each on 2 cores: they run with --slow; the shipped model's 16 s run always.
@pytest.mark.parametrize("case", [
    pytest.param("tiny-audioldm", marks=pytest.mark.slow),
    pytest.param("tiny-musicldm", marks=pytest.mark.slow),
    pytest.param("tiny-stable-audio", marks=pytest.mark.slow),
    "mel-diffusion-swap",
])
def test_compiled_steermusic_plus_is_whole_graphs(case, dynamo):
    """Compiled with checkpointing (dynamo alone: graph breaks are dynamo's), SteerMusic+ with a
    LoRA concept traces every call without a graph break (one would run the rest of the call
    eagerly, unnoticed), and applies eager's gradient. The clip's latent length is no multiple
    of 8: AudioLDM2's UNet then logs on each call, which broke its graphs 12 times an edit."""
    backbone = _load(case)
    latent = backbone.encode_audio(CLIP.waveform[None], CLIP.sample_rate)
    concept = Concept.train(backbone, [CLIP], token=TOKEN, class_word=CLASS_WORD, method="lora", steps=1, progress=False)
    target = f"a recording of a {TOKEN} {CLASS_WORD}"
    gradients = {}
    for name, performance in {
        "eager": Performance(),
        "compiled": Performance(compile=True, compile_backend="eager", checkpointing=True),
    }.items():
        states = []
        with SteerMusicPlus(backbone, concept, steps=1, pcon_positions=8, performance=performance) as e:
            e.edit_latent(latent, source=SOURCE, target=target, callback=states.append)
        gradients[name] = states[0].gradient
    assert dynamo.breaks() == []
    assert dynamo.graphs() > 0
    # equal but for rounding (checkpointing recomputes, prompts padded): measured 1.2e-5 of the
    # gradient's norm on the mel model (up to 2.7), since PCon sums its cosines over frequency
    difference = (gradients["compiled"] - gradients["eager"]).norm() / gradients["eager"].norm()
    assert difference <= 1e-4
    assert not backbone.gradient_checkpointing


@pytest.mark.filterwarnings("ignore:words outside this model's vocabulary")  # the base reading "sks"
def test_textual_inversion_changes_only_prompts_with_the_token(backbone):
    kwargs = dict(token=TOKEN, class_word=CLASS_WORD, method="textual_inversion", batch_size=1, progress=False)
    start = Concept.train(backbone, [CLIP], steps=0, **kwargs)
    concept = Concept.train(backbone, [CLIP], steps=2, lr=0.5, **kwargs)
    assert concept.weights and all(k.startswith("token_embedding") for k in concept.weights)
    assert any(not torch.equal(concept.weights[k], start.weights[k]) for k in concept.weights)
    named = f"a recording of a {TOKEN} {CLASS_WORD}"
    base = {p: backbone.encode_prompt([p]).cond for p in (SOURCE, named)}
    with concept.apply(backbone) as personalized:
        assert personalized.denoiser is backbone.denoiser
        mine = {p: personalized.encode_prompt([p]).cond for p in (SOURCE, named)}
    for key, value in base[SOURCE].items():  # a prompt without the token: exactly the base's
        assert torch.equal(mine[SOURCE][key], value)
    assert any(not torch.allclose(mine[named][k], v) for k, v in base[named].items())
    backbone._prompts.clear()  # encode afresh: the base model never learnt the word
    for key, value in backbone.encode_prompt([named]).cond.items():
        assert torch.equal(value, base[named][key])


def test_self_attention_modules_are_listed_in_forward_order(backbone, latent):
    """Feature losses read and sum layers in this order; the U-Nets listed the mid block last
    (diffusers registers it after the up blocks), though it runs between down and up blocks."""
    modules = backbone.self_attention_modules()
    called: list[str] = []
    handles = [m.register_forward_hook(lambda *_, name=name: called.append(name)) for name, m in modules.items()]
    try:
        with torch.no_grad():
            backbone.predict_noise(latent, torch.tensor([500]), backbone.encode_prompt([TARGET]), 3.0)
    finally:
        for handle in handles:
            handle.remove()
    assert list(dict.fromkeys(called)) == list(modules)
