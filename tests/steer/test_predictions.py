"""The denoiser calls answering the losses' requests (``steer.predictions``): the gradient
checkpointing a :class:`Predictor` sets for an edit, and clear errors for what a request asks
and is not given."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from backbones import AudioLDM2Backbone
from backbones.tiny import tiny_audioldm2_pipeline
from losses import FeatureRequest, NoiseRequest
from steer.predictions import Predictor, evaluate_requests, feature_modules


def _checkpointing(denoiser: torch.nn.Module) -> list[tuple[str, bool, object]]:
    """Each checkpointing module's flag and function (``None``: never set)."""
    return [
        (name, m.gradient_checkpointing, getattr(m, "_gradient_checkpointing_func", None))
        for name, m in denoiser.named_modules()
        if hasattr(m, "gradient_checkpointing")
    ]


@pytest.mark.parametrize("users", ["own-function", "never-set"])
def test_closed_predictors_set_the_denoisers_checkpointing_back_as_they_found_it(users):
    """While the predictors are open, every block checkpoints with the backbone's function
    (the one that recomputes with a LoRA adapter's state); closed, in the order the editor
    closes them (two models on one denoiser, as SteerMusic+'s), each block has its own flag and
    function again (none where none was set)."""
    backbone = AudioLDM2Backbone.from_pipe(tiny_audioldm2_pipeline())  # its own UNet: this test changes it
    unet = backbone.denoiser

    def mine(module, *args):
        return checkpoint(module, *args, use_reentrant=False)

    if users == "own-function":
        unet.enable_gradient_checkpointing(mine)
        next(m for m in unet.modules() if hasattr(m, "gradient_checkpointing")).gradient_checkpointing = False
    before = _checkpointing(unet)
    request = NoiseRequest("edit", "target", 3.0)
    features = [FeatureRequest(request, None, grad=True)]
    first = Predictor(backbone, features, checkpointing=users == "never-set")  # on already: set anyway
    second = Predictor(backbone, features, checkpointing=True)
    assert {(on, fn) for _, on, fn in _checkpointing(unet)} == {(True, backbone._checkpoint)}
    first.close()
    second.close()
    second.close()  # idempotent
    assert _checkpointing(unet) == before


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (NoiseRequest("source", "target", 3.0), r"latent 'source', and the ones given are \['edit'\]"),
        (NoiseRequest("edit", "style", 3.0), r"prompt of model 'base' 'style', and the ones given are \['target'\]"),
        (NoiseRequest("edit", "target", 3.0, "teacher"), r"model 'teacher', and the ones given are \['base'\]"),
    ],
    ids=["latent", "prompt", "model"],
)
def test_a_request_for_a_role_not_given_is_a_clear_error(analytic_backbone, request_, message):
    x = torch.zeros(1, *analytic_backbone.shape)
    with pytest.raises(ValueError, match=rf"NoiseRequest\(.*\) asks for the {message}"):
        evaluate_requests(
            [NoiseRequest("edit", "target", 3.0), request_],
            models={"base": analytic_backbone},
            latents={"edit": x},
            prompts={"base": {"target": analytic_backbone.encode_prompt(["a violin"])}},
            t=torch.tensor([500]),
        )


def test_feature_layers_that_match_nothing_name_the_closest_modules():
    """The error gave one example name, the model's first self-attention module."""
    names = [f"{block}.attentions.{i}.transformer_blocks.0.attn1" for block in ("down_blocks.0", "up_blocks.0") for i in (0, 1)]
    model = SimpleNamespace(self_attention_modules=lambda: dict.fromkeys(names), decoder_self_attention="^up_blocks")
    typo = "up_blocks.0.attentions.1.transformer_blocks.0.attn2"
    with pytest.raises(
        ValueError,
        match=rf"the feature layers '{re.escape(typo)}' .* match none of the 4 self-attention modules of "
        r"SimpleNamespace \(pass a pattern that names some\): did you mean 'up_blocks\.0\.attentions\.1\.",
    ):
        feature_modules(model, [FeatureRequest(NoiseRequest("edit", "target", 3.0), typo)])
    assert feature_modules(model, [FeatureRequest(NoiseRequest("edit", "target", 3.0), None)]) == names[2:]


def test_a_call_mixing_guidance_scales_fills_them_on_the_device_without_a_host_copy():
    """Requests of one model at different guidance scales (DDS at 10, SDS at 3) share a call whose
    scales are one per row; they are filled on the device, since a copy of host data (what
    ``torch.tensor(list, device=...)`` is) cannot be recorded into a CUDA graph."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from steer.predictions import _guidance

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.__name__)
            return func(*args, **(kwargs or {}))

    group = [NoiseRequest("edit", "target", 10.0), NoiseRequest("edit", "target", 3.0)]
    with Ops() as ops:
        scales = _guidance(group, 2, torch.device("cpu"))
    assert torch.equal(scales, torch.tensor([10.0, 10.0, 3.0, 3.0]))
    assert not [n for n in ops.names if "lift_fresh" in n or "copy" in n], ops.names
    assert _guidance(group[:1], 2, torch.device("cpu")) == 10.0
