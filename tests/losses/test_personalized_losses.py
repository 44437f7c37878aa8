"""SteerMusic+'s losses: PDS and the shift term against their formulas, PCon's contrastive maths."""

import warnings

import pytest
import torch

from losses import (
    FeatureRequest,
    LossContext,
    NoiseRequest,
    PersonalizedContrastiveLoss,
    PersonalizedDeltaScore,
    ShiftRegularizer,
    TimestepWeighting,
)
from losses.functional import patch_nce, time_columns


def _context(predictions, features=None, alpha_bar=(0.3, 0.8)):
    alpha_bar = torch.tensor(alpha_bar)
    return LossContext(
        t=torch.tensor([700, 100]),
        alpha_bar=alpha_bar,
        noise=torch.zeros(2, 3),
        latent=torch.zeros(2, 3),
        noisy_latent=torch.zeros(2, 3),
        predictions=predictions,
        features=features or {},
        generator=torch.Generator().manual_seed(0),
    )


def test_pds_and_shift_gradients_equal_the_formulas():
    eps_p, eps_src, eps_base = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    pds = PersonalizedDeltaScore(guidance_scale=15.0)
    shift = ShiftRegularizer(strength=0.05, guidance_scale=15.0)
    assert pds.target == shift.personalized == NoiseRequest("edit", "target", 15.0, "personalized")
    predictions = {pds.target: eps_p, pds.source: eps_src, shift.base: eps_base}
    w = (1 - torch.tensor([0.3, 0.8]))[:, None]
    torch.testing.assert_close(pds(_context(predictions)).gradient, w * (eps_p - eps_src))
    torch.testing.assert_close(shift(_context(predictions)).gradient, 0.05 * w * (eps_p - eps_base))
    assert shift.base == NoiseRequest("edit", "target_base", 15.0, "base")


def test_the_shift_value_keeps_lambdas_sign_and_scale():
    """The logged value was the gradient's mean square: λ and −λ logged alike, 2λ four times λ,
    though their gradients point apart and scale linearly."""
    eps_p, eps_base = torch.randn(2, 3), torch.randn(2, 3)
    w = (1 - torch.tensor([0.3, 0.8]))[:, None]
    expected = (w * (eps_p - eps_base)).pow(2).mean()
    for strength in (0.05, -0.05, 0.1):
        shift = ShiftRegularizer(strength=strength)
        output = shift(_context({shift.personalized: eps_p, shift.base: eps_base}))
        torch.testing.assert_close(output.value, strength * expected)
        torch.testing.assert_close(output.gradient, strength * w * (eps_p - eps_base))


def test_time_columns_sum_the_cosines_over_frequency():
    """h · h⁺ sums the per-bin cosines, as the authors' PConLoss (channels normalised, the F × C
    patch flattened): scaled to unit columns it was their mean, a temperature of F·τ."""
    h = torch.randn(2, 5, 4, 8)
    columns = time_columns(h)
    assert columns.shape == (2, 5, 32)
    torch.testing.assert_close(columns.norm(dim=-1), torch.full((2, 5), 2.0))  # √F
    cos = torch.nn.functional.cosine_similarity(h[0, 0], h[0, 1], dim=-1).sum()
    torch.testing.assert_close(columns[0, 0] @ columns[0, 1], cos)


def test_patch_nce_equals_the_papers_formula_at_its_temperature():
    """Eq. 9 written out with τ = 0.07 on F × C patches normalised over channels, every position."""
    generator = torch.Generator().manual_seed(0)
    query, reference = torch.randn(2, 6, 4, 8, generator=generator), torch.randn(2, 6, 4, 8, generator=generator)
    cos = torch.nn.functional.cosine_similarity(query[:, :, None], reference[:, None], dim=-1)  # (B, T, T, F)
    logits = cos.sum(-1) / 0.07  # query position × reference position
    expected = -torch.log_softmax(logits, dim=-1).diagonal(dim1=1, dim2=2).mean()
    torch.testing.assert_close(patch_nce(query, reference, tau=0.07, num_positions=None), expected)


def test_aligned_features_score_lower_than_time_shuffled_ones():
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(1, 32, 4, 16, generator=generator)
    aligned = reference + 0.1 * torch.randn(1, 32, 4, 16, generator=generator)
    shuffled = aligned[:, torch.randperm(32, generator=generator)]
    assert patch_nce(aligned, reference) < 0.1
    assert patch_nce(shuffled, reference) > 2.0
    # a reference without temporal structure cannot tell positions apart: loss = log(positions)
    constant = reference[:, :1].expand(1, 32, 4, 16)
    torch.testing.assert_close(patch_nce(aligned, constant), torch.log(torch.tensor(32.0)))


def test_patch_nce_samples_positions_and_checks_shapes():
    a, b = torch.randn(2, 300, 2, 4), torch.randn(2, 300, 2, 4)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    torch.testing.assert_close(patch_nce(a, b, generator=g1), patch_nce(a, b, generator=g2))
    with pytest.raises(ValueError, match="differ"):
        patch_nce(a, b[:, :10])


