"""An attention's projections of one input as one matmul, for the length of an edit (issue 5).

diffusers' attention projects its input with three matmuls for self-attention's query, key and
value, and its text with two for cross-attention's key and value. :class:`FusedProjections` puts
each group's weights side by side in one ``nn.Linear`` (diffusers' ``to_qkv`` and ``to_kv``) and
runs the module with diffusers' ``FusedAttnProcessor2_0``, which splits that matmul's output: the
same products, in 160 fewer matmuls a call of AudioLDM2's real-size UNet (128 against 288, next to
its 216 with a bias). At batch 1 such a call is hundreds of short kernels, most matmuls of 3–5 µs
on an H100 (``benchmarks/README.md``), so fewer and larger ones are the aim.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
)
from torch import nn

from .predictions import unique
from .sources import Sources


@dataclass
class _Fused:
    sources: Sources  # the projections' weights and biases it was filled from
    linear: nn.Linear  # their rows side by side
    layers: dict[str, nn.Linear]  # what the module gets: ``linear``, or views of its rows


def _parameters(layers: Iterable[nn.Linear]) -> tuple[nn.Parameter, ...]:
    return tuple(p for layer in layers for p in (layer.weight, layer.bias) if p is not None)


@torch.no_grad()
def _fill(linear: nn.Linear, layers: Iterable[nn.Linear]) -> None:
    """Copy ``layers``' weights (and biases) into consecutive rows of ``linear``'s."""
    row = 0
    for layer in layers:
        rows = slice(row, row + layer.out_features)
        linear.weight[rows].copy_(layer.weight)
        if linear.bias is not None:
            linear.bias[rows].copy_(layer.bias)
        row = rows.stop


def fusable(attn: Attention) -> bool:
    """Whether :class:`FusedProjections` fuses ``attn``'s projections. It leaves alone a processor
    other than diffusers' ``AttnProcessor2_0`` (the module's own choice, or a fused one already),
    projections that are not plain ``nn.Linear`` (a LoRA adapter's layers) or differ in dtype,
    device or bias, added projections, and hooks on a projection (a feature read from one: the
    fused matmul would not call it)."""
    if type(attn.processor) is not AttnProcessor2_0 or getattr(attn, "add_q_proj", None) is not None:
        return False
    layers = [attn.to_q, attn.to_k, attn.to_v]
    if any(type(layer) is not nn.Linear or layer._forward_hooks or layer._forward_pre_hooks for layer in layers):
        return False
    return len({(w.weight.dtype, w.weight.device, w.bias is None) for w in layers}) == 1 and (
        attn.to_k.in_features == attn.to_v.in_features
    )


def _fused_names(attn: Attention) -> list[str]:
    """The fused layers ``attn`` may call: ``to_qkv`` where the query, key and value project one
    input (self-attention; a cross-attention called without text, as AudioLDM's are) and
    ``to_kv`` for a cross-attention's text."""
    if not attn.is_cross_attention:
        return ["to_qkv"]
    return ["to_qkv", "to_kv"] if attn.to_k.in_features == attn.to_q.in_features else ["to_kv"]


class FusedProjections:
    """The attention modules in ``modules`` (diffusers' ``Attention``) with their projections of
    one input fused (see the module's docstring) during :meth:`applied`.

    The fused weights are built from the projections the modules hold when :meth:`applied`
    starts (a :class:`~steer.performance.CastOnce`'s cast copies, entered before it) and kept
    between uses, so that a compiled graph reads them at the same addresses; they are copied
    again, in place, where a projection's weight was changed (its version counter) or replaced.
    They add one more copy of the fused projections' weights in their dtype (67.5 M values on
    the real-size AudioLDM2 UNet: 129 MiB in bf16). Outside the block the modules are as they
    were. The products are the same; only how a matmul library splits the larger one could change
    their rounding (on this CPU the real-size UNet's output was the same bit for bit, in float32
    and in bf16).

    Example:
        >>> from diffusers.models.attention_processor import Attention
        >>> attn = Attention(8, heads=2, dim_head=4)
        >>> fused = FusedProjections([attn])
        >>> with fused.applied():
        ...     type(attn.processor).__name__, tuple(attn.to_qkv.weight.shape)
        ('FusedAttnProcessor2_0', (24, 8))
        >>> type(attn.processor).__name__, hasattr(attn, "to_qkv")
        ('AttnProcessor2_0', False)
    """

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        self.modules = list(modules)
        self._fused: dict[int, _Fused] = {}
        self._processor = FusedAttnProcessor2_0()

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The modules run their fused projections inside the block and their own after it."""
        swapped: list[tuple[Attention, list[str], AttnProcessor2_0]] = []
        try:
            # each module once, a denoiser shared by several models included
            for attn in unique(m for root in self.modules for m in root.modules()):
                if not isinstance(attn, Attention) or not fusable(attn):
                    continue
                layers = self._layers(attn)
                swapped.append((attn, list(layers), attn.processor))
                for name, layer in layers.items():
                    setattr(attn, name, layer)
                attn.set_processor(self._processor)
            yield
        finally:
            for attn, names, processor in swapped:
                for name in names:
                    delattr(attn, name)
                attn.set_processor(processor)

    def _layers(self, attn: Attention) -> dict[str, nn.Linear]:
        """``attn``'s fused layers: the kept ones, filled again if its projections changed, or
        new ones."""
        names = _fused_names(attn)
        layers = [attn.to_q, attn.to_k, attn.to_v] if "to_qkv" in names else [attn.to_k, attn.to_v]
        params = _parameters(layers)
        first, rows = layers[0], sum(layer.out_features for layer in layers)
        entry = self._fused.get(id(attn))
        if entry is not None:
            fused = entry.linear
            if (
                list(entry.layers) == names
                and fused.weight.shape == (rows, first.in_features)
                and (fused.weight.dtype, fused.weight.device) == (first.weight.dtype, first.weight.device)
                and (fused.bias is None) == (first.bias is None)
            ):
                if not entry.sources.current(params):
                    _fill(fused, layers)
                    entry.sources = Sources.of(params)
                return entry.layers
        fused = _linear(first.in_features, rows, first)
        _fill(fused, layers)
        fused_layers = {"to_qkv" if len(layers) == 3 else "to_kv": fused}
        if names == ["to_qkv", "to_kv"]:  # the key and value rows of to_qkv, in place
            queries = attn.to_q.out_features
            kv = _linear(first.in_features, rows - queries, first, device="meta")
            kv.weight = nn.Parameter(fused.weight[queries:], requires_grad=False)
            if fused.bias is not None:
                kv.bias = nn.Parameter(fused.bias[queries:], requires_grad=False)
            fused_layers["to_kv"] = kv
        self._fused[id(attn)] = _Fused(Sources.of(params), fused, fused_layers)
        return fused_layers


def _linear(in_features: int, out_features: int, like: nn.Linear, device: str | None = None) -> nn.Linear:
    """A frozen ``nn.Linear`` with ``like``'s dtype, device (or ``device``) and bias."""
    return nn.Linear(
        in_features, out_features, bias=like.bias is not None, device=device or like.weight.device,
        dtype=like.weight.dtype,
    ).requires_grad_(False)
