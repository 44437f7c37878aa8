"""DDIM and DDPM sampling and inversion: diffusers as the reference, closed forms on analytic
backbones."""

import pytest
import torch
from diffusers import DDIMScheduler

from steer.sampling import (
    ddim_invert,
    ddim_sample,
    ddim_step,
    ddim_timesteps,
    ddpm_invert,
    ddpm_sample,
    ddpm_step_mean,
    sample,
)

# AudioLDM2's scheduler config (see backbones/tiny.py), the schedule of the analytic backbone too
SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0015,
    "beta_end": 0.0195,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
}


@pytest.fixture()
def gaussian_backbone(analytic_backbone):
    """Data N(μ_y, s² I) per prompt: ε̂ = √(1−ᾱ) (x_t − √ᾱ μ_y) / (ᾱ s² + 1 − ᾱ) exactly.

    Unlike the point mass (s = 0), the DDIM ODE's paths curve, so a finite number of steps makes
    a discretisation error; its exact solution keeps (x_t − √ᾱ_t μ) / √(ᾱ_t s² + 1 − ᾱ_t) fixed.
    """

    class GaussianBackbone(type(analytic_backbone)):
        std = 0.5

        def predict_noise(self, x_t, t, cond, guidance_scale=1.0):
            assert t.shape == (x_t.shape[0],)
            a = self.alphas_cumprod[t].view(-1, *([1] * (x_t.dim() - 1)))
            mu = guidance_scale * cond.cond["mu"] + (1 - guidance_scale) * cond.uncond["mu"]
            return (1 - a).sqrt() * (x_t - a.sqrt() * mu) / (a * self.std**2 + 1 - a)

        def flow(self, x, mu, t_from, t_to):
            """The exact DDIM-ODE map of x from the level of t_from to that of t_to."""
            a, b = self.alphas_cumprod[t_from], self.alphas_cumprod[t_to]
            z = (x - a.sqrt() * mu) / (a * self.std**2 + 1 - a).sqrt()
            return b.sqrt() * mu + (b * self.std**2 + 1 - b).sqrt() * z

    return GaussianBackbone()