def test_patch_nce_gradcheck_float64():
    query = torch.randn(1, 6, 2, 3, dtype=torch.float64, requires_grad=True)
    reference = torch.randn(1, 6, 2, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda q: patch_nce(q, reference, tau=0.5), (query,))


def test_pcon_declares_shared_calls_and_sums_layers():
    pcon = PersonalizedContrastiveLoss(guidance_scale=15.0, weight=3.0)
    pds = PersonalizedDeltaScore(guidance_scale=15.0)
    assert set(pcon.requests) == {pds.target, pds.source}  # no extra prediction
    assert pcon.query == FeatureRequest(pds.target, pcon.query.layers, grad=True)
    edited = PersonalizedContrastiveLoss(reference="edited")
    assert edited.reference.request == NoiseRequest("edit", "target_base", 15.0, "base")
    q = {"a": torch.randn(2, 8, 2, 4, requires_grad=True), "b": torch.randn(2, 4, 1, 4, requires_grad=True)}
    r = {"a": torch.randn(2, 8, 2, 4), "b": torch.randn(2, 4, 1, 4)}
    out = pcon(_context({}, {pcon.query: q, pcon.reference: r}))
    expected = 3.0 * (patch_nce(q["a"], r["a"], tau=0.07) + patch_nce(q["b"], r["b"], tau=0.07))
    torch.testing.assert_close(out.value, expected.detach())  # the mean over the 2 clips
    torch.testing.assert_close(out.loss, 2 * expected)  # their sum: each clip's gradient as alone
    out.loss.backward()
    assert q["a"].grad.abs().sum() > 0 and q["b"].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="tau"):
        PersonalizedContrastiveLoss(tau=0)
    with pytest.raises(ValueError, match="tau must be a positive finite number, got nan"):
        PersonalizedContrastiveLoss(tau=float("nan"))
    # 0 made the loss NaN at every step, 1 left no negatives (a loss of 0), -3 read all but 3
    for positions in (0, 1, -3, 2.5):
        with pytest.raises(ValueError, match=rf"num_positions must be an integer >= 2 .*got {positions}"):
            PersonalizedContrastiveLoss(num_positions=positions)


def test_weighting_is_shared():
    assert PersonalizedDeltaScore().weighting == TimestepWeighting("1-alpha_bar", 1.0)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_loss_weights_must_be_finite(value):
    """A NaN weight moved nothing (NaN gradients, zeroed), an infinite one by ~1e36."""
    with pytest.raises(ValueError, match=f"the weighting's scale must be a finite number, got {value}"):
        TimestepWeighting(scale=value)
    with pytest.raises(ValueError, match=f"the shift strength must be a finite number, got {value}"):
        ShiftRegularizer(strength=value)
    with pytest.raises(ValueError, match=f"PCon's weight must be a finite number, got {value}"):
        PersonalizedContrastiveLoss(weight=value)


def test_a_request_names_a_latent_the_editor_noises():
    with pytest.raises(ValueError, match="a request's latent must be 'edit' or 'source', got 'clean'"):
        NoiseRequest("clean", "target", 7.5)


def test_pcon_refuses_a_boolean_tau_as_it_does_a_boolean_weight():
    with pytest.raises(ValueError, match="tau must be a positive finite number, got True"):
        PersonalizedContrastiveLoss(tau=True)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        # failed only at the first step, with a bare re.error
        ("up_blocks[", r"PCon's layers 'up_blocks\[' is not a valid regular expression \(unterminated"),
        # quietly meant the model's default (decoder_self_attention)
        ("", r"PCon's layers must be a regular expression .* or None \(the model's decoder_self_attention\), got ''"),
    ],
)
def test_pcon_layers_are_checked_when_it_is_made(layers, message):
    with pytest.raises(ValueError, match=message):
        PersonalizedContrastiveLoss(layers=layers)
    with pytest.raises(ValueError, match=message.replace("PCon's layers", "a feature request's layers")):
        FeatureRequest(NoiseRequest("edit", "target", 3.0), layers)


def test_pcon_warns_once_of_a_layer_with_a_single_time_position():
    """Its softmax has one entry: the layer added 0 and no gradient, silently."""
    pcon = PersonalizedContrastiveLoss(tau=0.1)
    q = {"coarse": torch.randn(2, 1, 2, 4, requires_grad=True), "fine": torch.randn(2, 8, 2, 4, requires_grad=True)}
    r = {name: torch.randn(f.shape) for name, f in q.items()}
    context = _context({}, {pcon.query: q, pcon.reference: r})
    with pytest.warns(UserWarning, match=r"PCon's layer 'coarse' has a single time position \(features \(2, 1, 2, 4\)\)"):
        out = pcon(context)
    torch.testing.assert_close(out.value, 3.0 * patch_nce(q["fine"], r["fine"], tau=0.1))  # 'coarse' adds 0
    out.loss.backward()
    assert q["coarse"].grad.abs().max() == 0 and q["fine"].grad.abs().max() > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per layer and loss
        pcon(context)
