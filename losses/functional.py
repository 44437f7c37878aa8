"""Pure functions behind the loss modules: the score-distillation gradients.

Both return the gradient the optimiser applies to the latent. Autograd is not involved: the
gradient of SDS-type objectives skips the denoiser's Jacobian (Poole et al., 2022, eq. 3), so it
is formed directly from the predictions.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _per_sample(weight: Tensor, like: Tensor) -> Tensor:
    return weight.view(-1, *([1] * (like.dim() - 1))).to(like)


def sds_gradient(eps_pred: Tensor, noise: Tensor, weight: Tensor) -> Tensor:
    """Score Distillation Sampling (Poole et al., 2022): w(t) · (ε̂(x_t, y) − ε).

    Args:
        eps_pred: guided prediction ε̂(x_t, y), ``(B, ...)``.
        noise: the ε that made x_t, ``(B, ...)``.
        weight: w(t), ``(B,)``.

    Returns:
        ``(B, ...)``, non-finite entries set to zero as in the SteerMusic authors' code.
    """
    return torch.nan_to_num(_per_sample(weight, eps_pred) * (eps_pred - noise), nan=0.0)


def dds_gradient(eps_target: Tensor, eps_source: Tensor, weight: Tensor) -> Tensor:
    """Delta Denoising Score (Hertz et al., 2023, eq. 6): w(t) · (ε̂(x_t, y_tgt) − ε̂(x_src_t, y_src)).

    The shared noise ε cancels, removing the noisy component of SDS that would blur the edit.

    Args:
        eps_target: ε̂(x_t, y_tgt) on the edited latent, ``(B, ...)``.
        eps_source: ε̂(x_src_t, y_src) on the source latent with the same ε and t, ``(B, ...)``.
        weight: w(t), ``(B,)``.
    """
    return torch.nan_to_num(_per_sample(weight, eps_target) * (eps_target - eps_source), nan=0.0)
