"""The personalised model ε' of a concept, behind the same :class:`Backbone` call signature.

SteerMusic+ (Niu et al., 2025, https://arxiv.org/abs/2504.10826, section 4.2) queries a base model
ε and a personalised model ε' that shares its latent space and noise schedule. How ε' is held
depends on the concept's method:

- **lora**: base and personalised model are ONE network. The adapter is injected into the base
  denoiser once and is switched off, so the base backbone predicts exactly as before; it is
  switched on only inside :meth:`PersonalizedBackbone.predict_noise` (and
  :meth:`PersonalizedBackbone.adapter_enabled`). :attr:`~PersonalizedBackbone.denoiser` is
  therefore the base's module: forward hooks on it fire for base AND personalised calls, so
  feature losses such as PCon must capture around each call rather than for a whole step.
- **dreambooth**: a fine-tuned copy of the denoiser (its own module).
- **textual_inversion**: the base denoiser with a text path that knows the token; only the
  prompt encoding differs. A closed vocabulary (mel-diffusion's word encoder) gets a copy with the
  new word; a pipeline's open-vocabulary tokenizers (AudioLDM2's CLAP RoBERTa and Flan-T5,
  AudioLDM's and MusicLDM's CLAP, Stable Audio's T5) get the token through
  :class:`~steer.concepts.new_token.NewToken`, one learnt row per tokenizer.

Encoding and decoding audio, the schedule and the feature geometry are the base's. Prompts are
encoded and cached by ε' itself (for LoRA and dreambooth with the base's unchanged text path).
"""

from __future__ import annotations

import copy
import itertools
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from backbones import Backbone, Conditioning
from backbones.adapter_state import adapter_state, set_adapter_state
from backbones.base import modes_kept
from backbones.mel_diffusion import WORD_MASK, MelDiffusionBackbone
from backbones.pipeline import PipelineBackbone
from backbones.saving import BEFORE_SAVE
from backbones.word_encoder import split_words

from .concept import ADAPTER_WEIGHTS_NAME, WEIGHTS_NAME, Concept
from .new_token import NewToken

_adapter_ids = itertools.count()


# -- what differs between backbone families ---------------------------------------------------------
def _pipeline_view(base: PipelineBackbone, denoiser: nn.Module, text: nn.Module | None) -> Backbone:
    """An adapter over the base pipeline's components with ``denoiser`` and, for a
    :class:`NewToken`, the tokenizers that know the token (own prompt cache)."""
    replaced = {base.denoiser_component: denoiser}
    if isinstance(text, NewToken):
        replaced.update(text.tokenizers)
    return base.replace(**replaced)


def _pipeline_conditioning(view: PipelineBackbone, prompts: Sequence[str]) -> Conditioning:
    """Like ``view.encode_prompt`` but uncached and differentiable (textual inversion)."""
    return Conditioning.cat([view.encode_one(p) for p in prompts])


def _mel_view(base: MelDiffusionBackbone, denoiser: nn.Module, text_encoder: nn.Module | None) -> Backbone:
    """A backbone over a shallow copy of the base model with its UNet / word encoder replaced."""
    model = copy.copy(base.model)
    # copy.copy shares the module's registries (_modules, _parameters, hooks, ...): copy them so
    # that replacing a child here leaves the base model untouched.
    for key, value in vars(base.model).items():
        if isinstance(value, (dict, set)):
            model.__dict__[key] = copy.copy(value)
    model.unet = denoiser
    if text_encoder is not None:
        model.text_encoder = text_encoder
    with modes_kept(base.model):  # the view sets its modules to eval and frozen: not the base's
        return type(base)(model, mel=base.mel)


def _mel_conditioning(view: MelDiffusionBackbone, prompts: Sequence[str]) -> Conditioning:
    """Like ``view.encode_prompt`` but differentiable through the word embeddings (textual inversion)."""
    encoder = view.model.text_encoder
    ids, mask = encoder.tokenize(prompts)
    cond = {"encoder_hidden_states": encoder(ids, mask), "encoder_attention_mask": mask}
    return Conditioning(cond=cond, uncond=view.encode_prompt([""] * len(prompts)).cond, masks=WORD_MASK)


