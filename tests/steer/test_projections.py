"""Fused attention projections (``Performance(fuse_projections=True)``, issue 5): an attention's
projections of one input as one matmul during an edit, the same predictions, fewer matmuls."""

from __future__ import annotations

import collections
import contextlib
import dataclasses

import pytest
import torch
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
)
from peft import LoraConfig, inject_adapter_in_model
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from backbones import AudioLDM2Backbone, load_backbone
from backbones.adapter_state import set_adapter_state
from backbones.tiny import tiny_audioldm2_pipeline
from steer import SteerMusic, SteerMusicPlus
from steer.concepts.concept import LORA_TARGETS
from steer.editor import _Runtime
from steer.merged_lora import MergedLinear, MergedLoRA
from steer.performance import CastOnce, Performance
from steer.projections import FusedMergedLinear, FusedProjections

PROMPTS = dict(source="a piano melody", target="a sks guitar melody")
aten = torch.ops.aten


def _attentions(model: torch.nn.Module) -> list[Attention]:
    return [m for m in model.modules() if isinstance(m, Attention)]


def _processors(model: torch.nn.Module) -> collections.Counter[str]:
    return collections.Counter(type(m.processor).__name__ for m in _attentions(model))


def _predict(backbone, ops: TorchDispatchMode) -> torch.Tensor:
    """A guided call on a fixed latent, its aten ops counted by ``ops``."""
    generator = torch.Generator().manual_seed(0)
    x_t, cond = torch.randn(2, 8, 16, 16, generator=generator), backbone.encode_prompt(["a", "b"])
    with torch.no_grad(), ops:
        return backbone.predict_noise(x_t, torch.tensor([300, 700]), cond, 3.0)


def _saved_matmuls(backbone, op_counts) -> int:
    """How many matmuls fusion spares in :func:`_predict`'s call: each attention call's
    projections but one (self-attention, or a cross-attention called without text, as
    AudioLDM's are), but two for a cross-attention with text (its query stays apart)."""
    calls = collections.Counter()
    hooks = []
    for attn in _attentions(backbone.denoiser):
        def count(module, args, kwargs) -> None:
            calls["text" if kwargs.get("encoder_hidden_states") is not None else "latent"] += 1

        hooks.append(attn.register_forward_pre_hook(count, with_kwargs=True))
    _predict(backbone, op_counts())
    for hook in hooks:
        hook.remove()
    return 2 * calls["latent"] + calls["text"]


@pytest.mark.parametrize("name", ["tiny", "tiny-audioldm", "tiny-musicldm"])
def test_fused_projections_predict_the_same_with_fewer_matmuls(name, op_counts):
    """Each self-attention's three projections become one matmul and each cross-attention's two
    become one; the module is as it was after the block."""
    backbone = load_backbone(name)
    denoiser = backbone.denoiser
    attentions = _attentions(denoiser)
    own = dict(denoiser.state_dict(keep_vars=True))
    saved = _saved_matmuls(backbone, op_counts)
    plain_ops, ops = op_counts(), op_counts()
    plain = _predict(backbone, plain_ops)
    fused = FusedProjections([denoiser, denoiser])  # a denoiser given twice is fused once
    with fused.applied():
        assert _processors(denoiser) == {"FusedAttnProcessor2_0": len(attentions)}
        eps = _predict(backbone, ops)
    torch.testing.assert_close(eps, plain, rtol=1e-6, atol=1e-6)
    assert saved >= len(attentions)  # each attention runs once a call (both rows of guidance)
    assert ops.matmuls == plain_ops.matmuls - saved
    assert _processors(denoiser) == {"AttnProcessor2_0": len(attentions)}
    assert not any(hasattr(a, "to_qkv") or hasattr(a, "to_kv") for a in attentions)
    assert denoiser.state_dict(keep_vars=True).keys() == own.keys()
    assert all(p is own[n] for n, p in denoiser.state_dict(keep_vars=True).items())


