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


def _traced(fn, regions):
    """``fn`` compiled by dynamo and AOTAutograd (no code generation), counting into
    ``regions`` the checkpointed regions traced into its graphs."""
    from torch._dynamo import reset
    from torch._dynamo.backends.debugging import aot_eager
    from torch._higher_order_ops.wrap import tag_activation_checkpoint

    def backend(graph, example_inputs):
        regions.append(sum(node.target is tag_activation_checkpoint for node in graph.graph.nodes))
        return aot_eager(graph, example_inputs)

    reset()
    return torch.compile(fn, backend=backend, dynamic=False)


def test_traced_by_dynamo_it_is_a_region_of_the_graph():
    """Compiled, the checkpoint is traced (dynamo cannot trace the recomputation's adapter
    switching, which it needs no more: the graph keeps its trace's adapter state)."""
    net, layers = _adapted()
    expected = _gradient(net, layers, lambda n, x: n(x))
    regions = []
    torch.testing.assert_close(_gradient(net, layers, _traced(checkpoint_call, regions)), expected)
    assert regions == [1]


def test_a_module_with_hooks_is_not_checkpointed_when_traced():
    """A hook's side effects cannot be traced inside a checkpoint: dynamo would fall back to
    eager code, so a module with hooks inside is called plainly when traced."""
    net, layers = _adapted()
    expected = _gradient(net, layers, lambda n, x: n(x))
    seen = []
    net[1].register_forward_hook(lambda module, args, output: seen.append(output))
    regions = []
    torch.testing.assert_close(_gradient(net, layers, _traced(checkpoint_call, regions)), expected)
    assert regions == [0] and len(seen) == 1
