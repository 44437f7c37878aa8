"""An attention's projections of one input as one matmul, for the length of an edit (issue 5).

diffusers' attention projects its input with three matmuls for self-attention's query, key and
value, and its text with two for cross-attention's key and value. :class:`FusedProjections` puts
each group's weights side by side in one ``nn.Linear`` (diffusers' ``to_qkv`` and ``to_kv``) and
runs the module with diffusers' ``FusedAttnProcessor2_0``, which splits that matmul's output: the
same products, in 160 fewer matmuls a call of AudioLDM2's real-size UNet (128 against 288, next to
its 216 with a bias). At batch 1 such a call is hundreds of short kernels, most matmuls of 3–5 µs
on an H100 (``benchmarks/README.md``), so fewer and larger ones are the aim.

A SteerMusic+ concept's LoRA adapter usually sits on those projections. Merged
(:class:`~steer.merged_lora.MergedLoRA`, entered before), each is a
:class:`~steer.merged_lora.MergedLinear` that runs its base weight while ε runs and its merged
weight while ε′ does; their fused layer is a :class:`FusedMergedLinear`, which does the same with
the base and the merged weights side by side, so both models run one matmul per group.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.adapter_state import adapter_state

from .merged_lora import MergedLinear, weight_for
from .predictions import unique
from .sources import Sources

if TYPE_CHECKING:
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from .performance import CastOnce


class FusedMergedLinear(nn.Module):
    """Merged LoRA layers (:class:`~steer.merged_lora.MergedLinear`) run as one matmul: their
    base weights side by side (``base``) while their adapters are off, an adapter's merged
    weights side by side (``merged``) while it alone is on, as each of ``parts`` would.

    It reads the switches of the parts' peft layers; where those differ between the parts, or
    name an adapter with no merged weights here, each part runs by itself and their outputs are
    put side by side.
    """

    def __init__(self, base: nn.Linear, merged: dict[str, Tensor], parts: Sequence[MergedLinear]) -> None:
        super().__init__()
        self.base = base
        self.merged = nn.ParameterDict({a: nn.Parameter(w, requires_grad=False) for a, w in merged.items()})
        self.parts = tuple(parts)  # a plain attribute: they are the attention module's own layers

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(..., in_features)`` -> ``(..., sum of the parts' out_features)``."""
        states = [adapter_state(part.layer) for part in self.parts]
        if all(state == states[0] for state in states[1:]):
            weight = weight_for(states[0], self.base.weight, self.merged)
            if weight is not None:
                return F.linear(x, weight, self.base.bias)
        return torch.cat([part(x) for part in self.parts], dim=-1)


@dataclass
class _Fused:
    layout: tuple[object, ...]  # what it was built for (see :meth:`FusedProjections._layers`)
    sources: Sources  # the weights and biases it was filled from
    base: nn.Linear  # the base weights' rows side by side
    merged: dict[str, Tensor]  # for each merged adapter, the merged weights' rows side by side
    layers: dict[str, nn.Module]  # what the module gets: built on ``base`` and ``merged``, or views of their rows


