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


def test_a_hook_inside_records_the_forward_when_traced():
    """PCon's feature hooks sit inside checkpointed blocks. Traced with dynamo's
    ``skip_fwd_side_effects_in_bwd_under_checkpoint`` (as compiled editors trace), the block is
    still one region, the hook records once (in the forward, not in the recomputation), and the
    gradient through what it recorded is eager's."""
    net, layers = _adapted()
    seen = []
    net[1].register_forward_hook(lambda module, args, output: seen.append(output))

    def with_feature(n, x):
        seen.clear()
        y = checkpoint_call(n, x)
        return y + seen[-1].square()

    expected = _gradient(net, layers, lambda n, x: n(x) + torch.tanh(n[0](x)).square())
    regions = []
    with torch._dynamo.config.patch(skip_fwd_side_effects_in_bwd_under_checkpoint=True):
        got = _gradient(net, layers, _traced(with_feature, regions))
    torch.testing.assert_close(got, expected)
    assert regions == [1] and len(seen) == 1


class _Checkpointing(nn.Module):
    """A block that checkpoints its own layers, as diffusers' transformers do."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.gradient_checkpointing = True

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(checkpoint_call(layer, x))
        return x


def test_traced_a_block_that_checkpoints_its_layers_is_not_checkpointed_again():
    """Dynamo cannot trace a hook inside nested regions: traced, the outer block runs plainly
    and its layers are the regions. Eagerly the checkpoints nest (the inner layers run three
    times: the forward and two recomputations), which keeps less."""
    torch.manual_seed(0)
    block = _Checkpointing()
    x = torch.randn(3, 4, requires_grad=True)
    expected = torch.autograd.grad(block(x).square().sum(), x)
    runs = []
    counting = block.layers[0].register_forward_pre_hook(lambda module, args: runs.append(1))
    torch.testing.assert_close(torch.autograd.grad(checkpoint_call(block, x).square().sum(), x), expected)
    assert len(runs) == 3
    counting.remove()
    regions = []
    torch.testing.assert_close(torch.autograd.grad(_traced(checkpoint_call, regions)(block, x).square().sum(), x), expected)
    assert regions == [2]


def test_switching_the_adapter_is_traced_into_the_graph():
    """ε′'s call switches the adapter on and off around the denoiser; compiled, the switches must
    be traced (a graph break would run ε′'s whole call eagerly)."""
    net, layers = _adapted()
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))

    def personalised(x):
        _switch(layers, True)
        try:
            return net(x)
        finally:
            _switch(layers, False)

    from torch._dynamo import reset

    reset()
    compiled = torch.compile(personalised, backend="eager", fullgraph=True)  # raises on a graph break
    torch.testing.assert_close(compiled(x), personalised(x))
    assert all(adapter_state(layer) == (["c"], True) for layer in layers)
    _switch(layers, True)
    on = net(x)
    _switch(layers, False)
    torch.testing.assert_close(compiled(x), on)  # the adapter was on inside
    assert not torch.allclose(on, net(x))


class _Attention(nn.Module):
    """Self-attention over ``(B, tokens, 8)`` through SDPA, an op torch tags as drawing random
    numbers (it can drop out), as diffusers' attention processors call it."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(8, 24), nn.Linear(8, 8)

    def forward(self, x):
        q, k, v = self.qkv(x).unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)  # each (B, heads, tokens, 4)
        return self.out(nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


def test_traced_regions_keep_attention_instead_of_recomputing_it():
    """Traced, a region keeps what may draw random numbers (attention's output) and recomputes
    the rest: its graphs hold no op that saves or restores a generator's state, which CUDA graphs
    cannot capture (all of a SteerMusic+ step's checkpointed ε′ call ran uncaptured), and the
    backward pass runs no attention forward; the gradient is eager's."""
    from torch._dynamo import reset
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func
    from torch._inductor.utils import get_first_incompatible_cudagraph_node

    graphs = {}

    def keep(name):
        def compiler(graph, example_inputs):
            graphs[name] = graph
            return make_boxed_func(graph)

        return compiler

    torch.manual_seed(0)
    block = _Attention()
    x = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    (expected,) = torch.autograd.grad(block(x).square().sum(), x)
    reset()
    with torch._dynamo.config.patch(skip_fwd_side_effects_in_bwd_under_checkpoint=True):
        traced = torch.compile(checkpoint_call, backend=aot_autograd(fw_compiler=keep("forward"), bw_compiler=keep("backward")))
        (got,) = torch.autograd.grad(traced(block, x).square().sum(), x)
    torch.testing.assert_close(got, expected)

    def ops(graph):
        return [str(n.target) for n in graph.graph.nodes if n.op == "call_function"]

    for graph in graphs.values():
        assert get_first_incompatible_cudagraph_node(graph) is None, ops(graph)
    backward = ops(graphs["backward"])
    assert not [op for op in backward if "attention" in op and "backward" not in op], backward
    assert any("attention" in op and "backward" in op for op in backward)
    assert any(op.startswith("aten.addmm") for op in backward)  # the projections are recomputed
