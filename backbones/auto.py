"""Load a backbone by name: an offline tiny build, a local folder or a Hub repo id.

A diffusers pipeline names its class in ``model_index.json`` (``_class_name``); the adapter that
serves it is looked up in :data:`ADAPTERS`. Adapters are imported by path on first use, so an
adapter (and its dependencies) loads only when its pipeline is asked for.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import os
import queue
import re
import socket
import threading
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

from .base import Backbone

#: Pipeline class (``model_index.json``'s ``_class_name``) → its adapter, ``"module:Class"``
#: relative to this package.
ADAPTERS: dict[str, str] = {
    "AudioLDM2Pipeline": "audioldm2:AudioLDM2Backbone",
    "AudioLDMPipeline": "audioldm:AudioLDMBackbone",
    "MusicLDMPipeline": "musicldm:MusicLDMBackbone",
    "StableAudioPipeline": "stable_audio:StableAudioBackbone",
}

#: Offline builds with random weights (their output is noise; for tests and demos):
#: name → (pipeline builder ``"module:function"``, pipeline class).
TINY: dict[str, tuple[str, str]] = {
    "tiny": ("tiny.audioldm2:tiny_audioldm2_pipeline", "AudioLDM2Pipeline"),
    "tiny-audioldm": ("tiny.audioldm:tiny_audioldm_pipeline", "AudioLDMPipeline"),
    "tiny-musicldm": ("tiny.musicldm:tiny_musicldm_pipeline", "MusicLDMPipeline"),
    "tiny-stable-audio": ("tiny.stable_audio:tiny_stable_audio_pipeline", "StableAudioPipeline"),
}


def _import(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(f".{module}", __package__), name)


def adapter_for(pipeline: str | None, source: str = "this model") -> type[Backbone]:
    """The adapter class serving a diffusers pipeline class name, or a clear error."""
    if pipeline not in ADAPTERS:
        raise ValueError(
            f"{source} holds a {pipeline}, which steer does not support; supported pipelines: "
            f"{', '.join(sorted(ADAPTERS))}"
        )
    return _import(ADAPTERS[pipeline])


def is_mel_diffusion_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a steer mel-diffusion model (``config.json``) rather than a
    diffusers pipeline (``model_index.json``), as :func:`load_backbone` tells them apart."""
    folder = Path(os.path.expanduser(folder))
    return (folder / "config.json").is_file() and not (folder / "model_index.json").is_file()


def repo_shaped(name: str) -> bool:
    """Whether ``name`` has a Hub repo id's shape, ``"owner/name"`` (not ``./x`` or ``../x``)."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and name.partition("/")[0] not in (".", "..")


def missing_local_path(name: str, what: str = "folder") -> str | None:
    """Why ``name``, which names no existing file or folder, can only mean a local path that is
    not there: the message to raise before any Hub request (offline, one retries for about
    20 s); ``None`` when it may be a Hub repo id (``"owner/name"``, or a bare name), which the
    Hub is then asked for (see :func:`local_hint` for its error).

    A name is a local path when it starts with ``/``, ``./``, ``../`` or ``~``, or holds a
    backslash or more than one ``/``.

    Example:
        >>> missing_local_path("cvssp/audioldm2-music") is None
        True
        >>> missing_local_path("/no/such/model")
        'no folder /no/such/model (no folder /no/such)'
    """
    if repo_shaped(name) or ("/" not in name and not name.startswith("~") and "\\" not in name):
        return None
    return f"no {what} {name} ({_near(Path(os.path.expanduser(name)))})"


#: how long :func:`hub_unreachable`'s answer stands (seconds): one probe for the loads of a command
HUB_PROBE_SECONDS = 60.0
_hub_probe: tuple[float, str, str | None] | None = None  # (when, endpoint, answer)


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why this machine cannot reach the Hugging Face Hub, or ``None`` where it may: its host
    resolves to no address or takes no connection within ``timeout`` seconds, its name lookup
    and connection together (a resolver that does not answer is not waited on longer). Asked
    before a download so that an offline machine reads its local cache at once
    (``local_files_only``) rather than retrying for ~25 s; the first answer that it cannot warns,
    saying so. ``None`` without asking where ``HF_HUB_OFFLINE`` is set (the Hub library reads
    only the cache then) or a proxy serves the Hub's address (environment or system settings, as
    the Hub library reads them: only the proxy can tell). An answer stands for
    :data:`HUB_PROBE_SECONDS`.
    Steer's loaders call it as ``backbones.auto.hub_unreachable`` (tests replace it there)."""
    global _hub_probe
    endpoint = urlsplit(constants.ENDPOINT)
    host = endpoint.hostname or ""
    if constants.HF_HUB_OFFLINE or (urllib.request.getproxies().get(endpoint.scheme) and not urllib.request.proxy_bypass(host)):
        return None
    now = time.monotonic()
    if _hub_probe is not None and _hub_probe[1] == constants.ENDPOINT and now - _hub_probe[0] < HUB_PROBE_SECONDS:
        return _hub_probe[2]
    try:
        _connect(host, endpoint.port or (80 if endpoint.scheme == "http" else 443), timeout)
        answer = None
    except OSError as error:
        answer = f"{host} cannot be reached: {error.strerror or error}"
    if answer is not None and (_hub_probe is None or _hub_probe[2] is None):
        warnings.warn(f"{answer}: Hub models are read from the local cache alone", UserWarning, stacklevel=3)
    _hub_probe = (now, constants.ENDPOINT, answer)
    return answer