def _randn(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _record(states):
    return lambda state: states.append(state)


# -- timesteps ---------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 3, 7, 50, 200, 999])
def test_timesteps_are_diffusers_leading_schedule(steps):
    reference = DDIMScheduler(**SCHEDULER)
    reference.set_timesteps(steps)
    assert torch.equal(ddim_timesteps(steps), reference.timesteps)


def test_timesteps_of_a_full_schedule_keep_in_range():
    """diffusers gives [1000, …, 1] here, one past the end; the offset is dropped instead."""
    timesteps = ddim_timesteps(1000)
    assert torch.equal(timesteps, torch.arange(999, -1, -1))
    assert ddim_timesteps(500, num_train_timesteps=500)[0] == 499


@pytest.mark.parametrize(
    "steps, strength, kept",
    [(50, 0.3, 15), (50, 0.5, 25), (50, 0.8, 40), (50, 1.0, 50), (200, 0.5, 100), (20, 0.7, 14),
     (3, 0.5, 1), (5, 0.5, 2), (7, 0.5, 3), (10, 0.35, 3), (100, 0.29, 28)],
)
def test_strength_keeps_the_last_fraction_like_diffusers_img2img(steps, strength, kept):
    """diffusers' StableDiffusionImg2ImgPipeline.get_timesteps keeps
    ``min(int(steps * strength), steps)`` of the scheduler's timesteps, truncating (3 × 0.5 keeps
    1, not round()'s 2; 100 × 0.29 = 28.999… keeps 28)."""
    reference = DDIMScheduler(**SCHEDULER)
    reference.set_timesteps(steps)
    init_timestep = min(int(steps * strength), steps)  # get_timesteps' own line
    assert init_timestep == kept
    expected = reference.timesteps[steps - init_timestep :]
    assert torch.equal(ddim_timesteps(steps, strength=strength), expected)


def test_strength_values():
    assert ddim_timesteps(50, strength=0.5).tolist() == list(range(481, 0, -20))
    assert ddim_timesteps(100, strength=0.29).tolist() == list(range(271, 0, -10))  # 28 steps, as diffusers
    # diffusers would keep no step here; at least one, so that strength > 0 edits
    assert ddim_timesteps(50, strength=1e-6).tolist() == [1]
    assert ddim_timesteps(3, strength=0.3).tolist() == [1]
    assert ddim_timesteps(20, steps_offset=0, num_train_timesteps=100).tolist() == list(
        range(95, -1, -5)
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_steps": 0}, r"num_steps must be in \[1, 1000\], got 0"),
        ({"num_steps": 1001}, r"num_steps must be in \[1, 1000\], got 1001"),
        ({"num_steps": 4.0}, "num_steps must be a whole number, got 4.0"),
        ({"num_steps": True}, "num_steps must be a whole number, got True"),
        ({"num_steps": torch.tensor(3)}, r"num_steps must be a whole number, got tensor\(3\)"),
        ({"num_steps": 10, "strength": 0.0}, r"strength must be a number in \(0, 1\], got 0.0"),
        ({"num_steps": 10, "strength": 1.5}, r"strength must be a number in \(0, 1\], got 1.5"),
        ({"num_steps": 10, "strength": "0.5"}, r"strength must be a number in \(0, 1\], got '0.5'"),
        ({"num_steps": 10, "strength": True}, r"strength must be a number in \(0, 1\], got True"),
        ({"num_steps": 10, "strength": float("nan")}, r"strength must be a number in \(0, 1\], got nan"),
        ({"num_steps": 10, "steps_offset": -1}, "steps_offset must be at least 0, got -1"),
        ({"num_steps": 10, "steps_offset": 0.5}, "steps_offset must be a whole number, got 0.5"),
    ],
)
def test_bad_timestep_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ddim_timesteps(**kwargs)


def test_bad_timesteps_are_refused(analytic_backbone):
    cond = analytic_backbone.encode_prompt(["a flute"])
    x = _randn(1, 2, 6, 4)
    for timesteps, match in [([], "empty"), ([1, 21], "decreasing"), ([1000, 1], r"\[0, 1000\)")]:
        with pytest.raises(ValueError, match=match):
            ddim_sample(analytic_backbone, x, cond, timesteps=timesteps)


# -- sampling ------------------------------------------------------------------------------
def test_sampling_matches_diffusers_ddim_scheduler(analytic_backbone):
    """Guided ε̂ of the analytic model stepped by diffusers' DDIMScheduler (η = 0) is the reference."""
    reference = DDIMScheduler(**SCHEDULER)
    reference.set_timesteps(20)
    torch.testing.assert_close(reference.alphas_cumprod, analytic_backbone.alphas_cumprod)
    cond = analytic_backbone.encode_prompt(["a flute", "a piano"])
    x_t = _randn(2, 2, 6, 4)
    expected = x_t
    for t in reference.timesteps:
        eps = analytic_backbone.predict_noise(expected, t.repeat(2), cond, 3.0)
        expected = reference.step(eps, t, expected, eta=0.0).prev_sample
    out = ddim_sample(
        analytic_backbone, x_t, cond, timesteps=ddim_timesteps(20), guidance_scale=3.0
    )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_sampling_lands_on_the_prompt_mean(analytic_backbone, seed):
    """Every x̂_0 of a point mass is μ_y; the last step lands on √ᾱ_0 μ_y + √(1−ᾱ_0) ε."""
    backbone = analytic_backbone
    cond = backbone.encode_prompt(["a recording of a flute", "a recording of a piano"])
    mu = cond.cond["mu"]
    x_t = _randn(2, 2, 6, 4, seed=seed)
    timesteps = ddim_timesteps(10)
    states = []
    out = ddim_sample(backbone, x_t, cond, timesteps=timesteps, callback=_record(states))

    assert len(states) == 10
    for state, t in zip(states, timesteps):
        assert torch.equal(state.t, t.repeat(2))
        torch.testing.assert_close(state.denoised, mu, rtol=0, atol=1e-4)
    a_T, a_0 = backbone.alphas_cumprod[timesteps[0]], backbone.alphas_cumprod[0]
    eps = (x_t - a_T.sqrt() * mu) / (1 - a_T).sqrt()
    torch.testing.assert_close(out, a_0.sqrt() * mu + (1 - a_0).sqrt() * eps, rtol=0, atol=1e-4)
    # μ_y to tolerance: √(1 − ᾱ_0) ≈ 0.039 of the initial noise is left
    assert (out - mu).abs().max() < 0.2 and (x_t - mu).abs().max() > 1
    assert (out[0] - mu[1]).abs().max() > 0.5  # each row lands on its own prompt's mean


