"""The two switches a peft LoRA layer's forward reads, read and written without peft's setters.

peft's public ``enable_adapters``/``set_adapter`` also flip ``requires_grad`` of every adapter
parameter (~17 µs per layer, ~25 ms per call on AudioLDM2's 384 adapted projections). The
forward only reads ``_active_adapter`` and ``_disable_adapters``; they are plain instance
attributes, written here to the instance dict as ``nn.Module.__setattr__`` would, without its
checks: switching ε′'s 384 layers on and off for one call took 2.34 ms through the properties
and ``setattr``, 0.25 ms this way (tiny AudioLDM2 with a LoRA concept, CPU). Tests pin the
behaviour. Each switch is its own item assignment: dynamo traces those into a compiled call,
whereas ``dict.update`` on an instance dict broke the graph and ran ε′'s whole call eagerly.
"""

from __future__ import annotations

from torch import nn

#: ``(active adapters, adapters disabled)`` of one layer
State = tuple[list[str] | str, bool]


def is_adapter_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a peft layer with adapter switches."""
    return "_disable_adapters" in vars(module)


def adapter_state(layer: nn.Module) -> State:
    """The layer's switches."""
    state = vars(layer)
    return state["_active_adapter"], state["_disable_adapters"]


def set_adapter_state(layer: nn.Module, active: list[str] | str, disabled: bool) -> None:
    """Set the layer's switches (``requires_grad`` untouched)."""
    state = vars(layer)
    state["_active_adapter"] = active
    state["_disable_adapters"] = disabled
