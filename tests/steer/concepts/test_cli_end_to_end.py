"""``steer personalize`` then ``steer edit --concept`` through the real entry point."""

import json

from pathlib import Path

import pytest
import torch
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
    """A target without --concept's token fails its item alone, as with an item's own concept
    (it refused the whole run); where every item must fail, the run is refused before loading."""
    rows = [{"id": "a", "audio": str(clip_files[0]), "source": "a piano", "target": "a sks guitar"},
            {"id": "b", "audio": str(clip_files[0]), "source": "a piano", "target": "a guitar"}]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps(rows[1]) + "\n")
    run = ["run", str(manifest), "--out", str(tmp_path / "out"), "--concept", str(concept), "--steps", "1", "--device", "cpu"]
    capsys.readouterr()
    assert main([*run, "--backbone", "no/such-backbone"]) == 2  # never loaded
    message = "none of the 1 item(s) to edit can be edited (first: item 'b': --concept: the target prompt 'a guitar' does not name the concept token 'sks'"
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main([*run, "--backbone", "tiny"]) == 1
    printed = capsys.readouterr()
    assert "steer: warning: 1 of the 2 item(s) to edit cannot be edited and will fail (first: item 'b': --concept:" in printed.err
    assert "steer run: 1 done, 0 skipped, 1 failed" in printed.out
    assert (tmp_path / "out" / "a.wav").exists() and not (tmp_path / "out" / "b.wav").exists()


