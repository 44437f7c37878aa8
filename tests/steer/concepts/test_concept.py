"""Concept files: round trips, peft's layout, the model card, pickle refusal, the Hub boundary."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import huggingface_hub
import pytest
import torch
from concept_helpers import tiny_mel_backbone
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.hf_api import RepoUrl

from backbones import AudioLDM2Backbone
from backbones.mel_diffusion import MelDiffusionBackbone
from backbones.tiny import tiny_audioldm2_pipeline
from steer.concepts import Concept
from steer.concepts import concept as concept_module


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


def test_a_local_path_is_not_card_metadata(mel_backbone, clips, tmp_path):
    concept = _train(mel_backbone, clips, "textual_inversion", base_model=str(tmp_path))
    card = concept.model_card()
    assert card.data.base_model is None and str(tmp_path) in card.text


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


def test_not_a_concept_folder(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="not a steer concept: it has no concept_config.json.*peft adapter"):
        Concept.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="neither a local folder nor a Hub repo id"):
        Concept.from_pretrained(tmp_path / "missing" / "folder")


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
    assert lora_concept.push_to_hub("me/my-guitar", private=True) == "commit"
    repo_id, kwargs = calls["create_repo"]
    assert repo_id == "me/my-guitar" and kwargs["private"] is True and kwargs["exist_ok"] is True
    upload = calls["upload_folder"]
    assert upload["repo_id"] == "me/my-guitar" and upload["repo_type"] == "model"
    assert upload["files"] == FILES["lora"]
    assert upload["config"]["token"] == "sks" and upload["config"]["method"] == "lora"
    assert 'Concept.from_pretrained("me/my-guitar")' in upload["card"]


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


def test_the_base_model_is_read_from_where_the_backbone_was_loaded(mel_backbone, clips, tmp_path):
    mel_backbone.save_pretrained(tmp_path / "base")
    loaded = MelDiffusionBackbone.from_pretrained(tmp_path / "base")
    assert _train(loaded, clips, "lora", steps=0).config.base_model == str(tmp_path / "base")
    assert _train(mel_backbone, clips, "lora", steps=0).config.base_model is None  # built in memory
