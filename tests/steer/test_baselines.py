"""SDEdit, DDIM-inversion and DDPM-inversion editing: closed forms on the analytic backbone, the
Editor's call surface on the tiny AudioLDM2."""

import pytest
import torch

from steer import Audio
from steer.baselines import DDIMInversion, DDPMInversion, SDEdit
from steer.editor import seeded_generator
from steer.sampling import ddim_sample, ddim_timesteps


def _randn(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _record(states):
    return lambda state: states.append(state)


def _level(backbone, t):
    """(√ᾱ_t, √(1 − ᾱ_t))"""
    a = backbone.alphas_cumprod[t]
    return a.sqrt(), (1 - a).sqrt()


# -- SDEdit ------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps, strength", [(1000, 1e-3), (50, 0.02), (50, 0.5), (50, 1.0)])
def test_sdedit_keeps_the_share_of_the_source_its_strength_says(analytic_backbone, steps, strength):
    """Noised to τ and denoised towards a point mass μ, the source s survives with weight
    √(1−ᾱ_0) √ᾱ_τ / √(1−ᾱ_τ): two sources edited with the same seed differ by that times s1 − s2."""
    backbone = analytic_backbone
    editor = SDEdit(backbone, steps=steps, strength=strength, guidance_scale=1.0)
    s1, s2 = _randn(1, 2, 6, 4, seed=1), _randn(1, 2, 6, 4, seed=2)
    kwargs = {"source": "a piano", "target": "a flute", "seed": 7}
    out1 = editor.edit_latent(s1, **kwargs).latent
    out2 = editor.edit_latent(s2, **kwargs).latent

    tau = ddim_timesteps(steps, strength=strength)[0]
    (_, sigma_0), (sqrt_a, sigma) = _level(backbone, 0), _level(backbone, tau)
    kept = sigma_0 * sqrt_a / sigma
    torch.testing.assert_close(out1 - out2, kept * (s1 - s2), rtol=0, atol=1e-4)

    mu = backbone.mean("a flute")
    if strength < 0.01:  # τ = 0: (nearly) the source, up to the noise left at level ᾱ_0
        assert kept > 0.99 and (out1 - s1).abs().max() < 0.2
    if strength == 1:  # τ = 981: the source is forgotten, the target's mean is reached
        assert kept < 0.01 and (out1 - mu).abs().max() < 0.2 and (out2 - mu).abs().max() < 0.2


def test_sdedit_moves_further_from_the_source_as_strength_grows(analytic_backbone):
    source = _randn(1, 2, 6, 4, seed=1)
    distances = []
    for strength in (1e-3, 0.01, 0.1, 0.5, 1.0):
        editor = SDEdit(analytic_backbone, steps=1000, strength=strength)
        edited = editor.edit_latent(source, source="a piano", target="a flute").latent
        distances.append((edited - source).norm().item())
    assert distances == sorted(distances) and distances[0] < 0.1 * distances[-1]


def test_sdedit_seed_is_reproducible(analytic_backbone):
    editor = SDEdit(analytic_backbone, steps=20)
    source = _randn(2, 2, 6, 4)
    kwargs = {"source": "a piano", "target": "a flute"}
    a = editor.edit_latent(source, seed=1, **kwargs).latent
    b = editor.edit_latent(source, seed=1, **kwargs).latent
    c = editor.edit_latent(source, seed=2, **kwargs).latent
    assert torch.equal(a, b) and not torch.allclose(a, c)


# -- DDIM inversion ----------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_inversion_with_the_same_prompt_returns_the_source(analytic_backbone, steps):
    editor = DDIMInversion(
        analytic_backbone, steps=steps, guidance_scale_inversion=1.0, guidance_scale=1.0
    )
    source = _randn(2, 2, 6, 4)
    result = editor.edit_latent(source, source="a piano", target="a piano")
    torch.testing.assert_close(result.latent, source, rtol=0, atol=1e-4)
    assert result.audio is None and result.history == []


@pytest.mark.parametrize("strength", [1.0, 0.3])
def test_ddim_inversion_translates_by_the_guided_mean_difference(analytic_backbone, strength):
    """Inverted with g_src μ_src and sampled with g μ_tgt, a point-mass model moves the source by
    (g μ_tgt − g_src μ_src) (√ᾱ_0 − √(1−ᾱ_0) √ᾱ_T / √(1−ᾱ_T)): here with the default guidances."""
    backbone = analytic_backbone
    editor = DDIMInversion(backbone, steps=20, strength=strength)
    assert (editor.guidance_scale_inversion, editor.guidance_scale) == (3.0, 12.0)
    source = _randn(1, 2, 6, 4)
    edited = editor.edit_latent(source, source="a piano", target="a flute").latent

    (sqrt_a0, sigma_0) = _level(backbone, 0)
    (sqrt_aT, sigma_T) = _level(backbone, ddim_timesteps(20, strength=strength)[0])
    shift = 12.0 * backbone.mean("a flute") - 3.0 * backbone.mean("a piano")
    expected = source + shift * (sqrt_a0 - sigma_0 * sqrt_aT / sigma_T)
    torch.testing.assert_close(edited, expected, rtol=0, atol=1e-3)


def test_ddim_inversion_with_clamped_estimates_returns_the_source(analytic_backbone):
    """A backbone that clamps x̂_0 (the trained mel model) clamps it inverting as sampling: the
    point mass at μ is one at clamp(μ) both ways. Clamping only when sampling, the same prompt
    came back with a relative error of 1.24."""
    analytic_backbone.latent_range = (-0.5, 0.5)
    editor = DDIMInversion(analytic_backbone, steps=10, guidance_scale_inversion=1, guidance_scale=1)
    source = 0.5 * _randn(2, 2, 6, 4)
    result = editor.edit_latent(source, source="a piano", target="a piano")
    torch.testing.assert_close(result.latent, source, rtol=0, atol=1e-4)


def test_ddim_inversion_rows_keep_their_own_prompts(analytic_backbone):
    editor = DDIMInversion(
        analytic_backbone, steps=10, guidance_scale_inversion=1, guidance_scale=1
    )
    source = _randn(2, 2, 6, 4)
    edited = editor.edit_latent(
        source, source=["a piano", "a piano"], target=["a piano", "a flute"]
    )
    torch.testing.assert_close(edited.latent[0], source[0], rtol=0, atol=1e-4)
    assert (edited.latent[1] - source[1]).abs().max() > 0.5


def test_ddim_inversion_callback_sees_inversion_then_sampling(analytic_backbone):
    states = []
    DDIMInversion(analytic_backbone, steps=5).edit_latent(
        _randn(1, 2, 6, 4), source="a piano", target="a flute", callback=_record(states)
    )
    timesteps = ddim_timesteps(5).tolist()
    assert [s.step for s in states] == list(range(10))
    assert [int(s.t[0]) for s in states] == [0, *timesteps[::-1][:-1], *timesteps]


# -- DDPM inversion (ZETA) ---------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_ddpm_inversion_with_the_same_prompt_and_guidance_returns_the_source(analytic_backbone, seed):
    editor = DDPMInversion(analytic_backbone, steps=50, guidance_scale_inversion=3.0, guidance_scale=3.0)
    source = _randn(2, 2, 6, 4)
    result = editor.edit_latent(source, source="a piano", target="a piano", seed=seed)
    torch.testing.assert_close(result.latent, source, rtol=0, atol=1e-4)


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_ddpm_inversion_translates_by_the_guided_mean_difference(analytic_backbone, strength):
    """On a point mass x̂_0 is the guided mean m, so with shared maps the edit and the inversion's
    path differ by d, where d' = √ᾱ' Δm + k (d − √ᾱ Δm) / √(1 − ᾱ), k = √(1 − ᾱ' − σ²), from d = 0
    at x_T: the edit is x0 + c Δm, Δm = 12 μ_tgt − 3 μ_src with the defaults, whatever the seed."""
    backbone = analytic_backbone
    assert (DDPMInversion(backbone).strength, DDIMInversion(backbone).strength) == (0.5, 1.0)  # ZETA's
    editor = DDPMInversion(backbone, steps=20, strength=strength)
    assert (editor.steps, editor.strength, editor.guidance_scale_inversion, editor.guidance_scale) == (
        20, strength, 3.0, 12.0
    )
    timesteps = ddim_timesteps(20, strength=strength)
    a = backbone.alphas_cumprod[torch.cat([timesteps, timesteps.new_zeros(1)])].double()
    c = 0.0
    for i in range(len(timesteps)):
        variance = (1 - a[i + 1]) / (1 - a[i]) * (1 - a[i] / a[i + 1])
        k = (1 - a[i + 1] - variance).sqrt()
        c = a[i + 1].sqrt() + k * (c - a[i].sqrt()) / (1 - a[i]).sqrt()
    source = _randn(1, 2, 6, 4)
    shift = 12.0 * backbone.mean("a flute") - 3.0 * backbone.mean("a piano")
    for seed in (0, 1):
        edited = editor.edit_latent(source, source="a piano", target="a flute", seed=seed).latent
        torch.testing.assert_close(edited, source + float(c) * shift, rtol=0, atol=1e-3)
    assert abs(float(c)) > 0.1  # the edit moves


def test_ddpm_inversion_rows_keep_their_own_prompts(analytic_backbone):
    editor = DDPMInversion(analytic_backbone, steps=10, guidance_scale_inversion=1, guidance_scale=1)
    source = _randn(2, 2, 6, 4)
    edited = editor.edit_latent(source, source=["a piano", "a piano"], target=["a piano", "a flute"])
    torch.testing.assert_close(edited.latent[0], source[0], rtol=0, atol=1e-4)
    assert (edited.latent[1] - source[1]).abs().max() > 0.5


def test_ddpm_inversion_callback_sees_inversion_then_sampling(analytic_backbone):
    states = []
    DDPMInversion(analytic_backbone, steps=10).edit_latent(
        _randn(1, 2, 6, 4), source="a piano", target="a flute", callback=_record(states)
    )
    timesteps = ddim_timesteps(10, strength=0.5).tolist()
    assert [s.step for s in states] == list(range(10))
    assert [int(s.t[0]) for s in states] == [*timesteps, *timesteps]


# -- the Editor's call surface on the tiny AudioLDM2 -------------------------------------------
BASELINES = [
    pytest.param(lambda backbone: SDEdit(backbone, steps=4), id="sdedit"),
    pytest.param(lambda backbone: DDIMInversion(backbone, steps=2), id="ddim-inversion"),
    pytest.param(lambda backbone: DDPMInversion(backbone, steps=4), id="ddpm-inversion"),
    pytest.param(lambda backbone: DDPMInversion(backbone, steps=8, steps_per_call=3), id="ddpm-inversion-batched"),
]


@pytest.mark.parametrize("make", BASELINES)
def test_edit_audio_returns_audio_of_the_input_duration(tiny_backbone, make):
    audio = Audio(torch.randn(2, 22050, generator=torch.Generator().manual_seed(0)) * 0.1, 22050)
    result = make(tiny_backbone).edit(audio, source="a piano", target="a violin")
    assert result.audio.shape == (1, 16000) and result.sample_rate == 16000
    assert result.latent.shape == (1, 8, 25, 16) and torch.isfinite(result.audio).all()


@pytest.mark.parametrize("make", BASELINES)
def test_edits_are_reproducible_and_prompt_dependent(tiny_backbone, make):
    editor = make(tiny_backbone)
    waveform = torch.randn(1, 1, 10240, generator=torch.Generator().manual_seed(0))
    latent = tiny_backbone.encode_audio(waveform, 16000)
    a = editor.edit_latent(latent, source="a piano", target="a violin", seed=1).latent
    b = editor.edit_latent(latent, source="a piano", target="a violin", seed=1).latent
    c = editor.edit_latent(latent, source="a piano", target="a drum", seed=1).latent
    assert torch.equal(a, b) and not torch.allclose(a, c)
    other_seed = editor.edit_latent(latent, source="a piano", target="a violin", seed=2).latent
    # SDEdit's seed draws the noise added to the source, DDPM inversion's the noisings it inverts;
    # DDIM inversion is deterministic
    assert torch.equal(a, other_seed) == isinstance(editor, DDIMInversion)


@pytest.mark.parametrize("make", BASELINES)
def test_a_clip_of_a_batch_is_edited_as_it_is_alone(tiny_backbone, make):
    """The noise is drawn for one clip and given to each (as :class:`steer.Editor` does): clip i
    of a batch [a, b] edited with a seed is that clip edited alone with the seed, whatever its
    place and neighbour (measured equal to the bit on one CPU; up to 2.2e-4 away on an AMD EPYC,
    whose kernels round a batch of 2 otherwise). When SDEdit drew (B, ...) noise and DDPM
    inversion (K, B, ...), b's SDEdit in the batch was up to 7.1 away from its edit alone, and
    DDPM inversion's a up to 0.075 (5.7 at 8 steps, 3 a call)."""
    editor = make(tiny_backbone)
    waveforms = torch.randn(2, 1, 10240, generator=torch.Generator().manual_seed(0))
    latents = tiny_backbone.encode_audio(waveforms, 16000)
    targets = ["a violin", "a flute"]
    batched = editor.edit_latent(latents, source="a piano", target=targets, seed=5).latent
    for i in (0, 1):
        alone = editor.edit_latent(latents[i : i + 1], source="a piano", target=targets[i], seed=5).latent
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-3, atol=1e-3)