def _base(layer: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` that holds ``layer``'s base weight: itself, or a merged LoRA layer's."""
    return layer.layer.base_layer if isinstance(layer, MergedLinear) else layer


def _hooked(module: nn.Module) -> bool:
    """Whether ``module`` has forward or backward hooks of its own (the global ones are called
    for the fused layer too)."""
    return bool(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
    )


def _parameters(layers: Sequence[nn.Module]) -> tuple[Tensor, ...]:
    """What ``layers``' fused weights are made from: their base weights and biases, and their
    merged weights."""
    bases = (p for layer in layers for p in (_base(layer).weight, _base(layer).bias) if p is not None)
    merged = (w for layer in layers if isinstance(layer, MergedLinear) for w in layer.merged.values())
    return (*bases, *merged)


def _rows(target: Tensor, tensors: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """Views of consecutive rows of ``target``, one as long as each of ``tensors``."""
    return target.split([len(tensor) for tensor in tensors])


@torch.no_grad()
def _fill(target: Tensor, tensors: Sequence[Tensor]) -> None:
    """Copy ``tensors`` into consecutive rows of ``target`` (where one is not those rows already)."""
    for rows, tensor in zip(_rows(target, tensors), tensors, strict=True):
        if rows.data_ptr() != tensor.data_ptr():
            rows.copy_(tensor)


def fusable(attn: Attention) -> bool:
    """Whether :class:`FusedProjections` fuses ``attn``'s projections. It leaves alone a processor
    other than diffusers' ``AttnProcessor2_0`` (the module's own choice, or a fused one already),
    projections that are neither all plain ``nn.Linear`` nor all merged LoRA layers with the same
    adapters (:class:`~steer.merged_lora.MergedLinear`; an unmerged adapter's layers), or that
    differ in dtype, device or bias, added projections, and forward or backward hooks on a
    projection (a feature read from one, a gradient watched: the fused matmul would not call
    them)."""
    from diffusers.models.attention_processor import AttnProcessor2_0  # not at the top: seconds to import

    if type(attn.processor) is not AttnProcessor2_0 or getattr(attn, "add_q_proj", None) is not None:
        return False
    layers = [attn.to_q, attn.to_k, attn.to_v]
    if {type(layer) for layer in layers} == {MergedLinear}:
        if len({tuple(layer.merged) for layer in layers}) != 1:
            return False
        modules = [m for layer in layers for m in (layer, layer.layer, layer.layer.base_layer)]
    elif {type(layer) for layer in layers} == {nn.Linear}:
        modules = layers
    else:
        return False
    bases = [_base(layer) for layer in layers]
    if any(type(base) is not nn.Linear for base in bases) or any(_hooked(m) for m in modules):
        return False
    same_kind = len({(w.dtype, w.device) for w in _parameters(layers)}) == 1
    same_bias = len({base.bias is None for base in bases}) == 1
    return same_kind and same_bias and bases[1].in_features == bases[2].in_features


def _fused_names(attn: Attention) -> list[str]:
    """The fused layers ``attn`` may call: ``to_qkv`` where the query, key and value project one
    input (self-attention; a cross-attention called without text, as AudioLDM's are) and
    ``to_kv`` for a cross-attention's text."""
    if not attn.is_cross_attention:
        return ["to_qkv"]
    return ["to_qkv", "to_kv"] if _base(attn.to_k).in_features == _base(attn.to_q).in_features else ["to_kv"]


class FusedProjections:
    """The attention modules in ``modules`` (diffusers' ``Attention``) with their projections of
    one input fused (see the module's docstring) during :meth:`applied`.

    The fused weights are built from the projections the modules hold when :meth:`applied`
    starts (a :class:`~steer.performance.CastOnce`'s cast copies and a
    :class:`~steer.merged_lora.MergedLoRA`'s merged layers, entered before it) and kept between
    uses, so that a compiled graph reads them at the same addresses; they are copied again, in
    place, where a projection's weight was changed (its version counter) or replaced, or after
    :meth:`refresh`. They add one more copy of the fused projections' weights in their dtype
    (67.5 M values on the real-size AudioLDM2 UNet), except where the projections' own are
    copies made for the edit, which then become views of the fused rows, so that each is kept
    once: the cast weights of ``casts`` (:class:`~steer.performance.CastOnce`, entered before this one) and the merged
    LoRA weights. Outside the block the modules are as they were. The products are the same;
    only how a matmul library splits the larger one could change their rounding (on this CPU
    the real-size UNet's output was the same bit for bit in one probe, in float32 and in bf16,
    and within 2.1e-5 of values up to 3.6 in float32 in another).

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

    def __init__(self, modules: Iterable[nn.Module], casts: CastOnce | None = None) -> None:
        from diffusers.models.attention_processor import FusedAttnProcessor2_0  # not at the top: seconds to import

        self.modules = list(modules)
        self.casts = casts
        self._fused: dict[int, _Fused] = {}
        self._processor = FusedAttnProcessor2_0()

    def refresh(self) -> None:
        """Fill every fused weight again, in place, at the next :meth:`applied`: for a change of
        the projections' weights that their version counters do not show (see
        :class:`~steer.sources.Fingerprint`)."""
        for entry in self._fused.values():
            entry.sources = Sources.of(())

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The modules run their fused projections inside the block and their own after it."""
        from diffusers.models.attention_processor import Attention  # not at the top: seconds to import

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

    def _layers(self, attn: Attention) -> dict[str, nn.Module]:
        """``attn``'s fused layers: the kept ones, filled again if its projections changed, or
        new ones."""
        names = _fused_names(attn)
        parts = [attn.to_q, attn.to_k, attn.to_v] if "to_qkv" in names else [attn.to_k, attn.to_v]
        first = _base(parts[0])
        adapters = tuple(parts[0].merged) if isinstance(parts[0], MergedLinear) else ()
        rows = sum(_base(part).out_features for part in parts)
        layout = (
            tuple(names), rows, first.in_features, first.weight.dtype, first.weight.device, first.bias is None, adapters
        )
        entry = self._fused.get(id(attn))
        if entry is None or entry.layout != layout:
            base = _linear(first.in_features, rows, first)
            merged = {a: torch.empty_like(base.weight) for a in adapters}
            entry = _Fused(layout, Sources.of(()), base, merged, self._views(attn, names, base, merged, parts))
            self._fused[id(attn)] = entry
        if not entry.sources.current(_parameters(parts)):
            self._refill(entry, parts)
            entry.sources = Sources.of(_parameters(parts))
        return entry.layers

    def _refill(self, entry: _Fused, parts: list[nn.Module]) -> None:
        """Copy ``parts``' weights into ``entry``'s rows, then let the copies made for the edit
        (cast, merged) be views of those rows from now on."""
        bases = [_base(part) for part in parts]
        for name in ("weight", "bias") if entry.base.bias is not None else ("weight",):
            fused, own = getattr(entry.base, name), [getattr(base, name) for base in bases]
            _fill(fused, own)
            if self.casts is not None:
                for base, rows in zip(bases, _rows(fused, own), strict=True):
                    self.casts.keep_in(base, name, rows)
        for adapter, fused in entry.merged.items():
            own = [part.merged[adapter] for part in parts]
            _fill(fused, own)
            for part, rows in zip(parts, _rows(fused, own), strict=True):
                if part.merged[adapter].data_ptr() != rows.data_ptr():
                    part.merged[adapter] = nn.Parameter(rows, requires_grad=False)

    @staticmethod
    def _views(
        attn: Attention, names: list[str], base: nn.Linear, merged: dict[str, Tensor], parts: list[nn.Module]
    ) -> dict[str, nn.Module]:
        """The layers ``attn`` gets from the fused weights: one on all their rows, and for
        ``["to_qkv", "to_kv"]`` one more on the key and value rows."""
        whole = FusedMergedLinear(base, merged, parts) if merged else base
        layers = {"to_qkv" if len(parts) == 3 else "to_kv": whole}
        if names == ["to_qkv", "to_kv"]:  # the key and value rows of to_qkv, in place
            queries = _base(attn.to_q).out_features
            kv = _linear(base.in_features, base.out_features - queries, base, device="meta")
            kv.weight = nn.Parameter(base.weight[queries:], requires_grad=False)
            if base.bias is not None:
                kv.bias = nn.Parameter(base.bias[queries:], requires_grad=False)
            kv_merged = {a: w[queries:] for a, w in merged.items()}
            layers["to_kv"] = FusedMergedLinear(kv, kv_merged, parts[1:]) if merged else kv
        return layers


def _linear(in_features: int, out_features: int, like: nn.Linear, device: str | None = None) -> nn.Linear:
    """A frozen ``nn.Linear`` with ``like``'s dtype, device (or ``device``) and bias, its weights
    left uninitialised: they are filled or replaced, and initialising them would draw from the
    global random generator, which an edit leaves as it was."""
    return nn.utils.skip_init(
        nn.Linear, in_features, out_features, bias=like.bias is not None, device=device or like.weight.device,
        dtype=like.weight.dtype,
    ).requires_grad_(False)
