"""Load a backbone by name: ``"tiny"`` (offline, random weights), a local folder or a Hub repo id."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .audioldm2 import AudioLDM2Backbone
from .base import Backbone
from .mel_diffusion import MelDiffusionBackbone

#: Pipeline classes (``model_index.json``'s ``_class_name``) and the adapter that serves each.
ADAPTERS: dict[str, type[AudioLDM2Backbone]] = {"AudioLDM2Pipeline": AudioLDM2Backbone}


def load_backbone(
    name: str,
    *,
    torch_dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Backbone:
    """The backbone for ``name``.

    Args:
        name: ``"tiny"`` for a randomly initialised AudioLDM2 built offline (its output is noise;
            it exists for tests and demos), a folder written by ``save_pretrained`` (a diffusers
            pipeline or a steer mel-diffusion model), or a Hub repo id such as
            ``"cvssp/audioldm2-music"``.
        torch_dtype: the model weights' dtype (latents stay float32).
        device: where the model runs.
    """
    if name == "tiny":
        from .tiny import tiny_audioldm2_pipeline

        pipe = tiny_audioldm2_pipeline()
        if torch_dtype != torch.float32:  # casting float32 to float32 makes diffusers warn
            pipe.to(dtype=torch_dtype)
        return AudioLDM2Backbone.from_pipe(pipe.to(device))
    index = Path(name) / "model_index.json"
    if Path(name).is_dir():
        if (Path(name) / "config.json").is_file() and not index.is_file():
            return MelDiffusionBackbone.from_pretrained(name, torch_dtype=torch_dtype, device=device)
        if not index.is_file():
            raise ValueError(
                f"{name} is a folder without model_index.json (a diffusers pipeline) or "
                "config.json (a steer mel-diffusion model)"
            )
        pipeline = json.loads(index.read_text()).get("_class_name")
        if pipeline not in ADAPTERS:
            raise ValueError(
                f"{name} holds a {pipeline}, which steer does not support; supported pipelines: "
                f"{', '.join(sorted(ADAPTERS))}"
            )
        return ADAPTERS[pipeline].from_pretrained(name, torch_dtype=torch_dtype, device=device)
    return AudioLDM2Backbone.from_pretrained(name, torch_dtype=torch_dtype, device=device)
