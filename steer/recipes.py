"""Editors configured as in the SteerMusic paper (Niu et al., sections 4.1 and 5.1) and the
authors' public code."""

from __future__ import annotations

import os
from typing import Literal, Protocol

import torch

from backbones import Backbone
from losses import (
    DeltaDenoisingScore,
    PersonalizedContrastiveLoss,
    PersonalizedDeltaScore,
    ScoreLoss,
    ShiftRegularizer,
    TimestepWeighting,
)

from .concepts import Concept
from .concepts.concept import prompt_without_token, reads_case
from .editor import Editor
from .performance import Performance


class SteerMusic(Editor):
    """Zero-shot text-guided music editing with Delta Denoising Score.

    Defaults are the authors' recipe: 400 SGD steps at learning rate 0.02, decayed ×0.9 every 20
    steps; t uniform in [20, 980]; w(t) = 2 · (1 − ᾱ_t); classifier-free guidance 30 on both
    predictions; the latent starts at the VAE encoding of the source. ``performance`` picks the
    execution path (:class:`~steer.performance.Performance`, e.g. ``Performance.preset("fused")``,
    or a preset's name, ``"fused"``).

    Example:
        >>> import torch
        >>> from backbones import load_backbone
        >>> from steer import Audio
        >>> editor = SteerMusic(load_backbone("tiny"), steps=2)
        >>> clip = Audio(torch.randn(1, 16000) * 0.1, 16000)  # or load_audio("in.wav")
        >>> result = editor.edit(clip, source="a piano melody", target="a violin melody")
        >>> result.audio.shape, result.sample_rate
        (torch.Size([1, 16000]), 16000)
    """

    _built_from = ("guidance_scale", "weighting")

    def __init__(
        self,
        backbone: Backbone,
        *,
        steps: int = 400,
        guidance_scale: float = 30.0,
        lr: float = 0.02,
        weighting: TimestepWeighting = TimestepWeighting(scale=2.0),
        optimizer: str = "sgd",
        lr_step_size: int = 20,
        lr_gamma: float = 0.9,
        t_min: int = 20,
        t_max: int = 980,
        performance: Performance | str = Performance(),
    ) -> None:
        super().__init__(
            backbone,
            losses=[DeltaDenoisingScore(guidance_scale=guidance_scale, weighting=weighting)],
            steps=steps,
            lr=lr,
            optimizer=optimizer,
            lr_step_size=lr_step_size,
            lr_gamma=lr_gamma,
            t_min=t_min,
            t_max=t_max,
            performance=performance,
        )


class ConceptLike(Protocol):
    """What :class:`SteerMusicPlus` needs of a concept: its token and the personalised model (a
    ``class_word`` attribute, as :class:`~steer.concepts.Concept` has, is read where present)."""

    token: str

    def apply(self, backbone: Backbone) -> Backbone: ...


