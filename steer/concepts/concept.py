"""A learnt musical concept: what it is, its weights, and how it is saved, published and loaded.

A concept binds a token ("sks") to the sound of a few reference clips by fine-tuning a base
backbone (Plitsis et al., 2024, "DreamSound", https://arxiv.org/abs/2309.11140; SteerMusic+ uses
one as its personalised model ε', Niu et al., 2025, section 4.2). Three methods are supported:

- ``"dreambooth"``: the whole denoiser is fine-tuned (Ruiz et al., 2023); the weights are the full
  fine-tuned denoiser;
- ``"lora"``: low-rank adapters on the denoiser's attention projections (Hu et al., 2021), saved
  in peft's layout (``adapter_model.safetensors`` + ``adapter_config.json``), so that
  ``peft.PeftModel.from_pretrained(denoiser, folder)`` reads them too;
- ``"textual_inversion"``: only the token's embedding is learnt (Gal et al., 2022).

A saved concept is a folder (or Hub repo) holding ``concept_config.json``, the weights as
safetensors (never pickle), and a ``README.md`` model card with the Hub metadata.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import os
import re
import struct
import tempfile
import unicodedata
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import (
    HfApi,
    ModelCard,
    ModelCardData,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
)
from huggingface_hub.utils import validate_repo_id
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from backbones import auto
from backbones.auto import TINY, local_hint, missing_local_path
from backbones.saving import check_can_be_folder, readable_like

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo
    from peft import LoraConfig

    from backbones import Backbone

    from .personalized import PersonalizedBackbone

METHODS = ("dreambooth", "lora", "textual_inversion")
#: The attention projections LoRA adapts (diffusers' DreamBooth-LoRA script targets the same four).
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
#: DreamSound's instance prompt (``dreambooth_audioldm2.py``: "a recording of a {word} {class}").
DEFAULT_TEMPLATE = "a recording of a {token} {class_word}"

CONFIG_NAME = "concept_config.json"
WEIGHTS_NAME = "concept.safetensors"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
CARD_NAME = "README.md"
FORMAT_VERSION = 1
#: Weight files that would need unpickling: refused, never opened.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
#: peft prefixes the keys of a ``PeftModel``'s adapter file with this; steer keeps the layout.
PEFT_PREFIX = "base_model.model."
_OWN_FILES = (CONFIG_NAME, WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME, ADAPTER_CONFIG_NAME, CARD_NAME)


def steer_version() -> str:
    """The installed steer version (read from the package metadata, which avoids an import cycle)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("steer")
    except PackageNotFoundError:
        return "unknown"


def check_words(token: str, class_word: str | None) -> None:
    """Refuse a token that is empty or not one word, and an empty class word, with a ``ValueError``."""
    if not token or re.search(r"\s", token):
        raise ValueError(f"the concept token must be one word without spaces, got {token!r}")
    if class_word is not None and not class_word.strip():
        raise ValueError(
            "the class word is empty: name the kind of sound (e.g. 'guitar'), or give none (class_word=None; "
            "leave out steer personalize --class-word)"
        )


def check_new_words(token: str, class_word: str | None, templates: Sequence[str] = (DEFAULT_TEMPLATE,)) -> None:
    """:func:`check_words`, and refuse a token that is a word of the class word or of a training
    prompt template (``"recording"``: every training prompt would hold it as the template's word
    too), for a concept about to be learnt (one saved before this check still loads)."""
    check_words(token, class_word)
    for template in (templates,) if isinstance(templates, str) else templates:
        words = re.findall(r"[^\W_]+", re.sub(r"\{\w*\}", " ", template).casefold())
        if token.casefold() in words:
            raise ValueError(
                f"the concept token {token!r} is a word of the training prompt template {template!r}: every "
                "training prompt would hold it as that word too, and the concept could not be learnt apart from "
                "it; use a new word as the token (e.g. 'sks')"
            )
    # Compared case-insensitively: some text encoders lower-case prompts, and a token differing
    # from the class word only in case names nothing new for the others either.
    if class_word is not None and token.casefold() in class_word.casefold().split():
        raise ValueError(
            f"the concept token {token!r} is a word of the class word {class_word!r}: the prompts would read "
            f"{DEFAULT_TEMPLATE.format(token=token, class_word=class_word)!r} and the class word alone could not "
            "be told from the concept; use a new word as the token (e.g. 'sks')"
        )


