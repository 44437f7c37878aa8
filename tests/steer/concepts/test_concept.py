"""Concept files: round trips, peft's layout, the model card, pickle refusal, the Hub boundary."""

from __future__ import annotations

import dataclasses

import hashlib
import json
import os
import pickle
import re
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from concept_helpers import tiny_mel_backbone
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.hf_api import RepoUrl
from safetensors.torch import load_file, save_file

import backbones.auto
from backbones import AudioLDM2Backbone
from backbones.mel_diffusion import MelDiffusionBackbone
from backbones.tiny import tiny_audioldm2_pipeline
from steer.concepts import Concept
from steer.concepts import concept as concept_module
from steer.concepts.concept import check_concept_reference, hub_base_model, prompt_without_token
from steer.recipes import SteerMusicPlus


def _train(backbone, clips, method, **kwargs):
    kwargs = {"steps": 1, "batch_size": 1, "crop_seconds": 0.64, "progress": False, **kwargs}
    return Concept.train(backbone, clips, token="sks", class_word="guitar", method=method, **kwargs)


def _assert_same(a: Concept, b: Concept) -> None:
    assert a.config == b.config
    assert a.weights.keys() == b.weights.keys()
    for key in a.weights:
        assert a.weights[key].dtype == b.weights[key].dtype, key
        assert torch.equal(a.weights[key], b.weights[key]), key


@pytest.fixture()
def lora_concept(tiny_backbone, clips):
    return _train(tiny_backbone, clips, "lora", base_model="cvssp/audioldm2-music")


FILES = {
    "lora": {"concept_config.json", "adapter_model.safetensors", "adapter_config.json", "README.md"},
    # the mel model's closed vocabulary gets the token: its embedding is saved beside the adapter
    "lora-mel": {"concept_config.json", "adapter_model.safetensors", "adapter_config.json", "concept.safetensors", "README.md"},
    "dreambooth": {"concept_config.json", "concept.safetensors", "README.md"},
    "textual_inversion": {"concept_config.json", "concept.safetensors", "README.md"},
}


def test_lora_round_trip_is_bitwise(lora_concept, tmp_path):
    folder = lora_concept.save_pretrained(tmp_path / "c")
    assert {p.name for p in folder.iterdir()} == FILES["lora"]
    _assert_same(Concept.from_pretrained(folder), lora_concept)


