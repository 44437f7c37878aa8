"""Fréchet distance and FAD against closed forms, on embeddings whose statistics are set exactly."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch

from steer.metrics import FrechetAudioDistance, frechet_distance

SR = 1000


class Passthrough:
    """An embedding whose rows are the clips themselves: (B, D) samples -> (B, D) rows."""

    sample_rate = SR

    def __call__(self, waveform: torch.Tensor) -> torch.Tensor:
        return waveform


def exact_set(mean: np.ndarray, root: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` rows whose sample mean is exactly ``mean`` and sample covariance ``root @ root.T``."""
    x = np.random.default_rng(seed).standard_normal((n, len(mean)))
    x -= x.mean(axis=0)
    x = x @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False))).T  # sample cov = I
    return x @ root.T + mean


def psd_root(c: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(c)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def fad_of(a: np.ndarray, b: np.ndarray, batch: int = 7) -> float:
    metric = FrechetAudioDistance(sample_rate=SR, embedding=Passthrough())
    for start in range(0, len(a), batch):
        metric.update(torch.from_numpy(a[start : start + batch]), torch.from_numpy(b[start : start + batch]))
    return metric.compute().item()


def test_diagonal_covariances_match_the_closed_form():
    mean_a, mean_b = np.array([0.0, 1.0, -2.0]), np.array([0.5, 0.0, 1.0])
    var_a, var_b = np.array([4.0, 1.0, 0.25]), np.array([1.0, 9.0, 0.25])
    expected = ((mean_a - mean_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()  # 15.25
    assert frechet_distance(mean_a, np.diag(var_a), mean_b, np.diag(var_b)) == pytest.approx(expected, abs=1e-12)
    a = exact_set(mean_a, np.diag(np.sqrt(var_a)), 40, seed=0)
    b = exact_set(mean_b, np.diag(np.sqrt(var_b)), 40, seed=1)
    assert fad_of(a, b) == pytest.approx(expected, rel=1e-6)  # the clips reach the metric as float32


def test_general_covariances_match_the_symmetric_closed_form():
    """tr(C_a C_b)^½ = tr(C_a^½ C_b C_a^½)^½: fadtk's sqrtm of the product against eigh only."""
    rng = np.random.default_rng(2)
    m_a, m_b = rng.standard_normal((2, 5, 5))
    c_a, c_b = m_a @ m_a.T + 0.1 * np.eye(5), m_b @ m_b.T + 0.1 * np.eye(5)
    mean_a, mean_b = rng.standard_normal((2, 5))
    root_a = psd_root(c_a)
    expected = (
        ((mean_a - mean_b) ** 2).sum() + np.trace(c_a) + np.trace(c_b)
        - 2 * np.trace(psd_root(root_a @ c_b @ root_a))
    )
    a = exact_set(mean_a, np.linalg.cholesky(c_a), 60, seed=3)
    b = exact_set(mean_b, np.linalg.cholesky(c_b), 60, seed=4)
    assert fad_of(a, b) == pytest.approx(expected, rel=1e-6)


def test_a_set_against_itself_is_zero():
    a = np.random.default_rng(5).standard_normal((50, 8))
    assert abs(fad_of(a, a)) < 1e-6


def test_fad_grows_with_a_mean_shift_as_its_square():
    a = np.random.default_rng(6).standard_normal((50, 4))
    direction = np.array([1.0, -2.0, 0.0, 0.5])
    values = [fad_of(a + s * direction, a) for s in (0.0, 0.1, 0.5, 1.0, 3.0)]
    assert all(x < y for x, y in pairwise(values))
    # equal covariances: only the mean term is left
    np.testing.assert_allclose(values[1:], [s**2 * 5.25 for s in (0.1, 0.5, 1.0, 3.0)], rtol=1e-6)


def test_frame_level_embeddings_count_each_frame_as_a_row():
    a, b = np.random.default_rng(7).standard_normal((2, 12, 3))

    class Frames(Passthrough):
        def __call__(self, waveform):  # (B, 6) -> (B, 2 frames, 3)
            return waveform.reshape(waveform.shape[0], 2, 3)

    metric = FrechetAudioDistance(sample_rate=SR, embedding=Frames())
    metric.update(torch.from_numpy(a.reshape(6, 6)), torch.from_numpy(b.reshape(6, 6)))
    assert metric.compute().item() == pytest.approx(fad_of(a, b), rel=1e-12)


def test_halves_merged_equal_the_whole():
    a, b = np.random.default_rng(8).standard_normal((2, 30, 4))
    first, second = (FrechetAudioDistance(sample_rate=SR, embedding=Passthrough()) for _ in range(2))
    first.update(torch.from_numpy(a[:13]), torch.from_numpy(b[:13]))
    second.update(torch.from_numpy(a[13:]), torch.from_numpy(b[13:]))
    first.merge_state(second)
    assert first.compute().item() == pytest.approx(fad_of(a, b), rel=1e-12)


def test_fewer_rows_than_dimensions_stay_finite():
    a, b = np.random.default_rng(9).standard_normal((2, 3, 10))  # rank-2 covariances in 10 dims
    assert np.isfinite(fad_of(a, b))


def test_a_covariance_without_real_square_root_is_refused():
    with pytest.raises(ValueError, match="no real square root"):
        frechet_distance(np.zeros(2), np.diag([-1.0, 1.0]), np.zeros(2), np.eye(2))


def test_bad_inputs_are_refused():
    metric = FrechetAudioDistance(sample_rate=SR, embedding=Passthrough())
    with pytest.warns(UserWarning, match="before the ``update``"), pytest.raises(ValueError, match="at least 2"):
        metric.compute()
    with pytest.raises(ValueError, match="same number of clips"):
        metric.update(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="sample_rate"):
        FrechetAudioDistance(sample_rate=SR, embedding=lambda x: x)
    with pytest.raises(ValueError, match="D"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(3))


def test_identical_statistics_give_zero_not_a_hair_below():
    """sqrtm's round-off made a set against itself −1e-14 (−8e-12 with CLAP), printed "-0.0000"
    (scipy 1.10's round-off lands a hair above 0 instead: +1e-14)."""
    a = np.random.default_rng(1).standard_normal((30, 8))
    mean, cov = a.mean(axis=0), np.cov(a, rowvar=False)
    assert 0.0 <= frechet_distance(mean, cov, mean, cov) < 1e-12
    assert fad_of(a, a) >= 0.0


def test_non_finite_embeddings_give_nan_with_a_warning_naming_them():
    """A diverged (NaN) clip made compute() fail inside scipy's sqrtm (LinAlgError -102), while
    frechet_distance of NaN statistics silently gave NaN."""
    a, b = np.random.default_rng(10).standard_normal((2, 10, 3))
    a[2, 1], a[7, 0], b[4, 2] = np.nan, np.inf, -np.inf
    with pytest.warns(RuntimeWarning, match=r"^FAD is NaN: 2 of 10 edited and 1 of 10 source embedding rows are not finite"):
        assert np.isnan(fad_of(a, b))
    with pytest.warns(RuntimeWarning, match=r"^the Fréchet distance is NaN: .*mean_a, cov_b.* not finite"):
        assert np.isnan(frechet_distance(np.array([0.0, np.nan]), np.eye(2), np.zeros(2), np.full((2, 2), np.nan)))


def test_forward_returns_each_batch_fad_and_nan_for_a_batch_without_a_covariance():
    """torchmetrics' forward computes the metric of the batch alone: a batch of one clip raised
    TooFewRows, and the clips accumulated before it were lost."""
    a, b = np.random.default_rng(11).standard_normal((2, 9, 3))
    metric = FrechetAudioDistance(sample_rate=SR, embedding=Passthrough())
    first = metric(torch.from_numpy(a[:4]), torch.from_numpy(b[:4]))
    assert first.item() == pytest.approx(fad_of(a[:4], b[:4]), rel=1e-12)
    singles = [metric(torch.from_numpy(a[i : i + 1]), torch.from_numpy(b[i : i + 1])) for i in range(4, 9)]
    assert all(torch.isnan(value) for value in singles)
    assert metric.compute().item() == pytest.approx(fad_of(a, b), rel=1e-12)
    metric.reset()
    with pytest.raises(ValueError, match="at least 2 embedding rows per set, got 1"):
        metric.update(torch.from_numpy(a[:1]), torch.from_numpy(b[:1]))
        metric.compute()
