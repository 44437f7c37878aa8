"""Saving a backbone into a folder: a model already there is replaced only when asked, other
files never, and a path that cannot be a writable folder is refused before anything is written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from backbones import Backbone, load_backbone
from backbones.mel_diffusion import MelDiffusionBackbone, MelDiffusionModel, default_unet_config

#: files of an earlier save of each kind that a new save would replace or remove (the pipeline's
#: second shard of an earlier sharded UNet: diffusers deletes it, as the new save is one file)
EARLIER_SAVE = {
    "pipeline": ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model-00001-of-00002.safetensors"],
    "mel-diffusion": ["config.json", "model.safetensors"],
}


@pytest.fixture(params=sorted(EARLIER_SAVE))
def kind(request) -> str:
    return request.param


@pytest.fixture()
def backbone(kind, tiny_backbone) -> Backbone:
    if kind == "pipeline":
        return tiny_backbone
    unet = default_unet_config()
    unet.update(block_out_channels=[16, 16, 32], norm_num_groups=8)
    torch.manual_seed(0)
    return MelDiffusionBackbone(MelDiffusionModel(words=["a", "flute"], unet=unet, text_layers=1))


def user_folder(folder: Path, names: list[str]) -> Path:
    """``folder`` holding the user's ``names`` and a ``notes.txt`` no save writes."""
    for name in [*names, "notes.txt"]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("the user's\n")
    return folder


def test_a_folder_holding_a_model_is_refused_with_its_files_named(kind, backbone, tmp_path):
    folder = user_folder(tmp_path / "m", EARLIER_SAVE[kind])
    before = {p: p.read_text() for p in folder.rglob("*") if p.is_file()}
    what = "pipeline" if kind == "pipeline" else "model"
    message = (
        f"the {what} folder {folder} already holds {', '.join(EARLIER_SAVE[kind])}, which saving would "
        "replace or remove: pass overwrite=True to replace them, or choose another folder"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        backbone.save_pretrained(folder)
    assert {p: p.read_text() for p in folder.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_holding_the_other_kind_of_model_is_refused_even_with_overwrite(kind, backbone, tmp_path, overwrite):
    """A mel model saved into a pipeline's folder loaded back as the pipeline, and a pipeline
    saved into a mel model's folder (no file of its own there) shadowed that model."""
    other = "mel-diffusion" if kind == "pipeline" else "pipeline"
    folder = user_folder(tmp_path / "m", EARLIER_SAVE[other])
    before = {p: p.read_text() for p in folder.rglob("*") if p.is_file()}
    held = "a steer model (mel diffusion, classifier): config.json, model.safetensors" if kind == "pipeline" else (
        "a diffusers pipeline: model_index.json"
    )
    what = "pipeline" if kind == "pipeline" else "model"
    message = f"the {what} folder {folder} holds {held}, which saving this model beside it would not replace"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        backbone.save_pretrained(folder, overwrite=overwrite)
    assert {p: p.read_text() for p in folder.rglob("*") if p.is_file()} == before


def test_overwrite_replaces_the_model_and_leaves_other_files(kind, backbone, tmp_path):
    folder = user_folder(tmp_path / "m", EARLIER_SAVE[kind])
    assert backbone.save_pretrained(folder, overwrite=True) == folder
    assert (folder / "notes.txt").read_text() == "the user's\n"
    loaded = load_backbone(str(folder))
    assert type(loaded) is type(backbone)
    for (name, a), b in zip(backbone.denoiser.state_dict().items(), loaded.denoiser.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_path_under_home_is_saved_where_load_backbone_reads_it(kind, backbone, tmp_path, monkeypatch):
    """``~`` was kept: the save wrote ./~/m, and load_backbone("~/m") found nothing."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert backbone.save_pretrained("~/m") == tmp_path / "home" / "m"
    assert type(load_backbone("~/m")) is type(backbone) and not (tmp_path / "~").exists()


def test_a_folder_with_other_files_only_is_saved_into(kind, backbone, tmp_path):
    folder = user_folder(tmp_path / "m", [])
    assert backbone.save_pretrained(folder) == folder
    assert (folder / "notes.txt").read_text() == "the user's\n"
    assert type(load_backbone(str(folder))) is type(backbone)


def test_a_path_that_cannot_be_a_writable_folder_is_refused(kind, backbone, tmp_path, monkeypatch):
    what = "pipeline" if kind == "pipeline" else "model"
    file = user_folder(tmp_path, []) / "notes.txt"
    with pytest.raises(ValueError, match=re.escape(f"the {what} folder {file} exists and is not a folder; choose")):
        backbone.save_pretrained(file)
    with pytest.raises(ValueError, match=re.escape(f"the {what} folder {file}/m cannot be a folder: {file} is a file;")):
        backbone.save_pretrained(file / "m")
    locked = tmp_path / "locked"
    locked.mkdir()
    access = os.access  # as root, chmod would not stop a write: the check asks os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kwargs: Path(path) != locked and access(path, mode, **kwargs))
    with pytest.raises(ValueError, match=re.escape(f"the {what} folder {locked}/m cannot be written: {locked} is not")):
        backbone.save_pretrained(locked / "m")
    assert list(locked.iterdir()) == [] and file.read_text() == "the user's\n"


def test_a_component_subfolder_that_is_a_file_is_refused(tiny_backbone, tmp_path):
    folder = user_folder(tmp_path / "pipe", ["vae"])
    with pytest.raises(ValueError, match=re.escape(f"the vae subfolder {folder}/vae exists and is not a folder; choose")):
        tiny_backbone.save_pretrained(folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "vae"]


def test_saving_twice_needs_overwrite(tiny_backbone, tmp_path):
    folder = tiny_backbone.save_pretrained(tmp_path / "pipe")
    with pytest.raises(ValueError, match=r"already holds model_index.json, vae/config.json, .* and \d+ more, which"):
        tiny_backbone.save_pretrained(folder)
    assert tiny_backbone.save_pretrained(folder, overwrite=True) == folder


def test_weights_are_saved_as_readable_as_the_config(backbone, tmp_path):
    """safetensors wrote the weights readable by their owner alone (0600) beside a 0644 config:
    the other users of a shared folder could not load the model."""
    old = os.umask(0o022)
    try:
        folder = backbone.save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    weights = sorted(folder.rglob("*.safetensors"))
    assert weights and {oct(path.stat().st_mode & 0o777) for path in weights} == {"0o644"}