@dataclass(frozen=True)
class ConceptConfig:
    """What a concept is and what it was learnt on; saved as ``concept_config.json``.

    Attributes:
        method: ``"dreambooth"``, ``"lora"`` or ``"textual_inversion"``.
        token: the word that names the concept in prompts (one word, e.g. ``"sks"``).
        class_word: the kind of sound (``"guitar"``); ``None`` for a token used alone.
        family: :attr:`Backbone.family` of the base model.
        base_model: repo id or absolute path of the base model, when known (informational:
            the compatibility check uses :attr:`base_fingerprint`).
        base_fingerprint: :func:`base_fingerprint` of the base denoiser (a hash of its
            parameter names and shapes, and statistics of every parameter), checked when the
            concept is applied (so a local path and a repo id of the same model both pass).
        lora_rank, lora_alpha, lora_targets: the adapter's settings (LoRA only).
        templates: training prompts with ``{token}`` and ``{class_word}`` fields.
        training: how it was learnt (steps, learning rate, seed, reference names, final loss).
        steer_version: the library version that wrote it.
        format_version: the layout of the saved files.
    """

    method: str
    token: str
    class_word: str | None
    family: str
    base_model: str | None = None
    base_fingerprint: dict[str, Any] | None = None
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_targets: tuple[str, ...] | None = None
    templates: tuple[str, ...] = (DEFAULT_TEMPLATE,)
    training: dict[str, Any] = field(default_factory=dict)
    steer_version: str = field(default_factory=steer_version)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.templates, str):
            raise ValueError(f"templates must be a list of prompt templates, got the string {self.templates!r}: pass [{self.templates!r}]")
        self._check_types()
        if self.method not in METHODS:
            raise ValueError(f"unknown concept method {self.method!r}: use one of {', '.join(METHODS)}")
        check_words(self.token, self.class_word)
        if self.method == "lora":
            if self.lora_rank is None or self.lora_rank < 1:
                raise ValueError(f"a LoRA concept needs a rank >= 1, got {self.lora_rank}")
            if self.lora_alpha is not None and not 0 < self.lora_alpha < math.inf:
                raise ValueError(f"a LoRA concept needs a positive finite alpha, got {self.lora_alpha}")
            if not self.lora_targets:
                raise ValueError("a LoRA concept needs target modules")
        if not self.templates or any("{token}" not in t for t in self.templates):
            raise ValueError(f"every prompt template must contain '{{token}}', got {list(self.templates)}")
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"this concept was written in format {self.format_version} by steer "
                f"{self.steer_version}; this steer reads format {FORMAT_VERSION}: upgrade steer"
            )
        if self.base_fingerprint is not None:
            check_fingerprint(self.base_fingerprint)
        # JSON has no tuples: normalise so that a loaded config equals the saved one.
        object.__setattr__(self, "templates", tuple(self.templates))
        if self.lora_targets is not None:
            object.__setattr__(self, "lora_targets", tuple(self.lora_targets))

    def _check_types(self) -> None:
        """A ``TypeError`` naming the first field whose value is not of its type (a hand-edited
        or corrupt ``concept_config.json``: ``"lora_rank": 4.0`` failed only inside torch)."""
        text, whole, number, mapping, items = (
            ((str,), "a string"), ((int,), "a whole number"), ((int, float), "a number"),
            ((dict,), "an object"), ((list, tuple), "a list"),
        )
        kinds = {
            "method": text, "token": text, "class_word": text, "family": text, "base_model": text,
            "base_fingerprint": mapping, "lora_rank": whole, "lora_alpha": number, "lora_targets": items,
            "templates": items, "training": mapping, "steer_version": text, "format_version": whole,
        }
        optional = {"class_word", "base_model", "base_fingerprint", "lora_rank", "lora_alpha", "lora_targets"}
        for name, (kind, words) in kinds.items():
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            if isinstance(value, bool) or not isinstance(value, kind):  # a bool is an int to Python
                words += " or null" if name in optional else ""
                raise TypeError(f"{name} must be {words}, got {value!r}")
        for name in ("templates", "lora_targets"):
            if any(not isinstance(item, str) for item in getattr(self, name) or ()):
                raise TypeError(f"{name} must be a list of strings, got {getattr(self, name)!r}")

    def prompt(self, template: str = DEFAULT_TEMPLATE) -> str:
        """A prompt naming the concept: ``"a recording of a sks guitar"``."""
        text = template.format(token=self.token, class_word=self.class_word or "")
        return " ".join(text.split())

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["templates"] = list(self.templates)
        if self.lora_targets is not None:
            data["lora_targets"] = list(self.lora_targets)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConceptConfig:
        if not isinstance(data, Mapping):
            raise TypeError(f"it holds a JSON {type(data).__name__}, not an object of fields")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{CONFIG_NAME} has fields this steer does not know: {unknown}; upgrade steer")
        return cls(**data)


# -- the base model's identity ---------------------------------------------------------------------
def _base_parameters(denoiser: nn.Module) -> dict[str, Tensor]:
    """The denoiser's own parameters by name, as if no peft adapter were injected."""
    return {
        name.replace(".base_layer.", "."): p
        for name, p in denoiser.named_parameters()
        if ".lora_" not in name
    }


#: Version 1 (steer's first concepts) held the mean |w| of 16 sampled parameters; version 2 two
#: statistics of every parameter. A concept is checked the way its own fingerprint was made.
FINGERPRINT_VERSION = 2
#: Tolerances of version 2, relative to a parameter's norm: bfloat16 rounding (relative error
#: <= 2**-9 per weight) moves the norm by < 0.2 % and the projection by ~3e-4 of the norm, while a
#: parameter scaled by 1.01 or redrawn moves them by 1 % and by ~0.4 of the norm.
_NORM_TOL = 5e-3
_PROJECTION_TOL = 3e-3
#: Weights are projected in chunks of this many values, all onto the same pattern: the float64
#: copies stay small on any model and the pattern is made once.
_CHUNK = 1 << 20


def _architecture(params: Mapping[str, Tensor], names: Sequence[str]) -> str:
    shapes = "\n".join(f"{n} {tuple(params[n].shape)}" for n in names)
    return hashlib.sha256(shapes.encode()).hexdigest()[:16]


def _pattern(length: int) -> Tensor:
    """Fixed pseudo-random float64 values in [-0.5, 0.5), ``(length,)``: an integer hash of the
    index (multiply and xor-shift modulo 2**31, exact in int64), the same on every machine and
    PyTorch version, which a random generator's stream does not promise."""
    x = torch.arange(length, dtype=torch.int64)
    for multiplier in (0x2C1B3C6D, 0x297A2D39):
        x = (x * multiplier + 0x3C6EF372) % 2**31
        x = x ^ (x >> 15)
    return x.double() / 2**31 - 0.5


def _statistics(params: Mapping[str, Tensor], names: Sequence[str]) -> list[tuple[float, float]]:
    """(L2 norm, projection onto the repeated :func:`_pattern`) of each parameter, in float64 on
    its device: one pass over the weights."""
    pattern = _pattern(_CHUNK)
    on_device: dict[torch.device, Tensor] = {}
    found = []
    for name in names:
        flat = params[name].detach().reshape(-1)
        if flat.device not in on_device:
            on_device[flat.device] = pattern.to(flat.device)
        squares = projection = 0.0
        for start in range(0, len(flat), _CHUNK):
            chunk = flat[start : start + _CHUNK].double()
            squares += float(chunk @ chunk)
            projection += float(chunk @ on_device[flat.device][: len(chunk)])
        found.append((math.sqrt(squares), projection))
    return found


def base_fingerprint(denoiser: nn.Module) -> dict[str, Any]:
    """The identity of a base denoiser, saved with a concept and checked when it is applied.

    ``{"version": 2, "architecture": hash of the parameter names and shapes, "statistics":
    base64 of float32 pairs}``: for every parameter (in name order) its L2 norm and its projection
    onto a fixed pseudo-random pattern, computed in float64 on the parameter's device in one pass
    over the weights. Robust to the weights' dtype (a bfloat16 copy of the base passes) and to
    adapters injected by other concepts; another checkpoint of the same architecture, or one
    parameter changed, redrawn or scaled by 1 %, fails.
    """
    params = _base_parameters(denoiser)
    names = sorted(params)
    with torch.no_grad():
        values = [v for pair in _statistics(params, names) for v in pair]
    return {
        "version": FINGERPRINT_VERSION,
        "architecture": _architecture(params, names),
        "statistics": base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii"),
    }


