"""What every adapter over a diffusers pipeline shares: the pipeline's components, frozen, with
``from_pipe`` / ``from_pretrained`` / ``save_pretrained`` / ``to`` and a per-prompt cache."""

from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import DiffusionPipeline
from torch import Tensor, nn

from . import auto
from .base import Backbone, modes_kept
from .conditioning import Conditioning, PromptCache
from .saving import HUB_MIXIN_FILES, check_model_folder, check_no_adapters, readable_like


class PipelineBackbone(Backbone):
    """A :class:`Backbone` over the components of a loaded diffusers pipeline.

    Subclasses set :attr:`pipeline_class`, :attr:`description` and :attr:`example_repo`, and
    implement :meth:`encode_one` and :meth:`_epsilon` (and the audio and geometry methods).

    Args:
        pipe: the pipeline; its components are shared (not copied), frozen and put in eval mode.
        name_or_path: the Hub repo id or folder the pipeline was loaded from (``None`` when it
            was built in memory); concept files record it as the base model.
    """

    pipeline_class: ClassVar[type[DiffusionPipeline]]
    #: "a …" noun phrase naming the pipeline in loading errors.
    description: ClassVar[str]
    #: a Hub repo id of a real checkpoint, quoted in loading errors.
    example_repo: ClassVar[str]
    #: anything else a user must know when loading fails (a gated repo, say).
    loading_note: ClassVar[str] = ""

    def __init__(self, pipe: DiffusionPipeline, *, name_or_path: str | None = None) -> None:
        self.pipe = pipe
        self.name_or_path = name_or_path
        for module in self._modules():
            module.eval().requires_grad_(False)
        self._prompts = PromptCache()

    # -- conditioning and score ------------------------------------------------------------------
    def encode_prompt(self, prompts: Sequence[str]) -> Conditioning:
        """Conditioning for ``prompts``: each distinct prompt is encoded once with
        :meth:`encode_one` and cached (no grad)."""
        with torch.no_grad():
            return self._prompts.get(prompts, self.encode_one, (self.device, self.dtype))

    @abstractmethod
    def encode_one(self, prompt: str) -> Conditioning:
        """The denoiser inputs of one prompt and of its unconditional counterpart, batch size 1.

        Uncached and differentiable through the text encoders (textual inversion trains with
        it); :meth:`encode_prompt` is the cached, gradient-free way in.
        """

    def predict_noise(
        self,
        x_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        guidance_scale: float | Tensor = 1.0,
    ) -> Tensor:
        return self.guided(self._epsilon, x_t, t, cond, guidance_scale)

    @abstractmethod
    def _epsilon(self, x_t: Tensor, t: Tensor, fields: dict[str, Tensor]) -> Tensor:
        """ε̂ of the rows ``(N, ...)`` at timesteps ``(N,)`` with conditioning ``fields``: one
        denoiser call (what :meth:`Backbone.guided` wraps)."""

    # -- loading ----------------------------------------------------------------------------------
    def _modules(self) -> list[nn.Module]:
        return [c for c in self.pipe.components.values() if isinstance(c, nn.Module)]

    @classmethod
    def from_pipe(cls, pipe: DiffusionPipeline, **kwargs: Any) -> PipelineBackbone:
        """Wrap an existing pipeline: its components are shared, not copied, and are frozen
        (``requires_grad_(False)``) and put in eval mode, for the pipeline too."""
        return cls(pipe, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        torch_dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        **kwargs: Any,
    ) -> PipelineBackbone:
        """Load a Hub repo id (e.g. :attr:`example_repo`) or a folder saved by :meth:`save_pretrained`
        (``~`` read as the home folder, as :func:`~backbones.load_backbone` reads it); a repo
        from the local cache alone where the Hub cannot be reached
        (:func:`~backbones.auto.hub_unreachable`: transformers retried each file for ~25 s).

        Extra keyword arguments go to the pipeline's ``from_pretrained``.

        Raises:
            ValueError: for a folder holding another pipeline than this adapter's (naming the
                adapter that serves it), and for what the pipeline cannot load.
        """
        name = str(name_or_path)
        if os.path.isdir(folder := os.path.expanduser(name)):
            name = folder
            if (index := Path(folder) / "model_index.json").is_file():
                if (held := auto._pipeline_class(index)) != cls.pipeline_class.__name__:
                    served = f"{auto.ADAPTERS[held].partition(':')[2]}, " if held in auto.ADAPTERS else ""
                    raise ValueError(
                        f"{name} holds a {held}, not the {cls.pipeline_class.__name__} {cls.__name__} loads: "
                        f"load it with {served}load_backbone({name!r})"
                    )
                if missing := auto.missing_components(index.parent):
                    raise ValueError(
                        f"{name} lacks the subfolder of {', '.join(missing)}, which its model_index.json names: "
                        "save the pipeline again, or copy the missing subfolders from where it came from"
                    )
        elif not ("local_files_only" in kwargs or kwargs.get("force_download")) and auto.hub_unreachable():
            kwargs["local_files_only"] = True  # the caller's choice stands
        try:
            pipe = cls._load_pipeline(name, torch_dtype=torch_dtype, **kwargs)
        except (OSError, ValueError) as error:
            raise ValueError(
                f"could not load {cls.description} from {name!r} ({error}). Pass a folder written "
                f"by save_pretrained, a Hub repo id such as {cls.example_repo!r} that this machine "
                f"can reach or has cached, or use an offline 'tiny' backbone.{cls.loading_note}"
            ) from error
        return cls(pipe.to(device), name_or_path=name)

    @classmethod
    def _load_pipeline(cls, name: str, *, torch_dtype: torch.dtype, **kwargs: Any) -> DiffusionPipeline:
        # ``dtype=``: diffusers (from 0.42.0, the lowest steer allows) deprecates ``torch_dtype=``
        # with a FutureWarning on every load.
        return cls.pipeline_class.from_pretrained(name, dtype=torch_dtype, **kwargs)

    def _settings(self) -> dict[str, Any]:
        """The constructor's keyword arguments besides the pipeline (what :meth:`replace` keeps)."""
        return {}

    def replace(self, **components: Any) -> PipelineBackbone:
        """A backbone of the same kind over the same components but ``components`` (e.g. a
        personalised denoiser or tokenizers that know a new word), with its own prompt cache; the
        shared components keep their train/eval modes and ``requires_grad`` flags."""
        unknown = set(components) - set(self.pipe.components)
        if unknown:
            raise ValueError(f"the pipeline has no component {sorted(unknown)[0]!r}")
        pipe = type(self.pipe)(**{**self.pipe.components, **components})
        pipe.set_progress_bar_config(disable=True)
        own = [c for c in self.pipe.components.values() if isinstance(c, nn.Module)]
        with modes_kept(*own):  # the new adapter sets its modules to eval and frozen: not this one's
            return type(self)(pipe, **self._settings())

    @property
    def denoiser_component(self) -> str:
        """The pipeline component name of :attr:`denoiser` (``"unet"``, ``"transformer"``)."""
        return next(name for name, c in self.pipe.components.items() if c is self.denoiser)

    def text_paths(self) -> dict[str, tuple[Any, nn.Module]]:
        """Each tokenizer component by name, with the input embedding module its ids index
        (the one the text encoder really calls: T5's ``encoder.embed_tokens``, CLAP's text
        model's word embeddings)."""
        paths = {}
        for name, tokenizer in self.pipe.components.items():
            if not name.startswith("tokenizer") or tokenizer is None:
                continue
            encoder = self.pipe.components[name.replace("tokenizer", "text_encoder")]
            for inner in ("text_model", "encoder"):  # CLAP, T5: the module holding the lookup
                if isinstance(getattr(encoder, inner, None), nn.Module):
                    encoder = getattr(encoder, inner)
                    break
            paths[name] = (tokenizer, encoder.get_input_embeddings())
        return paths

    def save_pretrained(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Save the underlying pipeline (safetensors) into the folder ``path`` (created if
        needed), loadable with :meth:`from_pretrained`; returns it as a ``Path``.

        The pipeline writes ``model_index.json`` and a subfolder per component (``unet/``,
        ``vae/``, …), in which diffusers and transformers also delete an earlier save's weight
        shards; the folder's other files are never touched.

        Args:
            path: the folder.
            overwrite: replace the ``model_index.json`` and component subfolders' files the
                folder already holds.

        Raises:
            ValueError: before anything is written, for a path (or a component's subfolder)
                that is a file, lies under a file or cannot be written, or (without
                ``overwrite``) a folder holding ``model_index.json`` or a file in a component's
                subfolder; for a folder holding a steer model's ``config.json`` or
                ``model.safetensors`` (even with ``overwrite``); for a denoiser holding a concept's adapter
                (:func:`~backbones.saving.check_no_adapters`).
        """
        folder = Path(os.path.expanduser(path))  # as load_backbone reads it
        check_no_adapters(self.denoiser)
        components = [name for name, component in self.pipe.components.items() if component is not None]
        check_model_folder(
            folder, "the pipeline folder", ["model_index.json"], subfolders=components, overwrite=overwrite,
            other_kind=("a steer model (mel diffusion, classifier)", HUB_MIXIN_FILES),
        )
        self.pipe.save_pretrained(folder, safe_serialization=True)
        weights = (path for name in components for path in (folder / name).rglob("*.safetensors"))
        readable_like(weights, folder / "model_index.json")
        return folder

    def to(self, device: torch.device | str) -> PipelineBackbone:
        """Move the pipeline to ``device`` (prompts are encoded there again when next used)."""
        self.pipe.to(device)
        return self