#: The least time :func:`_connect` gives one address, where the time left allows: a handshake
#: over a slow link (satellite, a VPN across the world) takes up to about a second.
_LEAST_TRY = 1.0


def _connect(host: str, port: int, timeout: float) -> None:
    """Open and close a TCP connection to ``host``: its name lookup and connection within
    ``timeout`` seconds in all, else ``OSError``. The lookup runs in a daemon thread waited on for
    ``timeout`` (``socket.create_connection``'s own lookup has no timeout): one that a resolver
    leaves hanging is left behind, holding up neither the caller nor the interpreter's exit. Each
    address found is tried in turn with an equal share of the time left, and at least
    :data:`_LEAST_TRY` seconds of it (a slow link's handshake), so that one that drops the
    connection leaves the next its turn."""
    deadline = time.monotonic() + timeout
    found: queue.SimpleQueue[list[tuple[Any, ...]] | Exception] = queue.SimpleQueue()

    def lookup() -> None:
        try:
            found.put(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except Exception as error:  # noqa: BLE001 - raised to the caller
            found.put(error)

    threading.Thread(target=lookup, name=f"resolve {host}", daemon=True).start()
    try:
        addresses = found.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"name lookup timed out after {timeout:g} s") from None
    if isinstance(addresses, Exception):
        raise addresses
    failure: OSError = TimeoutError("timed out")
    for tried, (*_, address) in enumerate(addresses):  # in turn, as create_connection tries them
        if (left := deadline - time.monotonic()) <= 0:
            break
        try:
            share = max(left / (len(addresses) - tried), min(left, _LEAST_TRY))
            socket.create_connection(address[:2], timeout=share).close()
            return
        except OSError as error:
            failure = error
    raise failure


def local_hint(name: str) -> str:
    """For a Hub repo id that could not be fetched whose owner is a folder here (a typo in
    ``weights/my-model``?): ``"; nor is it a local folder (…; did you mean …?)"``, else ``""``."""
    if not repo_shaped(name) or not Path(name.partition("/")[0]).is_dir():
        return ""
    return f"; nor is it a local folder ({_near(Path(name))})"


def _near(path: Path) -> str:
    """What is there instead of the missing ``path``: its parent's closest folder, or no parent."""
    parent = path.parent
    if not parent.is_dir():
        return f"no folder {parent}"
    close = difflib.get_close_matches(path.name, [p.name for p in parent.iterdir() if p.is_dir()], n=1)
    return f"{parent} holds no {path.name!r}" + (f"; did you mean {str(parent / close[0])!r}?" if close else "")