def test_guidance_scales_the_conditional_direction(analytic_backbone):
    """With μ_∅ = 0, guidance g makes the model a point mass at g μ_y."""
    cond = analytic_backbone.encode_prompt(["a flute"])
    mu = cond.cond["mu"]
    states = []
    ddim_sample(
        analytic_backbone,
        _randn(1, 2, 6, 4),
        cond,
        timesteps=ddim_timesteps(5),
        guidance_scale=4.0,
        callback=_record(states),
    )
    torch.testing.assert_close(states[-1].denoised, 4 * mu, rtol=0, atol=1e-4)


def test_sample_is_seeded_text_to_latent(analytic_backbone):
    kwargs = {"shape": (2, 2, 6, 4), "steps": 10, "guidance_scale": 1.0}
    a = sample(analytic_backbone, "a recording of a flute", seed=0, **kwargs)
    b = sample(analytic_backbone, "a recording of a flute", seed=0, **kwargs)
    c = sample(analytic_backbone, "a recording of a flute", seed=1, **kwargs)
    assert a.shape == (2, 2, 6, 4) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    mu = analytic_backbone.mean("a recording of a flute")
    assert (a - mu).abs().max() < 0.2
    with pytest.raises(ValueError, match="prompt is empty"):
        sample(analytic_backbone, " ", **kwargs)


@pytest.mark.parametrize(
    "shape, match",
    [
        ((8, 16, 16), (r"shape \(8, 16, 16\) has 3 axes, but AudioLDM2Backbone's denoiser takes 4-D latents "
                       r"\(B, C, T, F\): give the batch size first, e.g. \(1, 8, 16, 16\)")),
        ((1, 4, 16, 16), (r"shape \(1, 4, 16, 16\) has 4 channels \(axis 1\), but AudioLDM2Backbone's denoiser "
                          r"takes 8: give shape=\(B, 8, ...\)")),
        ((1, 8, 2.5, 16), r"shape must hold positive whole numbers .*, got \(1, 8, 2.5, 16\)"),
        ((1, 8, 0, 16), r"shape must hold positive whole numbers .*, got \(1, 8, 0, 16\)"),
    ],
)
def test_sample_refuses_a_shape_the_denoiser_cannot_take(tiny_backbone, shape, match):
    """Checked against the backbone's latent_dims and latent_channels before the first call (the
    denoiser's own error was a convolution's about its weight)."""
    with pytest.raises(ValueError, match=match):
        sample(tiny_backbone, "a flute", shape=shape, steps=2)
    with pytest.raises(TypeError, match="shape must be a sequence of whole numbers"):
        sample(tiny_backbone, "a flute", shape=8, steps=2)


def test_sample_on_tiny_audioldm2(tiny_backbone):
    latent = sample(tiny_backbone, ["a flute", "a drum"], shape=(2, 8, 8, 16), steps=2, seed=3)
    assert latent.shape == (2, 8, 8, 16) and torch.isfinite(latent).all()
    assert not torch.allclose(latent[0], latent[1])