@pytest.mark.parametrize("method", ["lora", "dreambooth", "textual_inversion"])
def test_mel_round_trip_is_bitwise(method, mel_backbone, clips, tmp_path):
    concept = _train(mel_backbone, clips, method)
    folder = concept.save_pretrained(tmp_path / "c")
    assert {p.name for p in folder.iterdir()} == FILES["lora-mel" if method == "lora" else method]
    loaded = Concept.from_pretrained(folder)
    _assert_same(loaded, concept)
    # the loaded concept makes the same personalised model
    x, t = torch.randn(1, 16, 8, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([300])
    with concept.apply(mel_backbone) as a, loaded.apply(mel_backbone) as b:
        prompt = [concept.prompt()]
        assert torch.equal(a.predict_noise(x, t, a.encode_prompt(prompt), 3.0), b.predict_noise(x, t, b.encode_prompt(prompt), 3.0))


def test_saving_another_method_removes_stale_files(mel_backbone, clips, tmp_path):
    _train(mel_backbone, clips, "lora").save_pretrained(tmp_path / "c")
    _train(mel_backbone, clips, "textual_inversion").save_pretrained(tmp_path / "c")
    assert {p.name for p in (tmp_path / "c").iterdir()} == FILES["textual_inversion"]
    assert Concept.from_pretrained(tmp_path / "c").method == "textual_inversion"


def test_saving_keeps_what_is_not_a_concept(mel_backbone, clips, tmp_path):
    concept = _train(mel_backbone, clips, "textual_inversion")
    (tmp_path / "notes.txt").write_text("mine")
    concept.save_pretrained(tmp_path)  # a folder with other files: they stay
    assert (tmp_path / "notes.txt").read_text() == "mine"
    foreign = tmp_path / "peft"
    foreign.mkdir()
    (foreign / "adapter_model.safetensors").write_text("someone's adapter")
    (foreign / "README.md").write_text("my notes")
    with pytest.raises(ValueError, match=r"not a steer concept's folder but holds README.md, adapter_model.safetensors"):
        concept.save_pretrained(foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["README.md", "adapter_model.safetensors"]
    assert (foreign / "README.md").read_text() == "my notes"


def test_an_interrupted_save_leaves_the_earlier_concept_or_a_refused_mix(mel_backbone, clips, tmp_path, monkeypatch):
    """Saving wrote straight into the folder: a DreamBooth save over a LoRA concept interrupted after
    its first file loaded as the LoRA concept with the DreamBooth denoiser's tensors beside it."""
    folder = _train(mel_backbone, clips, "lora").save_pretrained(tmp_path / "c")
    earlier = Concept.from_pretrained(folder)
    dreambooth = _train(mel_backbone, clips, "dreambooth")
    save_file_ = concept_module.save_file

    def interrupted_save_file(*args, **kwargs):
        save_file_(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(concept_module, "save_file", interrupted_save_file)
    with pytest.raises(KeyboardInterrupt):
        dreambooth.save_pretrained(folder)
    assert {p.name for p in folder.iterdir()} == FILES["lora-mel"]  # nothing staged is left
    _assert_same(Concept.from_pretrained(folder), earlier)
    monkeypatch.undo()

    replace = os.replace
    moved = []

    def interrupted_replace(src, dst):
        if moved:
            raise KeyboardInterrupt
        moved.append(dst)
        replace(src, dst)

    monkeypatch.setattr(concept_module.os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        dreambooth.save_pretrained(folder)
    monkeypatch.undo()
    assert [Path(p).name for p in moved] == ["README.md"]  # then concept.safetensors, the config last
    save_file_({"denoiser.x": torch.zeros(1)}, folder / "concept.safetensors", metadata={"steer_method": "dreambooth"})
    with pytest.raises(ValueError, match=r"concept.safetensors was saved for a dreambooth concept .* describes a lora concept .* save or train the concept into this folder again"):
        Concept.from_pretrained(folder)
    save_file_({"denoiser.x": torch.zeros(1)}, folder / "concept.safetensors")  # no metadata: steer before it
    with pytest.raises(ValueError, match=r"concept.safetensors holds 1 tensors a lora concept does not use, e.g. 'denoiser.x'"):
        Concept.from_pretrained(folder)
    dreambooth.save_pretrained(folder)  # saving again mends it
    assert Concept.from_pretrained(folder).method == "dreambooth"


def test_lora_files_follow_peft(lora_concept, tmp_path):
    from peft import PeftModel

    folder = lora_concept.save_pretrained(tmp_path / "c")
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["peft_type"] == "LORA"
    assert sorted(adapter["target_modules"]) == sorted(["to_q", "to_k", "to_v", "to_out.0"])
    assert adapter["base_model_name_or_path"] == "cvssp/audioldm2-music"
    # peft itself reads the folder onto a plain denoiser
    unet = tiny_audioldm2_pipeline(seed=0).unet
    peft_model = PeftModel.from_pretrained(unet, str(folder))
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    layer = peft_model.base_model.model.get_submodule(name)
    assert torch.equal(layer.lora_A["default"].weight, lora_concept.weights[f"lora.{name}.lora_A.weight"])
    assert torch.equal(layer.lora_B["default"].weight, lora_concept.weights[f"lora.{name}.lora_B.weight"])


def test_model_card_has_the_hub_metadata(lora_concept, tmp_path):
    folder = lora_concept.save_pretrained(tmp_path / "c", repo_id="me/my-guitar")
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "steer"
    assert card.data.base_model == "cvssp/audioldm2-music"
    assert {"steer", "lora", "audioldm2", "music"} <= set(card.data.tags)
    assert 'Concept.from_pretrained("me/my-guitar")' in card.text
    assert "a recording of a sks guitar" in card.text
    assert "More Information Needed" not in card.content


def test_the_model_card_shows_the_prompt_templates_the_concept_was_trained_on(lora_concept):
    """A concept trained on its own templates: its card's example read the default template's
    prompt, which the concept never saw, and named no template."""
    templates = ("{token} {class_word} solo, live", "a {class_word} played as {token}")
    concept = Concept(dataclasses.replace(lora_concept.config, templates=templates), lora_concept.weights)
    card = concept.model_card().text
    assert 'e.g. "sks guitar solo, live"' in card and "a recording of" not in card
    assert "| prompt templates | `{token} {class_word} solo, live`; `a {class_word} played as {token}` |" in card
    assert "prompt templates" not in lora_concept.model_card().text


def test_a_local_path_is_not_card_metadata(mel_backbone, clips, tmp_path):
    concept = _train(mel_backbone, clips, "textual_inversion", base_model=str(tmp_path))
    card = concept.model_card()
    assert card.data.base_model is None and str(tmp_path) in card.text


def test_weights_are_saved_as_readable_as_the_config(lora_concept, tmp_path):
    """safetensors wrote them readable by their owner alone (0600) beside a 0644 config."""
    old = os.umask(0o022)
    try:
        folder = lora_concept.save_pretrained(tmp_path / "c")
    finally:
        os.umask(old)
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in folder.iterdir()}
    assert set(modes.values()) == {"0o644"} and "adapter_model.safetensors" in modes, modes


def test_pickle_files_are_refused_unopened(lora_concept, tmp_path, monkeypatch):
    def unpickling(*args, **kwargs):
        raise AssertionError("a pickle file was opened")

    monkeypatch.setattr(torch, "load", unpickling)
    monkeypatch.setattr(pickle, "load", unpickling)
    monkeypatch.setattr(pickle, "loads", unpickling)
    folder = lora_concept.save_pretrained(tmp_path / "c")
    os.replace(folder / "adapter_model.safetensors", folder / "adapter_model.bin")
    with pytest.raises(ValueError, match=r"adapter_model\.bin is a pickle file.*only loads safetensors"):
        Concept.from_pretrained(folder)
    with pytest.raises(ValueError, match="pickle file"):
        Concept.from_pretrained(folder / "adapter_model.bin")
    (tmp_path / "weights.pt").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ValueError, match=r"weights\.pt is a pickle file"):
        Concept.from_pretrained(tmp_path / "weights.pt")
    with pytest.raises(ValueError, match=r"^no concept folder .*gone\.bin"):  # was "is a pickle file"
        Concept.from_pretrained(tmp_path / "gone.bin")


def test_corrupt_concept_files_are_named(lora_concept, tmp_path):
    folder = lora_concept.save_pretrained(tmp_path / "c")
    (folder / "adapter_config.json").write_text("")
    with pytest.raises(ValueError, match=r"c: cannot read adapter_config.json \(Expecting value"):
        Concept.from_pretrained(folder)
    (folder / "concept_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"cannot read concept_config.json \(it holds a JSON list, not an object"):
        Concept.from_pretrained(folder)


def test_a_corrupt_mel_model_file_is_named(tmp_path):
    folder = tmp_path / "mel"
    tiny_mel_backbone().save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"\x01")
    with pytest.raises(ValueError, match=r"could not load a mel-diffusion model from .*mel.* \(Error while deserializing"):
        MelDiffusionBackbone.from_pretrained(folder)


def test_not_a_concept_folder(tmp_path, monkeypatch):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="not a steer concept: it has no concept_config.json.*peft adapter"):
        Concept.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"^no concept folder {tmp_path}/missing/folder \\(no folder {tmp_path}/missing\\): pass"):
        Concept.from_pretrained(tmp_path / "missing" / "folder")
    (tmp_path / "concepts" / "my-guitar").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    # owner/name is a Hub repo id even where owner/ is a folder here; failing, the error names the near folder
    with pytest.raises(ValueError, match="^could not load the concept 'concepts/my-guitr': .*; nor is it a local folder "
                       "\\(concepts holds no 'my-guitr'; did you mean 'concepts/my-guitar'\\?\\)$"):
        Concept.from_pretrained("concepts/my-guitr")


def test_push_to_hub_uploads_the_saved_folder(lora_concept, monkeypatch):
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)  # read now: the folder is temporary
        calls["upload_folder"] = {
            "repo_id": repo_id,
            "files": {p.name for p in folder.iterdir()},
            "config": json.loads((folder / "concept_config.json").read_text()),
            "card": (folder / "README.md").read_text(),
            **kwargs,
        }
        return "commit"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "repo_info", lambda self, repo_id, **kwargs: SimpleNamespace(private=True))
    assert lora_concept.push_to_hub("me/my-guitar", private=True) == "commit"
    repo_id, kwargs = calls["create_repo"]
    assert repo_id == "me/my-guitar" and kwargs["private"] is True and kwargs["exist_ok"] is True
    upload = calls["upload_folder"]
    assert upload["repo_id"] == "me/my-guitar" and upload["repo_type"] == "model"
    assert upload["files"] == FILES["lora"]
    assert upload["config"]["token"] == "sks" and upload["config"]["method"] == "lora"
    assert 'Concept.from_pretrained("me/my-guitar")' in upload["card"]


