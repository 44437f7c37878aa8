"""DreamSound's personalised editing, the baseline of SteerMusic+ (Niu et al., section 5.4,
Table 2; Plitsis et al., "Investigating Personalization Methods in Text to Music Generation",
ICASSP 2024): invert the source shallowly by DDIM with the base model and the source prompt,
then sample with the concept's personalised model and the target prompt naming its token.
"""

from __future__ import annotations

import os

from backbones import Backbone

from ..concepts import Concept
from ..concepts.concept import prompt_without_token, reads_case
from .ddim_inversion import DDIMInversion


class DreamSoundEditing(DDIMInversion):
    """Personalised editing by shallow DDIM inversion with the base model ε and the source
    prompt, then DDIM sampling with the concept's model ε' and the target prompt.

    The paper's two personalised baselines are this editor with a DreamBooth concept
    ("DreamSound", a fine-tuned model) and with a textual-inversion one ("Textual inv.": the
    base model, reading the learnt token). The paper inverts to "a predefined shallow time step
    t = 30" without naming the schedule; here that is read as 30 steps of the 200-step DDIM
    schedule the other baselines use (``strength=0.15``: the inversion reaches timestep 146 of
    1000). Pass ``strength`` (and ``steps``) for another reading.

    The editor holds ε' (a LoRA concept's adapter in the base denoiser): use it as a context
    manager, or call :meth:`close`, to give the base model back unchanged.

    Args:
        backbone: the base model ε, which inverts.
        concept: gives ε' (``concept.apply(backbone)``), which samples, and its token: a
            :class:`~steer.concepts.Concept`, or its folder or Hub repo id (loaded with
            :meth:`Concept.from_pretrained <steer.concepts.Concept.from_pretrained>`).
        steps: DDIM steps of the full schedule.
        strength: fraction of the schedule that is inverted and re-sampled, in (0, 1].
        guidance_scale_inversion: classifier-free guidance of the source prompt while inverting.
        guidance_scale: classifier-free guidance of the target prompt while sampling.

    Example:
        >>> import torch
        >>> from backbones import load_backbone
        >>> from steer import Audio, Concept
        >>> backbone = load_backbone("tiny")
        >>> concept = Concept.train(backbone, [Audio(torch.randn(1, 16000) * 0.1, 16000)], token="sks",
        ...                         class_word="guitar", steps=1, progress=False)
        >>> with DreamSoundEditing(backbone, concept, steps=20) as editor:  # random weights: a shape check
        ...     editor.edit(Audio(torch.randn(1, 16000) * 0.1, 16000), source="a piano",
        ...                 target="a sks guitar").audio.shape
        torch.Size([1, 16000])
    """

    default_strength = 0.15
    _fixed = ("backbone", "concept", "token", "class_word", "personalized")
    _fixed_because = "its personalised model is made then"
    _settings = ("steps", "strength", "guidance_scale_inversion", "guidance_scale")

    def __init__(
        self,
        backbone: Backbone,
        concept: Concept | str | os.PathLike,
        *,
        steps: int = 200,
        strength: float | None = None,
        guidance_scale_inversion: float = 3.0,
        guidance_scale: float = 12.0,
    ) -> None:
        super().__init__(
            backbone, steps=steps, strength=strength, guidance_scale_inversion=guidance_scale_inversion,
            guidance_scale=guidance_scale,
        )
        if isinstance(concept, (str, os.PathLike)):
            concept = Concept.from_pretrained(concept)
        elif not isinstance(getattr(concept, "token", None), str) or not callable(getattr(concept, "apply", None)):
            raise TypeError(f"DreamSoundEditing needs a Concept (or its folder or Hub repo id), got {type(concept).__name__}")
        self.concept = concept
        self.token: str = concept.token
        self.class_word: str | None = getattr(concept, "class_word", None)
        self.personalized = concept.apply(backbone)

    @property
    def sampler(self) -> Backbone:
        """The concept's personalised model ε', which samples with the target prompt."""
        if getattr(self.personalized, "closed", False):
            raise RuntimeError(
                "this DreamSoundEditing editor was closed (its concept left the backbone): build a new one to edit again"
            )
        return self.personalized

    def check_targets(self, targets: list[str]) -> None:
        """Refuse a target prompt that does not name the concept's token (ε' would edit towards
        the base model's words), with an example in the concept's words."""
        case_sensitive = reads_case(self.backbone.family)
        for prompt in targets:
            prompt_without_token(prompt, self.token, self.class_word, case_sensitive=case_sensitive)

    def close(self) -> None:
        """Release ε' (a LoRA concept's adapter leaves the base denoiser); idempotent."""
        close = getattr(self.personalized, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> DreamSoundEditing:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
