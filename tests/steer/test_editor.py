"""The editing loop on the tiny AudioLDM2: the gradient it applies, exactness, reproducibility."""

import re
import sys
import warnings

import pytest
import torch

from backbones import AudioLDM2Backbone
from backbones.tiny import tiny_audioldm2_pipeline
from losses import (
    DeltaDenoisingScore,
    FeatureRequest,
    LossOutput,
    NoiseRequest,
    PersonalizedContrastiveLoss,
    ScoreDistillationSampling,
    ScoreLoss,
    ShiftRegularizer,
    TimestepWeighting,
)
from steer import (
    Audio,
    Concept,
    DDIMInversion,
    Editor,
    SDEdit,
    SteerMusic,
    SteerMusicPlus,
    load_audio,
    save_audio,
)
from steer.concepts.concept import LORA_TARGETS, ConceptConfig
from steer.editor import seeded_generator
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
    with pytest.warns(UserWarning, match=r"^the source and target prompts are the same, so the delta score between them is zero and the 5 steps would leave the clip as it is"):
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
    ``item()`` per value (on a GPU each one waits for the device); one read before the steps,
    whether the input latent is finite. A first edit encodes the prompts (the text encoders read
    a few numbers), so the second is watched."""
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
    reads = [e.name for e in profiled.events() if e.name in ("aten::item", "aten::_local_scalar_dense")]
    assert sorted(reads) == ["aten::_local_scalar_dense", "aten::item"]  # once an edit: is the input finite


def test_an_edit_whose_latent_is_not_finite_warns_and_names_its_path(tiny_backbone, latent):
    """A NaN gradient (inductor's CPU code for SteerMusic+'s backward gave one, miscompiled by
    g++: benchmarks/README.md) makes the audio noise: the edit warns, naming its path and what to do,
    read in the same copy as the history; a sound edit does not warn."""
    prompts = dict(source="a piano melody", target="a violin melody")
    nan = _Output(gradient=lambda x: torch.full_like(x, float("nan")))
    editor = Editor(tiny_backbone, losses=[DeltaDenoisingScore(guidance_scale=7.5), nan], steps=2)
    with pytest.warns(RuntimeWarning, match=r"non-finite values after 2 steps on Performance\(path='batched'.*so its audio is noise. The edit diverged: edit it again with a lower lr or guidance_scale$") as caught:
        result = editor.edit_latent(latent, **prompts)
    assert "C++ compiler" not in str(caught[0].message)  # an eager path: no compiled code to suspect
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


def test_a_seed_below_2_to_the_32_draws_as_before_and_every_bit_of_a_larger_one_counts(tiny_backbone, latent):
    """On the CPU only the low 32 bits of a seed counted: 5 and 2**32 + 5 gave the same edit."""
    for seed in (0, 5, 12345, 2**32 - 1):  # the draws of every recorded result stay the same
        assert torch.equal(seeded_generator(seed).get_state(), torch.Generator().manual_seed(seed).get_state())
    editor = SteerMusic(tiny_backbone, steps=2, lr=1.0)
    kwargs = dict(source="a piano melody", target="a violin melody")
    five, far = (editor.edit_latent(latent, seed=seed, **kwargs).latent for seed in (5, 2**32 + 5))
    assert not torch.allclose(five, far)
    draws = {seed: torch.randn(4, generator=seeded_generator(seed)) for seed in (2**32, 2**33, 2**63, 2**64 - 1)}
    assert len({tuple(d.tolist()) for d in draws.values()}) == 4
    # PyTorch's seeds are 64-bit two's complement: these are the same seeds, the same draws
    for a, b in ((-1, 2**64 - 1), (-(2**63), 2**63)):
        assert torch.equal(torch.randn(4, generator=seeded_generator(a)), torch.randn(4, generator=seeded_generator(b)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_generator_takes_the_seed_as_it_is():
    """Philox reads all 64 bits: no hash on CUDA."""
    for seed in (5, 2**32 + 5, 2**64 - 1):
        assert seeded_generator(seed, "cuda").initial_seed() == seed
    assert not torch.equal(
        torch.randn(4, generator=seeded_generator(5, "cuda")), torch.randn(4, generator=seeded_generator(2**32 + 5, "cuda"))
    )


def test_equal_prompts_warn_only_where_the_delta_is_zero(tiny_backbone, lora, latent):
    """A DDS edit between one prompt and itself never moves; with another prompt, or another loss
    beside it, it does, and SteerMusic+ compares two models."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        SteerMusic(tiny_backbone, steps=1).edit_latent(latent, source="a piano", target="a violin")
        losses = [DeltaDenoisingScore(), ScoreDistillationSampling()]
        Editor(tiny_backbone, losses=losses, steps=1).edit_latent(latent, source="a piano", target="a piano")
        SteerMusicPlus(tiny_backbone, lora, steps=1).edit_latent(latent, source="a sks violin", target="a sks violin")
    with pytest.warns(UserWarning, match="the source and target prompts are the same, so") as record:
        SteerMusic(tiny_backbone, steps=1).edit_latent(latent.expand(2, -1, -1, -1), source=["a", "b"], target=["a", "b"])
    assert "leave the clip as it is" in str(record[0].message)