def load_backbone(
    name: str,
    *,
    torch_dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Backbone:
    """The backbone for ``name``.

    Args:
        name: one of :data:`TINY` (``"tiny"`` is AudioLDM2; ``"tiny-audioldm"``,
            ``"tiny-musicldm"``, ``"tiny-stable-audio"``), a folder written by
            ``save_pretrained`` (a diffusers pipeline or a steer mel-diffusion model), or a Hub
            repo id such as ``"cvssp/audioldm2-music"`` (its ``model_index.json`` is fetched
            first to pick the adapter; a repo without one holding a steer mel-diffusion model's
            ``config.json`` loads as that model).
        torch_dtype: the model weights' dtype (latents stay float32).
        device: where the model runs.

    Example:
        >>> type(load_backbone("tiny-audioldm")).__name__
        'AudioLDMBackbone'
    """
    if name in TINY:
        build, pipeline = TINY[name]
        pipe = _import(build)()
        if torch_dtype != torch.float32:  # casting float32 to float32 makes diffusers warn
            pipe.to(dtype=torch_dtype)
        # named by the build (its weights are the same at every build), as concepts record it
        return adapter_for(pipeline).from_pipe(pipe.to(device), name_or_path=name)
    hub: dict[str, Any] = {}  # the Hub download's keyword arguments
    folder = Path(os.path.expanduser(name))
    if folder.is_dir():
        name, index = str(folder), folder / "model_index.json"
        if is_mel_diffusion_folder(folder):
            from .mel_diffusion import MelDiffusionBackbone  # diffusers: imported when a model loads

            return MelDiffusionBackbone.from_pretrained(name, torch_dtype=torch_dtype, device=device)
        if not index.is_file():
            raise ValueError(
                f"{name} is a folder without model_index.json (a diffusers pipeline) or "
                "config.json (a steer mel-diffusion model)"
            )
    elif folder.exists():
        raise ValueError(f"{name} is a file: pass the model's folder (written by save_pretrained)")
    elif "/" not in name:  # no Hub repo id: ask no server (offline, it retries for ~20 s)
        close = difflib.get_close_matches(name, TINY, n=1)
        raise ValueError(
            f"{name!r} is not an offline build ({', '.join(TINY)}), a local folder or a Hub repo id "
            f"(owner/name, e.g. cvssp/audioldm2-music)" + (f": did you mean {close[0]!r}?" if close else "")
        )
    elif problem := missing_local_path(name):
        raise ValueError(
            f"{problem}: pass a folder written by save_pretrained, a Hub repo id (owner/name) or one of "
            f"the offline builds {', '.join(TINY)}"
        )
    else:
        offline = hub_unreachable()
        try:
            index = _hub_model_index(name, offline)
        except ValueError:
            # a steer mel-diffusion model pushed to the Hub has a config.json, no model_index.json
            config = _hub_file(name, "config.json", offline)
            if config is None or not _is_mel_diffusion_config(config):
                raise
            from .mel_diffusion import MelDiffusionBackbone  # diffusers: imported when a model loads

            return MelDiffusionBackbone.from_pretrained(name, torch_dtype=torch_dtype, device=device)
        if offline:  # the pipeline from the cache alone too (diffusers would retry)
            hub["local_files_only"] = True
    adapter = adapter_for(_pipeline_class(index), name)
    return adapter.from_pretrained(name, torch_dtype=torch_dtype, device=device, **hub)


def backbone_family(name: str) -> str | None:
    """The :attr:`~backbones.Backbone.family` of the backbone :func:`load_backbone` would load
    for ``name``, read without loading it, so that a mismatch can be refused first: from an
    offline build's name, a local folder's files, or a Hub repo's ``model_index.json`` where the
    local Hugging Face cache holds it (nothing is downloaded). ``None`` where that does not tell
    (no such folder, a Hub repo not cached, a pipeline steer does not support).

    Example:
        >>> backbone_family("tiny-musicldm")
        'musicldm'
    """
    if name in TINY:
        return _import(ADAPTERS[TINY[name][1]]).family
    folder = Path(os.path.expanduser(name))
    if folder.is_dir():
        if is_mel_diffusion_folder(folder):
            # another model's config.json (a pipeline's unet/, a classifier) tells nothing
            return _mel_diffusion_family() if _is_mel_diffusion_config(folder / "config.json") else None
        index: Path | None = folder / "model_index.json"
    elif folder.exists() or not repo_shaped(name):
        return None
    else:
        cached = try_to_load_from_cache(name, "model_index.json")
        index = Path(cached) if isinstance(cached, str) else None
        if index is None and isinstance(config := try_to_load_from_cache(name, "config.json"), str):
            return _mel_diffusion_family() if _is_mel_diffusion_config(Path(config)) else None
    if index is None or not index.is_file():
        return None
    try:
        pipeline = _pipeline_class(index)
    except ValueError:  # load_backbone names the damaged file
        return None
    return _import(ADAPTERS[pipeline]).family if pipeline in ADAPTERS else None


def _mel_diffusion_family() -> str:
    from .mel_diffusion import MelDiffusionBackbone  # diffusers: imported when a model loads

    return MelDiffusionBackbone.family


def _is_mel_diffusion_config(config: Path) -> bool:
    """Whether ``config`` is a steer mel-diffusion model's ``config.json``."""
    from .mel_diffusion import MelDiffusionModel  # diffusers: imported when a model loads

    return _configures(config, MelDiffusionModel)


def _hub_file(repo_id: str, filename: str, offline: str | None) -> Path | None:
    """A file of a Hub repo (downloaded, or from the cache alone where ``offline``), or ``None``."""
    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=offline is not None))
    except (OSError, ValueError):
        return None


