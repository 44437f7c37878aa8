"""Saving and loading steer's own models: the checks a ``save_pretrained`` makes before writing
anything, and the Hub mixin of the mel-diffusion model and the instrument classifier.

A save refuses a path that cannot be a folder or cannot be written, and a folder already holding
a file it would replace or remove unless asked to (``overwrite=True``); it never touches the
other files of the folder.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import PyTorchModelHubMixin, constants
from huggingface_hub.errors import LocalEntryNotFoundError
from torch import nn

from . import auto

#: what the Hub mixin's ``save_pretrained`` replaces (it writes ``README.md`` only where absent)
HUB_MIXIN_FILES = (constants.CONFIG_NAME, constants.SAFETENSORS_SINGLE_FILE)

#: the most files a refusal names, so that it stays one readable line
_NAMED = 8


#: Called with each module of a model before a save checks it for adapters (:func:`check_no_adapters`):
#: ``steer.concepts`` registers the removal of the adapters of personalised models that were
#: garbage-collected unclosed (this package cannot import it: steer builds on backbones).
BEFORE_SAVE: list[Callable[[nn.Module], None]] = []


def check_no_adapters(model: nn.Module) -> None:
    """Refuse to save ``model`` (a denoiser, or a model holding one) while a concept's LoRA
    adapter is injected into it: its layers would be saved under peft's names
    (``to_q.base_layer.weight``), and a load would leave them at their random initial values.
    Adapters of personalised models already collected are removed first (:data:`BEFORE_SAVE`).

    Raises:
        ValueError: naming the fix, before anything is written.
    """
    # listed before any hook runs: a hook swaps adapter layers back to their base layers, which
    # a walk of the tree in progress would meet half changed (the denoiser may be any part of it)
    for module in list(model.modules()):
        for hook in BEFORE_SAVE:
            hook(module)
    tuners = sys.modules.get("peft.tuners.tuners_utils")  # none injected where peft never loaded
    # walked again: the tree as the hooks left it
    if tuners is not None and any(isinstance(module, tuners.BaseTunerLayer) for module in model.modules()):
        raise ValueError(
            "the model holds a concept's LoRA adapter (a SteerMusicPlus editor or personalised model that is "
            "still open shares its layers): close it (its close(), or leave its with block) before saving the "
            "base model, whose weights would otherwise be saved under the adapter's layer names"
        )


def check_can_be_folder(folder: Path, what: str, *, another: str | None = None) -> None:
    """Refuse a folder path that cannot be one or cannot be written: an existing file, or one
    under a file or a folder this user cannot write (``what`` names it in the error, which ends
    "choose another path", or "choose ``another``": a script passes ``"another --out"``)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    fix = f"choose {another or 'another path'}"
    if not existing.is_dir():
        where = "exists and is not a folder" if existing == folder else f"cannot be a folder: {existing} is a file"
        raise ValueError(f"{what} {folder} {where}; {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {folder} cannot be written: {existing} is not writable; {fix}")
    if reason := creation_problem(existing):
        raise ValueError(f"{what} {folder} cannot be written: nothing can be created in {existing} ({reason}); {fix}")


def creation_problem(folder: Path) -> str | None:
    """Why nothing can be created in the existing folder ``folder`` (the system's reason), or
    ``None``. Asked by creating and removing a folder of its own, uniquely named: ``os.access``
    says yes to root on a read-only or virtual file system (``/proc``)."""
    try:
        os.rmdir(tempfile.mkdtemp(dir=folder, prefix=".steer-check-"))
    except OSError as error:
        return error.strerror or str(error)
    return None


def check_model_folder(
    folder: Path,
    what: str,
    files: Sequence[str],
    *,
    subfolders: Sequence[str] = (),
    overwrite: bool,
    overwrite_as: str = "overwrite=True",
    another: str | None = None,
    other_kind: tuple[str, Sequence[str]] | None = None,
) -> None:
    """Refuse to save a model into ``folder`` (``what`` names it in the error) where the save
    cannot write it (:func:`check_can_be_folder`, for each of ``subfolders`` too) or, without
    ``overwrite``, where it already holds one of ``files`` or any file under ``subfolders`` (a
    save owns its subfolders: diffusers and transformers delete an earlier save's weight shards
    there). Raises a one-line ``ValueError`` naming those files and the fix.

    The fixes are named as the Python API spells them (``overwrite=True``, "choose another path"
    or "another folder"); a script asking before its work passes its options' spelling instead:
    ``what="--out"``, ``overwrite_as="--overwrite"``, ``another="another --out"``.

    ``other_kind``: a model of another kind, as its name and the files that mark it (a diffusers
    pipeline's ``model_index.json``), refused even with ``overwrite``, which would not remove it:
    the folder would hold two models, and a loader would read one of them."""
    check_can_be_folder(folder, what, another=another)
    if other_kind is not None and (marks := [name for name in other_kind[1] if os.path.lexists(folder / name)]):
        raise ValueError(
            f"{what} {folder} holds {other_kind[0]}: {', '.join(marks)}, which saving this model beside it would "
            f"not replace (a loader would read one of the two): choose {another or 'another folder'}"
        )
    for name in subfolders:
        check_can_be_folder(folder / name, f"the {name} subfolder", another=another)
    if overwrite:
        return
    held = [name for name in files if os.path.lexists(folder / name)]
    for name in subfolders:
        if (folder / name).is_dir():
            held += sorted(p.relative_to(folder).as_posix() for p in (folder / name).rglob("*") if not p.is_dir())
    if held:
        named = ", ".join(held[:_NAMED]) + (f" and {len(held) - _NAMED} more" if len(held) > _NAMED else "")
        raise ValueError(
            f"{what} {folder} already holds {named}, which saving would replace or remove: "
            f"pass {overwrite_as} to replace them, or choose {another or 'another folder'}"
        )