class SteerMusicPlus(Editor):
    """Personalised music editing: PDS + shift regulariser + PCon (Niu et al., 2025, section 4.2).

    The target prompt names the concept's token ("a sks guitar melody"); the personalised model
    ε' reads it as is, while the base model's shift-term prompt drops the token ("a guitar
    melody"). Defaults are the authors' recipe: 400 SGD steps at learning rate 0.1 (×0.9 every 20
    steps; the paper's 400, where the loop of their ``SteerMusic_personalized.py`` makes 401
    updates before the audio it saves, and their zero-shot script 400), t in [50, 950] (that
    script keeps its pipeline's default t_range 0.05–0.95; the zero-shot script passes
    0.02–0.98), w(t) = 1 − ᾱ_t, guidance 15, λ = 0.05, PCon with weight 3 on the up-block
    self-attention outputs, 256 time positions, τ = 0.07, reference features from the
    base model on the source (the paper; ``pcon_reference="edited"`` is the authors' script).

    The editor holds ε' (for a LoRA concept, an adapter injected into the base denoiser): use it
    as a context manager, or call :meth:`close`, to give the base model back unchanged.

    Args:
        backbone: the base model ε.
        concept: gives the personalised model ε' (``concept.apply(backbone)``) and its token: a
            :class:`~steer.concepts.Concept`, or its folder or Hub repo id (loaded with
            :meth:`Concept.from_pretrained <steer.concepts.Concept.from_pretrained>`).
        shift: λ; 0 removes the shift term.
        pcon_weight: weight of PCon; 0 removes it.
        pcon_layers: self-attention modules PCon reads (a regular expression); ``None`` takes
            the backbone's ``decoder_self_attention`` (the up blocks of AudioLDM2's U-Net).
        performance: the execution path (:class:`~steer.performance.Performance`).
    """

    _fixed = (*Editor._fixed, "token", "class_word", "personalized")
    _built_from = (
        "concept", "guidance_scale", "weighting", "shift", "pcon_weight", "pcon_layers", "pcon_tau", "pcon_positions",
        "pcon_reference",
    )

    def __init__(
        self,
        backbone: Backbone,
        concept: ConceptLike | str | os.PathLike,
        *,
        steps: int = 400,
        guidance_scale: float = 15.0,
        lr: float = 0.1,
        weighting: TimestepWeighting = TimestepWeighting(scale=1.0),
        shift: float = 0.05,
        pcon_weight: float = 3.0,
        pcon_layers: str | None = None,
        pcon_tau: float = 0.07,
        pcon_positions: int = 256,
        pcon_reference: Literal["source", "edited"] = "source",
        optimizer: str = "sgd",
        lr_step_size: int = 20,
        lr_gamma: float = 0.9,
        t_min: int = 50,
        t_max: int = 950,
        performance: Performance | str = Performance(),
    ) -> None:
        if isinstance(concept, (str, os.PathLike)):
            concept = Concept.from_pretrained(concept)
        elif not isinstance(getattr(concept, "token", None), str) or not callable(getattr(concept, "apply", None)):
            raise TypeError(f"SteerMusicPlus needs a Concept (or its folder or Hub repo id), got {type(concept).__name__}")
        losses: list[ScoreLoss] = [
            PersonalizedDeltaScore(guidance_scale=guidance_scale, weighting=weighting)
        ]
        if shift:
            losses.append(
                ShiftRegularizer(strength=shift, guidance_scale=guidance_scale, weighting=weighting)
            )
        if pcon_weight:
            losses.append(
                PersonalizedContrastiveLoss(
                    weight=pcon_weight,
                    tau=pcon_tau,
                    num_positions=pcon_positions,
                    layers=pcon_layers,
                    guidance_scale=guidance_scale,
                    reference=pcon_reference,
                )
            )
        super().__init__(
            backbone,
            losses=losses,
            steps=steps,
            lr=lr,
            optimizer=optimizer,
            lr_step_size=lr_step_size,
            lr_gamma=lr_gamma,
            t_min=t_min,
            t_max=t_max,
            performance=performance,
        )
        self.token = concept.token
        self.class_word: str | None = getattr(concept, "class_word", None)
        # ε′'s own weights (a LoRA concept's adapter) made as normal tensors, also when the editor
        # is built under torch.inference_mode(): PCon backpropagates through them
        with torch.inference_mode(False):
            self.personalized = concept.apply(backbone)

    def close(self) -> None:
        """Release ε' (a LoRA concept's adapter leaves the base denoiser) and what
        :meth:`Editor.close` releases; idempotent."""
        super().close()
        close = getattr(self.personalized, "close", None)
        if close is not None:
            close()

    def models(self) -> dict[str, Backbone]:
        if getattr(self.personalized, "closed", False):  # a PersonalizedBackbone closed with the editor
            raise RuntimeError(
                "this SteerMusicPlus editor was closed (its concept left the backbone): build a new one to edit again"
            )
        return {"base": self.backbone, "personalized": self.personalized}

    def prompt_roles(self, source: list[str], target: list[str]) -> dict[str, list[str]]:
        """The editor's roles and ``"target_base"``, each target prompt without the concept's
        token; a target not naming the token is refused with an example in the concept's words."""
        case_sensitive = reads_case(self.backbone.family)
        base = [prompt_without_token(p, self.token, self.class_word, case_sensitive=case_sensitive) for p in target]
        return {"source": source, "target": target, "target_base": base}