def test_a_private_push_to_an_existing_public_repo_is_refused(lora_concept, monkeypatch):
    """create_repo(exist_ok=True) keeps an existing repo's visibility: private=True uploaded to a
    public repo, without a word."""
    uploads = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kwargs: uploads.append(kwargs))
    monkeypatch.setattr(HfApi, "repo_info", lambda self, repo_id, **kwargs: SimpleNamespace(private=False))
    with pytest.raises(ValueError, match=r"^the Hub repo me/my-guitar exists and is public, and private=True does not make"):
        lora_concept.push_to_hub("me/my-guitar", private=True)
    assert uploads == []
    lora_concept.push_to_hub("me/my-guitar")  # public, as asked: its visibility is not looked up
    assert len(uploads) == 1


def _hub_snapshot(folder, cache):
    """Lay ``folder`` out as huggingface_hub's cache serves a snapshot: symlinks into blobs/."""
    repo = cache / "models--me--my-guitar"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        blob.write_bytes(path.read_bytes())
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def test_from_pretrained_reads_a_hub_snapshot(lora_concept, tmp_path, monkeypatch):
    snapshot = _hub_snapshot(lora_concept.save_pretrained(tmp_path / "saved"), tmp_path / "cache")
    assert (snapshot / "adapter_model.safetensors").is_symlink()
    _assert_same(Concept.from_pretrained(snapshot), lora_concept)

    requested = {}

    def snapshot_download(*, repo_id, allow_patterns, **kwargs):
        requested.update(repo_id=repo_id, allow_patterns=allow_patterns, **kwargs)
        return str(snapshot)

    monkeypatch.setattr(concept_module, "snapshot_download", snapshot_download)
    _assert_same(Concept.from_pretrained("me/my-guitar", revision="main"), lora_concept)
    assert requested["repo_id"] == "me/my-guitar" and requested["revision"] == "main"
    assert "*.safetensors" in requested["allow_patterns"]
    assert not any(p.endswith((".bin", ".pt", ".pkl", "*")) for p in requested["allow_patterns"] if p != "*.safetensors" and p != "*.json" and p != "*.md")


