"""DDS and SDS on the analytic backbone, where the right answer is known in closed form."""

import pytest
import torch

from losses import (
    DeltaDenoisingScore,
    PersonalizedDeltaScore,
    ScoreDistillationSampling,
    ShiftRegularizer,
    TimestepWeighting,
)
from steer import Editor


def _cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)


def test_dds_moves_the_latent_along_the_prompt_difference(analytic_backbone):
    """With ε(x_t, y) = (x_t − √ᾱ μ_y)/√(1 − ᾱ), DDS's fixed point is x_src + g (μ_tgt − μ_src)."""
    g = 2.0
    x_src = torch.randn(1, *analytic_backbone.shape)
    editor = Editor(
        analytic_backbone,
        losses=[DeltaDenoisingScore(guidance_scale=g, weighting=TimestepWeighting("constant", 1.0))],
        steps=300,
        lr=0.05,
        lr_gamma=1.0,
    )
    result = editor.edit_latent(x_src, source="a piano", target="a violin")
    delta = g * (analytic_backbone.mean("a violin") - analytic_backbone.mean("a piano"))
    moved = result.latent[0] - x_src[0]
    assert _cosine(moved, delta) > 0.9999  # only ever along μ_tgt − μ_src: the rest is kept
    assert (moved - delta).norm() < 0.05 * delta.norm()  # and it converges to the fixed point


def test_sds_forgets_the_source(analytic_backbone):
    """SDS has no source term: it drifts to g·μ_tgt from anywhere (why SteerMusic uses DDS)."""
    x_src = torch.randn(1, *analytic_backbone.shape)
    editor = Editor(
        analytic_backbone,
        losses=[ScoreDistillationSampling(guidance_scale=1.0, weighting=TimestepWeighting("constant"))],
        steps=400,
        lr=0.05,
        lr_gamma=1.0,
    )
    result = editor.edit_latent(x_src, source="a piano", target="a violin")
    target = analytic_backbone.mean("a violin")
    assert (result.latent[0] - target).norm() < 0.25 * (x_src[0] - target).norm()


def test_requests_are_declared():
    dds = DeltaDenoisingScore(guidance_scale=7.0)
    assert [(r.latent, r.prompt, r.guidance_scale, r.model) for r in dds.requests] == [
        ("edit", "target", 7.0, "base"),
        ("source", "source", 7.0, "base"),
    ]
    sds = ScoreDistillationSampling(guidance_scale=7.0)
    assert sds.requests == (dds.target,)


@pytest.mark.parametrize("guidance", [float("nan"), float("inf")])
def test_a_guidance_that_is_not_a_finite_number_is_refused(guidance):
    with pytest.raises(ValueError, match=f"guidance_scale must be a finite number, got {guidance}"):
        DeltaDenoisingScore(guidance_scale=guidance)


@pytest.mark.parametrize("loss", [DeltaDenoisingScore, PersonalizedDeltaScore, ScoreDistillationSampling, ShiftRegularizer])
def test_a_weighting_that_is_not_a_function_is_refused_when_the_loss_is_made(loss):
    """weighting=2.0 failed at the first step with "'float' object is not callable"."""
    with pytest.raises(TypeError, match=r"^weighting must be a function of ᾱ_t \(B,\) returning weights \(B,\), got float 2.0: pass a TimestepWeighting, e.g. TimestepWeighting\('constant', scale=2.0\)"):
        loss(weighting=2.0)
    # the class itself is callable: it failed at the first step, "unknown weighting tensor([0.88])"
    with pytest.raises(TypeError, match=r"^weighting is the class TimestepWeighting, not a weighting: pass TimestepWeighting\(...\)"):
        loss(weighting=TimestepWeighting)
    assert loss(weighting=lambda alpha_bar: 1 - alpha_bar).weighting(torch.tensor([0.25])) == 0.75