def test_lora_layers_hooked_projections_and_other_processors_keep_their_matmuls(lora):
    """What a fused matmul would skip is left alone: a LoRA adapter's layers, a hook on a
    projection (a feature read from it), a processor of the user's own choice."""
    denoiser = lora.personalized.denoiser
    with FusedProjections([denoiser]).applied():  # the adapter is on every projection
        assert _processors(denoiser) == {"AttnProcessor2_0": len(_attentions(denoiser))}
    backbone = AudioLDM2Backbone.from_pipe(tiny_audioldm2_pipeline())
    hooked, other, *rest = _attentions(backbone.denoiser)
    seen = []
    hooked.to_k.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    other.set_processor(AttnProcessor())
    with FusedProjections([backbone.denoiser]).applied():
        assert type(hooked.processor) is AttnProcessor2_0 and type(other.processor) is AttnProcessor
        assert all(type(a.processor) is FusedAttnProcessor2_0 for a in rest)
        _predict(backbone, contextlib.nullcontext())
    assert len(seen) == 1


@pytest.mark.parametrize("register", ["register_full_backward_hook", "register_full_backward_pre_hook"])
def test_projections_with_backward_hooks_keep_their_matmuls(register):
    """A hook on a projection's gradient is called as it would be: its module is not fused."""
    hooked, plain = Attention(8, heads=2, dim_head=4), Attention(8, heads=2, dim_head=4)
    calls = []
    getattr(nn.Module, register)(hooked.to_v, lambda module, *grads: calls.append(module))
    x = torch.randn(1, 3, 8, requires_grad=True)
    with FusedProjections([hooked, plain]).applied():
        assert type(hooked.processor) is AttnProcessor2_0 and type(plain.processor) is FusedAttnProcessor2_0
        hooked(x).sum().backward()
    assert calls == [hooked.to_v]


def test_fused_weights_are_kept_and_follow_changed_or_replaced_projections():
    torch.manual_seed(0)
    self_attn, cross_attn = Attention(8, heads=2, dim_head=4), Attention(8, cross_attention_dim=6, heads=2, dim_head=4)
    fused = FusedProjections([self_attn, cross_attn])

    def expected(attn: Attention, names: tuple[str, ...]) -> torch.Tensor:
        return torch.cat([getattr(attn, n).weight for n in names])

    with fused.applied():
        qkv, kv = self_attn.to_qkv, cross_attn.to_kv
        assert torch.equal(qkv.weight, expected(self_attn, ("to_q", "to_k", "to_v")))
        assert torch.equal(kv.weight, expected(cross_attn, ("to_k", "to_v")))
        assert not qkv.weight.requires_grad and not hasattr(cross_attn, "to_qkv")
    with torch.no_grad():
        self_attn.to_k.weight.add_(1)  # changed in place
    cross_attn.to_v.weight = torch.nn.Parameter(torch.randn(8, 6))  # replaced
    with fused.applied():
        assert self_attn.to_qkv is qkv and cross_attn.to_kv is kv  # the same layers (a graph's addresses)
        assert torch.equal(qkv.weight, expected(self_attn, ("to_q", "to_k", "to_v")))
        assert torch.equal(kv.weight, expected(cross_attn, ("to_k", "to_v")))
    self_attn.to(torch.bfloat16)
    with pytest.raises(RuntimeError, match="boom"), fused.applied():
        assert self_attn.to_qkv.weight.dtype == torch.bfloat16
        raise RuntimeError("boom")
    assert type(self_attn.processor) is AttnProcessor2_0 and not hasattr(self_attn, "to_qkv")