@dataclass(frozen=True)
class _Family:
    backbone_type: type
    view: Callable[[Backbone, nn.Module, nn.Module | None], Backbone]
    #: the closed-vocabulary word encoder a new token is added to (None: prompts are open text)
    word_encoder: Callable[[Backbone], nn.Module] | None = None
    #: open-vocabulary text paths a textual-inversion token is added to (see :class:`NewToken`)
    text_paths: Callable[[Backbone], dict[str, tuple[Any, nn.Embedding]]] | None = None
    #: differentiable, uncached prompt encoding of a view (textual inversion training)
    conditioning: Callable[[Backbone, Sequence[str]], Conditioning] | None = None


#: Adapters over diffusers pipelines: open-vocabulary tokenizers, so textual inversion adds a
#: :class:`NewToken` to every tokenizer of the pipeline.
_PIPELINE = _Family(
    PipelineBackbone,
    _pipeline_view,
    text_paths=PipelineBackbone.text_paths,
    conditioning=_pipeline_conditioning,
)
FAMILIES: dict[str, _Family] = {
    "audioldm2": _PIPELINE,
    "audioldm": _PIPELINE,
    "musicldm": _PIPELINE,
    "stable_audio": _PIPELINE,
    "mel-diffusion": _Family(
        MelDiffusionBackbone,
        _mel_view,
        word_encoder=lambda base: base.model.text_encoder,
        conditioning=_mel_conditioning,
    ),
}


def family_of(backbone: Backbone, method: str) -> _Family:
    """The family entry for ``backbone``, or a clear error for unsupported backbones and methods."""
    family = FAMILIES.get(backbone.family)
    if family is None or not isinstance(backbone, family.backbone_type):
        raise ValueError(
            f"concepts work on base backbones of the families {', '.join(sorted(FAMILIES))}; got "
            f"{type(backbone).__name__} (family {backbone.family!r})"
        )
    if method == "textual_inversion" and family.word_encoder is None and family.text_paths is None:
        raise NotImplementedError(
            f"textual inversion is not implemented for {type(backbone).__name__}: use method='lora' or 'dreambooth'"
        )
    return family


def check_tensors(weights: Mapping[str, Tensor], expected: Mapping[str, torch.Size], filename: str) -> None:
    """Refuse concept tensors that are not exactly the model's ``expected`` ones: one missing,
    one the model has no place for, or one of another shape.

    The base model's fingerprint (where the concept has one) matched before this runs, so the
    file is damaged or was written for another model: a ``ValueError`` names it and a tensor
    (PyTorch's and peft's own errors list every mismatch without saying which file they came from).
    """
    damaged = "the file is damaged or does not belong to this base model; download or train the concept again"
    missing, unknown = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    if missing:
        raise ValueError(f"{filename} lacks {len(missing)} of the concept's tensors, e.g. {missing[0]}: {damaged}")
    if unknown:
        raise ValueError(f"{filename} holds {len(unknown)} tensors the base model has no place for, e.g. {unknown[0]}: {damaged}")
    for key, tensor in weights.items():
        if tensor.shape != expected[key]:
            raise ValueError(
                f"the concept's tensor {key} in {filename} has shape {tuple(tensor.shape)} but the base "
                f"model's needs {tuple(expected[key])}: {damaged}"
            )


# -- peft adapters ----------------------------------------------------------------------------------
def _lora_layers(model: nn.Module, name: str) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer) and name in getattr(m, "lora_A", {})]


#: Adapters of garbage-collected personalised models, by denoiser, waiting to be removed. The
#: cycle collector runs finalizers at any allocation, e.g. in the middle of peft injecting the
#: next adapter into the same modules: removing an adapter there swapped a layer back to its base
#: while peft was adding to it, and the new adapter lost tensors. So a finalizer only appends a
#: name here (one atomic ``list.append``) and :func:`remove_collected_adapters` removes them at the
#: safe points: before an injection, when a personalised model is made or closed, and before
#: each edit (:meth:`steer.Editor.edit_latent`), so that a base model's edits run without them.
_pending_removals: weakref.WeakKeyDictionary[nn.Module, list[str]] = weakref.WeakKeyDictionary()


def _removal_queue(model: nn.Module) -> list[str]:
    """The queue of adapter names to remove from ``model`` (created on first use)."""
    return _pending_removals.setdefault(model, [])


