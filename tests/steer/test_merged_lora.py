"""Merged LoRA (``Performance(merge_lora=True)``, issue 5): ε′'s adapted layers as one matmul
each during an edit, the same predictions up to rounding, ε's untouched."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from backbones.adapter_state import set_adapter_state
from steer import SteerMusicPlus
from steer.merged_lora import MergedLinear, MergedLoRA
from steer.performance import CastOnce, Performance

PROMPTS = dict(source="a piano melody", target="a sks guitar melody")


def test_merged_layers_predict_as_the_adapter_with_fewer_matmuls_and_leave_the_base_model_alone(
    tiny_backbone, lora, op_counts
):
    personalized = lora.personalized
    x_t = torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([300, 700])
    cond = personalized.encode_prompt(["a sks guitar", "a sks guitar solo"])
    layers = dict(tiny_backbone.denoiser.named_modules())
    own = dict(tiny_backbone.denoiser.state_dict(keep_vars=True))

    def predict(ops) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            eps = tiny_backbone.predict_noise(x_t, t, cond, 3.0)
            with personalized.adapter_enabled(), ops:
                return eps, personalized.predict_noise(x_t, t, cond, 3.0)

    ops, merged_ops = op_counts(), op_counts()
    eps, eps_prime = predict(ops)
    merged = MergedLoRA([tiny_backbone.denoiser, personalized.denoiser], [personalized.adapter_name])
    with merged.applied():
        adapted = [m for m in tiny_backbone.denoiser.modules() if isinstance(m, MergedLinear)]
        merged_eps, merged_eps_prime = predict(merged_ops)
    assert len(adapted) == len(personalized._lora_layers) > 0
    torch.testing.assert_close(merged_eps, eps, rtol=0, atol=0)  # ε: the base weights, as they are
    torch.testing.assert_close(merged_eps_prime, eps_prime, rtol=1e-5, atol=1e-5)
    assert (eps_prime - eps).abs().max() > 1e-2  # the adapter matters
    # each adapted layer runs once a call (both rows of guidance): 2 matmuls fewer
    assert merged_ops.matmuls == ops.matmuls - 2 * len(adapted)
    assert dict(tiny_backbone.denoiser.named_modules()) == layers  # put back
    assert all(p is own[n] for n, p in tiny_backbone.denoiser.state_dict(keep_vars=True).items())


def _adapted(rank: int = 2) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    net = inject_adapter_in_model(LoraConfig(r=rank, target_modules=["0", "2"]), net, adapter_name="a")
    with torch.no_grad():
        for layer in (net[0], net[2]):
            layer.lora_B["a"].weight.normal_()
    return net


def test_merged_weights_are_kept_and_follow_changed_or_replaced_weights():
    net = _adapted()
    x = torch.randn(5, 4)
    merged = MergedLoRA([net], ["a"])
    with merged.applied():
        first = net[0]
        assert isinstance(first, MergedLinear) and first.layer.base_layer is not None
        weight = first.merged["a"]
        torch.testing.assert_close(net(x), merged_reference(net, x), rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        net[0].lora_B["a"].weight.add_(1)  # changed in place
    net[2].base_layer.weight = nn.Parameter(torch.randn(3, 6))  # replaced
    with merged.applied():
        assert net[0] is first and first.merged["a"] is weight  # the same tensors (a graph's addresses)
        torch.testing.assert_close(net(x), merged_reference(net, x), rtol=1e-6, atol=1e-6)
        set_adapter_state(net[0].layer, ["a"], True)  # switched off: the base weight
        torch.testing.assert_close(net[0](x), net[0].layer.base_layer(x), rtol=0, atol=0)
        set_adapter_state(net[0].layer, ["a"], False)
    with pytest.raises(RuntimeError, match="boom"), MergedLoRA([net], ["a"], torch.bfloat16).applied():
        assert net[0].merged["a"].dtype == torch.bfloat16
        raise RuntimeError("boom")
    assert type(net[0]).__name__ == "Linear" and type(net[2]).__name__ == "Linear"  # peft's, put back


def merged_reference(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The peft layers' own forward (adapter on), read through the merged wrappers."""
    hidden = torch.relu(net[0].layer(x) if isinstance(net[0], MergedLinear) else net[0](x))
    return net[2].layer(hidden) if isinstance(net[2], MergedLinear) else net[2](hidden)


def test_layers_merging_would_change_are_left_to_peft():
    """A hook on the layer (a feature read from it), dropout that acts, another adapter."""
    net = _adapted()
    net[0].register_forward_hook(lambda module, args, output: None)
    with MergedLoRA([net], ["a", "other"]).applied():
        assert type(net[0]).__name__ == "Linear" and isinstance(net[2], MergedLinear)
        assert list(net[2].merged) == ["a"]
    noisy = _adapted()
    noisy[2].lora_dropout["a"] = nn.Dropout(0.5)  # training mode: it acts
    with MergedLoRA([noisy], ["a"]).applied():
        assert isinstance(noisy[0], MergedLinear) and type(noisy[2]).__name__ == "Linear"
    noisy.eval()
    with MergedLoRA([noisy], ["a"]).applied():
        assert isinstance(noisy[2], MergedLinear)