def test_a_clip_of_a_batch_whose_prompts_are_the_same_is_warned_of_as_alone(tiny_backbone, latent):
    """The check compared the whole batch's prompts: a clip whose source and target prompts are
    the same came back unedited without a word when a clip beside it differed, where alone it was
    warned of. Prompts of other lengths (padded to the batch's longest) are compared as read."""
    long = "a long prompt of many words about a cello"
    cases = [
        (["a", "b"], ["a", "c"], "for clip 0 of the batch of 2, so the delta score between them is zero and the 1 step would leave that clip"),
        (["b", long, "a"], ["c", long, "a"], "for clips 1, 2 of the batch of 3, so .* leave those clips as it is"),
    ]
    for source, target, message in cases:
        batch = latent.expand(len(source), -1, -1, -1)
        with pytest.warns(UserWarning, match=f"the source and target prompts are the same {message}"):
            result = SteerMusic(tiny_backbone, steps=1).edit_latent(batch, source=source, target=target)
        unchanged = [i for i in range(len(source)) if torch.equal(result.latent[i], latent[0])]
        assert unchanged == [i for i in range(len(source)) if source[i] == target[i]]


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
    with pytest.warns(UserWarning, match="the source and target prompts are the same for clip 0 of the batch of 2"):
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
    for losses in ([], None):
        with pytest.raises(ValueError, match="at least one loss"):
            Editor(tiny_backbone, losses=losses)
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


class _Output(ScoreLoss):
    """A loss returning a set value and gradient (made from the latent's shape)."""

    def __init__(self, value=lambda x: torch.tensor(0.0), gradient=lambda x: None, requests=()):
        self.value, self.gradient, self.requests = value, gradient, requests

    def __call__(self, context):
        return LossOutput(value=self.value(context.latent), gradient=self.gradient(context.latent))


def test_a_loss_gradient_not_shaped_like_the_latent_is_refused(tiny_backbone, latent):
    """It was broadcast into x's gradient: (1, 8, 16, 1) on every frequency, one clip's to both."""
    prompts = dict(source="a piano", target="a violin")
    narrow = _Output(gradient=lambda x: torch.zeros(*x.shape[:-1], 1))
    with pytest.raises(ValueError, match=re.escape("the loss _Output returned a gradient of shape (1, 8, 16, 1) for a latent of shape (1, 8, 16, 16)")):
        Editor(tiny_backbone, losses=[narrow], steps=1).edit_latent(latent, **prompts)
    one_clip = _Output(gradient=lambda x: torch.zeros(1, *x.shape[1:]))
    with pytest.raises(ValueError, match=re.escape("gradient of shape (1, 8, 16, 16) for a latent of shape (2, 8, 16, 16)")):
        Editor(tiny_backbone, losses=[one_clip], steps=1).edit_latent(latent.repeat(2, 1, 1, 1), **prompts)


def test_a_gradient_that_is_no_real_float_tensor_is_refused_naming_its_loss(tiny_backbone, latent):
    """A complex gradient failed at x.grad += with "ComplexFloat can't be cast", naming no loss;
    a list raised an AttributeError."""
    prompts = dict(source="a piano", target="a violin")
    for gradient, what in [(lambda x: torch.ones_like(x, dtype=torch.complex64), "torch.complex64"),
                           (lambda x: torch.ones_like(x, dtype=torch.int64), "torch.int64"),
                           (lambda x: [0.0], "list")]:
        message = f"the loss _Output returned a gradient of {what}: LossOutput.gradient must be a real floating-point tensor"
        with pytest.raises(TypeError, match=f"^{re.escape(message)}"):
            Editor(tiny_backbone, losses=[_Output(gradient=gradient)], steps=1).edit_latent(latent, **prompts)