def _configures(config: Path, model: type) -> bool:
    """Whether the JSON object in ``config`` holds ``model``'s required arguments and no others."""
    try:
        content = json.loads(config.read_bytes())
    except (OSError, ValueError):
        return False
    parameters = inspect.signature(model).parameters
    required = {name for name, p in parameters.items() if p.default is inspect.Parameter.empty}
    return isinstance(content, dict) and required <= content.keys() <= parameters.keys()


def _pipeline_class(index: Path) -> str | None:
    """The ``_class_name`` a diffusers pipeline's ``model_index.json`` names; a ``ValueError``
    naming the file where it is not a JSON object (a cut or hand-edited file)."""
    try:
        content = json.loads(index.read_bytes())
    except (OSError, ValueError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"cannot read {index}: {error}; save the pipeline again or download it again") from None
    if not isinstance(content, dict):
        raise ValueError(
            f"{index} holds a JSON {type(content).__name__}, not the object of a diffusers pipeline's "
            "components; save the pipeline again or download it again"
        )
    return content.get("_class_name")


def missing_components(folder: Path) -> list[str]:
    """The components that a diffusers pipeline folder's ``model_index.json`` names (not null)
    and the folder holds no subfolder of (a copy cut short, a subfolder deleted): diffusers named
    the folder itself ("no file named model.safetensors"), or loaded an empty tokenizer that
    failed at the first prompt. The file is read by :func:`_pipeline_class` first."""
    index = json.loads((folder / "model_index.json").read_bytes())
    return sorted(
        name for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and value and value[0] is not None
        and not (folder / name).is_dir()
    )


def _hub_model_index(repo_id: str, offline: str | None) -> Path:
    """``model_index.json`` of a Hub repo (downloaded, or from the local cache: only from it
    where the Hub cannot be reached, ``offline`` saying why)."""
    try:
        return Path(hf_hub_download(repo_id, "model_index.json", local_files_only=offline is not None))
    except (OSError, ValueError) as error:
        cause = f"{offline}, and no copy is cached" if offline else f"{type(error).__name__}: {error}"
        raise ValueError(
            f"{repo_id!r} is not a local folder, and its model_index.json could not be fetched "
            f"from the Hugging Face Hub ({cause}){local_hint(repo_id)}. Pass a folder written "
            f"by save_pretrained, a Hub repo id this machine can reach or has cached, or one of "
            f"the offline builds {', '.join(TINY)}."
        ) from error
