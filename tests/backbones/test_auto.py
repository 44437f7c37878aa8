"""load_backbone: tiny builds by name, pipelines by model_index.json (folder or Hub), clear errors."""

import json
import re
import socket
import threading
import time
import warnings
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import soundfile as sf
import torch

import backbones.auto
from backbones import (
    AudioLDM2Backbone,
    AudioLDMBackbone,
    MusicLDMBackbone,
    load_backbone,
)
from backbones.auto import ADAPTERS, adapter_for, hub_unreachable  # the real one (conftest replaces it)
from backbones.mel_diffusion import MelDiffusionBackbone
from steer.metrics import InstrumentClassifier

SUPPORTED = "supported pipelines: AudioLDM2Pipeline, AudioLDMPipeline, MusicLDMPipeline, StableAudioPipeline"
SHIPPED = Path(__file__).parents[2] / "weights" / "mel-diffusion-swap"


@pytest.mark.parametrize(
    ("name", "adapter"),
    [("tiny", AudioLDM2Backbone), ("tiny-audioldm", AudioLDMBackbone), ("tiny-musicldm", MusicLDMBackbone)],
)
def test_tiny_names(name, adapter):
    backbone = load_backbone(name)
    assert type(backbone) is adapter and backbone.name_or_path == name  # the same weights at every build


def test_the_stable_audio_adapter_is_imported_by_path_when_asked_for():
    module = pytest.importorskip("backbones.stable_audio")
    assert adapter_for("StableAudioPipeline") is module.StableAudioBackbone


def test_every_registered_class_names_its_pipeline():
    for pipeline in ("AudioLDM2Pipeline", "AudioLDMPipeline", "MusicLDMPipeline"):
        assert adapter_for(pipeline).pipeline_class.__name__ == pipeline
    assert sorted(ADAPTERS) == sorted(SUPPORTED.split(": ")[1].split(", "))


def test_an_unknown_pipeline_in_a_folder(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FooPipeline"}))
    with pytest.raises(ValueError, match=f"{tmp_path} holds a FooPipeline, which steer does not support; {SUPPORTED}"):
        load_backbone(str(tmp_path))


@pytest.mark.parametrize(
    "content, said",
    [("{", "cannot read {index}: Expecting property name"), ("[]", "{index} holds a JSON list, not the object")],
)
def test_a_model_index_that_is_no_json_object_is_named(tmp_path, content, said):
    """A cut file raised json's JSONDecodeError, a list AttributeError: neither named the file."""
    index = tmp_path / "model_index.json"
    index.write_text(content)
    with pytest.raises(ValueError, match=re.escape(said.format(index=index)) + ".*save the pipeline again"):
        load_backbone(str(tmp_path))


def _hub_index(monkeypatch, tmp_path, pipeline):
    """Answer hf_hub_download with a model_index.json naming ``pipeline``; records the requests."""
    index = tmp_path / "model_index.json"
    index.write_text(json.dumps({"_class_name": pipeline}))
    calls = []
    monkeypatch.setattr(backbones.auto, "hf_hub_download", lambda *a, **k: calls.append(a) or str(index))
    return calls


def test_a_hub_repo_is_served_by_the_adapter_its_model_index_names(monkeypatch, tmp_path):
    calls = _hub_index(monkeypatch, tmp_path, "MusicLDMPipeline")
    loaded = []
    monkeypatch.setattr(MusicLDMBackbone, "from_pretrained", classmethod(lambda cls, name, **k: loaded.append((cls, name, k))))
    load_backbone("ucsd-reach/musicldm")
    assert calls == [("ucsd-reach/musicldm", "model_index.json")]
    assert loaded == [(MusicLDMBackbone, "ucsd-reach/musicldm", {"torch_dtype": torch.float32, "device": "cpu"})]


def test_an_unknown_pipeline_on_the_hub(monkeypatch, tmp_path):
    _hub_index(monkeypatch, tmp_path, "FooPipeline")
    with pytest.raises(ValueError, match=f"me/foo holds a FooPipeline, which steer does not support; {SUPPORTED}"):
        load_backbone("me/foo")


def test_offline_without_a_cached_copy_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="'me/missing' is not a local folder, and its model_index.json could not be fetched"):
        load_backbone("me/missing")