def test_a_loss_named_total_is_refused_when_the_editor_is_made(tiny_backbone):
    """The history's sum of the losses overwrote its values."""
    total = type("Total", (_Output,), {"name": "total"})()
    with pytest.raises(ValueError, match="^the loss Total is named 'total', the name the history gives the sum"):
        Editor(tiny_backbone, losses=[DeltaDenoisingScore(), total])


def test_a_value_still_holding_its_graph_keeps_no_steps_graph_alive(tiny_backbone, latent):
    """LossOutput(value=loss, loss=loss), the natural way to write a custom loss: the history kept
    each step's value with its graph (through the denoiser for a feature loss), memory growing
    every step (180 MB a step on the tiny model, measured by a review). Kept detached now."""

    class Anchor(ScoreLoss):
        requests = ()

        def __call__(self, context):
            loss = (context.latent - 1).pow(2).mean()
            return LossOutput(value=loss, loss=loss)

    states = []
    result = Editor(tiny_backbone, losses=[Anchor()], steps=3).edit_latent(
        latent, source="a piano", target="a violin", callback=states.append
    )
    kept = [(value.requires_grad, value.grad_fn) for state in states for value in state.losses.values()]
    assert kept == [(False, None)] * 6  # Anchor's and the total's, each step
    assert len(result.history) == 3 and all(h["Anchor"] > 0 for h in result.history)


def test_a_per_clip_value_is_refused_at_the_first_step(tiny_backbone, latent):
    """A value of shape (B,) failed only when the history was read, after every step."""
    steps = []
    per_clip = _Output(value=lambda x: torch.zeros(len(x)))
    with pytest.raises(ValueError, match=re.escape("the loss _Output returned a value of shape (1,): LossOutput.value must be a detached scalar")):
        Editor(tiny_backbone, losses=[per_clip], steps=3).edit_latent(latent, source="a", target="b", callback=steps.append)
    assert steps == []


def test_a_prediction_not_shaped_like_x_t_is_refused(tiny_backbone, latent, monkeypatch):
    predict = type(tiny_backbone).predict_noise
    monkeypatch.setattr(type(tiny_backbone), "predict_noise", lambda self, *a, **k: predict(self, *a, **k)[..., :1])
    with pytest.raises(ValueError, match=re.escape("AudioLDM2Backbone.predict_noise (model 'base') returned a prediction of shape (1, 8, 16, 1) for a latent of shape (1, 8, 16, 16)")):
        SteerMusic(tiny_backbone, steps=1).edit_latent(latent, source="a piano", target="a violin")


def test_a_backbone_without_a_sample_rate_is_refused_when_the_editor_is_built(analytic_backbone, monkeypatch):
    """It failed with an AttributeError after every step, making the result."""
    monkeypatch.delattr(type(analytic_backbone), "sample_rate")
    with pytest.raises(ValueError, match="AnalyticBackbone.sample_rate must be a positive whole number of Hz, got None"):
        SteerMusic(analytic_backbone)


def test_losses_asking_for_what_the_editor_lacks_are_refused_before_the_first_step(tiny_backbone, latent):
    """They were bare KeyErrors ('personalized', 'target_base', ...) from inside the step."""
    prompts = dict(source="a piano", target="a violin")
    cases = [
        (PersonalizedContrastiveLoss(), r"the loss PersonalizedContrastiveLoss asks for the model 'personalized', which Editor does not hold \(it holds 'base'\): override Editor.models\(\)"),
        (_Output(requests=(NoiseRequest("edit", "target", 7.5, "teacher"),)), "asks for the model 'teacher'"),
        (_Output(requests=(NoiseRequest("edit", "style", 7.5),)), r"the loss _Output asks for the prompt role 'style', which Editor does not give \(it gives 'source', 'target'\): override Editor.prompt_roles\(\)"),
    ]
    for loss, message in cases:
        with pytest.raises(ValueError, match=message):
            Editor(tiny_backbone, losses=[loss], steps=1).edit_latent(latent, **prompts)

    class Composed(Editor):
        def models(self):
            return {"base": self.backbone, "personalized": self.backbone}

    with pytest.raises(ValueError, match=r"the loss ShiftRegularizer asks for the prompt role 'target_base'.*or use SteerMusicPlus"):
        Composed(tiny_backbone, losses=[ShiftRegularizer()], steps=1).edit_latent(latent, **prompts)


class _SelfPersonalized(Editor):
    """SteerMusic+'s models with ε' = ε."""

    def models(self):
        return {"base": self.backbone, "personalized": self.backbone}


