"""ε′'s LoRA layers as one matmul each, for the length of an edit (issue 5).

A SteerMusic+ concept's LoRA adapter shares the base denoiser: ε′ is the UNet with the adapter
switched on, ε with it off. With it on, peft's layer computes ``W x + s · B (A x)``: two more
matmuls, a scale and an add for every adapted projection, so on the real-size AudioLDM2 UNet with
the default targets (every attention's query, key, value and output: 384 layers) ε′'s guided call
runs 1 056 matmuls against ε's 288 and 8 046 aten ops against 4 206 (CPU, counted with a
``TorchDispatchMode``). The concept does not change during an edit, so :class:`MergedLoRA`
computes ``W + s · B A`` once an edit and lets each layer run one matmul with the merged weight
while its adapter is on, and with ``W`` while it is off: ε′'s call then costs ε's (4 206 ops).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.adapter_state import State, adapter_state, is_adapter_layer

from .predictions import unique
from .sources import Sources


def mergeable(layer: nn.Module, adapter: str) -> bool:
    """Whether ``layer`` is a peft LoRA ``Linear`` whose ``adapter`` :class:`MergedLoRA` can merge:
    plain LoRA (no DoRA or other variant, no bias on B, no dropout that acts), nothing merged into
    its weights by peft already, and no hooks on it or its base layer (a feature read from
    them: the merged matmul would not call them)."""
    if not is_adapter_layer(layer) or adapter not in getattr(layer, "lora_A", {}):
        return False
    base = layer.base_layer
    dropout = layer.lora_dropout[adapter]
    return (
        type(base) is nn.Linear
        and adapter not in getattr(layer, "lora_variant", {})
        and layer.lora_B[adapter].bias is None
        and not layer.merged
        and not getattr(layer, "fan_in_fan_out", False)
        and (isinstance(dropout, nn.Identity) or not dropout.training)
        and not any(m._forward_hooks or m._forward_pre_hooks for m in (layer, base))
    )


def weight_for(state: State, base: Tensor, merged: Mapping[str, Tensor]) -> Tensor | None:
    """The weight a merged layer whose peft switches are ``state`` runs: ``base`` while its
    adapters are off, the ``merged`` weight of its one active adapter, or ``None`` where it
    has none (the peft layer must run)."""
    active, disabled = state
    if disabled:
        return base
    names = [active] if isinstance(active, str) else active
    return merged[names[0]] if len(names) == 1 and names[0] in merged else None


class MergedLinear(nn.Module):
    """A peft LoRA ``Linear`` run as one matmul: with the merged weight of its active adapter,
    or its base weight while its adapters are off.

    It holds the peft layer (``layer``) and reads the switches on it, so whatever switches the
    adapter (``PersonalizedBackbone.adapter_enabled``, the checkpointed recomputation) switches
    this too; a state it has no merged weight for runs the peft layer.
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.merged = nn.ParameterDict()

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(..., in_features)`` -> ``(..., out_features)``."""
        base = self.layer.base_layer
        weight = weight_for(adapter_state(self.layer), base.weight, self.merged)
        return self.layer(x) if weight is None else F.linear(x, weight, base.bias)


class MergedLoRA:
    """The LoRA ``adapters`` of the peft layers in ``modules`` merged (see the module's
    docstring) during :meth:`applied`, in ``dtype`` (``None``: the base weight's).

    Each adapted layer is replaced in its parent by a :class:`MergedLinear` that holds it. The
    merged weights are computed in float32 from the layer's float32 weights and kept between
    uses (a compiled graph reads them at the same addresses), merged again in place where a
    weight changed (its version counter) or was replaced, or after :meth:`refresh`. They add
    one copy of the adapted weights per adapter in ``dtype`` (for the real-size AudioLDM2 UNet
    and the default targets, 95.7 M values: 183 MiB in bf16). The products differ from the adapter's by rounding only.

    Example:
        >>> from peft import LoraConfig, inject_adapter_in_model
        >>> net = nn.Sequential(nn.Linear(4, 4))
        >>> net = inject_adapter_in_model(LoraConfig(r=2, target_modules=["0"]), net, adapter_name="a")
        >>> merged = MergedLoRA([net], ["a"])
        >>> with merged.applied():
        ...     type(net[0]).__name__
        'MergedLinear'
        >>> type(net[0]).__name__
        'Linear'
    """

    def __init__(self, modules: Iterable[nn.Module], adapters: Iterable[str], dtype: torch.dtype | None = None) -> None:
        self.modules = list(modules)
        self.adapters = list(adapters)
        self.dtype = dtype
        self._merged: dict[int, MergedLinear] = {}
        self._merges: dict[tuple[int, str], tuple[Sources, float]] = {}  # what each was merged from

    def refresh(self) -> None:
        """Merge every adapter again, in place, at the next :meth:`applied`: for a change of the
        base or adapter weights that their version counters do not show (see
        :class:`~steer.sources.Fingerprint`)."""
        self._merges.clear()

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The adapted layers run merged inside the block; the modules are as they were after it."""
        swapped: list[tuple[nn.Module, str, nn.Module]] = []
        try:
            # each parent once, a denoiser shared by several models included
            for parent in unique(m for root in self.modules for m in root.modules()):
                if isinstance(parent, MergedLinear):
                    continue
                for name, layer in list(parent._modules.items()):
                    adapters = [a for a in self.adapters if layer is not None and mergeable(layer, a)]
                    if adapters:
                        swapped.append((parent, name, layer))
                        parent._modules[name] = self._layer(layer, adapters)
            yield
        finally:
            for parent, name, layer in reversed(swapped):
                parent._modules[name] = layer

    def _layer(self, layer: nn.Module, adapters: list[str]) -> MergedLinear:
        merged = self._merged.get(id(layer))
        if merged is None or merged.layer is not layer:
            merged = self._merged[id(layer)] = MergedLinear(layer)
        for adapter in adapters:
            self._merge(merged, adapter)
        return merged

    @torch.no_grad()
    def _merge(self, merged: MergedLinear, adapter: str) -> None:
        """Merge ``adapter`` into ``merged``'s weight for it, unless that is up to date."""
        layer = merged.layer
        base, down, up = layer.base_layer.weight, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        params, scaling = (base, down, up), float(layer.scaling[adapter])
        dtype = self.dtype or base.dtype
        weight = merged.merged.get(adapter)
        fits = weight is not None and (weight.shape, weight.dtype, weight.device) == (base.shape, dtype, base.device)
        sources, merged_scaling = self._merges.get((id(layer), adapter), (None, None))
        if fits and sources is not None and sources.current(params) and merged_scaling == scaling:
            return
        value = base.float() + scaling * (up.float() @ down.float())
        if fits:
            weight.copy_(value)
        else:
            merged.merged[adapter] = nn.Parameter(value.to(dtype), requires_grad=False)
        self._merges[id(layer), adapter] = (Sources.of(params), scaling)