def test_a_path_that_is_not_there_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=f"^no folder {tmp_path}/no/such/folder \\(no folder {tmp_path}/no/such\\): pass a folder written by save_pretrained"):
        load_backbone(str(tmp_path / "no" / "such" / "folder"))


def test_the_shipped_mel_diffusion_folder_records_its_path():
    backbone = load_backbone(str(SHIPPED))
    assert type(backbone) is MelDiffusionBackbone and backbone.name_or_path == str(SHIPPED)


@pytest.mark.parametrize("name, hint", [("tinyy", ": did you mean 'tiny'?"), ("tiny-audio-ldm", ": did you mean 'tiny-audioldm'?"), ("xyz", "")])
def test_a_name_that_is_no_build_folder_or_repo_id_is_refused_without_the_hub(monkeypatch, name, hint):
    calls = []
    monkeypatch.setattr(backbones.auto, "hf_hub_download", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError, match=f"^'{name}' is not an offline build .*e.g. cvssp/audioldm2-music\\){re.escape(hint)}$"):
        load_backbone(name)
    assert calls == []


@pytest.mark.parametrize(
    "name, message",
    [
        ("./model", "^no folder ./model \\(. holds no 'model'\\): pass a folder"),
        ("weights/mel-diffusion-swap/x/y", "^no folder weights/mel-diffusion-swap/x/y \\(no folder weights/mel-diffusion-swap/x\\): pass a folder"),
        ("~/no-such-steer-model", "^no folder ~/no-such-steer-model \\(.* holds no 'no-such-steer-model'"),
        ("weights/mel-diffusion-swap/config.json", "^weights/mel-diffusion-swap/config.json is a file: pass the model's folder"),
    ],
)
def test_a_local_path_that_is_not_a_model_folder_is_refused_without_the_hub(monkeypatch, name, message):
    calls = []
    monkeypatch.setattr(backbones.auto, "hf_hub_download", lambda *a, **k: calls.append(a))
    monkeypatch.chdir(SHIPPED.parent.parent)
    with pytest.raises(ValueError, match=message):
        load_backbone(name)
    assert calls == []


def test_a_repo_id_goes_to_the_hub_even_where_its_owner_is_a_folder_and_a_failure_names_the_near_folder(monkeypatch, tmp_path):
    """``weights/`` is a folder here: "weights/mel-diffusion-swp" may still be a Hub repo (and
    "cvssp/audioldm2-music" beside a local cvssp/audioldm2 is one); its error points at the near folder."""
    monkeypatch.chdir(SHIPPED.parent.parent)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="^'weights/mel-diffusion-swp' is not a local folder, and its model_index.json could not "
                       "be fetched .*; nor is it a local folder \\(weights holds no 'mel-diffusion-swp'; did you mean "
                       "'weights/mel-diffusion-swap'\\?\\)\\. Pass a folder"):
        load_backbone("weights/mel-diffusion-swp")
    calls = _hub_index(monkeypatch, tmp_path, "MusicLDMPipeline")
    monkeypatch.setattr(MusicLDMBackbone, "from_pretrained", classmethod(lambda cls, name, **k: None))
    load_backbone("weights/musicldm")
    assert calls == [("weights/musicldm", "model_index.json")]


@pytest.mark.parametrize("missing", [["vocoder"], ["tokenizer_2"], ["text_encoder", "tokenizer"]])
def test_a_pipeline_folder_without_a_components_subfolder_names_it(tmp_path, missing):
    """diffusers named the folder ("no file named model.safetensors ... in directory"), or loaded
    an empty tokenizer whose first prompt raised an OverflowError."""
    import shutil

    folder = load_backbone("tiny").save_pretrained(tmp_path / "pipe")
    for name in missing:
        shutil.rmtree(folder / name)
    message = f"{folder} lacks the subfolder of {', '.join(missing)}, which its model_index.json names: save the pipeline again"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        load_backbone(str(folder))