@pytest.mark.parametrize(
    "performance",
    [Performance(path="reference"), Performance(), Performance(precision="fp16"), Performance(checkpointing=True)],
    ids=["reference", "batched", "fp16", "checkpointed"],
)
def test_the_backward_fills_only_the_latents_gradient(tiny_backbone, latent, performance):
    """PCon backpropagates through ε': a denoiser whose weights require grad got .grad on them
    (189 of 208 parameters of a custom UNet); the latent's gradient is the frozen model's."""
    unet = tiny_backbone.denoiser
    flags = [p.requires_grad for p in unet.parameters()]

    def gradients():
        losses = [DeltaDenoisingScore(guidance_scale=7.5), PersonalizedContrastiveLoss(guidance_scale=7.5, num_positions=4)]
        states = []
        with _SelfPersonalized(tiny_backbone, losses=losses, steps=2, performance=performance) as editor:
            editor.edit_latent(latent, source="a piano", target="a violin", callback=states.append)
        return torch.stack([s.gradient for s in states])

    try:
        unet.requires_grad_(False)
        frozen = gradients()
        unet.requires_grad_(True)
        trainable = gradients()
        assert [n for n, p in unet.named_parameters() if p.grad is not None] == []
    finally:
        unet.zero_grad(set_to_none=True)
        for p, flag in zip(unet.parameters(), flags):
            p.requires_grad_(flag)
    torch.testing.assert_close(trainable, frozen, rtol=0, atol=0)


def test_a_personalised_model_in_the_other_half_precision_is_refused(tiny_backbone, analytic_backbone, latent):
    """Only the base model's dtype was checked: an fp16 ε' under bf16 failed inside the model."""
    analytic_backbone.denoiser.half()

    class Half:
        token = "sks"

        def apply(self, backbone):
            return analytic_backbone

    editor = SteerMusicPlus(tiny_backbone, Half(), steps=1, performance=Performance(precision="bf16"))
    with pytest.raises(ValueError, match="precision 'bf16' computes in bfloat16 but the personalized model's weights are float16"):
        editor.edit_latent(latent, source="a piano", target="a sks violin")


def test_an_edit_called_under_no_grad_or_inference_mode_is_the_same_edit(tiny_backbone, lora):
    """SteerMusic+ backpropagates PCon through the denoiser: under no_grad it failed with torch's
    "element 0 of tensors does not require grad"; a latent made under inference_mode is editable."""
    with torch.inference_mode():
        latent = tiny_backbone.encode_audio(torch.randn(1, 16000, generator=torch.Generator().manual_seed(0)) * 0.1, 16000)
    prompts = dict(source="a piano", target="a sks violin")
    editor = SteerMusicPlus(tiny_backbone, lora, steps=2)
    reference = editor.edit_latent(latent.clone(), **prompts).latent
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            edited = editor.edit_latent(latent, **prompts).latent
        assert not edited.is_inference()
        torch.testing.assert_close(edited, reference, rtol=0, atol=0)
    assert (reference - latent).abs().max() > 1e-3  # the edit moved


def test_a_backbone_made_under_inference_mode_is_refused_where_a_loss_backpropagates_through_it(latent):
    """Its weights are inference tensors: PCon's backward failed at the first step with torch's
    "Inference tensors cannot be saved for backward"; DDS, which does not backpropagate through
    them, edits with it as before."""
    with torch.inference_mode():
        backbone = AudioLDM2Backbone.from_pipe(tiny_audioldm2_pipeline(seed=0))
    prompts = {"source": "a piano", "target": "a violin"}
    losses = [DeltaDenoisingScore(guidance_scale=7.5), PersonalizedContrastiveLoss(guidance_scale=7.5, num_positions=4)]
    states = []
    with pytest.raises(
        ValueError,
        match=r"^the loss PersonalizedContrastiveLoss backpropagates through the 'personalized' model's denoiser, "
        r"whose weights \(conv_in.weight, ...\) were made under torch.inference_mode\(\), and autograd cannot save "
        r"them: load the backbone and build the editor outside torch.inference_mode\(\) \(torch.no_grad\(\) is fine\)$",
    ):
        _SelfPersonalized(backbone, losses=losses, steps=1).edit_latent(latent, **prompts, callback=states.append)
    assert states == []
    assert len(SteerMusic(backbone, steps=2).edit_latent(latent, **prompts).history) == 2