def test_sdedit_at_batch_1_draws_the_noise_it_always_drew(tiny_backbone):
    """One clip's edit is the one of before the noise was shared, when it was drawn for the
    whole batch: ``randn(latent.shape)``."""
    editor = SDEdit(tiny_backbone, steps=4)
    latent = tiny_backbone.encode_audio(torch.randn(1, 1, 10240, generator=torch.Generator().manual_seed(0)), 16000)
    edited = editor.edit_latent(latent, source="a piano", target="a violin", seed=5).latent
    timesteps = ddim_timesteps(4, strength=0.5)
    noise = torch.randn(latent.shape, generator=seeded_generator(5))
    x_t = tiny_backbone.add_noise(latent, noise, timesteps[:1])
    cond = tiny_backbone.encode_prompt(["a violin"])
    assert torch.equal(edited, ddim_sample(tiny_backbone, x_t, cond, timesteps=timesteps, guidance_scale=12.0))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda b: SDEdit(b, strength=0.0), r"strength must be a number in \(0, 1\], got 0.0"),
        (lambda b: SDEdit(b, strength=1.5), r"strength must be a number in \(0, 1\], got 1.5"),
        (lambda b: SDEdit(b, steps=0), r"steps must be in \[1, 1000\], got 0"),
        (lambda b: DDIMInversion(b, steps=1001), r"steps must be in \[1, 1000\], got 1001"),
        (lambda b: DDIMInversion(b, strength=-0.1), r"strength must be a number in \(0, 1\], got -0.1"),
        (lambda b: DDPMInversion(b, strength=0.0), r"strength must be a number in \(0, 1\], got 0.0"),
        (lambda b: DDPMInversion(b, steps=0), r"steps must be in \[1, 1000\], got 0"),
        (lambda b: DDPMInversion(b, steps_per_call=0), "steps_per_call must be at least 1, got 0"),
        (lambda b: DDPMInversion(b, steps_per_call=1.5), "steps_per_call must be a whole number, got 1.5"),
        (lambda b: SDEdit(b, steps=2.5), "steps must be a whole number, got 2.5"),
        (lambda b: SDEdit(b, steps=True), "steps must be a whole number, got True"),
        (lambda b: DDIMInversion(b, steps=torch.tensor(3)), r"steps must be a whole number, got tensor\(3\)"),
        (lambda b: DDPMInversion(b, steps=4.0), "steps must be a whole number, got 4.0"),
        (lambda b: SDEdit(b, strength="0.5"), r"strength must be a number in \(0, 1\], got '0.5'"),
        (lambda b: DDIMInversion(b, strength=True), r"strength must be a number in \(0, 1\], got True"),
        (lambda b: DDPMInversion(b, strength=float("nan")), r"strength must be a number in \(0, 1\], got nan"),
        (lambda b: SDEdit(b, guidance_scale="7"), "guidance_scale must be a finite number, got '7'"),
        (lambda b: DDIMInversion(b, guidance_scale_inversion=True), "guidance_scale_inversion must be a finite number"),
        (lambda b: DDPMInversion(b, steps=1000), "use at most 999 steps"),
        (lambda b: SDEdit(b, guidance_scale=float("nan")), "guidance_scale must be a finite number, got nan"),
        (lambda b: DDIMInversion(b, guidance_scale=float("inf")), "guidance_scale must be a finite number, got inf"),
        (lambda b: DDPMInversion(b, guidance_scale_inversion=float("nan")), "guidance_scale_inversion must be a finite number"),
    ],
)
def test_bad_settings_are_clear_errors(analytic_backbone, make, match):
    with pytest.raises(ValueError, match=match):
        make(analytic_backbone)