def test_the_bf16_merge_is_made_from_the_float32_weights():
    """Entered before :class:`CastOnce`, the merge reads float32 weights and casts the sum once."""
    net = _adapted()
    merged, casts = MergedLoRA([net], ["a"], torch.bfloat16), CastOnce([net], torch.bfloat16)
    layer = net[0]
    want = layer.base_layer.weight + layer.scaling["a"] * layer.lora_B["a"].weight @ layer.lora_A["a"].weight
    with merged.applied(), casts.applied():
        assert net[0].merged["a"].dtype == torch.bfloat16
        assert torch.equal(net[0].merged["a"], want.to(torch.bfloat16))
        assert net[0].layer.base_layer.weight.dtype == torch.bfloat16  # ε's, cast as without the merge


@pytest.mark.parametrize("path", ["batched", "reference", "checkpointed", "bf16"])
def test_a_steermusic_plus_edit_with_merged_lora_edits_as_one_without(tiny_backbone, lora, path):
    """ε′ with the merged weights, ε with the base ones, switched by the same adapter switches,
    the checkpointed recomputation's included."""
    latent = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    performance = Performance.preset(path)
    merged_layers = []

    def look(state) -> None:
        merged_layers.append(sum(isinstance(m, MergedLinear) for m in tiny_backbone.denoiser.modules()))

    def edit(performance: Performance, callback=None):
        editor = SteerMusicPlus(tiny_backbone, lora, steps=3, performance=performance)
        return editor.edit_latent(latent, callback=callback, **PROMPTS)

    plain = edit(performance)
    merged = edit(dataclasses.replace(performance, merge_lora=True), look)
    assert (plain.latent - latent).abs().max() > 0.1
    if path != "bf16":
        torch.testing.assert_close(merged.latent, plain.latent, rtol=1e-5, atol=1e-5)
    else:  # bf16 rounds the merged weight, not the adapter's product: as near the float32 edit
        exact = edit(Performance()).latent
        error, plain_error = ((e.latent - exact).abs().max() for e in (merged, plain))
        assert 0 < error < 1.5 * plain_error < 0.15
    assert merged_layers == [len(lora.personalized._lora_layers)] * 3
    assert not any(isinstance(m, MergedLinear) for m in tiny_backbone.denoiser.modules())


@pytest.mark.slow  # SteerMusic+'s calls traced by dynamo: about a minute on 2 cores each
@pytest.mark.parametrize("fuse_projections", [False, True], ids=["merged", "merged-fused"])
def test_a_compiled_steermusic_plus_editor_keeps_its_merged_weights_and_follows_changes(
    tiny_backbone, lora, dynamo, fuse_projections
):
    """The merged (and fused) weights are the same tensors between edits, so the first edit's
    graphs serve the next; a LoRA weight changed in place between edits reaches them."""
    latent = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    personalized = lora.personalized
    options = dict(merge_lora=True, fuse_projections=fuse_projections)
    eager = SteerMusicPlus(tiny_backbone, lora, steps=2, performance=Performance(**options))
    performance = Performance(compile=True, compile_backend="eager", **options)
    with SteerMusicPlus(tiny_backbone, lora, steps=2, performance=performance) as compiled:
        first = compiled.edit_latent(latent, **PROMPTS).latent
        graphs = dynamo.graphs()
        torch.testing.assert_close(compiled.edit_latent(latent, **PROMPTS).latent, first, rtol=0, atol=0)
        with torch.no_grad():
            for layer in personalized._lora_layers:
                layer.lora_B[personalized.adapter_name].weight.mul_(2)
        changed = compiled.edit_latent(latent, **PROMPTS).latent
        assert dynamo.graphs() == graphs >= 1 and dynamo.breaks() == []
        expected = eager.edit_latent(latent, **PROMPTS).latent  # before the editor's exit closes ε′
    assert (changed - first).abs().max() > 1e-4
    torch.testing.assert_close(changed, expected, rtol=1e-5, atol=1e-5)


def test_merge_lora_without_a_lora_concept_says_it_does_nothing(tiny_backbone):
    from steer import SteerMusic

    latent = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    editor = SteerMusic(tiny_backbone, steps=1, performance=Performance(merge_lora=True))
    with pytest.warns(UserWarning, match="merge_lora merges a LoRA concept's adapter, and this editor has none"):
        editor.edit_latent(latent, **PROMPTS)