def test_steermusic_plus_built_under_inference_mode_edits_as_one_built_outside(tiny_backbone, latent):
    """peft made the LoRA adapter's weights under inference_mode, as inference tensors: PCon's
    backward through them failed at the first step."""
    config = ConceptConfig(method="lora", token="sks", class_word="guitar", family="audioldm2", lora_rank=2, lora_targets=LORA_TARGETS)
    concept = Concept(config, {})  # a fresh adapter (B = 0): ε′ = ε whatever peft draws for A
    prompts = {"source": "a piano", "target": "a sks violin"}
    with torch.inference_mode():
        inside = SteerMusicPlus(tiny_backbone, concept, steps=2, pcon_positions=4)
    with inside:
        edited = inside.edit_latent(latent, **prompts).latent
    with SteerMusicPlus(tiny_backbone, concept, steps=2, pcon_positions=4) as outside:
        torch.testing.assert_close(edited, outside.edit_latent(latent, **prompts).latent, rtol=0, atol=0)


def test_a_target_of_only_the_concept_token_is_refused(tiny_backbone, latent):
    """The base model's shift prompt was derived empty ('') and used."""

    class Same:
        token = "<s1>"

        def apply(self, backbone):
            return backbone

    editor = SteerMusicPlus(tiny_backbone, Same(), steps=1)
    with pytest.raises(ValueError, match="the target prompt '<s1>' is only the concept token"):
        editor.edit_latent(latent, source="a piano", target="<s1>")


def test_latents_the_backbone_cannot_edit_are_refused_before_the_first_step(tiny_backbone, latent):
    editor = SteerMusic(tiny_backbone, steps=1)
    prompts = dict(source="a piano", target="a violin")
    with pytest.raises(ValueError, match=re.escape("the latent of shape (1, 4, 16, 16) has 4 channels (axis 1), but AudioLDM2Backbone's denoiser takes 8")):
        editor.edit_latent(latent[:, :4], **prompts)
    with pytest.raises(ValueError, match=re.escape("the latent has shape (8, 16, 16), but AudioLDM2Backbone's denoiser takes 4-D latents (B, C, T, F): pass one from backbone.encode_audio (a single clip needs its batch axis, latent[None])")):  # was "32 channels"
        editor.edit_latent(latent[0], **prompts)
    with pytest.raises(ValueError, match=re.escape("the latent must be (B, C, T) or (B, C, T, F), got shape (1, 1, 8, 16, 16)")):
        editor.edit_latent(latent[None], **prompts)
    with pytest.raises(TypeError, match="the latent is complex"):  # was cast silently
        editor.edit_latent(latent.to(torch.complex64), **prompts)
    with pytest.raises(TypeError, match=re.escape("the latent is not floating point (torch.int64)")):  # was cast silently
        editor.edit_latent(latent.long(), **prompts)
    for bad in (float("nan"), float("inf")):  # ran the whole edit, then warned
        with pytest.raises(ValueError, match="the latent holds NaN or infinite values"):
            editor.edit_latent(torch.full_like(latent, bad), **prompts)
    with pytest.raises(TypeError, match="the source prompt must be a string or a list of strings, got bytes"):
        editor.edit_latent(latent, source=b"a piano", target="a violin")  # was "got 7 source prompts"


def test_a_latent_on_another_device_than_the_denoiser_is_refused(latent):
    """It failed deep inside torch: "Tensor on device cpu is not on the expected device meta!"."""
    backbone = AudioLDM2Backbone.from_pipe(tiny_audioldm2_pipeline(seed=0))
    backbone.denoiser.to("meta")  # stands for a denoiser on a GPU
    with pytest.raises(ValueError, match=re.escape("the latent is on cpu, but AudioLDM2Backbone's denoiser is on meta: move it there, latent.to(backbone.device)")):
        SteerMusic(backbone, steps=1).edit_latent(latent, source="a piano", target="a violin")


def test_performance_fields_are_type_checked():
    """"no" is truthy: compile="no" switched compilation on; 2.5 and "32" failed late."""
    for name in ("compile", "checkpointing", "fused", "merge_lora"):
        with pytest.raises(TypeError, match=f"{name} must be True or False, got 'no'"):
            Performance(**{name: "no"})
    for padding in (2.5, "32", True):
        with pytest.raises(TypeError, match=f"prompt_padding must be a whole number of tokens, got {padding!r}"):
            Performance(prompt_padding=padding)
    with pytest.raises(TypeError, match="compile_backend must be a backend's name, got 3"):
        Performance(compile_backend=3)


