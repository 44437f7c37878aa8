"""The scripts in examples/ run as a user would run them (few steps) and do what they say."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import soundfile as sf

EXAMPLES = Path(__file__).parents[1] / "examples"
CLIP = EXAMPLES / "audio" / "hornpipe_piano.wav"


def _load(name: str, folder: Path = EXAMPLES):
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _frames(rate: int) -> int:
    """The input clip's length at ``rate``: an edit keeps the input's duration."""
    return round(sf.info(CLIP).duration * rate)


@pytest.mark.parametrize("backbone", [None, "tiny"])
def test_compose_an_editor(backbone, tmp_path):
    out = tmp_path / "composed.wav"
    argv = ["--steps", "3", "--out", str(out), *(["--backbone", backbone] if backbone else [])]
    pcc = _load("compose_an_editor").main(argv)
    info = sf.info(out)
    assert info.frames == _frames(info.samplerate)
    if backbone is None:  # the shipped model, 3 small steps: the melody is all there
        assert pcc > 0.9
    else:  # a random model's noise: any number, but a number
        assert math.isnan(pcc) or -1 <= pcc <= 1


def test_compose_an_editor_refuses_no_steps(capsys, no_model_loads):
    """--steps 0 edited nothing and ended with an IndexError reading the last step's loss."""
    with pytest.raises(SystemExit) as exited:
        _load("compose_an_editor").main(["--steps", "0"])
    assert exited.value.code == 2
    assert "error: --steps must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["lora", "textual_inversion"])
def test_personalize_and_edit(method, tmp_path):
    argv = ["--method", method, "--concept-steps", "2", "--steps", "3", "--out", str(tmp_path)]
    pcc = _load("personalize_and_edit").main(argv)
    assert pcc > 0.9
    assert (tmp_path / "concept" / "concept_config.json").is_file()
    assert sf.info(tmp_path / "edit.wav").frames == _frames(16000)


def _refusal(name: str, argv: list[str], capsys, folder: Path = EXAMPLES) -> str:
    """The usage error the example in ``folder`` exits with (status 2)."""
    with pytest.raises(SystemExit) as exited:
        _load(name, folder).main(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_compose_an_editor_refuses_a_missing_gpu_before_loading(monkeypatch, capsys, no_model_loads):
    """`--device cuda` without a GPU ended in torch's RuntimeError once the model was moved there."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert "--device cuda: no CUDA device is available here; use --device cpu" in _refusal(
        "compose_an_editor", ["--device", "cuda"], capsys
    )


@pytest.mark.parametrize(
    ("name", "options", "error"),
    [
        ("compose_an_editor", ["--input", "missing.wav"], "error: input file not found: missing.wav"),
        ("personalize_and_edit", ["--input", "missing.wav"], "error: input file not found: missing.wav"),
        ("personalize_and_edit", ["--references", "missing.wav"], "error: reference clip not found: missing.wav"),
        ("personalize_and_edit", ["--steps", "0"], "error: --steps must be at least 1 (editing steps), got 0"),
        ("personalize_and_edit", ["--concept-steps", "-1"], "error: --concept-steps must be at least 0"),
        ("compose_an_editor", ["--source", " "], "error: --source is empty: describe the audio in words"),
    ],
)
def test_the_examples_refuse_bad_input_before_loading_a_model(name, options, error, capsys, no_model_loads):
    """A missing clip was found only after the model loaded (and, for personalize_and_edit,
    after the concept trained); a bad step count only when training or editing began."""
    assert error in _refusal(name, options, capsys)


def test_the_examples_refuse_an_output_they_could_not_write_before_loading_a_model(tmp_path, capsys, no_model_loads):
    """Found after the edit (minutes) or the concept's training, as a traceback."""
    paper = tmp_path / "notes.txt"
    paper.write_text("mine")
    for name, out, error in [
        ("compose_an_editor", tmp_path / "edit.xyz", "error: unsupported audio format '.xyz'"),
        ("compose_an_editor", paper / "edit.wav", f"error: --out's folder {paper} exists and is not a folder"),
        ("compose_an_editor", tmp_path, f"error: --out {tmp_path} is a folder: name an audio file"),
        ("personalize_and_edit", paper, f"error: --out {paper} exists and is not a folder; choose another --out"),
    ]:
        assert error in _refusal(name, ["--out", str(out)], capsys)
    assert paper.read_text() == "mine"
    # with --overwrite, found after the concept's training (and the edit) as a traceback
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "concept").write_text("mine")
    (tmp_path / "b" / "edit.wav").mkdir(parents=True)
    for out, error in [
        (tmp_path / "a", f"error: the concept folder {tmp_path / 'a' / 'concept'} exists and is not a folder"),
        (tmp_path / "b", f"error: {tmp_path / 'b' / 'edit.wav'} is a folder: choose another --out"),
    ]:
        assert error in _refusal("personalize_and_edit", ["--out", str(out), "--overwrite"], capsys)
    assert (tmp_path / "a" / "concept").read_text() == "mine"


def test_compose_an_editor_never_replaces_its_input(tmp_path, capsys, no_model_loads):
    clip = tmp_path / "mine.wav"
    clip.write_bytes(CLIP.read_bytes())
    error = _refusal("compose_an_editor", ["--input", str(clip), "--out", str(clip), "--overwrite"], capsys)
    assert f"error: --out {clip} is the --input clip: name another --out" in error
    assert clip.read_bytes() == CLIP.read_bytes()


@pytest.mark.parametrize(("name", "earlier"), [("compose_an_editor", "out.wav"), ("personalize_and_edit", "edit.wav")])
def test_the_examples_keep_an_earlier_runs_outputs_unless_told(name, earlier, tmp_path, capsys, no_model_loads):
    """A second run replaced the first's outputs unasked (a 15-minute edit by a 1-step one)."""
    (tmp_path / earlier).write_bytes(b"earlier")
    out = tmp_path / earlier if name == "compose_an_editor" else tmp_path
    error = _refusal(name, ["--out", str(out)], capsys)
    assert "pass --overwrite to replace" in error and (tmp_path / earlier).read_bytes() == b"earlier"


@pytest.mark.parametrize("name", ["compose_an_editor", "personalize_and_edit"])
def test_an_example_copied_out_of_the_repository_names_the_backbone_option(name, tmp_path, capsys):
    """Its default backbone is the repository's weights/ folder beside examples/: from a copy
    elsewhere it was missing, and the example ended in load_backbone's ValueError traceback."""
    (tmp_path / "examples").mkdir()
    copy = tmp_path / "examples" / f"{name}.py"
    copy.write_text((EXAMPLES / f"{name}.py").read_text())
    argv = ["--input", str(CLIP), *(["--references", str(EXAMPLES / "audio" / "hornpipe_violin.wav")]
                                    if name == "personalize_and_edit" else [])]
    error = _refusal(name, argv, capsys, folder=copy.parent)
    assert f"error: --backbone {tmp_path / 'weights' / 'mel-diffusion-swap'}: no folder " in error