def readable_like(files: Iterable[Path], reference: Path) -> None:
    """Give ``files`` the permissions of ``reference``, a file written with Python's ``open`` (the
    user's umask, 0644 mostly): safetensors writes its files readable by their owner alone (0600),
    which the other users of a shared model folder could not load."""
    mode = stat.S_IMODE(reference.stat().st_mode)
    for path in files:
        os.chmod(path, mode)


class SteerHubMixin(PyTorchModelHubMixin):
    """:class:`~huggingface_hub.PyTorchModelHubMixin` whose :meth:`save_pretrained` refuses to
    replace a model already in the folder (the mixin deletes and rewrites its files unasked), and
    whose :meth:`from_pretrained` reads ``~`` in a folder's path and an unreachable Hub as steer's
    other loaders do."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        """Load from a folder written by :meth:`save_pretrained` or a Hub repo id, as the mixin
        does (same keyword arguments), with ``~`` expanded as :func:`backbones.load_backbone`
        does (the mixin took ``"~/models/classifier"`` for a repo id), and a repo read from the
        cache alone where the Hub cannot be reached (:func:`~backbones.auto.hub_unreachable`;
        the mixin retried for ~25 s)."""
        name = os.path.expanduser(pretrained_model_name_or_path)
        asked = "local_files_only" in kwargs or kwargs.get("force_download")  # the caller's choice stands
        offline = None if os.path.isdir(name) or asked else auto.hub_unreachable()
        if offline:
            kwargs["local_files_only"] = True
        # the mixin's default (strict=False) left a weight missing from the file at its random
        # initial value, without a word
        kwargs.setdefault("strict", True)
        try:
            return super().from_pretrained(name, **kwargs)
        except LocalEntryNotFoundError as error:
            if not offline:
                raise
            raise LocalEntryNotFoundError(
                f"{name!r} is not a local folder, and the Hugging Face Hub cannot be asked for it ({offline}) "
                "nor is a copy cached: pass a folder written by save_pretrained"
            ) from error

    def save_pretrained(
        self, save_directory: str | os.PathLike, *, overwrite: bool = False, **kwargs: Any
    ) -> Path | str | None:
        """Write ``config.json``, ``model.safetensors`` and, where absent, a ``README.md`` model
        card into ``save_directory`` (created if needed); returns it as a ``Path`` (with
        ``push_to_hub=True``, what the mixin returns: the commit's URL).

        Args:
            save_directory: the folder; its other files are never touched.
            overwrite: replace the ``config.json`` and ``model.safetensors`` it already holds.
            **kwargs: the mixin's (``config``, ``model_card_kwargs``, ``push_to_hub``, ``repo_id``,
                …); with ``push_to_hub=True`` the folder is pushed too.

        Raises:
            ValueError: before anything is written, for a path that is a file, lies under a file
                or cannot be written, or (without ``overwrite``) a folder holding
                ``config.json`` or ``model.safetensors``; for a folder holding a diffusers
                pipeline (``model_index.json``, even with ``overwrite``); for a model holding a concept's
                adapter (:func:`check_no_adapters`).
        """
        folder = Path(os.path.expanduser(save_directory))  # as from_pretrained reads it
        check_no_adapters(self)
        check_model_folder(
            folder, "the model folder", HUB_MIXIN_FILES, overwrite=overwrite,
            other_kind=("a diffusers pipeline", ["model_index.json"]),
        )
        pushed = super().save_pretrained(folder, **kwargs)
        readable_like([folder / constants.SAFETENSORS_SINGLE_FILE], folder / constants.CONFIG_NAME)
        return pushed if kwargs.get("push_to_hub") else folder
