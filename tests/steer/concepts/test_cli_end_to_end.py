"""``steer personalize`` then ``steer edit --concept`` through the real entry point."""

import json

from pathlib import Path

import pytest
import soundfile as sf

from steer.cli import main


@pytest.fixture()
def concept(clip_files, tmp_path) -> Path:
    """A LoRA concept "sks" (class word guitar) learnt on the tiny backbone by ``steer personalize``."""
    folder = tmp_path / "my-guitar"
    assert main(["personalize", *map(str, clip_files), "--token", "sks", "--class-word", "guitar",
                 "--method", "lora", "-o", str(folder), "--backbone", "tiny", "--steps", "1",
                 "--batch-size", "1"]) == 0
    return folder


def test_personalize_then_edit_with_the_concept(concept, clip_files, tmp_path, capsys):
    out = tmp_path / "edit.wav"
    edit = ["edit", str(clip_files[0]), "--source", "a piano", "--target", "a sks guitar", "-o", str(out),
            "--concept", str(concept), "--backbone", "tiny", "--steps", "2", "--device", "cpu"]
    assert main(edit) == 0
    assert sf.info(out).frames == sf.info(clip_files[0]).frames * 16000 // sf.info(clip_files[0]).samplerate
    # the target must name the concept's token: a one-line error, nothing written
    capsys.readouterr()
    assert main([*edit[:5], "a guitar", *edit[6:7], str(tmp_path / "other.wav"), *edit[8:]]) == 2
    assert "does not name the concept token 'sks'" in capsys.readouterr().err
    assert not (tmp_path / "other.wav").exists()


def test_edit_checks_the_concept_before_it_loads_a_backbone(concept, clip_files, tmp_path, capsys):
    edit = ["edit", str(clip_files[0]), "--source", "a piano", "-o", str(tmp_path / "edit.wav"),
            "--backbone", str(tmp_path / "no-such-backbone"), "--steps", "2", "--device", "cpu"]  # never loaded
    capsys.readouterr()
    assert main([*edit, "--target", "a sks guitar", "--concept", str(tmp_path / "no-such")]) == 2
    assert f"--concept: no concept folder {tmp_path / 'no-such'}" in capsys.readouterr().err
    assert main([*edit, "--target", "a guitar", "--concept", str(concept)]) == 2
    assert "--concept: the target prompt 'a guitar' does not name the concept token 'sks'" in capsys.readouterr().err
    assert not (tmp_path / "edit.wav").exists()


def test_run_checks_its_default_concept_against_every_target_before_it_loads(concept, clip_files, tmp_path, capsys):
    rows = [{"id": "a", "audio": str(clip_files[0]), "source": "a piano", "target": "a sks guitar"},
            {"id": "b", "audio": str(clip_files[0]), "source": "a piano", "target": "a guitar"}]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    capsys.readouterr()
    assert main(["run", str(manifest), "--out", str(tmp_path / "out"), "--concept", str(concept),
                 "--backbone", str(tmp_path / "no-such-backbone"), "--steps", "2", "--device", "cpu"]) == 2
    assert "--concept, item 'b': the target prompt 'a guitar' does not name the concept token 'sks'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