# -- inversion -----------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [10, 50])
def test_inversion_reaches_the_noise_of_the_point_mass_path(analytic_backbone, steps):
    """For a point mass ε̂ is constant along a DDIM path, so inversion is exact, and so is the
    round trip: x_T = √ᾱ_T μ + √(1−ᾱ_T) ε with ε = (x0 − √ᾱ_0 μ) / √(1−ᾱ_0)."""
    backbone = analytic_backbone
    cond = backbone.encode_prompt(["a flute", "a piano"])
    mu = cond.cond["mu"]
    x0 = _randn(2, 2, 6, 4)
    timesteps = ddim_timesteps(steps)
    states = []
    x_T = ddim_invert(backbone, x0, cond, timesteps=timesteps, callback=_record(states))

    a_0, a_T = backbone.alphas_cumprod[0], backbone.alphas_cumprod[timesteps[0]]
    eps = (x0 - a_0.sqrt() * mu) / (1 - a_0).sqrt()
    torch.testing.assert_close(x_T, a_T.sqrt() * mu + (1 - a_T).sqrt() * eps, rtol=0, atol=1e-4)
    # the denoiser sees each starting level's own timestep: 0, then the timesteps upwards
    assert [int(s.t[0]) for s in states] == [0] + timesteps.flip(0)[:-1].tolist()

    back = ddim_sample(backbone, x_T, cond, timesteps=timesteps)
    torch.testing.assert_close(back, x0, rtol=0, atol=1e-4)


def test_inversion_matches_the_exact_ode_and_its_error_shrinks_with_steps(gaussian_backbone):
    backbone = gaussian_backbone
    cond = backbone.encode_prompt(["a flute", "a piano"])
    mu = cond.cond["mu"]
    x0 = _randn(2, 2, 6, 4, seed=5)
    errors, round_trips = [], []
    for steps in (20, 200):
        timesteps = ddim_timesteps(steps)
        x_T = ddim_invert(backbone, x0, cond, timesteps=timesteps)
        exact = backbone.flow(x0, mu, 0, timesteps[0])
        errors.append(((x_T - exact).norm() / exact.norm()).item())
        back = ddim_sample(backbone, x_T, cond, timesteps=timesteps)
        round_trips.append(((back - x0).norm() / x0.norm()).item())
    # first-order solver: ten times the steps, several times smaller errors
    assert errors[1] < 0.03 and errors[1] < errors[0] / 4  # measured: 0.14, 0.017
    assert round_trips[1] < 0.1 and round_trips[1] < round_trips[0] / 4  # 0.36, 0.047
    assert round_trips[0] > 0.1  # the curved paths do leave an inversion error


def test_inversion_clamps_like_sampling_so_a_clamped_point_mass_round_trips_exactly(analytic_backbone):
    """With x̂_0 clamped, a point mass at μ is one at clamp(μ) in both directions: the round
    trip is exact. Clamping only when sampling left a relative error of 1.23 at any step count."""
    backbone = analytic_backbone
    backbone.latent_range = (-0.5, 0.5)  # most of μ ~ N(0, 1) lies outside
    cond = backbone.encode_prompt(["a flute", "a piano"])
    x0 = 0.5 * _randn(2, 2, 6, 4, seed=5)
    for steps in (10, 50):
        timesteps = ddim_timesteps(steps)
        states = []
        x_T = ddim_invert(backbone, x0, cond, timesteps=timesteps, callback=_record(states))
        assert all(s.denoised.abs().max() <= 0.5 for s in states)
        back = ddim_sample(backbone, x_T, cond, timesteps=timesteps)
        torch.testing.assert_close(back, x0, rtol=0, atol=1e-4)