def remove_collected_adapters(model: nn.Module) -> None:
    """Remove the adapters of garbage-collected personalised models from ``model`` (a base
    denoiser); adapters of models still alive stay."""
    queue = _pending_removals.get(model)
    while queue:  # a finalizer running meanwhile only appends
        remove_lora(model, queue.pop())


BEFORE_SAVE.append(remove_collected_adapters)  # a base model saved after a collected one: without its adapter


def inject_lora(model: nn.Module, config, name: str, weights: dict[str, Tensor] | None) -> list[nn.Module]:
    """Inject a LoRA adapter ``name`` (switched off, frozen) into ``model``; returns its layers."""
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    remove_collected_adapters(model)
    device = next(model.parameters()).device
    # peft draws a fresh A from the global generator; weights to load replace it, so that draw
    # must not move the user's random stream (a fresh adapter's caller seeds it on purpose).
    forked = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=weights is not None)
    # peft freezes every weight but the adapter's: the model's own flags are given back
    with forked, warnings.catch_warnings(), modes_kept(model):
        # Several concepts may share one denoiser, each as its own named adapter.
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        inject_adapter_in_model(config, model, adapter_name=name)
    layers = _lora_layers(model, name)
    try:
        if not layers:
            raise ValueError(f"the LoRA targets {config.target_modules} match no module of the denoiser")
        if weights is not None:
            own = f".{name}."
            shapes = {n.replace(own, "."): p.shape for n, p in model.named_parameters() if own in n and ".lora_" in n}
            check_tensors(weights, shapes, ADAPTER_WEIGHTS_NAME)
            set_peft_model_state_dict(model, weights, adapter_name=name)
    except Exception:
        remove_lora(model, name)
        raise
    for layer in layers:
        for key in ("lora_A", "lora_B"):
            getattr(layer, key)[name].requires_grad_(False)
        set_adapter_state(layer, list(layer.active_adapters), True)
    return layers


def remove_lora(model: nn.Module, name: str) -> None:
    """Remove adapter ``name``; layers left without adapters become their original modules again."""
    adapted = {id(m) for m in _lora_layers(model, name)}
    for qualified, layer in [(n, m) for n, m in model.named_modules() if id(m) in adapted]:
        others = [a for a in layer.lora_A if a != name]
        if others:
            set_adapter_state(layer, [a for a in layer.active_adapters if a != name] or others[:1], layer.disable_adapters)
            layer.delete_adapter(name)
        else:
            parent, _, child = qualified.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, layer.get_base_layer())
    configs = getattr(model, "peft_config", None)
    if isinstance(configs, dict):
        configs.pop(name, None)
        if not configs:
            del model.peft_config


def strip_adapters(model: nn.Module) -> None:
    """Remove every peft adapter from ``model`` (a copy of a denoiser other concepts adapted)."""
    for name in list(getattr(model, "peft_config", {}) or {}):
        remove_lora(model, name)