def test_edit_without_backbone_takes_the_base_model_the_concept_was_learnt_on(mel_folder, clip_files, tmp_path, capsys):
    """It took the default cvssp/audioldm2-music, which offline meant 30 s of Hub retries and then
    a failure, for a concept whose config names its base model."""
    concept = tmp_path / "mel-concept"
    assert main(["personalize", *map(str, clip_files), "--token", "sks", "--class-word", "guitar",
                 "--method", "lora", "-o", str(concept), "--backbone", str(mel_folder), "--steps", "1",
                 "--batch-size", "1"]) == 0
    out = tmp_path / "edit.wav"
    capsys.readouterr()
    assert main(["edit", str(clip_files[0]), "--source", "a piano", "--target", "a sks guitar", "-o", str(out),
                 "--concept", str(concept), "--steps", "1", "--device", "cpu"]) == 0
    assert f"note: --backbone {mel_folder.resolve()}, the base model the concept was learnt on" in capsys.readouterr().err
    assert sf.info(out).frames > 0
    # a concept from the Hub names a local base model by its folder's name only: say so, load nothing
    config_path = concept / "concept_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "base_model": "mel-base"}))
    assert main(["edit", str(clip_files[0]), "--source", "a piano", "--target", "a sks guitar",
                 "-o", str(tmp_path / "other.wav"), "--concept", str(concept), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (
        "steer: error: the concept was learnt on the base model 'mel-base', which is no folder here and no Hub "
        "repo id: pass --backbone with your copy of it\n"
    )
    assert not (tmp_path / "other.wav").exists()


@pytest.mark.parametrize("command", ["edit", "run"])
def test_a_backbone_path_that_is_not_there_is_refused_before_any_model_loads(command, clip_files, tmp_path, capsys):
    """A missing local folder was passed on to the Hub as a repo id, asked in vain for 30 s."""
    missing = tmp_path / "weights" / "typo"
    missing.parent.mkdir()
    if command == "edit":
        args = ["edit", str(clip_files[0]), "--source", "a piano", "--target", "a guitar", "-o", str(tmp_path / "e.wav")]
    else:
        manifest = tmp_path / "manifest.jsonl"
        manifest.write_text(json.dumps({"id": "a", "audio": str(clip_files[0]), "source": "a piano", "target": "a guitar"}) + "\n")
        args = ["run", str(manifest), "--out", str(tmp_path / "out")]
    capsys.readouterr()
    assert main([*args, "--backbone", str(missing), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.endswith(
        f"--backbone {missing} not found: pass a folder written by save_pretrained, or a Hub repo id\n"
    )
    assert not (tmp_path / "e.wav").exists() and not (tmp_path / "out").exists()


def test_edit_without_backbone_refuses_a_concept_of_another_family_that_records_no_base(clip_files, tmp_path, capsys):
    """It loaded the AudioLDM2 default (30 s of Hub retries offline) for an AudioLDM concept."""
    concept = tmp_path / "c"
    assert main(["personalize", str(clip_files[0]), "--token", "sks", "--class-word", "guitar", "--method", "lora",
                 "-o", str(concept), "--backbone", "tiny-audioldm", "--steps", "1", "--batch-size", "1"]) == 0
    edit = ["edit", str(clip_files[0]), "--source", "a piano", "--target", "a sks guitar", "--concept", str(concept),
            "--steps", "1", "--device", "cpu"]
    capsys.readouterr()
    assert main([*edit, "-o", str(tmp_path / "a.wav")]) == 0  # the build's name is recorded
    assert "note: --backbone tiny-audioldm, the base model the concept was learnt on" in capsys.readouterr().err
    config_path = concept / "concept_config.json"  # as concepts learnt on an offline build before
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "base_model": None}))
    assert main([*edit, "-o", str(tmp_path / "b.wav")]) == 2
    assert capsys.readouterr().err == (
        "steer: error: the concept records no base model, and it was learnt on one of the audioldm family, not "
        "cvssp/audioldm2-music's audioldm2: pass --backbone with the model it was learnt on\n"
    )


def test_a_concept_of_another_family_than_the_backbone_is_refused_before_it_loads(clip_files, tmp_path, capsys, monkeypatch):
    """It was refused only once the backbone had loaded (minutes for AudioLDM2), by steer run item by item."""
    concept = tmp_path / "c"
    assert main(["personalize", str(clip_files[0]), "--token", "sks", "--class-word", "guitar", "--method", "lora",
                 "-o", str(concept), "--backbone", "tiny-audioldm", "--steps", "1", "--batch-size", "1"]) == 0

    def load_backbone(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("steer.cli.load_backbone", load_backbone)
    refusal = (
        "steer: error: the concept was learnt on a backbone of the audioldm family (tiny-audioldm); --backbone tiny is "
        "one of the audioldm2 family: pass the base model it was learnt on\n"
    )
    capsys.readouterr()
    assert main(["edit", str(clip_files[0]), "--source", "a piano", "--target", "a sks guitar", "--concept", str(concept),
                 "-o", str(tmp_path / "a.wav"), "--backbone", "tiny", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == refusal
    manifest = tmp_path / "manifest.jsonl"
    rows = [{"id": i, "audio": str(clip_files[0]), "source": "a piano", "target": "a sks guitar"} for i in "ab"]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = ["run", str(manifest), "--out", str(tmp_path / "out"), "--backbone", "tiny", "--device", "cpu"]
    assert main([*run, "--concept", str(concept)]) == 2
    assert capsys.readouterr().err == refusal
    manifest.write_text("".join(json.dumps({**row, "concept": str(concept)}) + "\n" for row in rows))
    assert main(run) == 2
    assert capsys.readouterr().err == (
        "steer: error: none of the 2 item(s) to edit can be edited (first: item 'a': " + refusal[len("steer: error: "):-1]
        + "): fix the manifest\n"
    )
    assert not (tmp_path / "a.wav").exists() and not (tmp_path / "out").exists()


def test_run_without_backbone_takes_the_base_model_its_items_concepts_agree_on(mel_folder, clip_files, tmp_path, capsys):
    """Only --concept gave the backbone: items naming their own concepts loaded the AudioLDM2 default."""
    concept = tmp_path / "mel-concept"
    assert main(["personalize", *map(str, clip_files), "--token", "sks", "--class-word", "guitar", "--method", "lora",
                 "-o", str(concept), "--backbone", str(mel_folder), "--steps", "1", "--batch-size", "1"]) == 0
    rows = [{"id": i, "audio": str(clip_files[0]), "source": "a piano", "target": "a sks guitar", "concept": str(concept)}
            for i in ("a", "b")]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    capsys.readouterr()
    assert main(["run", str(manifest), "--out", str(tmp_path / "out"), "--steps", "1", "--device", "cpu"]) == 0
    assert f"note: --backbone {mel_folder.resolve()}, the base model the concept was learnt on" in capsys.readouterr().err
    # the concept's first item without its token (it fails alone) does not hide the concept's base model
    manifest.write_text(json.dumps({**rows[0], "target": "a guitar"}) + "\n" + json.dumps(rows[1]) + "\n")
    capsys.readouterr()
    assert main(["run", str(manifest), "--out", str(tmp_path / "out1"), "--steps", "1", "--device", "cpu"]) == 1
    assert f"note: --backbone {mel_folder.resolve()}" in capsys.readouterr().err
    other = tmp_path / "tiny-concept"
    assert main(["personalize", str(clip_files[0]), "--token", "sks", "--class-word", "guitar", "--method", "lora",
                 "-o", str(other), "--backbone", "tiny", "--steps", "1", "--batch-size", "1"]) == 0
    manifest.write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[1], "concept": str(other)}) + "\n")
    capsys.readouterr()
    assert main(["run", str(manifest), "--out", str(tmp_path / "out2"), "--steps", "1", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (
        f"steer: error: the items' concepts were learnt on different base models ({mel_folder.resolve()} "
        "(mel-diffusion), tiny (audioldm2)): pass --backbone\n"
    )


def test_the_dreamsound_recipe_edits_as_dreamsound_editing_does(concept, clip_files, tmp_path, capsys):
    """SteerMusic+'s baseline from the command line: steer edit and steer run, needing a concept."""
    from backbones import load_backbone
    from steer import Concept, DreamSoundEditing, load_audio

    out = tmp_path / "edit.wav"
    edit = ["edit", str(clip_files[0]), "--source", "a piano", "--target", "a sks guitar", "--backbone", "tiny",
            "--recipe", "dreamsound", "--steps", "20", "--device", "cpu"]
    assert main([*edit, "--concept", str(concept), "-o", str(out)]) == 0
    with DreamSoundEditing(load_backbone("tiny"), Concept.from_pretrained(concept), steps=20) as editor:
        expected = editor.edit(load_audio(clip_files[0]), source="a piano", target="a sks guitar", seed=0).audio[0]
    written = load_audio(out).waveform[0]
    assert written.shape == expected.shape
    torch.testing.assert_close(written, expected.clamp(-1, 1), rtol=0, atol=1 / 32768)  # 16-bit samples
    capsys.readouterr()
    assert main([*edit, "-o", str(tmp_path / "other.wav")]) == 2
    assert capsys.readouterr().err == "steer: error: --recipe dreamsound needs --concept (a concept folder or Hub repo id)\n"

    rows = [{"id": i, "audio": str(clip_files[0]), "source": "a piano", "target": "a sks guitar"} for i in "ab"]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = ["run", str(manifest), "--out", str(tmp_path / "out"), "--backbone", "tiny", "--steps", "20", "--device", "cpu"]
    assert main([*run, "--recipe", "dreamsound"]) == 2
    assert "recipe dreamsound needs a concept for every item; 2 have none (first: 'a')" in capsys.readouterr().err
    assert main([*run, "--recipe", "dreamsound", "--concept", str(concept)]) == 0
    record = json.loads((tmp_path / "out" / "records" / "a.json").read_text())
    assert record["recipe"] == record["settings"]["recipe"] == "dreamsound"
    torch.testing.assert_close(load_audio(tmp_path / "out" / "a.wav").waveform[0], written, rtol=0, atol=0)
    capsys.readouterr()
    assert main([*run, "--recipe", "steermusic_plus", "--concept", str(concept)]) == 2  # not mixed into one folder
    assert "holds edits made with other settings (a: recipe: 'dreamsound' → 'steermusic_plus')" in capsys.readouterr().err