@pytest.mark.parametrize("make", BASELINES)
@pytest.mark.parametrize(
    "name, value, match",
    [
        ("guidance_scale", float("nan"), "guidance_scale must be a finite number, got nan"),
        ("strength", 1.5, "strength"),
        ("steps", 2.5, "steps"),
    ],
)
def test_settings_set_between_edits_are_checked_as_the_constructor_checks_them(analytic_backbone, make, name, value, match):
    """NaN guidance set after construction gave an all-NaN edit, without a word."""
    editor = make(analytic_backbone)
    setattr(editor, name, value)
    with pytest.raises(ValueError, match=match):
        editor.edit_latent(_randn(1, 2, 6, 4), source="a piano", target="a flute")


@pytest.mark.parametrize("make", [DDIMInversion, DDPMInversion, SDEdit])
def test_a_strength_set_to_none_between_edits_is_the_default_as_in_the_constructor(analytic_backbone, make):
    """It was refused at the edit ("strength must be a number in (0, 1], got None"); SDEdit
    refused None even in its constructor, so one settings dict could not build every baseline."""
    default = {DDIMInversion: 1.0, DDPMInversion: 0.5, SDEdit: 0.5}[make]
    assert make(analytic_backbone, steps=8, strength=None).strength == default
    editor = make(analytic_backbone, steps=8, strength=0.25)
    given = editor.strength
    editor.strength = None
    assert editor.strength == default
    editor.edit_latent(_randn(1, 2, 6, 4), source="a piano", target="a flute")
    editor.strength = given
    assert editor.strength == given