def test_clamped_inversion_round_trip_error_shrinks_with_steps(gaussian_backbone):
    """On curved paths with clamped estimates, inversion and sampling are Euler steps of the same
    (clamped) ODE, so the round trip converges. Clamping only when sampling, it stalled: relative
    errors 0.47 at 20 steps, 0.49 at 200 (as 0.33 and 0.34 on the shipped mel model)."""
    backbone = gaussian_backbone
    backbone.latent_range = (-0.5, 0.5)
    cond = backbone.encode_prompt(["a flute", "a piano"])
    x0 = 0.5 * _randn(2, 2, 6, 4, seed=5)
    round_trips = []
    for steps in (20, 200):
        timesteps = ddim_timesteps(steps)
        back = ddim_sample(backbone, ddim_invert(backbone, x0, cond, timesteps=timesteps), cond, timesteps=timesteps)
        round_trips.append(((back - x0).norm() / x0.norm()).item())
    assert round_trips[1] < 0.1 and round_trips[1] < round_trips[0] / 4  # measured: 0.38, 0.053


def test_sampling_follows_the_exact_ode(gaussian_backbone):
    backbone = gaussian_backbone
    cond = backbone.encode_prompt(["a flute"])
    x_T = _randn(1, 2, 6, 4, seed=2)
    errors = []
    for steps in (20, 200):
        timesteps = ddim_timesteps(steps)
        out = ddim_sample(backbone, x_T, cond, timesteps=timesteps)
        exact = backbone.flow(x_T, cond.cond["mu"], timesteps[0], 0)
        errors.append(((out - exact).norm() / exact.norm()).item())
    assert errors[1] < 0.015 and errors[1] < errors[0] / 4  # measured: 0.063, 0.0077


def test_ddim_step_clips_the_denoised_estimate_and_stays_consistent():
    x = torch.full((1, 3), 5.0)
    eps = torch.zeros(1, 3)
    a, a_next = torch.tensor([0.25]), torch.tensor([0.81])
    unclipped, x0 = ddim_step(x, eps, a, a_next)
    torch.testing.assert_close(x0, torch.full((1, 3), 10.0))
    clipped, x0c = ddim_step(x, eps, a, a_next, clip=(-2.0, 2.0))
    torch.testing.assert_close(x0c, torch.full((1, 3), 2.0))
    eps_c = (x - 0.5 * x0c) / 0.75**0.5  # ε re-derived from the clamped x̂_0
    torch.testing.assert_close(clipped, 0.9 * x0c + 0.19**0.5 * eps_c)


# -- DDPM steps and edit-friendly DDPM inversion -----------------------------------------------
def test_ddpm_sampling_matches_diffusers_ddim_scheduler_at_eta_1(analytic_backbone):
    """DDPM steps with given noise maps are diffusers' ``DDIMScheduler.step(eta=1, variance_noise=z)``."""
    reference = DDIMScheduler(**SCHEDULER)
    reference.set_timesteps(20)
    cond = analytic_backbone.encode_prompt(["a flute", "a piano"])
    x_t = _randn(2, 2, 6, 4)
    noises = _randn(20, 2, 2, 6, 4, seed=1)
    expected = x_t
    for i, t in enumerate(reference.timesteps):
        eps = analytic_backbone.predict_noise(expected, t.repeat(2), cond, 3.0)
        expected = reference.step(eps, t, expected, eta=1.0, variance_noise=noises[i]).prev_sample
    out = ddpm_sample(
        analytic_backbone, x_t, cond, timesteps=ddim_timesteps(20), noises=noises, guidance_scale=3.0
    )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # the maps matter: other maps, another sample
    other = ddpm_sample(analytic_backbone, x_t, cond, timesteps=ddim_timesteps(20), noises=-noises, guidance_scale=3.0)
    assert (other - out).abs().max() > 0.1