def _sampled_means(params: Mapping[str, Tensor], names: Sequence[str], samples: int = 16) -> list[float]:
    """Version 1's statistics: mean |w| of ``samples`` parameters spread over the sorted names."""
    picks = names[:: max(1, len(names) // samples)][:samples]
    return [float(params[n].detach().double().abs().mean()) for n in picks]


def check_fingerprint(fingerprint: Any) -> None:
    """Refuse a ``base_fingerprint`` that :func:`base_fingerprint` cannot have written, with a
    ``ValueError`` naming the field (one of a newer version is left to :func:`fingerprint_mismatch`)."""
    if not isinstance(fingerprint, Mapping):
        raise ValueError(f"base_fingerprint must be an object, got a JSON {type(fingerprint).__name__}")
    version = fingerprint.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"base_fingerprint.version must be a whole number >= 1, got {version!r}")
    if version > FINGERPRINT_VERSION:
        return
    if not isinstance(fingerprint.get("architecture"), str):
        raise ValueError(f"base_fingerprint.architecture must be a string, got {fingerprint.get('architecture')!r}")
    if version == 1:
        weights = fingerprint.get("weights")
        if not isinstance(weights, list) or not all(type(w) in (int, float) for w in weights):
            raise ValueError(f"base_fingerprint.weights must be a list of numbers, got {weights!r:.60}")
    else:
        _saved_statistics(fingerprint)


def _saved_statistics(fingerprint: Mapping[str, Any]) -> tuple[float, ...]:
    """The float32 statistics of a version-2 fingerprint (base64 of (norm, projection) pairs)."""
    encoded = fingerprint.get("statistics")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (TypeError, ValueError):  # not a string; not base64 (binascii.Error), or not ASCII
        raw = None
    if raw is None or len(raw) % 8:
        raise ValueError(f"base_fingerprint.statistics must be base64 of float32 pairs, got {encoded!r:.60}")
    return struct.unpack(f"<{len(raw) // 4}f", raw)


def fingerprint_mismatch(denoiser: nn.Module, expected: Mapping[str, Any]) -> str | None:
    """Why ``denoiser`` is not the base model of fingerprint ``expected``, or ``None`` if it is.

    A version-1 fingerprint (no ``"version"``) is compared the way it was made (16 sampled
    parameters, 1 % tolerance); a version-2 one parameter by parameter.
    """
    version = expected.get("version", 1)
    if version > FINGERPRINT_VERSION:
        return f"its fingerprint is of version {version}, this steer reads up to {FINGERPRINT_VERSION}: upgrade steer"
    params = _base_parameters(denoiser)
    names = sorted(params)
    if _architecture(params, names) != expected["architecture"]:
        return "the backbone's denoiser has a different architecture"
    with torch.no_grad():
        if version == 1:
            found = _sampled_means(params, names)
            saved = expected["weights"]
            if len(found) != len(saved) or not all(
                math.isclose(x, y, rel_tol=1e-2, abs_tol=1e-8) for x, y in zip(found, saved)
            ):
                return "the backbone's denoiser has different weights"
            return None
        saved = _saved_statistics(expected)
        if len(saved) != 2 * len(names):
            return f"its fingerprint holds {len(saved)} statistics for {len(names)} parameters (a corrupt {CONFIG_NAME})"
        for i, (name, (norm, projection)) in enumerate(zip(names, _statistics(params, names))):
            norm0, projection0 = saved[2 * i], saved[2 * i + 1]
            if abs(norm - norm0) > _NORM_TOL * max(norm, norm0) + 1e-12 or abs(
                projection - projection0
            ) > _PROJECTION_TOL * max(norm, norm0) + 1e-12:
                return f"the backbone's denoiser has different weights (first: {name})"
    return None


def check_save_folder(folder: Path) -> None:
    """Refuse a folder :meth:`Concept.save_pretrained` must not write: a file, a path under a file
    or an unwritable folder, or a folder that is not a concept's but holds a file of a concept's
    names (it would be replaced)."""
    check_can_be_folder(folder, "the concept folder")
    clashes = sorted(name for name in _OWN_FILES if (folder / name).exists())
    if clashes and not (folder / CONFIG_NAME).is_file():
        raise ValueError(
            f"{folder} is not a steer concept's folder but holds {', '.join(clashes)}, which saving a "
            "concept would replace: save it into an empty folder (or an earlier concept's)"
        )


# -- the concept -----------------------------------------------------------------------------------
class Concept:
    """A learnt concept: its :class:`ConceptConfig` and its weights.

    Weights are held by namespaced key: ``"lora.<module>.lora_A.weight"`` (peft's key without
    the adapter name), ``"denoiser.<parameter>"`` (dreambooth) and ``"token_embedding"`` (a word
    added to a closed vocabulary, ``(dim,)``).

    Example:
        >>> import torch
        >>> from backbones import load_backbone
        >>> from steer import Audio
        >>> backbone = load_backbone("tiny")
        >>> clips = [Audio(torch.randn(1, 16000) * 0.1, 16000)]  # or paths to audio files
        >>> concept = Concept.train(backbone, clips, token="sks", class_word="guitar", method="lora",
        ...                         steps=1, progress=False)
        >>> concept.prompt()
        'a recording of a sks guitar'
        >>> personalized = concept.apply(backbone)  # ε', sharing the base's audio path
        >>> personalized.close()  # remove the adapter from the base denoiser
    """

    def __init__(self, config: ConceptConfig, weights: Mapping[str, Tensor]) -> None:
        self.config = config
        self.weights = dict(weights)

    # -- what it is ---------------------------------------------------------------------------------
    @property
    def token(self) -> str:
        return self.config.token

    @property
    def class_word(self) -> str | None:
        return self.config.class_word

    @property
    def method(self) -> str:
        return self.config.method

    def prompt(self, template: str = DEFAULT_TEMPLATE) -> str:
        """A prompt naming the concept (see :meth:`ConceptConfig.prompt`)."""
        return self.config.prompt(template)

    def weights_under(self, prefix: str) -> dict[str, Tensor]:
        """The weights whose key starts with ``prefix + "."``, with the prefix removed."""
        start = prefix + "."
        return {k[len(start) :]: v for k, v in self.weights.items() if k.startswith(start)}

    @property
    def lora_config(self) -> LoraConfig:
        """peft's ``LoraConfig`` of the adapter (B starts at zero: a fresh adapter changes nothing)."""
        from peft import LoraConfig

        if self.method != "lora":
            raise ValueError(f"a {self.method} concept has no LoRA config")
        return LoraConfig(
            r=self.config.lora_rank,
            lora_alpha=self.config.lora_alpha if self.config.lora_alpha is not None else self.config.lora_rank,
            target_modules=list(self.config.lora_targets),
            lora_dropout=0.0,
            init_lora_weights=True,
            base_model_name_or_path=self.config.base_model,
        )

    def __repr__(self) -> str:
        return (
            f"Concept(method={self.method!r}, token={self.token!r}, class_word={self.class_word!r}, "
            f"family={self.config.family!r}, base_model={self.config.base_model!r}, "
            f"tensors={len(self.weights)})"
        )

    # -- learning and using -------------------------------------------------------------------------
    @classmethod
    def train(cls, backbone: Backbone, references: Sequence[Any], **kwargs: Any) -> Concept:
        """Learn a concept from reference clips; see :func:`steer.concepts.train.train_concept`."""
        from .train import train_concept

        return train_concept(backbone, references, **kwargs)

    def apply(self, backbone: Backbone) -> PersonalizedBackbone:
        """The personalised model ε' of this concept on ``backbone`` (its base model)."""
        from .personalized import PersonalizedBackbone

        return PersonalizedBackbone(backbone, self)

    def check_compatible(self, backbone: Backbone) -> None:
        """Raise ``ValueError`` unless ``backbone`` is the base model this concept was learnt on."""
        learnt_on = self.config.base_model or "an unnamed model"
        if backbone.family != self.config.family:
            raise ValueError(
                f"this concept was learnt on a backbone of the {self.config.family} family ({learnt_on}); it "
                f"cannot be applied to one of the {backbone.family} family"
            )
        expected = self.config.base_fingerprint
        if expected is None:
            return
        mismatch = fingerprint_mismatch(backbone.denoiser, expected)
        if mismatch is not None:
            raise ValueError(
                f"this concept was learnt on another base model ({learnt_on}): {mismatch}. "
                "Load the base model it was trained on."
            )

    def check_finite(self) -> None:
        """Refuse weights holding NaN or infinite values (training diverged) with a ``ValueError``."""
        key = nonfinite_key(self.weights)
        if key is not None:
            raise ValueError(
                f"the concept's tensor {key} holds NaN or infinite values (its training diverged): "
                "train it again with a lower learning rate"
            )

    # -- files --------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, *, repo_id: str | None = None) -> Path:
        """Write the concept to a folder (created if needed); returns the folder.

        Files: ``concept_config.json``; for LoRA ``adapter_model.safetensors`` +
        ``adapter_config.json`` (peft's layout); ``concept.safetensors`` for the other weights;
        ``README.md``, the model card (``repo_id`` only changes its usage example). Saving over
        an earlier concept replaces its files (those of another method are removed); a folder
        that is not a concept's but holds a file of one of these names is refused, and other
        files are left alone. Weights holding NaN or infinite values are refused.

        Every file is written to a temporary folder inside ``save_directory`` first and then
        renamed into place, :data:`CONFIG_NAME` last: a save interrupted before the first rename
        leaves the earlier concept whole; one interrupted among the renames leaves a mix, which
        :meth:`from_pretrained` refuses where the two concepts differ in method or token (each
        weight file records them) and otherwise loads as the new weights under the earlier
        config: save again to mend either. A hard kill can leave the hidden ``.steer-save-*``
        folder behind.
        """
        folder = Path(os.path.expanduser(save_directory))  # as from_pretrained reads it
        check_save_folder(folder)
        self.check_finite()
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".steer-save-", dir=folder) as tmp:
            staged = Path(tmp)
            metadata = {"format": "pt", "steer_method": self.method, "steer_token": self.token}
            for filename, tensors in self._weight_files().items():
                save_file(_contiguous(tensors), staged / filename, metadata=metadata)
                if filename == ADAPTER_WEIGHTS_NAME:
                    self.lora_config.save_pretrained(str(staged))
            self.model_card(repo_id=repo_id).save(staged / CARD_NAME)
            (staged / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
            readable_like(staged.glob("*.safetensors"), staged / CONFIG_NAME)
            written = {p.name for p in staged.iterdir()}
            for name in sorted(written - {CONFIG_NAME}):
                os.replace(staged / name, folder / name)
            for name in set(_OWN_FILES) - written:
                (folder / name).unlink(missing_ok=True)
            os.replace(staged / CONFIG_NAME, folder / CONFIG_NAME)  # the concept is the new one from here
        return folder

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
    ) -> Concept:
        """Load a concept from a local folder or a Hub repo id (``"me/my-guitar"``).

        Only safetensors are read; a folder whose weights are pickle files (``.bin``, ``.pt``,
        ``.pkl``, …) is refused without opening them, and such files are never downloaded.
        """
        path = Path(os.path.expanduser(name_or_path))
        if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
            raise ValueError(_pickle_refusal(path))
        if path.is_file():
            raise ValueError(f"{path} is a file: pass the concept's folder (the one holding {CONFIG_NAME})")
        if not path.is_dir() and (problem := missing_local_path(str(name_or_path), "concept folder")):
            raise ValueError(f"{problem}: pass a concept's folder or Hub repo id (owner/name)")
        folder = path if path.is_dir() else _download(str(name_or_path), revision, token, cache_dir, local_files_only)
        return cls._from_folder(folder, str(name_or_path))

    @classmethod
    def _from_folder(cls, folder: Path, name: str) -> Concept:
        config = _read_config(_config_path(folder, name), name)
        if config.base_fingerprint is None:  # warned on loading only, not by check_concept_reference
            warnings.warn(
                f"{name}: {CONFIG_NAME} has no base_fingerprint, so steer cannot check that a backbone is "
                "the base model the concept was learnt on",
                stacklevel=3,
            )
        weights: dict[str, Tensor] = {}
        if config.method == "lora":
            adapter = _load_safetensors(folder, ADAPTER_WEIGHTS_NAME, name, config)
            weights.update({"lora." + k.removeprefix(PEFT_PREFIX): v for k, v in adapter.items()})
            _check_adapter_config(folder, config, name)
            if (folder / WEIGHTS_NAME).is_file():
                weights.update(_load_safetensors(folder, WEIGHTS_NAME, name, config))
        else:
            weights.update(_load_safetensors(folder, WEIGHTS_NAME, name, config))
        needed = {"lora": "lora.", "dreambooth": "denoiser.", "textual_inversion": "token_embedding"}[config.method]
        if not any(k.startswith(needed) for k in weights):
            raise ValueError(f"{name}: a {config.method} concept but its weights hold no {needed!r} tensors")
        unused = sorted(k for k in weights if not _used_by(config.method, k))
        if unused:
            filename = ADAPTER_WEIGHTS_NAME if unused[0].startswith("lora.") else WEIGHTS_NAME
            raise ValueError(
                f"{name}: {filename} holds {len(unused)} tensors a {config.method} concept does not use, e.g. "
                f"{unused[0]!r} (left by an interrupted save of another concept over this one?): save or "
                "train the concept into this folder again"
            )
        return cls(config, weights)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
    ) -> CommitInfo:
        """Create the Hub repo if needed and upload the concept to it (one commit).

        The uploaded copy names the base model as :func:`hub_base_model` says: never by a path
        of this machine. The concept itself is left unchanged.

        Raises:
            ValueError: for a repo id the Hub refuses, or weights that are not finite, before
                anything is sent; with ``private=True``, for a repo that exists and is public
                (creating a repo does not change an existing one's visibility), before the upload.
            PushError: when the Hub cannot be reached or refuses the upload (no connection,
                offline mode, no or a wrong token, no write access); call it again once fixed.
        """
        check_repo_id(repo_id)
        self.check_finite()
        public = Concept(dataclasses.replace(self.config, base_model=hub_base_model(self.config.base_model)), self.weights)
        api = HfApi(token=token)
        with _pushing(repo_id):
            repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            # an existing repo keeps its visibility: a private push must not land in a public one
            exposed = bool(private) and not api.repo_info(repo.repo_id, repo_type="model").private
        if exposed:
            raise ValueError(
                f"the Hub repo {repo.repo_id} exists and is public, and private=True does not make an existing "
                "repo private: make it private in its settings on the Hub, or push to a new repo; nothing was uploaded"
            )
        with tempfile.TemporaryDirectory() as tmp:
            public.save_pretrained(tmp, repo_id=repo.repo_id)
            with _pushing(repo_id):
                return api.upload_folder(
                    repo_id=repo.repo_id,
                    folder_path=tmp,
                    repo_type="model",
                    commit_message=commit_message or f"Upload steer concept '{self.prompt()}'",
                    revision=revision,
                    create_pr=create_pr,
                )

    def model_card(self, *, repo_id: str | None = None) -> ModelCard:
        """The ``README.md``: Hub metadata (library, tags, base model) and how to use the concept."""
        c = self.config
        base = c.base_model if c.base_model and _looks_like_repo_id(c.base_model) else None
        if c.base_model in TINY:  # an offline build of random weights, built by name anywhere
            base_sentence = (
                f"It personalises steer's offline build `{c.base_model}` ({c.family} family: random weights, "
                "for tests and demos), which `load_backbone` builds by that name."
            )
            load_line = f'backbone = load_backbone("{c.base_model}")'
        elif base is None and c.base_model:  # a folder: readers of the card need their own copy
            base_sentence = (
                f"It personalises the local base model `{c.base_model}` ({c.family} family), which is not "
                "on the Hugging Face Hub: load your own copy of it (steer refuses another model by its "
                "fingerprint)."
            )
            load_line = f'backbone = load_backbone("{c.base_model}")  # the path to your copy of the base model'
        else:
            base_sentence = f"It personalises the base model `{c.base_model or '(not recorded)'}` ({c.family} family)."
            load_line = f'backbone = load_backbone("{c.base_model or "<the base model>"}")'
        data = ModelCardData(
            library_name="steer",
            base_model=base,
            pipeline_tag="text-to-audio",
            tags=["steer", "audio", "music", "personalization", "steermusic", c.method.replace("_", "-"), c.family],
        )
        training = c.training
        rows = [("method", c.method), ("base model", c.base_model or "not recorded"), ("backbone family", c.family)]
        if c.method == "lora":
            rows.append(("LoRA rank / alpha / targets", f"{c.lora_rank} / {c.lora_alpha} / {', '.join(c.lora_targets or ())}"))
        for key in ("steps", "lr", "batch_size", "seed", "crop_seconds"):
            if key in training:
                rows.append((key.replace("_", " "), str(training[key])))
        if "references" in training:
            rows.append(("reference clips", str(len(training["references"]))))
        if c.templates != (DEFAULT_TEMPLATE,):
            rows.append(("prompt templates", "; ".join(f"`{t}`" for t in c.templates)))
        if training.get("final_loss") is not None:
            rows.append(("final training loss", f"{training['final_loss']:.4g}"))
        table = "\n".join(f"| {k} | {v} |" for k, v in rows)
        source = repo_id or "path/to/this/folder"
        body = f"""# {self.prompt("{token} {class_word}")}: a steer concept

A musical concept learnt with steer by **{c.method.replace("_", " ")}**
from reference clips. Prompts name it as `{self.prompt("{token} {class_word}")}`, e.g. "{self.prompt(c.templates[0])}".
{base_sentence} The concept is the personalised model ε' of SteerMusic+ editing
([Niu et al., 2025](https://arxiv.org/abs/2504.10826)).

## Use

```python
from backbones import load_backbone
from steer import Concept

{load_line}
concept = Concept.from_pretrained("{source}")
personalized = concept.apply(backbone)  # a Backbone: ε'
```

## Training

| setting | value |
|---|---|
{table}

Written by steer {c.steer_version}. Weights are safetensors: {self._files_sentence()}.

## References

- Plitsis et al., 2024, *Investigating Personalization Methods in Text to Music Generation* (DreamSound), https://arxiv.org/abs/2309.11140
- Niu et al., 2025, *SteerMusic*, https://arxiv.org/abs/2504.10826
"""
        return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")

    def _weight_files(self) -> dict[str, dict[str, Tensor]]:
        """The weight files :meth:`save_pretrained` writes, by name, with their tensors (file keys)."""
        lora = {PEFT_PREFIX + k: v for k, v in self.weights_under("lora").items()}
        other = {k: v for k, v in self.weights.items() if not k.startswith("lora.")}
        return {name: tensors for name, tensors in ((ADAPTER_WEIGHTS_NAME, lora), (WEIGHTS_NAME, other)) if tensors}

    def _files_sentence(self) -> str:
        """The weight files :meth:`save_pretrained` writes, for the model card."""
        described = {
            ADAPTER_WEIGHTS_NAME: f"`{ADAPTER_WEIGHTS_NAME}` + `{ADAPTER_CONFIG_NAME}` (the LoRA adapter, in peft's layout)",
            WEIGHTS_NAME: f"`{WEIGHTS_NAME}`",
        }
        return " and ".join(described[name] for name in self._weight_files()) or "none"