@pytest.mark.parametrize("make", BASELINES)
def test_bad_prompts_are_clear_errors(analytic_backbone, make):
    editor = make(analytic_backbone)
    latent = _randn(1, 2, 6, 4)
    with pytest.raises(ValueError, match="target prompt is empty"):
        editor.edit_latent(latent, source="a piano", target="  ")
    with pytest.raises(ValueError, match="source prompt is empty"):
        editor.edit_latent(latent, source="", target="a flute")
    with pytest.raises(ValueError, match="got 2 source prompts for 1 clips"):
        editor.edit_latent(latent, source=["a", "b"], target="c")


@pytest.mark.parametrize("make", BASELINES)
@pytest.mark.parametrize(
    "latent, error, match",
    [
        (torch.full((1, 8, 16, 16), float("nan")), ValueError, "the latent holds NaN or infinite values"),
        (torch.zeros(8, 16, 16), ValueError, r"takes 4-D latents \(B, C, T, F\).*its batch axis, latent\[None\]"),
        (torch.zeros(1, 4, 16, 16), ValueError, "has 4 channels .* takes 8"),
        (torch.zeros(1, 8, 16, 16, dtype=torch.int64), TypeError,
         r"the latent is not floating point \(torch.int64\): pass a real floating-point latent"),
    ],
    ids=["nan", "no-batch-axis", "channels", "int64"],
)
def test_bad_latents_are_clear_errors_before_any_step(tiny_backbone, make, latent, error, match, monkeypatch):
    """steer.editor.check_latent and a dtype check, before the denoiser is called (a NaN latent
    gave all-NaN output, one without its batch axis a convolution's channel error, an int64 one
    was edited)."""
    editor = make(tiny_backbone)
    monkeypatch.setattr(tiny_backbone, "predict_noise", lambda *args: pytest.fail("the denoiser was called"))
    with pytest.raises(error, match=match):
        editor.edit_latent(latent, source="a piano", target="a violin")


