import re

import numpy as np
import pytest
import torch

from losses import TimestepWeighting
from losses.functional import dds_gradient, patch_nce, patch_nce_sum, sample_positions, sds_gradient


def test_dds_gradient_formula_and_nan_handling():
    eps_t, eps_s = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    w = torch.tensor([0.5, 2.0])
    grad = dds_gradient(eps_t, eps_s, w)
    torch.testing.assert_close(grad[0], 0.5 * (eps_t[0] - eps_s[0]))
    torch.testing.assert_close(grad[1], 2.0 * (eps_t[1] - eps_s[1]))
    eps_t[0, 0, 0] = float("nan")
    assert dds_gradient(eps_t, eps_s, w)[0, 0, 0] == 0


@pytest.mark.parametrize("gradient", [dds_gradient, sds_gradient])
def test_nan_and_inf_entries_of_the_gradient_are_zeroed(gradient):
    """nan_to_num(nan=0) alone turned ±inf (an fp16 overflow of ε̂) into ±3.4e38, float32's
    largest number: one such entry moved the latent by ~1e36, and it stayed "finite"."""
    eps = torch.tensor([[float("nan"), float("inf"), -float("inf"), 1.0]])
    expected = torch.tensor([[0.0, 0.0, 0.0, 0.5]])
    assert torch.equal(gradient(eps, torch.zeros(1, 4), torch.tensor([0.5])), expected)
    if gradient is dds_gradient:  # the compiled loss maths (context.compile) zeroes them the same way
        compiled = torch.compile(gradient, backend="aot_eager", fullgraph=True)
        assert torch.equal(compiled(eps, torch.zeros(1, 4), torch.tensor([0.5])), expected)


@pytest.mark.parametrize(
    ("weight", "got"),
    [(0.5, "got float 0.5"), (torch.ones(3), r"got shape \(3,\)"), (torch.tensor(2.0), r"got shape \(\)")],
)
def test_a_weight_that_is_not_one_per_clip_is_a_clear_error(weight, got):
    """A weighting returning a number failed with "'float' object has no attribute 'view'"."""
    message = rf"w\(t\) must return a tensor of shape \(B,\), one weight per clip \(2 here\), {got}: .*'constant'"
    with pytest.raises(ValueError, match=message):
        dds_gradient(torch.zeros(2, 3), torch.zeros(2, 3), weight)


def test_patch_nce_refuses_tokens_that_are_not_a_time_frequency_map():
    """(B, N, C) tokens were taken as (B, T, F) with C as F: flatten(2) did nothing and the scale
    was 1/√C, a different loss with no error."""
    tokens = torch.randn(2, 20, 8)
    with pytest.raises(ValueError, match=r"\(B, T, F, C\), got shape \(2, 20, 8\): .*Backbone\.feature_map"):
        patch_nce(tokens, tokens, num_positions=None)


def test_sds_gradient_formula():
    eps, noise, w = torch.randn(2, 5), torch.randn(2, 5), torch.tensor([1.0, 3.0])
    torch.testing.assert_close(sds_gradient(eps, noise, w), w[:, None] * (eps - noise))


def test_weighting():
    alpha_bar = torch.tensor([0.9, 0.1])
    torch.testing.assert_close(TimestepWeighting(scale=2.0)(alpha_bar), torch.tensor([0.2, 1.8]))
    torch.testing.assert_close(TimestepWeighting("constant", 3.0)(alpha_bar), torch.tensor([3.0, 3.0]))
    with pytest.raises(ValueError, match="unknown weighting"):
        TimestepWeighting("sqrt")
    with pytest.raises(ValueError, match=r"^unknown weighting 2\.0: use '1-alpha_bar' or 'constant' \(a scale is scale=2\.0\)$"):
        TimestepWeighting(2.0)  # kind is the first argument
    with pytest.raises(TypeError, match=r"^the weighting's scale must be a number, got a tensor tensor\(2\.\): pass float\(value\)$"):
        TimestepWeighting(scale=torch.tensor(2.0))  # was "must be a finite number, got tensor(2.)"


def test_patch_nce_sum_is_the_layers_patch_nce_with_the_same_draws():
    g = torch.Generator().manual_seed(0)
    queries = [torch.randn(2, 12, 3, 4, generator=g), torch.randn(2, 6, 2, 8, generator=g)]
    references = [torch.randn(q.shape, generator=g) for q in queries]
    expected = sum(
        patch_nce(q, r, tau=0.1, num_positions=5, generator=torch.Generator().manual_seed(3 + i))
        for i, (q, r) in enumerate(zip(queries, references))
    )
    positions = [
        sample_positions(q.shape[1], 5, torch.Generator().manual_seed(3 + i), q.device) for i, q in enumerate(queries)
    ]
    assert [p.shape for p in positions] == [(5,), (5,)]
    assert sample_positions(4, 5, None, torch.device("cpu")) is None  # fewer positions than asked: all
    torch.testing.assert_close(patch_nce_sum(queries, references, positions, 0.1), expected)


def test_predictions_that_would_broadcast_are_refused():
    """(2, 4, 8, 8) against (1, 4, 8, 8), (2, 4, 8, 1) or (4, 8, 8) broadcast to a gradient of the right shape."""
    x, w = torch.randn(2, 4, 8, 8), torch.ones(2)
    for other in (torch.randn(1, 4, 8, 8), torch.randn(2, 4, 8, 1), torch.randn(4, 8, 8)):
        with pytest.raises(ValueError, match=rf"^the target and source predictions must have one shape \(B, \.\.\.\), got \(2, 4, 8, 8\) and {re.escape(str(tuple(other.shape)))}$"):
            dds_gradient(x, other, w)
        with pytest.raises(ValueError, match="^the prediction and the noise must have one shape"):
            sds_gradient(x, other, w)


@pytest.mark.parametrize("kwargs", [{"tau": 0}, {"tau": float("inf")}, {"num_positions": 0}, {"num_positions": 1}, {"num_positions": 2.5}])
def test_patch_nce_refuses_settings_that_gave_nan(kwargs):
    q = torch.randn(1, 8, 2, 3)
    with pytest.raises(ValueError, match="tau must be a positive finite number|num_positions must be an integer >= 2"):
        patch_nce(q, q, **kwargs)


def test_a_numpy_count_of_positions_is_a_whole_number():
    from losses import PersonalizedContrastiveLoss

    assert PersonalizedContrastiveLoss(num_positions=np.int64(8)).num_positions == 8
    q = torch.randn(1, 8, 2, 3)
    assert torch.isfinite(patch_nce(q, q, num_positions=np.int64(4), generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize(
    ("shape", "axis"),
    [
        ((0, 8, 4, 3), "B (clips)"),
        ((2, 0, 4, 3), "T (time)"),
        ((2, 8, 0, 3), "F (frequency)"),
        ((2, 8, 4, 0), "C (channels)"),
    ],
    ids=["no-clip", "no-time", "no-frequency", "no-channel"],
)
def test_patch_nce_refuses_an_empty_axis(shape, axis):
    """No clip or time position gave NaN, no frequency bin or channel log(T), without an error."""
    q = torch.randn(shape)
    message = rf"of shape {re.escape(str(shape))} have an empty axis {re.escape(axis)}: pass at least one clip"
    with pytest.raises(ValueError, match=message):
        patch_nce(q, q, num_positions=None)
    with pytest.raises(ValueError, match=message):
        patch_nce_sum([q], [q], [None], 0.1)  # PCon's path
