"""Fused kernels for the elementwise work of a score-distillation step.

Each kernel computes exactly what a plain torch expression of the library computes, in one pass
over memory; the editor uses it only on CUDA with triton installed and keeps the torch expression
elsewhere. Tests run the kernels on the CPU with Triton's interpreter (``TRITON_INTERPRET=1``).

- :func:`noise_pair`: x_t and x_src_t from ONE read of ε, the same as two calls of
  :meth:`backbones.Backbone.add_noise` (DDPM, Ho et al., 2020, eq. 4) with a shared (t, ε), as
  every DDS-type step needs (Hertz et al., 2023); differentiable with respect to x.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
from torch import Tensor

#: Elements per Triton program.
BLOCK = 1024


def triton_available(device: torch.device) -> bool:
    """Whether the Triton kernels can run on ``device`` (CUDA with triton installed)."""
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None


@functools.cache
def _noise_pair_kernel():
    """The Triton kernel, built on first use (importing triton is slow, and optional)."""
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(x_ptr, src_ptr, eps_ptr, alpha_bar_ptr, x_t_ptr, src_t_ptr, n, per_sample, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        alpha_bar = tl.load(alpha_bar_ptr + offsets // per_sample, mask=mask, other=1.0)
        signal, noise_scale = tl.sqrt(alpha_bar), tl.sqrt(1.0 - alpha_bar)
        eps = noise_scale * tl.load(eps_ptr + offsets, mask=mask)  # ε read once for both
        tl.store(x_t_ptr + offsets, signal * tl.load(x_ptr + offsets, mask=mask) + eps, mask=mask)
        tl.store(src_t_ptr + offsets, signal * tl.load(src_ptr + offsets, mask=mask) + eps, mask=mask)

    return kernel


class _NoisePair(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, x_src: Tensor, noise: Tensor, alpha_bar: Tensor) -> tuple[Tensor, Tensor]:
        x, x_src, noise = x.contiguous(), x_src.contiguous(), noise.contiguous()
        alpha_bar = alpha_bar.to(x).contiguous()
        x_t, x_src_t = torch.empty_like(x), torch.empty_like(x)
        n = x.numel()
        _noise_pair_kernel()[(-(-n // BLOCK),)](
            x, x_src, noise, alpha_bar, x_t, x_src_t, n, n // x.shape[0], BLOCK=BLOCK
        )
        ctx.save_for_backward(alpha_bar)
        ctx.mark_non_differentiable(x_src_t)
        return x_t, x_src_t

    @staticmethod
    def backward(ctx, grad_x_t: Tensor, grad_x_src_t: Tensor | None) -> tuple[Tensor, None, None, None]:
        # x_src_t does not depend on x; dx_t/dx = √ᾱ_t per sample.
        (alpha_bar,) = ctx.saved_tensors
        return alpha_bar.sqrt().view(-1, *([1] * (grad_x_t.dim() - 1))) * grad_x_t, None, None, None


def noise_pair(x: Tensor, x_src: Tensor, noise: Tensor, alpha_bar: Tensor) -> tuple[Tensor, Tensor]:
    """Noise the edited and the source latent with the same ε and t in one Triton pass.

    x_t = √ᾱ_t · x + √(1 − ᾱ_t) · ε and x_src_t = √ᾱ_t · x_src + √(1 − ᾱ_t) · ε.

    Args:
        x: the edited latent ``(B, ...)`` float32 (gradients flow back to it through x_t).
        x_src: the source latent, shaped like ``x``.
        noise: ε, shaped like ``x``.
        alpha_bar: ᾱ_t per clip, ``(B,)``.

    Returns:
        ``(x_t, x_src_t)``, each shaped like ``x``; x_src_t carries no gradient.

    Raises:
        ValueError: for latents of other shapes, or not float32 (the kernel's square roots take
            float32; the editor's latents are float32).
    """
    if not x.shape == x_src.shape == noise.shape or alpha_bar.shape != x.shape[:1]:
        raise ValueError(
            f"noise_pair needs x, x_src and noise of one shape and alpha_bar (B,), got "
            f"{tuple(x.shape)}, {tuple(x_src.shape)}, {tuple(noise.shape)}, {tuple(alpha_bar.shape)}"
        )
    dtypes = {str(t.dtype).removeprefix("torch.") for t in (x, x_src, noise)}
    if dtypes != {"float32"}:
        raise ValueError(
            f"noise_pair takes float32 latents, got {', '.join(sorted(dtypes))}: pass x.float() (and the "
            "same for x_src and noise), or use Backbone.add_noise"
        )
    return _NoisePair.apply(x, x_src, noise, alpha_bar)