@pytest.mark.parametrize("make", BASELINES)
@pytest.mark.parametrize("seed", [1.5, True, 2**64, "0"])
def test_bad_seeds_are_refused_by_every_baseline(analytic_backbone, make, seed):
    """DDIM inversion does not use the seed (it is deterministic) but refuses a bad one as the
    others do."""
    with pytest.raises(ValueError, match=r"seed must be an integer from -2\*\*63 to 2\*\*64 - 1"):
        make(analytic_backbone).edit_latent(_randn(1, 2, 6, 4), source="a piano", target="a flute", seed=seed)


# -- DreamSound's personalised editing (SteerMusic+'s baseline) -------------------------------------
def test_dreamsound_inverts_with_the_base_model_and_samples_with_the_concepts(tiny_backbone, lora):
    """Its edit is DDIM inversion by ε with the source prompt to the 30th of 200 steps, then DDIM
    sampling by ε' with the target prompt; not the base model's DDIM-inversion edit."""
    from steer import DreamSoundEditing
    from steer.sampling import ddim_invert

    latent = tiny_backbone.encode_audio(torch.randn(1, 1, 10240, generator=torch.Generator().manual_seed(0)), 16000)
    editor = DreamSoundEditing(tiny_backbone, lora, steps=40)
    assert editor.strength == 0.15
    edited = editor.edit_latent(latent, source="a piano", target="a sks guitar").latent

    timesteps = ddim_timesteps(40, strength=0.15)
    assert timesteps.tolist() == [126, 101, 76, 51, 26, 1]
    personalized = editor.personalized
    inverted = ddim_invert(tiny_backbone, latent, tiny_backbone.encode_prompt(["a piano"]), timesteps=timesteps,
                           guidance_scale=3.0)
    expected = ddim_sample(personalized, inverted, personalized.encode_prompt(["a sks guitar"]), timesteps=timesteps,
                           guidance_scale=12.0)
    torch.testing.assert_close(edited, expected, rtol=0, atol=0)
    base_edit = DDIMInversion(tiny_backbone, steps=40, strength=0.15).edit_latent(
        latent, source="a piano", target="a sks guitar"
    ).latent
    assert (edited - base_edit).abs().max() > 1e-3  # ε' sampled, not ε