# -- file helpers ----------------------------------------------------------------------------------
def _used_by(method: str, key: str) -> bool:
    """Whether a :class:`Concept` weight ``key`` belongs to a concept of ``method`` (see its docstring)."""
    if key == "token_embedding":  # a word added to a closed vocabulary, by any method
        return True
    if method == "textual_inversion":
        return key.startswith("token_embedding.")  # one row per open-vocabulary tokenizer
    return key.startswith({"lora": "lora.", "dreambooth": "denoiser."}[method])


def _contiguous(weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in weights.items()}


def _pickle_refusal(path: Path) -> str:
    return (
        f"{path} is a pickle file, which can run code when loaded: steer only loads safetensors "
        f"({WEIGHTS_NAME}, {ADAPTER_WEIGHTS_NAME}). Convert it where you trust it, e.g. with "
        "safetensors.torch.save_file(torch.load(path, weights_only=True), ...)."
    )


def _load_safetensors(folder: Path, filename: str, name: str, config: ConceptConfig) -> dict[str, Tensor]:
    """The tensors of ``folder/filename``, refused (``ValueError`` naming concept ``name``) when
    missing, unreadable, not finite, or saved for another concept than ``config`` describes."""
    path = folder / filename
    if not path.is_file():
        stem = Path(filename).stem
        pickles = sorted(p.name for p in folder.glob(f"{stem}*") if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise ValueError(_pickle_refusal(folder / pickles[0]))
        raise ValueError(f"{name}: {filename} is missing")
    try:
        tensors = load_file(path)
        with safe_open(path, framework="pt") as file:
            metadata = file.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{name}: cannot read {filename} ({error})") from error
    saved_for = (metadata.get("steer_method", config.method), metadata.get("steer_token", config.token))
    if saved_for != (config.method, config.token):  # files of steer versions before these keys pass
        raise ValueError(
            f"{name}: {filename} was saved for a {saved_for[0]} concept with the token {saved_for[1]!r} but "
            f"{CONFIG_NAME} describes a {config.method} concept with the token {config.token!r} (left by an "
            "interrupted save of another concept over this one?): save or train the concept into this folder again"
        )
    key = nonfinite_key(tensors)
    if key is not None:
        raise ValueError(
            f"{name}: {filename} holds NaN or infinite values in {key}: the file is corrupt "
            "(or training diverged); download or train the concept again"
        )
    return tensors


def nonfinite_key(tensors: Mapping[str, Tensor]) -> str | None:
    """The first key (in order) whose floating-point tensor holds NaN or infinite values, or ``None``."""
    return next((k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)


def _config_path(folder: Path, name: str) -> Path:
    """``folder``'s concept config; a ``ValueError`` when it has none (concept ``name``)."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        hint = " (it holds a peft adapter: steer needs the concept's token and base model too)" if (folder / ADAPTER_CONFIG_NAME).is_file() else ""
        raise ValueError(f"{name} is not a steer concept: it has no {CONFIG_NAME}{hint}")
    return path


def _read_config(path: Path, name: str) -> ConceptConfig:
    """The concept config at ``path``; a ``ValueError`` naming concept ``name``, the file and what
    is wrong."""
    try:
        config = ConceptConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as error:  # json's and UTF-8's errors are ValueErrors
        raise ValueError(f"{name}: cannot read {CONFIG_NAME} ({error})") from error
    return config


def _check_adapter_config(folder: Path, config: ConceptConfig, name: str) -> None:
    path = folder / ADAPTER_CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"{name}: {ADAPTER_CONFIG_NAME} is missing")
    try:
        adapter = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{name}: cannot read {ADAPTER_CONFIG_NAME} ({error})") from error
    if not isinstance(adapter, dict):
        raise ValueError(f"{name}: {ADAPTER_CONFIG_NAME} holds a JSON {type(adapter).__name__}, not peft's object")
    found = (adapter.get("r"), sorted(adapter.get("target_modules") or []))
    if found != (config.lora_rank, sorted(config.lora_targets or ())):
        raise ValueError(
            f"{name}: {ADAPTER_CONFIG_NAME} (rank {found[0]}, targets {found[1]}) disagrees with "
            f"{CONFIG_NAME} (rank {config.lora_rank}, targets {list(config.lora_targets or ())})"
        )


def _looks_like_repo_id(name: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not Path(name).exists()


# -- the Hub ---------------------------------------------------------------------------------------
class PushError(ValueError):
    """A push to the Hub failed (no connection, offline mode, authentication, permissions).

    Attributes:
        repo_id: the repo the push was for.
        reason: what the Hub client raised, as ``"ErrorType: message"``.
    """

    def __init__(self, repo_id: str, reason: str, *, retry: str) -> None:
        super().__init__(f"pushing the concept to the Hub repo {repo_id} failed ({reason}); {retry}")
        self.repo_id = repo_id
        self.reason = reason


#: What the Hub client raises when the Hub cannot be reached or refuses a request: its HTTP errors
#: derive from its transport's ``HTTPError`` (httpx's or httpx2's, by huggingface_hub version; a
#: refused connection raises that directly) and from ``OSError`` (offline mode, a missing token).
_HUB_ERRORS: tuple[type[BaseException], ...] = (OSError, *HfHubHTTPError.__bases__)


@contextmanager
def _pushing(repo_id: str) -> Iterator[None]:
    """Turn the Hub client's network and HTTP errors into a :class:`PushError`."""
    try:
        yield
    except _HUB_ERRORS as error:
        retry = "check the connection and your Hub token (`hf auth login` or HF_TOKEN), then push again"
        raise PushError(repo_id, f"{type(error).__name__}: {error}", retry=retry) from error


def check_repo_id(repo_id: str, option: str = "repo_id") -> None:
    """Refuse a Hub repo id the Hub would refuse (``"name"`` or ``"user/name"``), before any work."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"{option} {repo_id!r} is not a Hub repo id: {error}") from error


def hub_base_model(base_model: str | None) -> str | None:
    """How a concept pushed to the Hub names its base model: never by a path of this machine.

    A Hub repo id stays as it is; a Hub cache snapshot folder
    (``…/models--org--name/snapshots/<commit>``) becomes its repo id ``"org/name"``; any other
    local folder only its name (the model card then says it is a local model the reader supplies,
    and the base model's fingerprint still refuses another one).
    """
    if base_model is None or _looks_like_repo_id(base_model):
        return base_model
    path = Path(base_model)
    repo = path.parent.parent.name
    if path.parent.name == "snapshots" and repo.startswith("models--"):
        return repo.removeprefix("models--").replace("--", "/")
    return path.name


def _download(
    repo_id: str,
    revision: str | None,
    token: str | bool | None,
    cache_dir: str | os.PathLike | None,
    local_files_only: bool,
) -> Path:
    """The concept's files from the Hub, or from the cache alone with ``local_files_only`` or where
    the Hub cannot be reached (:func:`~backbones.auto.hub_unreachable`: no ~25 s of retries)."""
    offline = None if local_files_only else auto.hub_unreachable()
    try:
        folder = snapshot_download(
            repo_id=repo_id,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only or offline is not None,
            # Never fetch pickle weights: they would be refused anyway.
            allow_patterns=["*.json", "*.safetensors", "*.md"],
        )
    except HFValidationError as error:
        raise ValueError(f"{repo_id} is neither a local folder nor a Hub repo id ({error})") from error
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        cause = f"{offline}, and no copy is cached" if offline else f"{type(error).__name__}: {error}"
        raise ValueError(
            f"could not load the concept {repo_id!r}: no such local folder, and the Hub download "
            f"failed ({cause}){local_hint(repo_id)}"
        ) from error
    return Path(folder)


# -- checks before a model loads -------------------------------------------------------------------
#: Backbone families whose text encoder lower-cases every prompt (the mel-diffusion word encoder):
#: their concepts' tokens are found in a prompt whatever its case.
CASE_BLIND_FAMILIES = frozenset({"mel-diffusion"})


def reads_case(family: str) -> bool:
    """Whether the text encoders of backbones of ``family`` tell a token's case apart (the
    ``case_sensitive`` of :func:`prompt_without_token`)."""
    return family not in CASE_BLIND_FAMILIES


#: Words that make the concept token a hyphenated adjective ("sks-like", "sks–style"): the base
#: prompt drops them with the token, not to leave "a like guitar" (matched as whole words, any case).
TOKEN_SUFFIXES = frozenset(
    {"like", "style", "esque", "ish", "type", "inspired", "sounding", "flavoured", "flavored", "influenced"}
)


#: Words opening with a vowel letter that take "a" ("a unison line"), and with a consonant letter
#: that take "an" ("an hour"), matched at a word's start in any case.
_A_BEFORE = (
    "unic", "unif", "unil", "unio", "uniq", "unis", "unit", "univ", "use", "usu", "uku", "uti", "eu", "one", "once"
)
_AN_BEFORE = ("hour", "honest", "honor", "honour", "heir")
#: Letters whose names open with a vowel sound: "an FM synth", "an x-ray".
_AN_LETTERS = "aefhilmnorsx"


def _article_before(article: str, word: str, *, shouting: bool) -> str:
    """``article`` ("a" or "an", in its case) as it reads before ``word`` ("a" → "an" before
    "orchestral"), by its first letter, the common exceptions ("a unison", "an hour"), and a
    letter's name for a one-letter word or, unless the whole prompt is in capitals
    (``shouting``), an acronym ("an FM synth"); unchanged before a word that does not open with a
    letter ("an 80s")."""
    first = unicodedata.normalize("NFD", word[:1])[:1].lower()  # "É" → "e"
    if not first.isalpha():
        return article
    lower = first + word[1:].lower()
    if len(word) == 1 or (word.isupper() and not shouting):
        an = first in _AN_LETTERS
    else:
        an = lower.startswith(_AN_BEFORE) or (first in "aeiou" and not lower.startswith(_A_BEFORE))
    chosen = "an" if an else "a"
    if article.isupper() and (len(article) > 1 or shouting):
        return chosen.upper()
    return chosen.capitalize() if article[0].isupper() else chosen


def _agree_articles(marked: str, shouting: bool) -> str:
    """``marked`` (a prompt with ``\\0`` where the token was) with each article the token
    followed made to agree with the word now after it: "an \\0 guitar" → "a \\0 guitar". A
    capital "A" is an article only where a sentence or a bracket opens ("in A \\0 organ style":
    a key)."""

    def agree(match: re.Match[str]) -> str:
        before = marked[: match.start()].rstrip()
        if match[1] == "A" and not shouting and before and before[-1] not in ".!?([{\"'“‘":
            return match[0]
        return _article_before(match[1], match[3], shouting=shouting) + match[2]

    return re.sub(r"(?<!\w)(an?|An?|AN?)(\s*\0[\s\0]*)(?=(\w+))", agree, marked)


def token_pattern(token: str, *, case_sensitive: bool = True) -> re.Pattern[str]:
    """The concept token as a word of its own in a prompt, whatever it is made of ("sks", "[S]"):
    not a part of a longer word ("desks"); ``\\b`` would need word characters at its ends and miss "[S]"."""
    return re.compile(rf"(?<!\w){re.escape(token)}(?!\w)", 0 if case_sensitive else re.IGNORECASE)


def prompt_without_token(
    prompt: str, token: str, class_word: str | None = None, *, case_sensitive: bool = True
) -> str:
    """The target ``prompt`` without the concept ``token`` (the base model's prompt of SteerMusic+'s
    shift term): ``"a sks guitar melody"`` → ``"a guitar melody"``, ``"a sks, bowed violin"``,
    ``"a [sks] bowed violin"`` and ``"a sks-bowed violin"`` → ``"a bowed violin"``,
    ``"a sks-like guitar"`` → ``"a guitar"``.

    The token goes with what clings to it: :data:`TOKEN_SUFFIXES` joined to it by a hyphen
    or en dash, a possessive 's, a comma, semicolon or colon or a dash after it, or brackets or
    quotes around it alone or with its suffix; what is left closes up, and an article before it
    agrees with the word now after it (``"an sks, bright violin"`` → ``"a bright violin"``).

    Args:
        case_sensitive: whether the prompt must write the token in its case, as the tokenizers
            of the diffusers backbones read it (``False`` for :data:`CASE_BLIND_FAMILIES`).

    Raises:
        ValueError: when the prompt does not name the token (see :func:`token_pattern`), or is
            only the token; its example prompt is in the concept's words (``class_word``).
    """
    pattern = token_pattern(token, case_sensitive=case_sensitive)
    example = " ".join(word for word in ("a", token, class_word, "melody") if word)
    if not pattern.search(prompt):
        other_case = token_pattern(token, case_sensitive=False).search(prompt)
        hint = (
            f" (it names {other_case.group()!r}: tokens are case-sensitive, as the text encoders read them)"
            if other_case
            else ""
        )
        raise ValueError(
            f"the target prompt {prompt!r} does not name the concept token {token!r}{hint}: write e.g. {example!r}"
        )
    word, bare = pattern.pattern, re.escape(token)
    hyphen = "-‐‑–"  # hyphen-minus, hyphen, non-breaking hyphen, en dash
    suffix = rf"[{hyphen}](?i:{'|'.join(sorted(TOKEN_SUFFIXES))})(?!\w)"  # "-like", not "-likeness"
    bracketed = rf"""(?<!\w)[(\[{{"'“‘]{bare}(?:{suffix})*[)\]}}"'”’](?!\w)"""  # "(sks-like)" whole
    clinging = rf"""(?:{bracketed}|{word})(?:{suffix})*(?:['’]s)?(?:[,;:]|\s*[{hyphen}—])?"""
    without = re.sub(clinging, "\0", prompt, flags=pattern.flags)  # marked where the token was
    # brackets or quotes left holding only the token go with it: "a ('sks's') guitar"
    pair = r"""(?<!\w)[(\[{"'“‘][\s\0]*\0[\s\0]*[)\]}"'”’](?!\w)"""
    while (fewer := re.sub(pair, "\0", without)) != without:
        without = fewer
    # an opening bracket or quote the token followed closes up on the next word: 'a "sks guitar"'
    without = re.sub(r"""((?:^|(?<=[\s(\[{]))[(\[{"'“‘])\0[\s\0]*""", r"\1", without)
    without = _agree_articles(without, shouting=prompt.isupper())
    without = " ".join(without.replace("\0", " ").split())
    # and closes up before punctuation, closing brackets and closing quotes, and after opening brackets
    without = re.sub(r"^[,;:\s]+|\s+(?=[,.;:!?)\]}]|['\"’”](?!\w))|(?<=[(\[{])\s+", "", without)
    without = re.sub(r"[,;:]+(?=[.!?)\]}]|$)", "", without)
    if not any(character.isalnum() for character in without):
        raise ValueError(
            f"the target prompt {prompt!r} is only the concept token: the base model's prompt without it would be "
            f"empty; describe the audio around it, e.g. {example!r}"
        )
    return without


def check_concept_reference(reference: str | os.PathLike, target: str | None = None) -> ConceptConfig:
    """The config of the concept ``reference`` names, read alone (no tensor, no model), once the
    ``target`` prompt is checked to name its token as SteerMusic+ reads it: for ``steer edit
    --concept`` to call before it loads a backbone.

    Args:
        reference: a local concept folder or a Hub repo id ``"owner/name"`` (only its
            ``concept_config.json`` is fetched).
        target: the edit's target prompt; ``None``: the config alone, no prompt checked.

    Raises:
        ValueError: (one line) for no such folder and no repo id, a file, a folder or repo
            without ``concept_config.json``, a config that cannot be read or is invalid, or a
            target prompt :func:`prompt_without_token` refuses.
    """
    name, path = str(reference), Path(os.path.expanduser(reference))
    if path.is_dir():
        config_path = _config_path(path, name)
    elif path.exists():
        raise ValueError(f"{path} is a file: pass the concept's folder (the one holding {CONFIG_NAME})")
    elif problem := missing_local_path(name, "concept folder"):
        raise ValueError(f"{problem}: pass a concept's folder or Hub repo id (owner/name)")
    elif not _looks_like_repo_id(name):
        raise ValueError(f"no concept folder {name}, and it is not a Hub repo id (owner/name): pass a concept's folder or repo id")
    else:
        check_repo_id(name, "the concept")
        config_path = _fetch_config(name)
    config = _read_config(config_path, name)
    if target is not None:
        check_target(config, target)
    return config


def check_target(config: ConceptConfig, target: str) -> None:
    """Refuse a ``target`` prompt that does not name ``config``'s token as SteerMusic+ reads it
    (:func:`prompt_without_token`, in the case its family reads)."""
    prompt_without_token(target, config.token, config.class_word, case_sensitive=reads_case(config.family))


def _fetch_config(repo_id: str) -> Path:
    """The Hub repo's ``concept_config.json`` (downloaded alone, or from the cache: only from it
    where the Hub cannot be reached)."""
    offline = auto.hub_unreachable()
    try:
        return Path(hf_hub_download(repo_id, CONFIG_NAME, local_files_only=offline is not None))
    except (EntryNotFoundError, *_HUB_ERRORS) as error:
        reason = f"{offline}, and no copy is cached" if offline else f"{type(error).__name__}: {str(error).partition(chr(10))[0]}"
        raise ValueError(
            f"cannot fetch {CONFIG_NAME} of the concept {repo_id!r} from the Hub ({reason})"
            f"{local_hint(repo_id)}; check the repo id and the connection"
        ) from error