def test_fused_projections_hold_the_cast_weights_once():
    """Entered after :class:`CastOnce`, the fused layer holds the bf16 copies side by side, and
    the cast copies become views of its rows (one copy of them), into which a float32 weight
    changed between edits is cast again."""
    attn = Attention(8, heads=2, dim_head=4)
    casts = CastOnce([attn], torch.bfloat16)
    fused = FusedProjections([attn], casts)

    def projections() -> list[torch.Tensor]:
        return [attn.to_q.weight, attn.to_k.weight, attn.to_v.weight]

    with casts.applied(), fused.applied():
        qkv = attn.to_qkv.weight
        assert qkv.dtype == torch.bfloat16 and torch.equal(qkv, torch.cat(projections()))
        assert [w.data_ptr() for w in projections()] == [qkv[row].data_ptr() for row in (0, 8, 16)]
    assert attn.to_q.weight.dtype == torch.float32
    with torch.no_grad():
        attn.to_v.weight.mul_(2)
    with casts.applied(), fused.applied():
        assert attn.to_qkv.weight is qkv and attn.to_v.weight.data_ptr() == qkv[16].data_ptr()
        with pytest.raises(ValueError, match=r"cannot keep a torch.bfloat16 \(8, 8\) cast in torch.float32"):
            casts.keep_in(attn.to_q, "weight", torch.zeros(8, 8))
    assert torch.equal(qkv[16:], attn.to_v.weight.to(torch.bfloat16))