def test_a_failed_download_is_a_clear_error(monkeypatch):
    def offline(**kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("no connection")

    monkeypatch.setattr(concept_module, "snapshot_download", offline)
    with pytest.raises(ValueError, match="could not load the concept 'me/missing'.*no connection"):
        Concept.from_pretrained("me/missing")


def test_applying_to_another_family_or_base_fails(lora_concept, mel_backbone, clips):
    with pytest.raises(ValueError, match="learnt on a backbone of the audioldm2 family .* cannot be applied to one of the mel-diffusion family"):
        lora_concept.apply(mel_backbone)
    other_weights = AudioLDM2Backbone.from_pipe(tiny_audioldm2_pipeline(seed=1))
    with pytest.raises(ValueError, match=r"another base model \(cvssp/audioldm2-music\).*different weights"):
        lora_concept.apply(other_weights)
    mel_concept = _train(mel_backbone, clips, "textual_inversion")
    with pytest.raises(ValueError, match="different architecture"):
        mel_concept.apply(tiny_mel_backbone(widths=(16, 32, 32)))
    with pytest.raises(ValueError, match="different weights"):
        mel_concept.apply(tiny_mel_backbone(seed=1))


def test_the_fingerprint_ignores_dtype_and_other_adapters(lora_concept, tiny_backbone):
    half = AudioLDM2Backbone.from_pipe(tiny_audioldm2_pipeline(seed=0).to(dtype=torch.bfloat16))
    with lora_concept.apply(half):  # a float32 concept on a bfloat16 copy of its base
        pass
    with lora_concept.apply(tiny_backbone), lora_concept.apply(tiny_backbone):
        pass  # the second sees the first's adapter in the denoiser


def test_config_validation():
    config = {"method": "lora", "token": "sks", "class_word": "guitar", "family": "audioldm2", "lora_rank": 4, "lora_targets": ("to_q",)}
    concept_module.ConceptConfig(**config)
    for bad, match in [
        ({"method": "hypernetwork"}, "unknown concept method"),
        ({"token": "s ks"}, "one word"),
        ({"lora_rank": 0}, "rank >= 1"),
        ({"templates": ("a {class_word}",)}, "must contain '{token}'"),
        ({"format_version": 99}, "upgrade steer"),
    ]:
        with pytest.raises(ValueError, match=match):
            concept_module.ConceptConfig(**{**config, **bad})
    with pytest.raises(ValueError, match="fields this steer does not know"):
        concept_module.ConceptConfig.from_dict({**config, "future": 1})
    # learning one is refused (steer personalize, train_concept), one saved before still loads
    concept_module.ConceptConfig(**{**config, "token": "guitar"})


def test_the_base_model_is_read_from_where_the_backbone_was_loaded(mel_backbone, clips, tmp_path):
    mel_backbone.save_pretrained(tmp_path / "base")
    loaded = MelDiffusionBackbone.from_pretrained(tmp_path / "base")
    assert _train(loaded, clips, "lora", steps=0).config.base_model == str(tmp_path / "base")
    assert _train(mel_backbone, clips, "lora", steps=0).config.base_model is None  # built in memory


def test_config_validation_refuses_a_useless_alpha():
    config = {"method": "lora", "token": "sks", "class_word": "guitar", "family": "audioldm2", "lora_rank": 4, "lora_targets": ("to_q",)}
    for alpha in (0.0, -4.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"a LoRA concept needs a positive finite alpha, got {alpha}"):
            concept_module.ConceptConfig(**config, lora_alpha=alpha)


# -- the base model's fingerprint ------------------------------------------------------------------
def _sampled_parameters(backbone) -> set[str]:
    """The 16 parameters steer's first fingerprint sampled (the only ones it saw)."""
    names = sorted(concept_module._base_parameters(backbone.denoiser))
    return set(names[:: max(1, len(names) // 16)][:16])


def test_the_fingerprint_covers_every_parameter(mel_backbone, clips):
    concept = _train(mel_backbone, clips, "textual_inversion", steps=0)
    sampled = _sampled_parameters(mel_backbone)
    tripled = tiny_mel_backbone()
    name, parameter = next((n, p) for n, p in tripled.denoiser.named_parameters() if n not in sampled and p.abs().sum() > 0)
    with torch.no_grad():
        parameter.mul_(3.0)
    with pytest.raises(ValueError, match=rf"different weights \(first: {re.escape(name)}\)"):
        concept.apply(tripled)
    redrawn = tiny_mel_backbone()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # every parameter but the sampled ones, same spread
        for n, p in redrawn.denoiser.named_parameters():
            if n not in sampled:
                p.copy_(torch.randn(p.shape, generator=generator) * p.std().nan_to_num() + p.mean())
    with pytest.raises(ValueError, match="different weights"):
        concept.apply(redrawn)
    with concept.apply(tiny_mel_backbone()):  # the same weights built again pass
        pass


def test_a_first_version_fingerprint_is_checked_as_it_was_made(mel_backbone, clips, tmp_path):
    concept = _train(mel_backbone, clips, "textual_inversion", steps=0)
    params = concept_module._base_parameters(mel_backbone.denoiser)
    names = sorted(params)
    # steer's first fingerprint, as its concept_config.json files hold it
    old = {
        "architecture": hashlib.sha256("\n".join(f"{n} {tuple(params[n].shape)}" for n in names).encode()).hexdigest()[:16],
        "weights": [float(params[n].detach().double().abs().mean()) for n in sorted(_sampled_parameters(mel_backbone))],
    }
    folder = concept.save_pretrained(tmp_path / "old")
    config = json.loads((folder / "concept_config.json").read_text())
    (folder / "concept_config.json").write_text(json.dumps({**config, "base_fingerprint": old}))
    loaded = Concept.from_pretrained(folder)
    with loaded.apply(mel_backbone):
        pass
    with pytest.raises(ValueError, match="different weights"):
        loaded.apply(tiny_mel_backbone(seed=1))
    with pytest.raises(ValueError, match="different architecture"):
        loaded.apply(tiny_mel_backbone(widths=(16, 32, 32)))


# -- damaged concept folders -----------------------------------------------------------------------
def test_a_config_that_is_not_utf8_is_named(lora_concept, tmp_path):
    folder = lora_concept.save_pretrained(tmp_path / "c")
    (folder / "adapter_config.json").write_bytes(b"\xff\xfe\x00{}")
    with pytest.raises(ValueError, match=r"c: cannot read adapter_config.json \(.*utf-8"):
        Concept.from_pretrained(folder)
    (folder / "concept_config.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=r"c: cannot read concept_config.json \(.*utf-8"):
        Concept.from_pretrained(folder)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_that_are_not_finite_are_refused_on_load(value, mel_backbone, clips, tmp_path):
    folder = _train(mel_backbone, clips, "lora").save_pretrained(tmp_path / "c")
    for filename in ("adapter_model.safetensors", "concept.safetensors"):
        weights = load_file(folder / filename)
        key = max(weights)
        weights[key] = torch.full_like(weights[key], value)
        save_file(weights, folder / f"{filename}.bad")
        os.replace(folder / filename, folder / f"{filename}.good")
        os.replace(folder / f"{filename}.bad", folder / filename)
        with pytest.raises(ValueError, match=rf"c: {filename} holds NaN or infinite values in {re.escape(key)}"):
            Concept.from_pretrained(folder)
        os.replace(folder / f"{filename}.good", folder / filename)


@pytest.mark.parametrize("method", ["lora", "dreambooth", "textual_inversion"])
def test_a_tensor_of_the_wrong_shape_is_named_on_apply(method, mel_backbone, clips, tmp_path):
    folder = _train(mel_backbone, clips, method).save_pretrained(tmp_path / "c")
    filename = "adapter_model.safetensors" if method == "lora" else "concept.safetensors"
    weights = load_file(folder / filename)
    key = min(weights)
    weights[key] = torch.zeros(3, 3)
    save_file(weights, folder / filename)
    concept = Concept.from_pretrained(folder)
    named = key.removeprefix("base_model.model.").removeprefix("denoiser.")
    with pytest.raises(ValueError, match=rf"tensor {re.escape(named)} in {filename} has shape \(3, 3\) but .* damaged"):
        concept.apply(mel_backbone)
    assert not any("lora" in n for n, _ in mel_backbone.denoiser.named_parameters())  # nothing left behind


# -- pushing ---------------------------------------------------------------------------------------
def _uploads(monkeypatch) -> list[dict]:
    """Make HfApi's create_repo / upload_folder record the uploaded files instead of sending."""
    uploads: list[dict] = []

    def create_repo(self, repo_id, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        uploads.append({p.name: p.read_text(errors="replace") for p in folder.iterdir()})
        return "commit"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return uploads


def _transport_error(name: str) -> type[Exception]:
    """An error class of the HTTP library huggingface_hub uses (httpx or httpx2, by version)."""
    return getattr(sys.modules[huggingface_hub.errors.HfHubHTTPError.__bases__[0].__module__], name)


@pytest.mark.parametrize(
    "step, error",
    [
        ("create_repo", huggingface_hub.errors.OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled")),
        ("upload_folder", _transport_error("ConnectError")("[Errno 111] Connection refused")),
        ("create_repo", huggingface_hub.errors.LocalTokenNotFoundError("Token is required")),
    ],
)
def test_a_failed_push_is_a_clear_error(step, error, lora_concept, monkeypatch):
    _uploads(monkeypatch)

    def fail(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(HfApi, step, fail)
    with pytest.raises(concept_module.PushError, match=rf"pushing the concept to the Hub repo me/my-guitar failed \({type(error).__name__}: .*\); check the connection") as raised:
        lora_concept.push_to_hub("me/my-guitar")
    assert isinstance(raised.value, ValueError) and raised.value.__cause__ is error


def test_a_bad_repo_id_is_refused_before_anything_is_sent(lora_concept, monkeypatch):
    uploads = _uploads(monkeypatch)
    with pytest.raises(ValueError, match=r"repo_id 'me/my/guitar' is not a Hub repo id: Repo id must be in the form"):
        lora_concept.push_to_hub("me/my/guitar")
    assert uploads == []


@pytest.mark.parametrize(
    "where, pushed",
    [
        ("models/my-base", "my-base"),  # a folder of the user's: only its name
        ("hub/models--org--base-model/snapshots/" + "a" * 40, "org/base-model"),  # the Hub cache: its repo
    ],
)
def test_the_pushed_copy_names_no_local_path(where, pushed, mel_backbone, clips, tmp_path, monkeypatch):
    base = tmp_path / where
    base.mkdir(parents=True)
    concept = _train(mel_backbone, clips, "lora", base_model=str(base))
    uploads = _uploads(monkeypatch)
    concept.push_to_hub("me/my-guitar")
    (upload,) = uploads
    assert str(tmp_path) not in "".join(upload.values())
    assert json.loads(upload["concept_config.json"])["base_model"] == pushed
    assert json.loads(upload["adapter_config.json"])["base_model_name_or_path"] == pushed
    card = ModelCard(upload["README.md"])
    if "/" in pushed:  # a Hub repo: card metadata, and the usage loads it
        assert card.data.base_model == pushed and f'load_backbone("{pushed}")' in card.text
    else:  # a local model the reader must supply
        assert card.data.base_model is None and f"local base model `{pushed}`" in card.text
    assert concept.config.base_model == str(base)  # the concept itself keeps its path


@pytest.mark.parametrize(("method", "files"), [("lora", "lora-mel"), ("dreambooth", "dreambooth"), ("textual_inversion", "textual_inversion")])
def test_the_card_names_the_weight_files_written(method, files, mel_backbone, clips, tmp_path):
    folder = _train(mel_backbone, clips, method).save_pretrained(tmp_path / "c")
    card = (folder / "README.md").read_text()
    written = sorted(p.name for p in folder.iterdir() if p.name.endswith(".safetensors"))
    assert written == sorted(n for n in FILES[files] if n.endswith(".safetensors"))
    assert all(f"`{name}`" in card for name in written)
    sentence = card[card.index("Weights are safetensors"):].split("\n")[0]
    assert ("adapter_model.safetensors" in sentence) == (method == "lora")


# -- damaged files and weights that are not finite -------------------------------------------------
def test_weights_that_are_not_finite_are_neither_saved_nor_pushed(mel_backbone, clips, tmp_path, monkeypatch):
    created = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: created.append(repo_id))
    concept = _train(mel_backbone, clips, "lora")
    key = min(concept.weights)
    diverged = Concept(concept.config, {**concept.weights, key: torch.full_like(concept.weights[key], float("nan"))})
    message = f"the concept's tensor {key} holds NaN or infinite values (its training diverged): train it again with a lower learning rate"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):  # was written, then refused on load
        diverged.save_pretrained(tmp_path / "c")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        diverged.push_to_hub("me/my-guitar")
    assert not (tmp_path / "c").exists() and created == []


@pytest.mark.parametrize("method", ["lora", "dreambooth"])
@pytest.mark.parametrize("damage", ["missing", "unknown"])
def test_a_missing_or_unknown_tensor_is_named_on_apply(method, damage, mel_backbone, clips, tmp_path):
    folder = _train(mel_backbone, clips, method).save_pretrained(tmp_path / "c")
    filename = "adapter_model.safetensors" if method == "lora" else "concept.safetensors"
    weights = load_file(folder / filename)
    key = min(weights)
    if damage == "missing":  # dreambooth's was load_state_dict's RuntimeError listing every key
        weights.pop(key)
        named = key.removeprefix("base_model.model.").removeprefix("denoiser.")
        message = f"{filename} lacks 1 of the concept's tensors, e.g. {named}"
    else:
        weights[key + "_extra"] = weights[key].clone()
        named = (key + "_extra").removeprefix("base_model.model.").removeprefix("denoiser.")
        message = f"{filename} holds 1 tensors the base model has no place for, e.g. {named}"
    save_file(weights, folder / filename)
    concept = Concept.from_pretrained(folder)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}: the file is damaged or does not belong to this base model; download or train the concept again$"):
        concept.apply(mel_backbone)
    assert not any("lora" in n for n, _ in mel_backbone.denoiser.named_parameters())  # nothing left behind


def _rewrite_config(folder: Path, change) -> None:
    path = folder / "concept_config.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "field, value, message",
    [  # were AttributeError from the word check, torch's TypeError when applied, and loaded until saved
        ("class_word", 5, "class_word must be a string or null, got 5"),
        ("lora_rank", 4.0, "lora_rank must be a whole number or null, got 4.0"),
        ("lora_rank", True, "lora_rank must be a whole number or null, got True"),
        ("training", None, "training must be an object, got None"),
        ("family", None, "family must be a string, got None"),
        ("lora_targets", ["to_q", 1], "lora_targets must be a list of strings, got ['to_q', 1]"),
    ],
)
def test_a_config_field_of_another_type_is_named_when_the_concept_loads(field, value, message, mel_backbone, clips, tmp_path):
    folder = _train(mel_backbone, clips, "lora").save_pretrained(tmp_path / "c")
    _rewrite_config(folder, lambda data: data.update({field: value}))
    with pytest.raises(ValueError, match=f"^{re.escape(f'{folder}: cannot read concept_config.json ({message})')}$"):
        Concept.from_pretrained(folder)


@pytest.mark.parametrize(
    "change, message",
    [  # were KeyError, struct.error and binascii's "Incorrect padding" when applied, naming no file
        (lambda fp: fp.pop("architecture"), "base_fingerprint.architecture must be a string, got None"),
        (lambda fp: fp.update(statistics="QUJDREVG"), "base_fingerprint.statistics must be base64 of float32 pairs, got 'QUJDREVG'"),
        (lambda fp: fp.update(statistics="abc"), "base_fingerprint.statistics must be base64 of float32 pairs, got 'abc'"),
        (lambda fp: fp.update(statistics="é"), "base_fingerprint.statistics must be base64 of float32 pairs, got 'é'"),
        (lambda fp: fp.update(version="2"), "base_fingerprint.version must be a whole number >= 1, got '2'"),
        (lambda fp: fp.update(version=1), "base_fingerprint.weights must be a list of numbers, got None"),
    ],
)
def test_a_corrupt_fingerprint_is_named_when_the_concept_loads(change, message, mel_backbone, clips, tmp_path):
    folder = _train(mel_backbone, clips, "textual_inversion").save_pretrained(tmp_path / "c")
    _rewrite_config(folder, lambda data: change(data["base_fingerprint"]))
    with pytest.raises(ValueError, match=f"^{re.escape(f'{folder}: cannot read concept_config.json ({message})')}$"):
        Concept.from_pretrained(folder)


def test_a_config_without_a_fingerprint_warns_that_the_base_cannot_be_checked(mel_backbone, clips, tmp_path):
    folder = _train(mel_backbone, clips, "textual_inversion").save_pretrained(tmp_path / "c")
    _rewrite_config(folder, lambda data: data.pop("base_fingerprint"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the early check before a model loads leaves the warning to the load
        check_concept_reference(folder, "a sks guitar melody")
    with pytest.warns(UserWarning, match="concept_config.json has no base_fingerprint, so steer cannot check that a backbone is the base model") as caught:
        concept = Concept.from_pretrained(folder)
    with concept.apply(tiny_mel_backbone(seed=1)):  # applied unchecked, as the warning said
        pass
    assert len(caught) == 1


def test_a_relative_base_model_path_is_recorded_whatever_the_working_directory(mel_backbone, clips, tmp_path, monkeypatch):
    mel_backbone.save_pretrained(tmp_path / "models" / "my-base")
    monkeypatch.chdir(tmp_path)
    loaded = MelDiffusionBackbone.from_pretrained("models/my-base")
    concepts = [_train(loaded, clips, "lora"), _train(mel_backbone, clips, "lora", base_model="models/my-base")]
    uploads = _uploads(monkeypatch)
    monkeypatch.chdir(tmp_path / "models")  # here "models/my-base" names no folder: it read as a Hub repo id
    for concept in concepts:
        assert concept.config.base_model == str(tmp_path / "models" / "my-base")
        card = concept.model_card()
        assert card.data.base_model is None and "the local base model" in card.text
        assert hub_base_model(concept.config.base_model) == "my-base"
        concept.push_to_hub("me/my-guitar")
    assert [json.loads(u["concept_config.json"])["base_model"] for u in uploads] == ["my-base", "my-base"]


def test_an_offline_build_is_recorded_by_its_name_and_carded_as_one(tiny_backbone, clips, tmp_path, monkeypatch):
    """A folder called "tiny" in the working folder made the concept record its path (which the
    edit then tried to load), and the card called the build a local model to copy."""
    (tmp_path / "tiny").mkdir()
    monkeypatch.chdir(tmp_path)
    tiny_backbone.name_or_path = "tiny"
    concept = _train(tiny_backbone, clips, "lora")
    assert concept.config.base_model == "tiny"
    card = concept.model_card().text
    assert "steer's offline build `tiny` (audioldm2 family: random weights" in card and "your own copy" not in card
    assert 'backbone = load_backbone("tiny")\n' in card


# -- checking a concept before a model loads -------------------------------------------------------
def test_a_concept_reference_is_checked_from_its_config_alone(mel_backbone, clips, tmp_path, monkeypatch):
    folder = _train(mel_backbone, clips, "lora").save_pretrained(tmp_path / "c")
    expected = Concept.from_pretrained(folder).config
    with monkeypatch.context() as home:
        home.setenv("HOME", str(tmp_path / "home"))
        home.chdir(tmp_path)
        assert Concept.from_pretrained(folder).save_pretrained("~/c") == tmp_path / "home" / "c"  # was ./~/c
        assert Concept.from_pretrained("~/c").config == expected and not (tmp_path / "~").exists()

    def no_download(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    def no_tensors(*args, **kwargs):
        raise AssertionError("a tensor file was read")

    monkeypatch.setattr(concept_module, "load_file", no_tensors)
    monkeypatch.setattr(concept_module, "hf_hub_download", no_download)
    monkeypatch.chdir(tmp_path)
    assert check_concept_reference(folder, "a sks guitar melody") == expected
    assert check_concept_reference("c", "a sks guitar melody") == expected
    monkeypatch.setenv("HOME", str(tmp_path))
    assert check_concept_reference("~/c", "a sks guitar melody") == expected
    (tmp_path / "empty").mkdir()
    (tmp_path / "c.txt").write_text("")
    for reference, message in [
        ("my-guitar", "no concept folder my-guitar, and it is not a Hub repo id (owner/name): pass a concept's folder or repo id"),
        (tmp_path / "missing", f"no concept folder {tmp_path / 'missing'} ({tmp_path} holds no 'missing'): pass a concept's folder or Hub repo id"),
        ("./c2", "no concept folder ./c2 (. holds no 'c2'; did you mean 'c'?): pass a concept's folder or Hub repo id"),
        ("c.txt", "c.txt is a file: pass the concept's folder (the one holding concept_config.json)"),
        ("empty", "empty is not a steer concept: it has no concept_config.json"),
        ("me/a..b", "the concept 'me/a..b' is not a Hub repo id: "),
    ]:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
            check_concept_reference(reference, "a sks guitar melody")
    (folder / "concept_config.json").write_text("{")
    with pytest.raises(ValueError, match=r"^c: cannot read concept_config.json \(Expecting property name"):
        check_concept_reference("c", "a sks guitar melody")


@pytest.mark.parametrize("target", ["a sks guitar", "a [sks] guitar", "a desks guitar", "asks", "sks", " sks ", "a sks-like hum"])
def test_a_concept_reference_reads_the_target_as_steermusic_plus_does(target, mel_backbone, clips, tmp_path):
    concept = _train(mel_backbone, clips, "lora")
    folder = concept.save_pretrained(tmp_path / "c")
    with SteerMusicPlus(mel_backbone, concept, steps=1) as editor:
        try:
            editor.prompt_roles(["a piano"], [target])
            refused = None
        except ValueError as error:
            refused = str(error)
    if refused is None:
        assert check_concept_reference(folder, target).token == "sks"
    else:
        with pytest.raises(ValueError, match=f"^{re.escape(refused)}$"):
            check_concept_reference(folder, target)


def test_a_hub_concept_is_checked_from_its_config_alone(mel_backbone, clips, tmp_path, monkeypatch):
    folder = _train(mel_backbone, clips, "lora").save_pretrained(tmp_path / "c")
    asked = []

    def download(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        if repo_id == "me/offline":
            raise huggingface_hub.errors.LocalEntryNotFoundError("no connection\nand a second line")
        return str(folder / filename)

    monkeypatch.setattr(concept_module, "hf_hub_download", download)
    assert check_concept_reference("me/my-guitar", "a sks guitar").token == "sks"
    message = "cannot fetch concept_config.json of the concept 'me/offline' from the Hub (LocalEntryNotFoundError: no connection); check the repo id and the connection"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_concept_reference("me/offline", "a sks guitar")
    with pytest.raises(ValueError, match="does not name the concept token 'sks'"):
        check_concept_reference("me/my-guitar", "a guitar")
    assert asked == [("me/my-guitar", "concept_config.json"), ("me/offline", "concept_config.json"), ("me/my-guitar", "concept_config.json")]


@pytest.mark.parametrize(
    ("prompt", "token", "base"),
    [
        ("a sks guitar melody", "sks", "a guitar melody"),
        ("a sks, bowed violin", "sks", "a bowed violin"),  # was "a , bowed violin"
        ("sks, a violin", "sks", "a violin"),  # was ", a violin"
        ("a violin, sks.", "sks", "a violin."),  # was "a violin, ."
        ("a violin (sks) melody", "sks", "a violin melody"),  # was "a violin () melody"
        ("a violin; sks, piano", "sks", "a violin; piano"),
        ("desks and a [S] violin", "[S]", "desks and a violin"),
        ("  a  sks   violin ", "sks", "a violin"),
        ("a [sks] violin", "sks", "a violin"),  # was "a [] violin"
        ('a "sks" violin', "sks", "a violin"),
        ("a sks-violin", "sks", "a violin"),  # was "a -violin"
        ("a sks's violin", "sks", "a violin"),  # was "a 's violin"
        ("a sks — violin", "sks", "a violin"),
        ('a "warm" sks "bright" violin', "sks", 'a "warm" "bright" violin'),  # no quotes taken from words beside
        ("a (warm sks) violin", "sks", "a (warm) violin"),
        ("a 'warm sks' violin", "sks", "a 'warm' violin"),  # a quote closing a phrase stays
        ('a "warm sks" violin', "sks", 'a "warm" violin'),
        ("a sks-like guitar", "sks", "a guitar"),  # was "a like guitar"
        ("a [S]-style piano melody", "[S]", "a piano melody"),  # was "a style piano melody"
        ("a sks-Like guitar", "sks", "a guitar"),  # the suffix in any case
        ("an sks–esque, bright violin", "sks", "a bright violin"),  # was "an esque, bright violin"
        ("an sks guitar", "sks", "a guitar"),  # the article agrees with the word after it (was "an guitar")
        ("A sks orchestral piece", "sks", "An orchestral piece"),
        ("AN SKS GUITAR", "SKS", "A GUITAR"),
        ("a (sks) upright piano", "sks", "an upright piano"),
        ("an sks unison line", "sks", "a unison line"),  # a vowel letter, not a vowel sound
        ("a sks hour-long drone", "sks", "an hour-long drone"),
        ("an sks 80s synth", "sks", "an 80s synth"),  # not a letter after it: left as written
        ("a banana sks orchestral piece", "sks", "a banana orchestral piece"),  # only an article the token followed
        ("an sks uninterrupted drone", "sks", "an uninterrupted drone"),  # "uni" takes "a" only as in "unison"
        ("an sks FM synth", "sks", "an FM synth"),  # an acronym by its letters' names
        ("a sks x-ray synth", "sks", "an x-ray synth"),  # and a lone letter
        ("A SKS ORGAN", "SKS", "AN ORGAN"),  # all in capitals: the article too, and no acronyms
        ("A SKS SYNTH", "SKS", "A SYNTH"),
        ("a waltz in A sks organ style", "sks", "a waltz in A organ style"),  # a key, not an article
        ("A sks organ. A sks organ", "sks", "An organ. An organ"),  # an article where a sentence opens
        ("a sks Ébène quartet", "sks", "an Ébène quartet"),  # an accented vowel
        ('a "sks-like guitar"', "sks", 'a "guitar"'),  # the opening quote closes up (was 'a" guitar"')
        ('a "sks guitar" melody', "sks", 'a "guitar" melody'),
        ("a (sks's) guitar", "sks", "a guitar"),  # brackets left empty go (were "a () guitar")
        ("a ('sks') guitar", "sks", "a guitar"),
        ("a guitar ('sks-like')", "sks", "a guitar"),
        ("a (warm, sks-like) guitar", "sks", "a (warm) guitar"),  # no comma before the bracket (was "(warm,)")
        ("a sks\u2010like guitar", "sks", "a guitar"),  # the Unicode hyphens too (was "a ‐like guitar")
        ("a sks\u2011like guitar", "sks", "a guitar"),
        ("a sks-like-sounding guitar", "sks", "a guitar"),  # suffixes in a row (was "a sounding guitar")
        ("a sks-bowed violin", "sks", "a bowed violin"),  # not a suffix: only the dash goes
        ("a sks-likeness guitar", "sks", "a likeness guitar"),  # a longer word is no "-like"
        ("a [sks]-style violin", "sks", "a violin"),  # bracketed, the suffix goes too (was "a -style violin")
        ("a [sks]-bowed violin", "sks", "a bowed violin"),  # and the dash (was "a -bowed violin")
        ("a (sks-like) guitar", "sks", "a guitar"),  # the suffix inside the brackets (was "a () guitar")
        ("a 'sks-style' violin", "sks", "a violin"),
        ('a "sks-like" violin', "sks", "a violin"),
        ("a [sks-like] violin", "sks", "a violin"),
        ("a guitar (sks-like)", "sks", "a guitar"),
    ],
)
def test_the_base_prompt_is_the_target_without_the_token_and_the_punctuation_it_leaves(prompt, token, base):
    assert prompt_without_token(prompt, token, "violin") == base


def test_a_prompt_naming_the_token_in_another_case_is_told_that_tokens_are_case_sensitive():
    message = (
        "the target prompt 'a SKS violin' does not name the concept token 'sks' (it names 'SKS': tokens are "
        "case-sensitive, as the text encoders read them): write e.g. 'a sks violin melody'"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        prompt_without_token("a SKS violin", "sks", "violin")
    for only in ("sks,", "(sks)", " sks . "):
        with pytest.raises(ValueError, match="is only the concept token"):
            prompt_without_token(only, "sks", "violin")


def test_a_mel_concept_finds_its_token_in_any_case_as_its_word_encoder_reads_prompts(mel_backbone, clips, tmp_path):
    """The mel-diffusion word encoder lower-cases every prompt, and "A SKS violin" was refused as
    not naming the token "sks" (tokens are case-sensitive for the diffusers backbones' tokenizers)."""
    assert prompt_without_token("A SKS violin", "sks", "violin", case_sensitive=False) == "A violin"
    folder = _train(mel_backbone, clips, "lora").save_pretrained(tmp_path / "c")
    assert check_concept_reference(folder, "A SKS guitar").token == "sks"
    with SteerMusicPlus(mel_backbone, Concept.from_pretrained(folder), steps=1) as editor:
        assert editor.prompt_roles(["a piano"], ["A SKS guitar"])["target_base"] == ["A guitar"]


def test_where_the_hub_is_unreachable_a_hub_concept_is_read_from_the_cache_alone(monkeypatch):
    """Offline, each request retried for ~25 s before the error."""
    asked = []

    def download(*args, **kwargs):
        asked.append(kwargs.get("local_files_only"))
        raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(backbones.auto, "hub_unreachable", lambda timeout=3.0: "huggingface.co cannot be reached: no network")
    monkeypatch.setattr(concept_module, "hf_hub_download", download)
    monkeypatch.setattr(concept_module, "snapshot_download", download)
    cause = "(huggingface.co cannot be reached: no network, and no copy is cached)"
    with pytest.raises(ValueError, match=f"^cannot fetch concept_config.json of the concept 'me/guitar' from the Hub {re.escape(cause)}"):
        check_concept_reference("me/guitar", "a sks guitar")
    with pytest.raises(ValueError, match=f"^could not load the concept 'me/guitar': no such local folder, and the Hub download failed {re.escape(cause)}"):
        Concept.from_pretrained("me/guitar")
    assert asked == [True, True]