def test_a_home_of_no_such_user_is_a_folder_that_is_not_there(tmp_path, capsys):
    """Path.expanduser raised a bare RuntimeError for "~nosuchuser/m" (steer edit: a traceback
    and status 1); os.path.expanduser leaves it as it is, a folder that is not there."""
    from steer.cli import main

    with pytest.raises(ValueError, match=r"^no folder ~nosuchuser-of-steer/m \(no folder ~nosuchuser-of-steer\): pass a folder"):
        load_backbone("~nosuchuser-of-steer/m")
    clip = tmp_path / "c.wav"
    sf.write(clip, np.zeros(16000, np.float32), 16000)
    args = ["edit", str(clip), "--source", "a", "--target", "b", "--backbone", "~nosuchuser-of-steer/m", "-o", str(tmp_path / "e.wav")]
    assert main(args) == 2
    assert "steer: error: --backbone ~nosuchuser-of-steer/m not found" in capsys.readouterr().err


def test_a_folder_under_home_is_found(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mel").symlink_to(SHIPPED)
    assert type(load_backbone("~/models/mel")) is MelDiffusionBackbone


@pytest.mark.parametrize("name", ["tiny-audioldm", "tiny-musicldm", "tiny-stable-audio", "tiny"])
def test_a_saved_pipeline_loads_in_the_dtype_asked_without_diffusers_deprecation_warning(name, tmp_path):
    """Loading passed diffusers torch_dtype=, which it deprecates for dtype= with a FutureWarning
    ("`torch_dtype` is deprecated and will be removed in version 1.0.0") on every load."""
    load_backbone(name).save_pretrained(tmp_path / "pipe")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backbone = load_backbone(str(tmp_path / "pipe"), torch_dtype=torch.bfloat16)
    assert [str(w.message) for w in caught if "torch_dtype" in str(w.message)] == []
    assert backbone.pipe.vae.dtype == torch.bfloat16  # (transformers 5.0 keeps T5's wo layers in float32)


def test_a_folder_holding_another_models_config_is_refused_by_name(tmp_path):
    """A saved pipeline's unet/ (config.json, no model_index.json) was loaded as a mel-diffusion
    model and failed with a TypeError traceback (missing argument 'words')."""
    load_backbone("tiny").save_pretrained(tmp_path / "pipe")
    message = (
        f"'{tmp_path / 'pipe' / 'unet'}' holds a config.json that is not a steer mel-diffusion model's "
        "(MelDiffusionModel.__init__() missing 1 required keyword-only argument: 'words'): "
        f"pass the diffusers pipeline's folder {tmp_path / 'pipe'} that holds it"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        load_backbone(str(tmp_path / "pipe" / "unet"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"hidden_size": 8}')
    with pytest.raises(ValueError, match=r"holds a config.json that is not a steer mel-diffusion model's .*: pass a folder written by save_pretrained$"):
        load_backbone(str(tmp_path / "other"))


class _Connection:
    def close(self) -> None:
        pass


def _online(monkeypatch) -> None:
    """The Hub at its own address, asked directly: no proxy, not HF_HUB_OFFLINE, no earlier answer."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://huggingface.co")
    monkeypatch.setattr(backbones.auto, "_hub_probe", None)


def test_the_hub_is_unreachable_where_its_host_takes_no_connection(monkeypatch):
    asked, connected = [], []

    def lookup(host, port, type):
        asked.append((host, port))
        raise socket.gaierror(-2, "Name or service not known")

    def resolve(host, port, type):  # two addresses: the first refuses
        asked.append((host, port))
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (f"192.0.2.{i}", port)) for i in (1, 2)]

    def connect(address, timeout):
        connected.append((address, timeout))
        if address[0] == "192.0.2.1":
            raise ConnectionRefusedError(111, "Connection refused")
        return _Connection()

    def probe():
        monkeypatch.setattr(backbones.auto, "_hub_probe", None)  # no earlier answer stands
        return hub_unreachable()

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    monkeypatch.setattr(socket, "create_connection", connect)
    _online(monkeypatch)
    reason = "huggingface.co cannot be reached: Name or service not known"
    with pytest.warns(UserWarning, match=f"^{reason}: Hub models are read from the local cache alone$"):
        assert probe() == reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        assert hub_unreachable() == reason  # the answer stands: not asked again
    assert asked == [("huggingface.co", 443)] and connected == []
    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    assert probe() is None
    assert [address for address, _ in connected] == [("192.0.2.1", 443), ("192.0.2.2", 443)]
    (_, first), (_, second) = connected  # within the probe's 3 s in all, each its share of it
    assert 0 < first <= 1.5 < second <= 3.0  # the first refused at once: the second had all left
    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # only the proxy can tell
    assert probe() is None
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://hf-mirror.internal")  # a mirror by http
    with pytest.warns(UserWarning, match="^hf-mirror.internal cannot be reached"):  # no proxy for http: asked
        assert probe() == "hf-mirror.internal cannot be reached: Name or service not known"
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    asked.clear()
    assert probe() is None and asked == []
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.delenv("HTTP_PROXY")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the Hub library reads the cache alone
    assert probe() is None and asked == []


def test_the_hub_probe_waits_no_longer_than_its_timeout_on_a_name_lookup(monkeypatch):
    """getaddrinfo has no timeout of its own: a resolver that did not answer kept the probe,
    meant to spare the loaders the Hub library's retries, waiting 20-40 s itself."""
    released = threading.Event()

    def hang(*args, **kwargs):  # a resolver that does not answer (until the test ends)
        released.wait(2)
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    _online(monkeypatch)
    reason = "huggingface.co cannot be reached: name lookup timed out after 0.2 s"
    start = time.monotonic()
    try:
        with pytest.warns(UserWarning, match=f"^{reason}: Hub models are read from the local cache alone$"):
            assert hub_unreachable(timeout=0.2) == reason
        assert time.monotonic() - start < 1
    finally:
        released.set()


def test_the_hub_probe_gives_each_address_a_second_at_least(monkeypatch):
    """Eight addresses (a dual-stack host) had 3/8 s each: a link whose handshake takes 0.6 s
    was "unreachable" though the first address would have answered."""
    tries = []

    def resolve(host, port, type):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (f"192.0.2.{i}", port)) for i in range(8)]

    def connect(address, timeout):
        tries.append(timeout)
        if timeout < 0.6:
            raise TimeoutError("timed out")
        return _Connection()

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setattr(socket, "create_connection", connect)
    _online(monkeypatch)
    assert hub_unreachable() is None
    assert len(tries) == 1 and 0.99 < tries[0] <= 1.0


def _cache_repo(cache: Path, repo_id: str, backbone) -> None:
    """``backbone`` saved as the Hugging Face cache holds a downloaded repo."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    backbone.save_pretrained(repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)


def test_where_the_hub_is_unreachable_a_repo_loads_from_the_cache_at_once(monkeypatch, tmp_path):
    """Offline, each Hub request retried for ~25 s ("Retrying in 8s [Retry 5/5]") before the
    error, the same for a repo in the cache."""
    monkeypatch.setattr(backbones.auto, "hub_unreachable", lambda timeout=3.0: "huggingface.co cannot be reached: no network")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    tiny = load_backbone("tiny")
    _cache_repo(tmp_path, "me/tiny", tiny)

    def ask(*args, **kwargs):
        raise AssertionError(f"the Hub was asked: {args}")  # AudioLDM2's language model was, 25 s

    monkeypatch.setattr(huggingface_hub.file_download, "get_hf_file_metadata", ask)
    loaded = load_backbone("me/tiny")
    assert type(loaded) is AudioLDM2Backbone and loaded.name_or_path == "me/tiny"
    torch.testing.assert_close(loaded.denoiser.state_dict(), tiny.denoiser.state_dict(), rtol=0, atol=0)
    message = (
        "'me/missing' is not a local folder, and its model_index.json could not be fetched from the Hugging Face Hub "
        "(huggingface.co cannot be reached: no network, and no copy is cached). Pass a folder"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        load_backbone("me/missing")


def test_an_adapters_own_loader_reads_the_cache_at_once_offline_home_paths_and_refuses_another_pipeline(
    monkeypatch, tmp_path
):
    """The README's `AudioLDM2Backbone.from_pretrained(repo)`: offline, its GPT-2 retried for
    ~25 s before loading from the cache (load_backbone did not); "~/m" was taken for a repo id;
    an AudioLDM2 folder given to AudioLDMBackbone loaded and failed at its first prompt."""
    from backbones import AudioLDMBackbone

    monkeypatch.setattr(backbones.auto, "hub_unreachable", lambda timeout=3.0: "huggingface.co cannot be reached: no network")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    tiny = load_backbone("tiny")
    _cache_repo(tmp_path / "cache", "me/tiny", tiny)

    def ask(*args, **kwargs):
        raise AssertionError(f"the Hub was asked: {args}")

    monkeypatch.setattr(huggingface_hub.file_download, "get_hf_file_metadata", ask)
    assert AudioLDM2Backbone.from_pretrained("me/tiny").name_or_path == "me/tiny"
    monkeypatch.setenv("HOME", str(tmp_path))
    folder = tiny.save_pretrained("~/m")
    loaded = AudioLDM2Backbone.from_pretrained("~/m")
    assert loaded.name_or_path == str(folder) == str(tmp_path / "m")
    message = f"{folder} holds a AudioLDM2Pipeline, not the AudioLDMPipeline AudioLDMBackbone loads: load it with AudioLDM2Backbone, "
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        AudioLDMBackbone.from_pretrained(folder)


def test_a_mel_diffusion_model_on_the_hub_loads_by_its_repo_id(monkeypatch, tmp_path):
    """Its repo holds config.json and no model_index.json: load_backbone (steer --backbone) said
    the repo's model_index.json could not be fetched and no copy was cached, though one was."""
    from backbones.auto import backbone_family

    monkeypatch.setattr(backbones.auto, "hub_unreachable", lambda timeout=3.0: "huggingface.co cannot be reached: no network")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    shipped = load_backbone(str(SHIPPED))
    _cache_repo(tmp_path, "me/mel", shipped)
    loaded = load_backbone("me/mel")
    assert type(loaded) is MelDiffusionBackbone and backbone_family("me/mel") == MelDiffusionBackbone.family
    torch.testing.assert_close(loaded.denoiser.state_dict(), shipped.denoiser.state_dict(), rtol=0, atol=0)
    _cache_repo(tmp_path, "me/other", InstrumentClassifier(classes=["piano", "violin"]))  # another model's config.json
    with pytest.raises(ValueError, match="^'me/other' is not a local folder, and its model_index.json could not be fetched"):
        load_backbone("me/other")
    assert backbone_family("me/other") is None


def test_a_backbones_family_is_read_from_its_files_without_loading_it(monkeypatch, tmp_path):
    """For refusing a concept of another family before a model loads (it was refused after)."""
    from backbones.auto import backbone_family

    monkeypatch.setattr(backbones.auto, "load_backbone", None)  # nothing may load
    assert [backbone_family(name) for name in ("tiny", "tiny-audioldm", "tiny-musicldm", str(SHIPPED))] == [
        "audioldm2", "audioldm", "musicldm", "mel-diffusion"
    ]
    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "MusicLDMPipeline"}))
    assert backbone_family(str(folder)) == "musicldm"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "cache" / "models--me--pipe"
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "model_index.json").write_text(json.dumps({"_class_name": "AudioLDMPipeline"}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    assert backbone_family("me/pipe") == "audioldm"  # from the cache, the Hub not asked
    # what the files do not tell: None (load_backbone then names the problem)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FooPipeline"}))
    assert backbone_family(str(folder)) is None
    (folder / "model_index.json").write_text("[")
    assert backbone_family(str(folder)) is None
    assert [backbone_family(name) for name in ("me/not-cached", str(tmp_path / "no-such"), "tiyn")] == [None] * 3
    # another model's config.json is no mel-diffusion model's: a classifier's, a pipeline's unet/
    assert backbone_family(str(SHIPPED.parent / "instrument-classifier")) is None
    (folder / "model_index.json").unlink()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", "in_channels": 8}))
    assert backbone_family(str(folder)) is None
    saved = MelDiffusionBackbone.from_pretrained(str(SHIPPED)).save_pretrained(tmp_path / "mel")
    assert backbone_family(str(saved)) == "mel-diffusion"