@pytest.mark.parametrize("steps, guidance", [(10, 1.0), (50, 3.0)])
def test_ddpm_inversion_round_trip_is_exact_on_a_real_unet(tiny_backbone, steps, guidance):
    """Edit-friendly inversion's defining property: sampling with its maps, the same prompt and
    guidance retraces the inversion to x0, whatever the model (here a random AudioLDM2 UNet)."""
    x0 = _randn(1, 8, 16, 16)
    cond = tiny_backbone.encode_prompt(["a piano melody"])
    timesteps = ddim_timesteps(steps, strength=0.6)
    generator = torch.Generator().manual_seed(0)
    x_t, noises = ddpm_invert(tiny_backbone, x0, cond, timesteps=timesteps, guidance_scale=guidance, generator=generator)
    assert noises.shape == (len(timesteps), 1, 8, 16, 16)
    back = ddpm_sample(tiny_backbone, x_t, cond, timesteps=timesteps, noises=noises, guidance_scale=guidance)
    torch.testing.assert_close(back, x0, rtol=0, atol=1e-4)


def test_ddpm_inversion_round_trip_is_exact_with_clamped_estimates(analytic_backbone, monkeypatch):
    """A backbone that clamps x̂_0 (the trained mel model) clamps it in both directions alike."""
    monkeypatch.setattr(type(analytic_backbone), "latent_range", (-0.5, 0.5), raising=False)
    x0 = 3 * _randn(1, 2, 6, 4)  # far outside the range: most estimates are clamped
    cond = analytic_backbone.encode_prompt(["a flute"])
    timesteps = ddim_timesteps(20)
    x_t, noises = ddpm_invert(analytic_backbone, x0, cond, timesteps=timesteps, generator=torch.Generator().manual_seed(0))
    back = ddpm_sample(analytic_backbone, x_t, cond, timesteps=timesteps, noises=noises)
    torch.testing.assert_close(back, x0, rtol=0, atol=1e-4)


