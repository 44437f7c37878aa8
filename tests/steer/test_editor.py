"""The editing loop on the tiny AudioLDM2: the gradient it applies, exactness, reproducibility."""

import re
import sys
import warnings

import pytest
import torch

from losses import DeltaDenoisingScore, ScoreDistillationSampling, TimestepWeighting
from steer import Audio, Editor, SteerMusic, load_audio, save_audio
from steer.performance import Performance


@pytest.fixture()
def latent(tiny_backbone):
    waveform = torch.randn(1, 1, 10240, generator=torch.Generator().manual_seed(0))
    return tiny_backbone.encode_audio(waveform, 16000)  # (1, 8, 16, 16)


def _record(states):
    return lambda state: states.append(state)


def test_gradient_is_weighted_delta_of_guided_predictions(tiny_backbone, latent):
    editor = SteerMusic(tiny_backbone, steps=3, lr=0.5)
    states = []
    editor.edit_latent(latent, source="a piano melody", target="a violin melody", callback=_record(states))
    src = tiny_backbone.encode_prompt(["a piano melody"])
    tgt = tiny_backbone.encode_prompt(["a violin melody"])
    x = latent
    for state in states:
        x_t = tiny_backbone.add_noise(x, state.noise, state.t)
        x_src_t = tiny_backbone.add_noise(latent, state.noise, state.t)
        with torch.no_grad():
            eps_tgt = tiny_backbone.predict_noise(x_t, state.t, tgt, 30.0)
            eps_src = tiny_backbone.predict_noise(x_src_t, state.t, src, 30.0)
        w = 2 * (1 - tiny_backbone.alphas_cumprod[state.t])
        # guidance 30 amplifies float32 rounding of the two batched calls
        torch.testing.assert_close(state.gradient, w * (eps_tgt - eps_src), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(state.latent, x - state.lr * state.gradient)  # one SGD step
        x = state.latent
    assert [s.lr for s in states] == [0.5] * 3


def test_equal_prompts_return_the_source_exactly(tiny_backbone, latent):
    editor = SteerMusic(tiny_backbone, steps=5, lr=1.0)
    result = editor.edit_latent(latent, source="a piano melody", target="a piano melody")
    assert torch.equal(result.latent, latent)
    assert all(h["total"] == 0 for h in result.history)


def test_a_different_target_moves_the_latent(tiny_backbone, latent):
    result = SteerMusic(tiny_backbone, steps=5, lr=1.0).edit_latent(
        latent, source="a piano melody", target="a violin melody"
    )
    assert (result.latent - latent).abs().max() > 1e-3
    assert len(result.history) == 5 and all(h["total"] > 0 for h in result.history)


def test_the_history_holds_each_steps_losses_read_from_the_device_at_once(tiny_backbone, latent):
    """The loss values of every step, as the callback saw them, read at the end in one copy: no
    ``item()`` per value (on a GPU each one waits for the device). A first edit encodes the
    prompts (the text encoders read a few numbers), so the second is watched."""
    from torch.profiler import ProfilerActivity, profile

    losses = [DeltaDenoisingScore(guidance_scale=10.0), ScoreDistillationSampling(guidance_scale=3.0)]
    editor = Editor(tiny_backbone, losses=losses, steps=3, lr=1.0)
    prompts = dict(source="a piano melody", target="a violin melody")
    editor.edit_latent(latent, **prompts)
    states = []
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        result = editor.edit_latent(latent, callback=_record(states), **prompts)
    assert result.history == [{name: value.item() for name, value in s.losses.items()} for s in states]
    assert len({h["total"] for h in result.history}) == 3
    assert not [e.name for e in profiled.events() if e.name in ("aten::item", "aten::_local_scalar_dense")]


def test_an_edit_whose_latent_is_not_finite_warns_and_names_its_path(tiny_backbone, latent):
    """A NaN gradient (inductor's CPU code for SteerMusic+'s backward gave one, miscompiled by
    g++: benchmarks/README.md) makes the audio noise: the edit warns, naming its path and what to do,
    read in the same copy as the history; a sound edit does not warn."""
    prompts = dict(source="a piano melody", target="a violin melody")
    editor = SteerMusic(tiny_backbone, steps=2)
    editor.lr = float("nan")  # NaN steps (the constructor refuses this learning rate)
    with pytest.warns(RuntimeWarning, match=r"non-finite values after 2 steps on Performance\(path='batched'.*aot_eager"):
        result = editor.edit_latent(latent, **prompts)
    assert result.latent.isnan().all() and len(result.history) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = SteerMusic(tiny_backbone, steps=2, lr=1.0).edit_latent(latent, **prompts)
    assert result.latent.isfinite().all()


def test_same_seed_same_edit_other_seed_other_edit(tiny_backbone, latent):
    editor = SteerMusic(tiny_backbone, steps=3, lr=1.0)
    kwargs = dict(source="a piano melody", target="a violin melody")
    a = editor.edit_latent(latent, seed=1, **kwargs).latent
    b = editor.edit_latent(latent, seed=1, **kwargs).latent
    c = editor.edit_latent(latent, seed=2, **kwargs).latent
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_batched_and_unbatched_predictions_agree(tiny_backbone, latent):
    losses = [
        DeltaDenoisingScore(guidance_scale=10.0),
        ScoreDistillationSampling(guidance_scale=3.0, weighting=TimestepWeighting(scale=0.1)),
    ]
    kwargs = dict(source="a piano melody", target="a violin melody", seed=3)
    batched = Editor(tiny_backbone, losses=losses, steps=3, lr=1.0).edit_latent(latent, **kwargs)
    single = Editor(tiny_backbone, losses=losses, steps=3, lr=1.0, performance=Performance(path="reference")).edit_latent(
        latent, **kwargs
    )
    torch.testing.assert_close(batched.latent, single.latent, rtol=1e-4, atol=1e-4)
    assert set(batched.history[0]) == {"DeltaDenoisingScore", "ScoreDistillationSampling", "total"}


def test_requests_are_deduplicated(tiny_backbone, monkeypatch):
    """DDS and SDS share ε̂(x_t, y_tgt): 3 requests, one UNet call of batch 2 × 3 per step."""
    editor = Editor(
        tiny_backbone,
        losses=[DeltaDenoisingScore(guidance_scale=5.0), ScoreDistillationSampling(guidance_scale=5.0)],
        steps=2,
    )
    assert len(editor.requests) == 2
    batches = []
    unet = tiny_backbone.pipe.unet
    original = unet.forward
    monkeypatch.setattr(unet, "forward", lambda x, *a, **k: batches.append(x.shape[0]) or original(x, *a, **k))
    editor.edit_latent(torch.zeros(1, 8, 8, 16), source="a", target="b")
    assert batches == [4, 4]


def test_batch_of_clips_with_their_own_prompts(tiny_backbone, latent):
    pair = torch.cat([latent, latent.flip(2)])
    editor = SteerMusic(tiny_backbone, steps=2, lr=1.0)
    result = editor.edit_latent(pair, source=["a piano", "a flute"], target=["a piano", "a drum"])
    assert torch.equal(result.latent[0], pair[0])  # equal prompts: unchanged
    assert not torch.equal(result.latent[1], pair[1])


def test_timesteps_stay_in_range_and_lr_decays(analytic_backbone):
    states = []
    editor = Editor(
        analytic_backbone,
        losses=[DeltaDenoisingScore()],
        steps=45,
        lr=0.1,
        lr_step_size=20,
        lr_gamma=0.5,
        t_min=100,
        t_max=105,
    )
    editor.edit_latent(torch.zeros(3, 2, 6, 4), source="a", target="b", callback=_record(states))
    ts = torch.cat([s.t for s in states])
    assert ts.min() == 100 and ts.max() == 105
    assert [states[i].lr for i in (0, 19, 20, 40)] == pytest.approx([0.1, 0.1, 0.05, 0.025])


def test_edit_audio_returns_audio_of_the_input_duration(tiny_backbone):
    audio = Audio(torch.randn(2, 22050) * 0.1, 22050)  # stereo, 1 s at 22.05 kHz
    result = SteerMusic(tiny_backbone, steps=2).edit(audio, source="a piano", target="a violin")
    assert result.audio.shape == (1, 16000) and result.sample_rate == 16000
    assert torch.isfinite(result.audio).all()


def test_edit_reads_a_file_given_by_path(tiny_backbone, tmp_path):
    path = save_audio(tmp_path / "in.wav", torch.randn(2, 22050, generator=torch.Generator().manual_seed(0)) * 0.1, 22050)
    editor = SteerMusic(tiny_backbone, steps=2)
    expected = editor.edit(load_audio(path), source="a piano", target="a violin", seed=3).audio
    for given in (path, str(path)):
        result = editor.edit(given, source="a piano", target="a violin", seed=3)
        torch.testing.assert_close(result.audio, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="input file not found"):
        editor.edit(tmp_path / "missing.wav", source="a piano", target="a violin")


def test_recipe_defaults_are_the_papers(tiny_backbone):
    editor = SteerMusic(tiny_backbone)
    (dds,) = editor.losses
    assert (editor.steps, editor.lr, editor.optimizer) == (400, 0.02, "sgd")
    assert (editor.lr_step_size, editor.lr_gamma, editor.t_min, editor.t_max) == (20, 0.9, 20, 980)
    assert dds.target.guidance_scale == dds.source.guidance_scale == 30.0
    assert dds.weighting == TimestepWeighting("1-alpha_bar", 2.0)


def test_bad_arguments_are_clear_errors(tiny_backbone, latent):
    with pytest.raises(ValueError, match="at least one loss"):
        Editor(tiny_backbone, losses=[])
    with pytest.raises(ValueError, match="t_min <= t_max"):
        Editor(tiny_backbone, losses=[DeltaDenoisingScore()], t_min=500, t_max=100)
    with pytest.raises(ValueError, match="unknown optimizer"):
        Editor(tiny_backbone, losses=[DeltaDenoisingScore()], optimizer="lbfgs")
    for lr in (0.0, -0.02, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"learning rate must be a positive finite number, got {lr}"):
            Editor(tiny_backbone, losses=[DeltaDenoisingScore()], lr=lr)
    with pytest.raises(ValueError, match="lr_step_size must be at least 1 step, got 0"):
        Editor(tiny_backbone, losses=[DeltaDenoisingScore()], lr_step_size=0)
    for name, value in (("steps", 2.5), ("t_min", 20.5), ("lr_step_size", True)):
        with pytest.raises(ValueError, match=f"{name} must be a whole number, got {value}"):  # were raw TypeErrors
            Editor(tiny_backbone, losses=[DeltaDenoisingScore()], **{name: value})
    for steps in (-1, 10**20):  # 10**20 was tqdm's OverflowError at the first step
        with pytest.raises(ValueError, match=rf"steps must be between 0 and {sys.maxsize} \(sys.maxsize\), got {steps}"):
            Editor(tiny_backbone, losses=[DeltaDenoisingScore()], steps=steps)
    for gamma in (0.0, -0.9, float("nan")):
        with pytest.raises(ValueError, match=f"lr_gamma must be a positive finite number, got {gamma}"):
            Editor(tiny_backbone, losses=[DeltaDenoisingScore()], lr_gamma=gamma)
    editor = SteerMusic(tiny_backbone, steps=1)
    with pytest.raises(ValueError, match="target prompt is empty"):
        editor.edit_latent(latent, source="a piano", target="  ")
    for seed in (2**70, 2.5):  # 2**70 was PyTorch's "Overflow when unpacking long long"
        with pytest.raises(ValueError, match=re.escape(f"seed must be an integer from -2**63 to 2**64 - 1 (a 64-bit seed), got {seed}")):
            editor.edit_latent(latent, source="a piano", target="a violin", seed=seed)
    with pytest.raises(ValueError, match="got 2 source prompts for 1 clips"):
        editor.edit_latent(latent, source=["a", "b"], target="c")
    with pytest.raises(TypeError, match="edit takes an Audio or a file.s path, got Tensor: pass steer.Audio"):
        editor.edit(torch.zeros(1, 16000), source="a piano", target="a violin")
    with pytest.raises(TypeError, match="source prompt must be a string or a list of strings, got int"):
        editor.edit_latent(latent, source=3, target="c")
    with pytest.raises(TypeError, match="target prompts must be strings, got NoneType"):
        editor.edit_latent(latent, source="a", target=[None])
