"""Gradient checkpointing with a LoRA concept: the recomputation runs with the adapter as the
forward had it, though it is switched off again by the time of the backward pass."""

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn
from torch.utils.checkpoint import CheckpointError, checkpoint

from backbones.adapter_state import adapter_state, is_adapter_layer, set_adapter_state
from backbones.base import checkpoint_call


def _adapted():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["0", "2"], init_lora_weights=False), net, adapter_name="c")
    layers = [m for m in net.modules() if is_adapter_layer(m)]
    assert len(layers) == 2
    return net, layers


def _switch(layers, on):
    for layer in layers:
        set_adapter_state(layer, ["c"], not on)


def _gradient(net, layers, call):
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    _switch(layers, True)
    y = call(net, x)
    _switch(layers, False)  # as ε′'s call ends, before the backward pass
    (grad,) = torch.autograd.grad(y.square().sum(), x)
    return grad


def test_recomputation_uses_the_adapter_state_of_the_forward():
    net, layers = _adapted()
    expected = _gradient(net, layers, lambda n, x: n(x))
    got = _gradient(net, layers, checkpoint_call)
    torch.testing.assert_close(got, expected)
    assert all(adapter_state(layer) == (["c"], True) for layer in layers)  # put back after
    # the plain checkpoint recomputes with the adapter off: another graph than the forward's
    with pytest.raises(CheckpointError):
        _gradient(net, layers, lambda n, x: checkpoint(n, x, use_reentrant=False))


def test_a_denoiser_without_checkpointing_is_a_clear_error(tiny_backbone, monkeypatch):
    monkeypatch.setattr(type(tiny_backbone.denoiser), "_supports_gradient_checkpointing", False)
    with pytest.raises(ValueError, match="does not support gradient checkpointing"):
        tiny_backbone.gradient_checkpointing = True
    assert not tiny_backbone.gradient_checkpointing


def test_traced_by_dynamo_it_is_the_plain_call():
    """dynamo cannot trace the recomputation's context (it raised before); traced, the call is
    plain and the compiled graph keeps the adapter state of its trace."""
    from torch._dynamo import reset

    reset()
    net, layers = _adapted()
    expected = _gradient(net, layers, lambda n, x: n(x))
    compiled = torch.compile(checkpoint_call, backend="aot_eager", dynamic=False)
    torch.testing.assert_close(_gradient(net, layers, compiled), expected)