@pytest.mark.parametrize("prompts", [["a flute"], ["a flute", "a piano"]], ids=["batch-1", "batch-2"])
def test_ddpm_inversion_noises_each_level_independently(analytic_backbone, prompts):
    """x_i = √ᾱ_i x0 + √(1 − ᾱ_i) ε_i with independent ε_i (the generator's draws, in order), and
    x_K = x0 itself: on the point mass at x0, x̂_0 = x0 and ε̂(x_i) = ε_i exactly, so the map of
    step i is (x_{i+1} − √ᾱ_{i+1} x0 − √(1 − ᾱ_{i+1} − σ_i²) ε_i) / σ_i. Each ε_i is drawn for one
    clip and given to every row; at batch 1 the draws are those of ``randn((K, *x0.shape))``, as
    before, when a batch drew a noising per row."""
    backbone = analytic_backbone
    x0 = torch.stack([backbone.mean(prompt) for prompt in prompts])
    cond = backbone.encode_prompt(prompts)
    timesteps = ddim_timesteps(8)
    x_t, noises = ddpm_invert(backbone, x0, cond, timesteps=timesteps, generator=torch.Generator().manual_seed(3))
    # one clip's draws, given to every row; at batch 1 the old formula's, one draw per row
    shape = (8, *x0.shape) if len(prompts) == 1 else (8, 1, *x0.shape[1:])
    draws = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    a = backbone.alphas_cumprod[torch.cat([timesteps, timesteps.new_zeros(1)])]
    xs = [a[i].sqrt() * x0 + (1 - a[i]).sqrt() * draws[i] for i in range(8)] + [x0]
    for i in range(8):
        variance = (1 - a[i + 1]) / (1 - a[i]) * (1 - a[i] / a[i + 1])
        mean = a[i + 1].sqrt() * x0 + (1 - a[i + 1] - variance).sqrt() * draws[i]
        torch.testing.assert_close(noises[i], (xs[i + 1] - mean) / variance.sqrt(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x_t, xs[0])


def test_ddpm_inversion_batches_its_steps_into_fewer_calls_with_the_same_maps(tiny_backbone, monkeypatch):
    """The levels are drawn up front, so k steps' predictions are one call of k rows a clip: 7
    steps three at a time are 3 calls, the maps those of one step a call up to rounding, in
    the same order, and sampling with them still returns x0."""
    x0 = _randn(2, 8, 16, 16)
    cond = tiny_backbone.encode_prompt(["a piano melody", "a flute melody"])
    timesteps = ddim_timesteps(10, strength=0.7)
    assert len(timesteps) == 7

    def invert(steps_per_call, callback=None):
        return ddpm_invert(tiny_backbone, x0, cond, timesteps=timesteps, guidance_scale=3.0, callback=callback,
                           generator=torch.Generator().manual_seed(0), steps_per_call=steps_per_call)

    x_t, noises = invert(1)
    calls = []
    predict = tiny_backbone.predict_noise
    monkeypatch.setattr(tiny_backbone, "predict_noise", lambda x, t, c, g: calls.append(t.tolist()) or predict(x, t, c, g))
    states = []
    batched_x_t, batched = invert(3, _record(states))
    monkeypatch.undo()
    steps = timesteps.tolist()
    assert calls == [[t for t in steps[i : i + 3] for _ in range(2)] for i in (0, 3, 6)]
    assert [s.step for s in states] == list(range(7)) and [s.t.tolist() for s in states] == [[t, t] for t in steps]
    assert torch.equal(batched_x_t, x_t)
    torch.testing.assert_close(batched, noises, rtol=1e-4, atol=1e-4 * float(noises.abs().max()))
    back = ddpm_sample(tiny_backbone, x_t, cond, timesteps=timesteps, noises=batched, guidance_scale=3.0)
    torch.testing.assert_close(back, x0, rtol=0, atol=1e-3)


def test_ddpm_inversion_callback_reports_each_step_in_sampling_order(analytic_backbone):
    states = []
    timesteps = ddim_timesteps(5)
    x0 = _randn(1, 2, 6, 4)
    ddpm_invert(analytic_backbone, x0, analytic_backbone.encode_prompt(["a flute"]), timesteps=timesteps,
                callback=_record(states))
    assert [s.step for s in states] == list(range(5))
    assert [int(s.t[0]) for s in states] == timesteps.tolist()
    torch.testing.assert_close(states[-1].latent, x0)  # the last map takes x_{K-1} to x0


def test_ddpm_bad_arguments_are_clear_errors(analytic_backbone):
    cond = analytic_backbone.encode_prompt(["a flute"])
    x = _randn(1, 2, 6, 4)
    with pytest.raises(ValueError, match=r"noises has shape \(4, 1, 2, 6, 4\); 5 steps of latents \(1, 2, 6, 4\) need"):
        ddpm_sample(analytic_backbone, x, cond, timesteps=ddim_timesteps(5), noises=_randn(4, 1, 2, 6, 4))
    with pytest.raises(ValueError, match="DDPM inversion needs timesteps above 0"):
        ddpm_invert(analytic_backbone, x, cond, timesteps=[5, 0])
    with pytest.raises(ValueError, match="DDPM sampling needs timesteps above 0"):  # before any step
        ddpm_sample(analytic_backbone, x, cond, timesteps=[5, 0], noises=_randn(2, 1, 2, 6, 4))
    with pytest.raises(ValueError, match="steps_per_call must be at least 1, got 0"):
        ddpm_invert(analytic_backbone, x, cond, timesteps=[5, 1], steps_per_call=0)
    with pytest.raises(ValueError, match="steps_per_call must be a whole number, got 1.5"):
        ddpm_invert(analytic_backbone, x, cond, timesteps=[5, 1], steps_per_call=1.5)
    with pytest.raises(ValueError, match="a DDPM step lowers the noise"):
        ddpm_step_mean(x, x, torch.tensor([0.9]), torch.tensor([0.5]))