def test_merged_and_cast_projections_are_held_once_in_the_fused_rows():
    """bf16 with merged LoRA: the fused base rows hold the cast base weights and the fused merged
    rows the merged weights; the layers' own are views of them."""
    net = _adapted_attentions()
    with torch.no_grad():
        adapted = _calls(net)
    merged, casts = MergedLoRA([net], ["a"], torch.bfloat16), CastOnce([net], torch.bfloat16)
    fused = FusedProjections([net], casts)
    with torch.no_grad(), merged.applied(), casts.applied(), fused.applied():
        qkv, parts = net["self"].to_qkv, [net["self"].to_q, net["self"].to_k, net["self"].to_v]
        for fused_weight, weights in (
            (qkv.base.weight, [part.layer.base_layer.weight for part in parts]),
            (qkv.merged["a"], [part.merged["a"] for part in parts]),
        ):
            assert [w.data_ptr() for w in weights] == [fused_weight[row].data_ptr() for row in (0, 8, 16)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = _calls(net)
    for name in adapted:
        torch.testing.assert_close(outputs[name].float(), adapted[name], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("path", ["batched", "reference", "bf16"])
def test_an_edit_with_fused_projections_edits_as_one_without(tiny_backbone, path):
    """The same edit; in bf16 the editor's cast copies of the projections are the fused rows."""
    performance = Performance.preset(path)
    fused_processors, shared = [], []

    def look(state) -> None:
        fused_processors.append(_processors(tiny_backbone.denoiser)["FusedAttnProcessor2_0"])
        attn = _attentions(tiny_backbone.denoiser)[0]
        shared.append(attn.to_q.weight.data_ptr() == attn.to_qkv.weight.data_ptr())

    latent = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = SteerMusic(tiny_backbone, steps=3, performance=performance).edit_latent(latent, **PROMPTS)
    editor = SteerMusic(tiny_backbone, steps=3, performance=dataclasses.replace(performance, fuse_projections=True))
    fused = editor.edit_latent(latent, callback=look, **PROMPTS)
    tolerance = dict(rtol=1e-5, atol=1e-5) if path != "bf16" else dict(rtol=0.02, atol=0.02)
    torch.testing.assert_close(fused.latent, plain.latent, **tolerance)
    assert fused_processors == [len(_attentions(tiny_backbone.denoiser))] * 3  # on during the edit
    assert _processors(tiny_backbone.denoiser)["FusedAttnProcessor2_0"] == 0  # and off after it
    assert shared == [path == "bf16"] * 3


def test_an_edit_with_fused_projections_draws_nothing_from_the_global_generator(tiny_backbone):
    """The fused layers are built without initialising weights that are filled at once."""
    editor = SteerMusic(tiny_backbone, steps=1, performance=Performance(fuse_projections=True))
    state = torch.get_rng_state()
    editor.edit_latent(_latent(), **PROMPTS)
    assert torch.equal(torch.get_rng_state(), state)


def _plus_edit(backbone, lora, performance: Performance):
    """A 3-step SteerMusic+ edit of :func:`_latent`, and how many attention modules ran fused
    projections at each step."""
    fused_processors = []

    def look(state) -> None:
        fused_processors.append(_processors(backbone.denoiser)["FusedAttnProcessor2_0"])

    editor = SteerMusicPlus(backbone, lora, steps=3, performance=performance)
    return editor.edit_latent(_latent(), callback=look, **PROMPTS), fused_processors


def _latent() -> torch.Tensor:
    return torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("lora", [LORA_TARGETS, ("to_out.0",)], ids=["on-projections", "on-outputs"], indirect=True)
def test_steermusic_plus_fuses_the_projections_its_lora_concept_leaves(tiny_backbone, lora):
    """ε and ε′ share the denoiser: a projection with the adapter is left as it is (nothing is
    fused with the default targets); with the adapter elsewhere both models run fused ones."""
    plain, _ = _plus_edit(tiny_backbone, lora, Performance())
    fused, fused_processors = _plus_edit(tiny_backbone, lora, Performance(fuse_projections=True))
    torch.testing.assert_close(fused.latent, plain.latent, rtol=1e-5, atol=1e-5)
    assert (plain.latent - _latent()).abs().max() > 1e-3
    on_projections = lora.personalized.concept.config.lora_targets == LORA_TARGETS
    assert fused_processors == [0 if on_projections else len(_attentions(tiny_backbone.denoiser))] * 3


def test_a_compiled_editor_keeps_its_fused_layers_and_graphs_and_follows_changed_weights(dynamo):
    """The fused layers are the same between edits, so the first edit's graphs serve the next; a
    projection changed in place between edits is copied into them, and the next edit uses it, as
    an eager editor does."""
    backbone = load_backbone("tiny")
    latent = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    eager = SteerMusic(backbone, steps=2, performance=Performance(fuse_projections=True))
    performance = Performance(compile=True, compile_backend="eager", fuse_projections=True)
    with SteerMusic(backbone, steps=2, performance=performance) as compiled:
        first = compiled.edit_latent(latent, **PROMPTS).latent
        graphs = dynamo.graphs()
        torch.testing.assert_close(compiled.edit_latent(latent, **PROMPTS).latent, first, rtol=0, atol=0)
        with torch.no_grad():
            for attn in _attentions(backbone.denoiser):
                attn.to_v.weight.mul_(2)
        changed = compiled.edit_latent(latent, **PROMPTS).latent
        assert dynamo.graphs() == graphs >= 1 and dynamo.breaks() == []
    assert (changed - first).abs().max() > 1e-4
    torch.testing.assert_close(changed, eager.edit_latent(latent, **PROMPTS).latent, rtol=1e-5, atol=1e-5)


def _adapted_attentions() -> nn.ModuleDict:
    """A self-attention, a cross-attention and one whose text has the latent's width (AudioLDM's
    are called without text), with a LoRA adapter ``a`` (random B) on each query, key and value."""
    torch.manual_seed(0)
    net = nn.ModuleDict(
        {
            "self": Attention(8, heads=2, dim_head=4),
            "cross": Attention(8, cross_attention_dim=6, heads=2, dim_head=4),
            "same": Attention(8, cross_attention_dim=8, heads=2, dim_head=4),
        }
    )
    net = inject_adapter_in_model(LoraConfig(r=2, target_modules=["to_q", "to_k", "to_v"]), net, adapter_name="a")
    with torch.no_grad():
        for module in net.modules():
            if hasattr(module, "lora_B"):
                module.lora_B["a"].weight.normal_()
    return net


def _calls(net: nn.ModuleDict) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x, text, same_text = (torch.randn(2, n, width, generator=generator) for n, width in ((5, 8), (3, 6), (3, 8)))
    return {
        "self": net["self"](x), "cross": net["cross"](x, text),
        "same": net["same"](x), "same-text": net["same"](x, same_text),
    }


def test_a_kept_runtime_makes_its_copies_again_after_writes_through_data():
    """A compiled editor's runtime keeps its merged, cast and fused copies between edits; a write
    through ``.data`` (peft's unsafe merge, ``nn.Module._apply``) moves no version counter, so
    :meth:`~steer.editor._Runtime.follow_weights` finds it by the weights' values and makes the
    copies again, in place, as a new runtime would make them."""

    def runtime(net: nn.Module) -> _Runtime:
        casts = CastOnce([net], torch.bfloat16)
        return _Runtime(torch.device("cpu"), {}, None, MergedLoRA([net], ["a"], torch.bfloat16), casts,
                        FusedProjections([net], casts))

    def outputs(runtime: _Runtime) -> tuple[dict[str, torch.Tensor], int]:
        runtime.follow_weights()
        with torch.no_grad(), runtime.edit_weights(), torch.autocast("cpu", dtype=torch.bfloat16):
            return _calls(net), net["self"].to_qkv.base.weight.data_ptr()

    net = _adapted_attentions()
    kept = runtime(net)
    first, address = outputs(kept)
    versions = [p._version for p in net.parameters()]
    for name in ("self", "cross"):
        net[name].to_v.base_layer.weight.data.mul_(2)
        net[name].to_q.lora_B["a"].weight.data.mul_(-1)
    assert [p._version for p in net.parameters()] == versions  # nothing for Sources to see
    changed, same_address = outputs(kept)
    assert same_address == address  # where the compiled graphs read
    fresh, _ = outputs(runtime(net))
    for name in first:
        torch.testing.assert_close(changed[name], fresh[name], rtol=0, atol=0)
    assert all((changed[name] - first[name]).abs().max() > 0.1 for name in ("self", "cross"))


def _switch(net: nn.Module, disabled: bool, only: str | None = None) -> None:
    for name, module in net.named_modules():
        if hasattr(module, "lora_B") and (only is None or name.endswith(only)):
            set_adapter_state(module, "a", disabled)


def test_merged_lora_projections_fuse_switch_with_the_adapter_and_share_the_merged_weights(op_counts):
    """With the adapter merged, each group of projections is one matmul for ε′ (the adapter on)
    and for ε (off), as peft's layers compute; the merged layers' weights are views of the fused
    ones (held once), and a LoRA weight changed in place reaches the fused rows."""
    net = _adapted_attentions()
    with torch.no_grad():
        adapted = _calls(net)
        _switch(net, disabled=True)
        base = _calls(net)
        _switch(net, disabled=False)
    merged, fused = MergedLoRA([net], ["a"]), FusedProjections([net])
    fused_ops = op_counts()
    with torch.no_grad(), merged.applied(), fused.applied():
        assert _processors(net) == {"FusedAttnProcessor2_0": 3}
        assert {type(net[n].to_kv) for n in ("cross", "same")} == {FusedMergedLinear}
        with fused_ops:
            outputs = _calls(net)
        _switch(net, disabled=True)
        base_outputs = _calls(net)
        _switch(net, disabled=False)
        qkv = net["self"].to_qkv.merged["a"]
        views = [net["self"].to_q.merged["a"], net["self"].to_k.merged["a"], net["self"].to_v.merged["a"]]
    for name in adapted:
        torch.testing.assert_close(outputs[name], adapted[name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(base_outputs[name], base[name], rtol=1e-6, atol=1e-6)
    # one matmul a group (self: qkv; cross: kv; same without text: qkv; with text: kv), plus the
    # cross-attentions' queries and the four output projections
    assert fused_ops.counts["aten.mm"] == 4 + 2
    assert all(v.untyped_storage().data_ptr() == qkv.untyped_storage().data_ptr() for v in views)
    assert [v.data_ptr() for v in views] == [qkv[r].data_ptr() for r in (0, 8, 16)]
    layer = net["self"].to_k.lora_B["a"]
    with torch.no_grad():
        layer.weight.mul_(3)  # changed in place between uses
        expected = _calls(net)["self"]
        with merged.applied(), fused.applied():
            assert net["self"].to_qkv.merged["a"] is qkv
            torch.testing.assert_close(_calls(net)["self"], expected, rtol=1e-5, atol=1e-6)
    assert type(net["self"].to_q).__name__ == "Linear" and not hasattr(net["self"], "to_qkv")  # peft's, put back


def test_fused_merged_projections_switched_apart_run_each_part():
    """A state the fused weights do not hold (one projection's adapter off, the others on) runs
    each merged layer by itself, as peft's layers would."""
    net = _adapted_attentions()
    _switch(net, disabled=True, only="to_k")
    with torch.no_grad():
        expected = _calls(net)
        with MergedLoRA([net], ["a"]).applied(), FusedProjections([net]).applied():
            assert isinstance(net["self"].to_qkv, FusedMergedLinear)
            outputs = _calls(net)
    for name in expected:
        torch.testing.assert_close(outputs[name], expected[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", ["batched", "reference", "checkpointed", "bf16"])
def test_a_steermusic_plus_edit_with_merged_lora_fuses_every_projection_and_edits_as_one_without(
    tiny_backbone, lora, path
):
    """Merged, the concept's default targets no longer keep ε and ε′ from fused projections:
    both run them, the checkpointed recomputation included, and the edit is the same."""
    performance = dataclasses.replace(Performance.preset(path), merge_lora=True)
    merged, _ = _plus_edit(tiny_backbone, lora, performance)
    fused, fused_processors = _plus_edit(tiny_backbone, lora, dataclasses.replace(performance, fuse_projections=True))
    assert (merged.latent - _latent()).abs().max() > 0.1
    if path != "bf16":
        torch.testing.assert_close(fused.latent, merged.latent, rtol=1e-5, atol=1e-5)
    else:  # the larger bf16 matmuls round apart: as near the float32 edit (0.077 against 0.069)
        exact = _plus_edit(tiny_backbone, lora, Performance())[0].latent
        error, merged_error = ((e.latent - exact).abs().max() for e in (fused, merged))
        assert 0 < error < 1.5 * merged_error < 0.15
    assert fused_processors == [len(_attentions(tiny_backbone.denoiser))] * 3
    assert _processors(tiny_backbone.denoiser)["FusedAttnProcessor2_0"] == 0
    assert not any(isinstance(m, MergedLinear) for m in tiny_backbone.denoiser.modules())


def test_merged_and_fused_the_personalised_call_runs_as_few_matmuls_as_the_fused_base_model(
    tiny_backbone, lora, op_counts
):
    """ε′ with its adapter merged and its projections fused runs the fused ε's matmuls: the
    adapter's two more a layer and the fusion's saving both taken off."""
    personalized = lora.personalized
    saved = _saved_matmuls(tiny_backbone, op_counts)
    base_ops, ops, fused_base_ops, fused_ops = (op_counts() for _ in range(4))
    _predict(tiny_backbone, base_ops)
    with personalized.adapter_enabled():
        adapted = _predict(personalized, ops)
    denoiser = tiny_backbone.denoiser
    with MergedLoRA([denoiser], [personalized.adapter_name]).applied(), FusedProjections([denoiser]).applied():
        base = _predict(tiny_backbone, fused_base_ops)
        with personalized.adapter_enabled():
            fused = _predict(personalized, fused_ops)
    torch.testing.assert_close(fused, adapted, rtol=1e-5, atol=1e-5)
    assert (fused - base).abs().max() > 1e-2
    assert fused_base_ops.matmuls == fused_ops.matmuls == base_ops.matmuls - saved
    assert ops.matmuls == base_ops.matmuls + 2 * len(personalized._lora_layers)
