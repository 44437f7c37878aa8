"""Pure functions behind the loss modules: the score-distillation gradients.

Both return the gradient the optimiser applies to the latent. Autograd is not involved: the
gradient of SDS-type objectives skips the denoiser's Jacobian (Poole et al., 2022, eq. 3), so it
is formed directly from the predictions.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor


def _per_sample(weight: Tensor, like: Tensor) -> Tensor:
    """w(t) ``(B,)`` shaped to broadcast over ``like`` ``(B, ...)``; a clear error for anything else
    (a number: a weighting returns one weight per clip)."""
    if not isinstance(weight, Tensor) or weight.shape != like.shape[:1]:
        got = f"shape {tuple(weight.shape)}" if isinstance(weight, Tensor) else f"{type(weight).__name__} {weight!r}"
        raise ValueError(
            f"the weighting w(t) must return a tensor of shape (B,), one weight per clip ({like.shape[0]} "
            f"here), got {got}: for a constant weight use losses.TimestepWeighting('constant', scale=...)"
        )
    return weight.view(-1, *([1] * (like.dim() - 1))).to(like)


def _check_same_shape(a: Tensor, b: Tensor, names: str) -> None:
    """Refuse two predictions that would broadcast rather than match, ``(B, ...)`` both."""
    if a.shape != b.shape:
        raise ValueError(f"{names} must have one shape (B, ...), got {tuple(a.shape)} and {tuple(b.shape)}")


def check_patch_nce(tau: float, num_positions: int | None) -> None:
    """Refuse a temperature τ that is not a positive finite number and a count of positions that
    is not ``None`` or a whole number ≥ 2 (each position's negatives are the others): both gave
    a NaN loss."""
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not 0 < tau < math.inf:
        raise ValueError(f"the temperature tau must be a positive finite number, got {tau!r}")
    if num_positions is not None and (
        isinstance(num_positions, bool) or not isinstance(num_positions, numbers.Integral) or num_positions < 2
    ):
        raise ValueError(
            f"num_positions must be an integer >= 2 (each position's negatives are the others), got {num_positions!r}"
        )


def _zero_nonfinite(grad: Tensor) -> Tensor:
    """``grad`` with NaN and ±inf entries set to 0: a prediction that overflowed (fp16, say) then
    leaves those entries of the latent as they are, where ``nan_to_num``'s default would move them
    by ±3.4e38 (float32's largest number)."""
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def sds_gradient(eps_pred: Tensor, noise: Tensor, weight: Tensor) -> Tensor:
    """Score Distillation Sampling (Poole et al., 2022): w(t) · (ε̂(x_t, y) − ε).

    Args:
        eps_pred: guided prediction ε̂(x_t, y), ``(B, ...)``.
        noise: the ε that made x_t, ``(B, ...)``.
        weight: w(t), ``(B,)``.

    Returns:
        ``(B, ...)``, non-finite entries set to zero: NaN as in the SteerMusic authors' code
        (``nan_to_num``), ±inf too, where theirs gives ±3.4e38 (:func:`_zero_nonfinite`).
    """
    _check_same_shape(eps_pred, noise, "the prediction and the noise")
    return _zero_nonfinite(_per_sample(weight, eps_pred) * (eps_pred - noise))


def dds_gradient(eps_target: Tensor, eps_source: Tensor, weight: Tensor) -> Tensor:
    """Delta Denoising Score (Hertz et al., 2023, eq. 6): w(t) · (ε̂(x_t, y_tgt) − ε̂(x_src_t, y_src)).

    The shared noise ε cancels, removing the noisy component of SDS that would blur the edit.

    Args:
        eps_target: ε̂(x_t, y_tgt) on the edited latent, ``(B, ...)``.
        eps_source: ε̂(x_src_t, y_src) on the source latent with the same ε and t, ``(B, ...)``.
        weight: w(t), ``(B,)``.

    Returns:
        ``(B, ...)``, non-finite entries (NaN and ±inf) set to zero as in :func:`sds_gradient`.
    """
    _check_same_shape(eps_target, eps_source, "the target and source predictions")
    return _zero_nonfinite(_per_sample(weight, eps_target) * (eps_target - eps_source))


def time_columns(features: Tensor) -> Tensor:
    """The feature column of each time position: ``(B, T, F, C) → (B, T, F·C)``.

    Each (time, frequency) feature is L2-normalised over channels and the frequency column
    flattened, so the dot product of two columns is the sum over frequency of the per-bin cosine
    similarities (F for identical columns): the paper's h · h⁺ on the F × C patch, normalised as
    the authors' ``PConLoss`` does, so that their τ = 0.07 means the same here. (Columns scaled
    to unit length, the mean over frequency, would act as a temperature of F·τ: 0.14 to 0.56 on
    AudioLDM2's up blocks, F = 2 to 8.)

    An empty axis is refused: no clip or time position gave a NaN loss, no frequency bin or
    channel a constant log(T). Shapes only, so no device sync on the step's path.
    """
    if features.dim() != 4:
        raise ValueError(
            f"PatchNCE takes self-attention features (B, T, F, C), got shape {tuple(features.shape)}: turn "
            "tokens (B, N, C) into a (time, frequency) map with Backbone.feature_map(tokens, latent_shape)"
        )
    axes = ("B (clips)", "T (time)", "F (frequency)", "C (channels)")
    empty = [axis for axis, size in zip(axes, features.shape) if size == 0]
    if empty:
        raise ValueError(
            f"PatchNCE features (B, T, F, C) of shape {tuple(features.shape)} have an empty axis {', '.join(empty)}: "
            "pass at least one clip, and a map with time positions, frequency bins and channels"
        )
    return torch.nn.functional.normalize(features, dim=-1).flatten(2)


def sample_positions(
    length: int, num_positions: int | None, generator: torch.Generator | None, device: torch.device
) -> Tensor | None:
    """``num_positions`` distinct indices into ``range(length)`` in random order, on ``device``;
    ``None`` (all positions) if ``num_positions`` is ``None`` or ≥ ``length``."""
    if num_positions is None or num_positions >= length:
        return None
    sampling_device = generator.device if generator is not None else device
    return torch.randperm(length, generator=generator, device=sampling_device)[:num_positions].to(device)


def patch_nce_at(query: Tensor, reference: Tensor, positions: Tensor | None, tau: float) -> Tensor:
    """:func:`patch_nce` of features ``(B, T, F, C)`` at given time ``positions`` ``(P,)``
    (``None``: all T): no randomness inside, so ``torch.compile`` can fuse it whole."""
    q, r = time_columns(query), time_columns(reference.detach())
    if positions is not None:
        q, r = q[:, positions], r[:, positions]
    logits = q @ r.transpose(1, 2) / tau  # (B, P, P): query position × reference position
    target = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())


def patch_nce_sum(
    queries: Sequence[Tensor], references: Sequence[Tensor], positions: Sequence[Tensor | None], tau: float
) -> Tensor:
    """The sum of :func:`patch_nce_at` over layers: one function, so one compiled graph (and its
    backward) covers every layer of PCon."""
    return torch.stack([patch_nce_at(q, r, p, tau) for q, r, p in zip(queries, references, positions)]).sum()


def patch_nce(
    query: Tensor,
    reference: Tensor,
    *,
    tau: float = 0.07,
    num_positions: int | None = 256,
    generator: torch.Generator | None = None,
) -> Tensor:
    """PatchNCE along time (Nam et al., 2024, "Contrastive Denoising Score"; SteerMusic eq. 9).

    For each sampled time position t', the query column h^{t'} should match the reference column
    at the same position (positive) rather than at any other sampled position (negatives):
    ``−log softmax_j(h^{t'} · h_ref^{j} / τ)[t']``, averaged over positions and the batch, with
    the columns of :func:`time_columns`. The query (the edit's features) is the anchor and the
    softmax runs over the reference's positions, as the paper's eq. 9 writes it; the authors'
    ``PConLoss`` anchors on the reference and takes the softmax over the edit's positions (the
    same logits, the transposed softmax; the same loss only where the logits are symmetric).

    Args:
        query: features ``(B, T, F, C)`` (gradients flow through them); other ranks are refused
            (:meth:`backbones.Backbone.feature_map` makes the map from a module's tokens).
        reference: features ``(B, T, F, C)`` at the same resolution (detached inside).
        tau: temperature τ > 0.
        num_positions: time positions sampled per clip (all if ``None`` or ≥ T).
        generator: seeds the sampling.

    Returns:
        a scalar loss.
    """
    if query.shape != reference.shape:
        raise ValueError(f"query {tuple(query.shape)} and reference {tuple(reference.shape)} differ")
    check_patch_nce(tau, num_positions)
    positions = sample_positions(query.shape[1], num_positions, generator, query.device)
    return patch_nce_at(query, reference, positions, tau)