def test_dreamsound_refuses_a_target_without_the_token_and_gives_the_model_back(tiny_backbone, lora, monkeypatch):
    from steer import DreamSoundEditing

    latent = tiny_backbone.encode_audio(torch.randn(1, 1, 10240, generator=torch.Generator().manual_seed(0)), 16000)
    editor = DreamSoundEditing(tiny_backbone, lora, steps=4)
    monkeypatch.setattr("steer.baselines.ddim_inversion.ddim_invert", None)  # no step may run
    with pytest.raises(ValueError, match="the target prompt 'a guitar' does not name the concept token 'sks'"):
        editor.edit_latent(latent, source="a piano", target="a guitar")
    with editor:
        pass
    assert not hasattr(tiny_backbone.denoiser, "peft_config")  # the adapter left the base denoiser
    with pytest.raises(RuntimeError, match="this DreamSoundEditing editor was closed"):
        editor.edit_latent(latent, source="a piano", target="a sks guitar")


def test_dreamsound_refuses_a_new_model_or_concept_between_edits(tiny_backbone, lora):
    """Setting its concept did nothing; its backbone inverted and decoded with another model than
    the one its personalised model samples with; its token refused the prompts ε' reads."""
    from backbones import load_backbone
    from steer import DreamSoundEditing

    editor = DreamSoundEditing(tiny_backbone, lora, steps=4)
    for name, value in [("concept", lora), ("backbone", load_backbone("tiny-musicldm")), ("token", "zzz"),
                        ("class_word", "violin"), ("personalized", tiny_backbone)]:
        with pytest.raises(AttributeError, match=rf"^DreamSoundEditing.{name} is fixed when the editor is built"):
            setattr(editor, name, value)
    editor.steps, editor.strength, editor.guidance_scale = 8, 0.5, 7.0  # its settings may change
    assert (editor.steps, editor.strength, editor.guidance_scale) == (8, 0.5, 7.0)