# -- the personalised backbone ----------------------------------------------------------------------
class PersonalizedBackbone(Backbone):
    """ε' of ``concept`` on ``base``: a :class:`Backbone` sharing the base's audio path and schedule.

    Args:
        base: the base backbone the concept was learnt on (checked).
        concept: the concept. A concept without weights (as :func:`~steer.concepts.train.train_concept`
            starts) gets fresh ones: a LoRA adapter with B = 0, a copy of the base denoiser, the
            token's initial embedding.

    Use it as a context manager, or call :meth:`close`, to remove a LoRA adapter from the base
    denoiser when done. An unclosed one's adapter stays switched off once it is garbage-collected
    and is removed at the next edit, personalised model made or closed on that denoiser (never
    from inside the collector, which may run while peft changes the same modules). Switching adapters is not
    thread-safe: one module serves both models.
    """

    def __init__(self, base: Backbone, concept: Concept) -> None:
        if isinstance(base, PersonalizedBackbone):
            raise TypeError("apply a concept to a base backbone, not to a personalised one")
        family = family_of(base, concept.method)
        concept.check_compatible(base)
        self.base = base
        self.concept = concept
        self.family = base.family
        self.sample_rate = base.sample_rate
        self.channels = base.channels
        self.decoder_self_attention = base.decoder_self_attention
        self._closed = False
        self._lora_layers: list[nn.Module] = []
        self.adapter_name: str | None = None
        self._family = family
        remove_collected_adapters(base.denoiser)

        denoiser = base.denoiser
        if concept.method == "dreambooth":
            denoiser = copy.deepcopy(base.denoiser)
            strip_adapters(denoiser)
            state = concept.weights_under("denoiser")
            if state:
                check_tensors(state, {k: v.shape for k, v in denoiser.state_dict().items()}, WEIGHTS_NAME)
                denoiser.load_state_dict(state, strict=True)
            denoiser.eval().requires_grad_(False)
        self.token_id: int | None = None
        self.new_token: NewToken | None = None
        if concept.method == "textual_inversion" and family.text_paths is not None:
            self.new_token = NewToken(concept.token, family.text_paths(base), init_word=concept.class_word)
            saved = {k.removeprefix("token_embedding."): v for k, v in concept.weights.items() if k.startswith("token_embedding.")}
            if saved:
                self.new_token.load(saved)
            self.new_token.to(base.device)
            text = self.new_token
        else:
            text = self._word_encoder(family)
        self._view = family.view(base, denoiser, text)
        if concept.method == "lora":
            self.adapter_name = f"steer_{next(_adapter_ids)}"
            weights = concept.weights_under("lora") or None
            self._lora_layers = inject_lora(base.denoiser, concept.lora_config, self.adapter_name, weights)
            # An unclosed ε' still leaves the base denoiser clean: once it is garbage-collected its
            # (switched off) adapter is queued and removed at the next injection or close.
            self._remove = weakref.finalize(self, _removal_queue(base.denoiser).append, self.adapter_name)

    def _word_encoder(self, family: _Family) -> nn.Module | None:
        """A copy of a closed-vocabulary text encoder that knows the token (None: open text)."""
        if family.word_encoder is None:
            return None
        concept = self.concept
        encoder = copy.deepcopy(family.word_encoder(self.base))
        if concept.token in encoder.vocabulary:
            if concept.method == "textual_inversion":
                raise ValueError(
                    f"the token {concept.token!r} is already a word of the base model's vocabulary; "
                    "textual inversion needs a new word (e.g. 'sks')"
                )
            return encoder  # dreambooth / LoRA bind the concept to the existing word
        if concept.method == "textual_inversion":
            # Gal et al. start from a word describing the concept, read as prompts are ("Electric
            # Guitar" -> "guitar": the last word the model knows, English's head noun); else the mean word
            known = [w for w in split_words(concept.class_word or "") if w in encoder.vocabulary]
            init = known[-1] if known else None
        else:
            # DreamBooth binds the concept to a rare identifier whose embedding means little:
            # in a closed vocabulary that is <unk>'s (fixed; only the denoiser learns).
            init = "<unk>"
        try:
            (self.token_id,) = encoder.add_words([concept.token], init=init)
        except ValueError as error:
            raise ValueError(f"cannot add the token {concept.token!r} to the vocabulary: {error}") from error
        embedding = concept.weights.get("token_embedding")
        if embedding is not None:
            check_tensors({"token_embedding": embedding}, {"token_embedding": encoder.embed.weight.shape[1:]}, WEIGHTS_NAME)
            with torch.no_grad():
                encoder.embed.weight[self.token_id] = embedding.to(encoder.embed.weight)
        return encoder.eval().requires_grad_(False)

    # -- lifetime -------------------------------------------------------------------------------------
    def close(self) -> None:
        """Remove the LoRA adapter from the base denoiser (idempotent); ε' is unusable afterwards."""
        if self.adapter_name is not None and not self._closed:
            self._remove()  # queues the adapter, once
            self._lora_layers = []
            remove_collected_adapters(self.base.denoiser)
        self._closed = True

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> PersonalizedBackbone:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def adapter_enabled(self) -> Iterator[None]:
        """Switch this concept's LoRA adapter on (and others off) in the shared denoiser.

        Restored on exit, exceptions included; a no-op for dreambooth and textual inversion.
        Autograd keeps what the forward used, so backpropagating after the block is correct
        (with gradient checkpointing, :func:`backbones.base.checkpoint_call` switches the
        adapter back on around the recomputation).
        """
        if self._closed:
            raise RuntimeError("this personalised backbone was closed")
        if not self._lora_layers:
            yield
            return
        saved = [(layer, *adapter_state(layer)) for layer in self._lora_layers]
        active = [self.adapter_name]
        try:
            for layer, _, _ in saved:
                set_adapter_state(layer, active, False)
            yield
        finally:
            for layer, active, disabled in saved:
                set_adapter_state(layer, active, disabled)

    # -- the Backbone interface -------------------------------------------------------------------
    @property
    def alphas_cumprod(self) -> Tensor:
        return self.base.alphas_cumprod

    @property
    def denoiser(self) -> nn.Module:
        """The denoiser ε' runs; for LoRA and textual inversion the base's own module."""
        return self._view.denoiser

    @property
    def gradient_checkpointing(self) -> bool:
        return self._view.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enabled: bool) -> None:
        self._view.gradient_checkpointing = enabled  # the family's own checkpoint function

    def encode_prompt(self, prompts: Sequence[str]) -> Conditioning:
        if self._closed:
            raise RuntimeError("this personalised backbone was closed")
        if self.new_token is None:
            return self._view.encode_prompt(prompts)  # cached by the view
        # Not cached: the learnt rows may change (training, load) and a cache would not see it.
        with torch.no_grad():
            return self.training_conditioning(prompts)

    def _token_active(self) -> AbstractContextManager[None]:
        return self.new_token.active() if self.new_token is not None else nullcontext()

    def predict_noise(
        self,
        x_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        guidance_scale: float | Tensor = 1.0,
    ) -> Tensor:
        with self.adapter_enabled():
            return self._view.predict_noise(x_t, t, cond, guidance_scale)

    def encode_audio(self, waveform: Tensor, sample_rate: int) -> Tensor:
        return self.base.encode_audio(waveform, sample_rate)

    def decode_audio(self, latent: Tensor, num_samples: int | None = None) -> Tensor:
        return self.base.decode_audio(latent, num_samples)

    def self_attention_modules(self) -> dict[str, nn.Module]:
        return self._view.self_attention_modules()

    def feature_map(self, tokens: Tensor, latent_shape: Sequence[int]) -> Tensor:
        return self.base.feature_map(tokens, latent_shape)

    def feature_grid(self, num_tokens: int, latent_shape: Sequence[int]) -> tuple[int, int]:
        return self.base.feature_grid(num_tokens, latent_shape)

    # -- learning (used by steer.concepts.train) --------------------------------------------------
    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """What the concept's method learns, by name (``requires_grad`` is left to the caller).

        Textual inversion returns the token's rows (open vocabularies) or the whole embedding
        table of a closed one: the trainer keeps every row but :attr:`token_id` fixed.
        """
        method = self.concept.method
        if method == "lora":  # peft's key layout: the adapter's name left out
            own = f".{self.adapter_name}."
            return {
                n.replace(own, "."): p
                for n, p in self.base.denoiser.named_parameters()
                if ".lora_" in n and own in n
            }
        if method == "dreambooth":
            return dict(self.denoiser.named_parameters())
        if self.new_token is not None:
            return {f"token_embedding.{name}": row for name, row in self.new_token.rows.items()}
        return {"token_embedding": self._view.model.text_encoder.embed.weight}

    def training_conditioning(self, prompts: Sequence[str]) -> Conditioning:
        """Conditioning for training: differentiable through the token's embedding where it is learnt."""
        if self.concept.method == "textual_inversion":
            with self._token_active():
                return self._family.conditioning(self._view, prompts)
        return self.encode_prompt(prompts)

    def concept_weights(self) -> dict[str, Tensor]:
        """The learnt weights in :class:`Concept`'s namespaced layout (detached CPU copies)."""
        from peft import get_peft_model_state_dict

        weights: dict[str, Tensor] = {}
        method = self.concept.method
        if method == "lora":
            # save_embedding_layers=False: "auto" would look the base model up on the Hub.
            state = get_peft_model_state_dict(
                self.base.denoiser, adapter_name=self.adapter_name, save_embedding_layers=False
            )
            weights.update({f"lora.{k}": v for k, v in state.items()})
        elif method == "dreambooth":
            weights.update({f"denoiser.{k}": v for k, v in self.denoiser.state_dict().items()})
        if self.token_id is not None:
            weights["token_embedding"] = self._view.model.text_encoder.embed.weight[self.token_id]
        if self.new_token is not None:
            weights.update({f"token_embedding.{name}": row for name, row in self.new_token.rows.items()})
        return {k: v.detach().float().cpu().clone() for k, v in weights.items()}