def test_an_infinite_noise_prediction_leaves_the_latent_finite_and_bounded(tiny_backbone, latent):
    """An inf in ε̂ (an fp16 overflow, say) became a gradient of ±3.4e38 (nan_to_num(nan=0) kept
    it "finite"): the latent moved by ~1e36, with no warning. It is zeroed as NaN is."""
    calls = []

    def overflow_once(module, args, out):
        calls.append(None)
        if len(calls) == 1:
            out = out.clone()
            out[-1, 0, 0, 0] = float("inf")  # the source prediction's conditional branch
            return out
        return None

    handle = tiny_backbone.denoiser.conv_out.register_forward_hook(overflow_once)
    states = []
    try:
        with pytest.warns(RuntimeWarning, match="^1 of the 2 steps had noise predictions holding NaN or infinite values.*less far"):
            editor = Editor(tiny_backbone, losses=[DeltaDenoisingScore(guidance_scale=3.0)], steps=2, lr=0.02)
            result = editor.edit_latent(latent, source="a piano", target="a violin", callback=states.append)
    finally:
        handle.remove()
    assert len(calls) == 2  # one batched call a step: the first one overflowed
    assert states[0].gradient[0, 0, 0, 0] == 0 and torch.isfinite(states[0].gradient).all()
    assert torch.isfinite(result.latent).all()
    assert (result.latent - latent).abs().max() < 1.0  # was 6.8e36
    assert all(abs(h["total"]) < float("inf") for h in result.history)  # NaN fails too


def test_noise_predictions_that_are_not_finite_are_counted_in_a_warning(analytic_backbone):
    """A NaN or infinite prediction is zeroed in the gradient, so the latent stays finite and its
    check never warned: a model predicting only NaN gave the clip back unedited, without a word."""
    x = torch.randn(1, *analytic_backbone.shape)
    editor = SteerMusic(analytic_backbone, steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        editor.edit_latent(x, source="a piano", target="a violin")
    analytic_backbone.gain = float("nan")
    try:
        with pytest.warns(RuntimeWarning, match=r"^4 of the 4 steps had noise predictions holding NaN or infinite values.*the clip is returned unedited there"):
            result = editor.edit_latent(x, source="a piano", target="a violin")
    finally:
        analytic_backbone.gain = 1.0
    assert torch.equal(result.latent, x)


class _ReadsAnotherLossesFeatures(ScoreLoss):
    """Reads features from a prediction it does not request."""

    def __init__(self) -> None:
        self.feature_requests = (FeatureRequest(NoiseRequest("edit", "target", 3.0), None),)

    def __call__(self, context):
        return LossOutput(value=torch.zeros(()))


def test_a_loss_reading_features_of_a_prediction_it_does_not_request_is_refused_when_made(analytic_backbone):
    """It failed at the first step: "features requested from a prediction nobody requested"."""
    with pytest.raises(
        ValueError,
        match=r"the loss _ReadsAnotherLossesFeatures reads features from NoiseRequest\(latent='edit', prompt='target', "
        r"guidance_scale=3.0, model='base'\), which is not among its requests: add it to _ReadsAnotherLossesFeatures's "
        "requests",
    ):
        Editor(analytic_backbone, losses=[DeltaDenoisingScore(guidance_scale=3.0), _ReadsAnotherLossesFeatures()])


class _LossOfThePredictions(ScoreLoss):
    """A differentiable loss computed from the predictions, which carry no gradient."""

    requests = (NoiseRequest("edit", "target", 3.0),)

    def __call__(self, context):
        loss = context.predictions[self.requests[0]].square().sum()
        return LossOutput(value=loss.detach(), loss=loss)


def test_a_loss_with_no_path_back_to_the_latent_is_named(analytic_backbone):
    """Autograd said "element 0 of tensors does not require grad and does not have a grad_fn"."""
    editor = Editor(analytic_backbone, losses=[_LossOfThePredictions()], steps=1)
    with pytest.raises(ValueError, match=r"the loss _LossOfThePredictions returned a LossOutput.loss with no path back to the latent"):
        editor.edit_latent(torch.zeros(1, *analytic_backbone.shape), source="a piano", target="a violin")


def test_editor_arguments_of_the_wrong_kind_are_named_when_it_is_built(analytic_backbone):
    """A string performance (as the CLI takes it) failed with "'str' object has no attribute
    'check_weights'"; lr="0.1" with "'<' not supported"; a function as a loss at its first step."""
    dds = [DeltaDenoisingScore(guidance_scale=3.0)]
    assert Editor(analytic_backbone, losses=dds, performance="checkpointed").performance == Performance.preset("checkpointed")
    with pytest.raises(TypeError, match="^performance must be a Performance or a preset's name"):
        Editor(analytic_backbone, losses=dds, performance=3)
    with pytest.raises(ValueError, match="unknown performance preset 'bf61'"):
        Editor(analytic_backbone, losses=dds, performance="bf61")
    for name in ("lr", "lr_gamma"):
        with pytest.raises(TypeError, match=f"^{name} must be a number, got str '0.1'$"):
            Editor(analytic_backbone, losses=dds, **{name: "0.1"})
    with pytest.raises(TypeError, match="^losses must be ScoreLoss objects .*got function$"):
        Editor(analytic_backbone, losses=[lambda context: None])
    with pytest.raises(TypeError, match=r"^losses must be a list of ScoreLoss objects: write losses=\[DeltaDenoisingScore\(...\)\]$"):
        Editor(analytic_backbone, losses=dds[0])  # "'DeltaDenoisingScore' object is not iterable"
    editor = Editor(analytic_backbone, losses=dds)
    with pytest.raises(AttributeError):  # its requests were worked out from its losses once
        editor.losses.append(DeltaDenoisingScore(guidance_scale=5.0))


class _ReadsAnotherPrediction(ScoreLoss):
    """Requests the target prediction and reads the source one (or undeclared features)."""

    requests = (NoiseRequest("edit", "target", 3.0),)

    def __init__(self, read) -> None:
        self.read = read

    def __call__(self, context):
        self.read(context)
        return LossOutput(value=torch.zeros(()))


def test_a_loss_reading_a_prediction_it_did_not_request_is_named(analytic_backbone):
    """A bare KeyError: NoiseRequest(...) named no loss; beside a loss requesting the prediction
    the read worked, as features did before they were checked."""
    source = NoiseRequest("source", "source", 3.0)
    latent, prompts = torch.zeros(1, *analytic_backbone.shape), {"source": "a piano", "target": "a violin"}
    reads = _ReadsAnotherPrediction(lambda context: context.predictions[source])
    message = (
        "the loss _ReadsAnotherPrediction reads the prediction NoiseRequest(latent='source', prompt='source', "
        "guidance_scale=3.0, model='base'), which is not among its requests (NoiseRequest(latent='edit', "
        "prompt='target', guidance_scale=3.0, model='base')): add it to _ReadsAnotherPrediction's requests"
    )
    for losses in ([reads], [DeltaDenoisingScore(guidance_scale=3.0), reads]):
        with pytest.raises(KeyError, match=re.escape(message)):
            Editor(analytic_backbone, losses=losses, steps=1).edit_latent(latent, **prompts)
    features = _ReadsAnotherPrediction(lambda context: context.features[FeatureRequest(source, None)])
    with pytest.raises(KeyError, match=r"reads the features of FeatureRequest\(.*\), which is not among its feature_requests \(none\)"):
        Editor(analytic_backbone, losses=[features], steps=1).edit_latent(latent, **prompts)


def test_settings_set_between_edits_are_checked_as_the_constructor_checks_them(analytic_backbone):
    """t_max = 5000 was an IndexError inside the step, lr = -0.5 torch's "Invalid learning rate",
    performance = "bf16" (a name the constructor takes) an AttributeError."""
    latent, prompts = torch.zeros(1, *analytic_backbone.shape), {"source": "a piano", "target": "a violin"}
    editor = Editor(analytic_backbone, losses=[DeltaDenoisingScore(guidance_scale=3.0)], steps=1)
    editor.performance = "reference"
    assert editor.performance == Performance.preset("reference")
    with pytest.raises(TypeError, match="^performance must be a Performance or a preset's name"):
        editor.performance = 3
    with pytest.raises(ValueError, match="unknown performance preset 'bf61'"):
        editor.performance = "bf61"
    bad = [
        ("t_max", 5000, ValueError, r"need 0 <= t_min <= t_max < 1000, got 20, 5000"),
        ("lr", -0.5, ValueError, "the learning rate must be a positive finite number, got -0.5"),
        ("lr", "0.1", TypeError, "lr must be a number, got str '0.1'"),
        ("steps", 2.5, ValueError, "steps must be a whole number, got 2.5"),
        ("optimizer", "adamw", ValueError, "unknown optimizer 'adamw'"),
    ]
    for name, value, error, message in bad:
        good = getattr(editor, name)
        setattr(editor, name, value)
        with pytest.raises(error, match=message):
            editor.edit_latent(latent, **prompts)
        setattr(editor, name, good)
    editor.steps, editor.optimizer = 3, "adam"
    assert len(editor.edit_latent(latent, **prompts).history) == 3


def test_the_backbone_and_losses_are_fixed_when_the_editor_is_built(analytic_backbone):
    """losses = (...) left the requests and loss names worked out from them stale: an added SDS
    loss was applied but missing from the history, a changed guidance a bare KeyError."""
    settings = r"only its settings \(steps, lr, optimizer, lr_step_size, lr_gamma, t_min, t_max, performance\) may be set between edits$"
    editor = Editor(analytic_backbone, losses=[DeltaDenoisingScore(guidance_scale=3.0)])
    for name in ("backbone", "losses", "requests", "feature_requests", "loss_names"):
        with pytest.raises(AttributeError, match=rf"^Editor.{name} is fixed when the editor is built .*: build a new Editor instead; {settings}"):
            setattr(editor, name, getattr(editor, name))

    class Same:
        token = "sks"

        def apply(self, backbone):
            return backbone

    plus = SteerMusicPlus(analytic_backbone, Same())
    for name in ("losses", "token", "class_word", "personalized"):
        with pytest.raises(AttributeError, match=rf"^SteerMusicPlus.{name} is fixed when the editor is built"):
            setattr(plus, name, getattr(plus, name))
    # a recipe's keyword arguments its losses are made from: setting one was kept and did nothing
    for editor, name in [(SteerMusic(analytic_backbone), "guidance_scale"), (plus, "shift"), (plus, "pcon_tau")]:
        kind = type(editor).__name__
        with pytest.raises(AttributeError, match=(
            rf"^{kind}'s {name} is used when the editor is built \(its losses and models are made from it\), so setting "
            rf"it on the editor would change nothing: build a new {kind}\(\.\.\., {name}=\.\.\.\); {settings}"
        )):
            setattr(editor, name, 1.0)
        assert name not in vars(editor)

    class Mine(SteerMusic):  # a subclass of a recipe may keep such a value for itself
        def __init__(self, backbone, guidance_scale=30.0):
            super().__init__(backbone, guidance_scale=guidance_scale)
            self.guidance_scale = guidance_scale

    assert Mine(analytic_backbone, guidance_scale=3.0).guidance_scale == 3.0


def test_losses_given_as_a_generator_are_all_kept(analytic_backbone):
    """The type check read a generator up, leaving the editor no loss: a false "prompts are the
    same" warning and "stack expects a non-empty TensorList" at the first step."""
    editor = Editor(analytic_backbone, losses=(loss for loss in [DeltaDenoisingScore(guidance_scale=3.0)]), steps=2)
    assert len(editor.losses) == 1 and editor.loss_names == ["DeltaDenoisingScore"]
    latent = torch.zeros(1, *analytic_backbone.shape)
    result = editor.edit_latent(latent, source="a piano", target="a violin")
    assert result.latent.abs().sum() > 0


def test_an_empty_batch_is_refused_naming_its_shape(tiny_backbone):
    """It failed with "cannot concatenate an empty list of conditionings" after a false "prompts
    are the same" warning."""
    editor = SteerMusic(tiny_backbone, steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"^the latent of shape \(0, 8, 16, 16\) has no clip \(batch axis 0\): pass at least"):
            editor.edit_latent(torch.zeros(0, 8, 16, 16), source=[], target=[])
        with pytest.raises(ValueError, match=r"^the latent of shape \(1, 8, 0, 16\) has an empty axis"):
            editor.edit_latent(torch.zeros(1, 8, 0, 16), source="a", target="b")


def test_a_callback_changing_its_losses_leaves_the_history_alone(tiny_backbone, latent, monkeypatch):
    """The callback's dict was the history's: a key added at one step raised KeyError after
    the last step (the edit lost), a key removed went missing from the history."""

    def meddle(state):
        if state.step == 0:
            state.losses["first_step_lr"] = torch.tensor(state.lr)
        state.losses.pop("total")

    result = SteerMusic(tiny_backbone, steps=3).edit_latent(latent, source="a piano", target="a violin", callback=meddle)
    assert [sorted(row) for row in result.history] == [["DeltaDenoisingScore", "total"]] * 3


@pytest.mark.parametrize("make", [lambda b: SteerMusic(b, steps=1), lambda b: SDEdit(b, steps=2), lambda b: DDIMInversion(b, steps=2)])
def test_a_callback_that_cannot_be_called_is_refused_before_any_step(tiny_backbone, latent, monkeypatch, make):
    """`callback=True` failed after the first step's work, "'bool' object is not callable"."""
    monkeypatch.setattr(tiny_backbone, "predict_noise", lambda *a, **k: pytest.fail("a step ran"))
    with pytest.raises(TypeError, match=r"^callback must be a function taking the step's state, or None, got True$"):
        make(tiny_backbone).edit_latent(latent, source="a piano", target="a violin", callback=True)
