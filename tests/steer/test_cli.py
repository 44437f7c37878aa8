"""``steer edit`` with the offline tiny backbone, and its one-line errors."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from steer.audio import writable_suffixes
from steer.cli import SWAP_BACKBONE, TINY_TIMESTEPS, _edit_settings, _metric_names, _parser, main
from steer.performance import PRESETS

_CPUS = len(os.sched_getaffinity(0))


@pytest.fixture()
def wav(tmp_path):
    path = tmp_path / "in.wav"
    t = np.arange(12000) / 24000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 24000)
    return path


def _edit(*args):
    return ["edit", *map(str, args), "--backbone", "tiny", "--steps", "2", "--device", "cpu"]


def _swap_model(argv: list[str]) -> list[str]:
    """``argv`` with the shipped mel-diffusion model as its backbone: the tiny AudioLDM2's random
    vocoder writes about 1e-10 (16-bit silence), so an edit's sound is checked on this one."""
    argv[argv.index("--backbone") + 1] = str(SWAP_BACKBONE)
    return argv


def test_edit_writes_a_valid_wav_of_the_input_duration(wav, tmp_path, capsys):
    out = tmp_path / "out.wav"
    assert main(_swap_model(_edit(wav, "--source", "a piano", "--target", "a violin", "-o", out))) == 0
    data, rate = sf.read(out)
    assert rate == 16000 and data.shape == (8000,)  # 0.5 s at 16 kHz
    assert np.isfinite(data).all() and np.abs(data).max() > 0.1
    assert f"wrote {out}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "input file not found"),
        ("unreadable", "cannot read audio"),
        ("empty_prompt", "--target is empty"),
        ("no_folder", "output folder does not exist"),
        ("exists", "exists; pass --overwrite"),
    ],
)
def test_errors_are_one_line_and_nothing_is_overwritten(case, message, wav, tmp_path, capsys):
    out = tmp_path / "out.wav"
    source, target = "a piano", "a violin"
    if case == "missing":
        wav = tmp_path / "nope.wav"
    elif case == "unreadable":
        wav.write_bytes(b"RIFF garbage")
    elif case == "empty_prompt":
        target = " "
    elif case == "no_folder":
        out = tmp_path / "missing" / "out.wav"
    elif case == "exists":
        out.write_bytes(b"keep me")
    assert main(_edit(wav, "--source", source, "--target", target, "-o", out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("steer: error: ") and message in err
    if case == "exists":
        assert out.read_bytes() == b"keep me"


@pytest.mark.parametrize(
    "more, message",
    [
        (["--lr", "nan"], "--lr must be a positive finite number, got nan"),
        (["--lr", "inf"], "--lr must be a positive finite number, got inf"),
        (["--lr", "0"], "--lr must be a positive finite number, got 0.0"),
        (["--guidance", "nan"], "--guidance must be a finite number, got nan"),
        (["--steps", "0"], f"--steps must be between 1 and {sys.maxsize} (sys.maxsize), got 0"),
        (["--steps", str(10**20)], f"--steps must be between 1 and {sys.maxsize} (sys.maxsize), got {10**20}"),  # was tqdm's OverflowError
        (["--steps", "0", "--recipe", "sdedit"], "--steps must be between 1 and the backbone's training timesteps for sdedit (1000 for tiny), got 0"),  # said sys.maxsize
        (["--steps", "1001", "--recipe", "ddim_inversion"], "--steps must be between 1 and the backbone's training timesteps for ddim_inversion (1000 for tiny), got 1001"),  # was refused after loading, as "steps must be in [1, 1000]"
        (["--threads", "0"], f"--threads must be between 1 and {_CPUS} (the CPUs this process may use), got 0"),
        (["--threads", "100000"], f"--threads must be between 1 and {_CPUS} (the CPUs this process may use), got 100000"),  # was accepted: 100000 threads asked of PyTorch
        (["--seed", str(2**70)], f"--seed must be an integer from -2**63 to 2**64 - 1 (a 64-bit seed), got {2**70}"),
        (["--device", "foo"], "--device foo: use cpu, cuda, cuda:N or auto"),
        (["--device", "meta"], "--device meta: use cpu, cuda, cuda:N or auto"),
    ],
)
def test_bad_numbers_are_refused_before_a_model_loads(more, message, wav, tmp_path, capsys, no_model_loads):
    out = tmp_path / "out.wav"
    assert main([*_edit(wav, "--source", "a piano", "--target", "a violin", "-o", out), *more]) == 2
    assert capsys.readouterr().err == f"steer: error: {message}\n" and not out.exists()


def test_outputs_it_cannot_or_must_not_write_are_refused_before_a_model_loads(wav, tmp_path, capsys, no_model_loads):
    """Found before the edit runs (they were found after it, or not at all): the format, a
    folder, and the input clip itself, which --overwrite does not make replaceable."""
    folder = tmp_path / "out.wav"
    folder.mkdir()
    before = wav.read_bytes()
    formats = f"use {', '.join(writable_suffixes())} (what soundfile {sf.__version__} with libsndfile {sf.__libsndfile_version__} writes)"
    for out, more, message in [
        (tmp_path / "out.aif", [], f"unsupported audio format '.aif': {formats}"),
        (tmp_path / "out", [], f"unsupported audio format '': {formats}"),
        (folder, ["--overwrite"], f"{folder} is a folder: name a file"),
        (wav, ["--overwrite"], f"{wav} is the input clip: name another output, the input is never replaced"),
    ]:
        assert main([*_edit(wav, "--source", "a", "--target", "b", "-o", out), *more]) == 2
        assert capsys.readouterr().err == f"steer: error: {message}\n"
    assert wav.read_bytes() == before and not any(folder.iterdir())


def test_plot_and_demo_refuse_outputs_they_would_misname(tmp_path, capsys):
    wav = tmp_path / "tone.wav"
    sf.write(wav, 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000), 16000)
    picture = tmp_path / "picture"  # matplotlib would write picture.png, unchecked
    assert main(["plot", str(wav), str(wav), "-o", str(picture)]) == 2
    assert "cannot tell the picture's format from 'picture': end it in .png" in capsys.readouterr().err
    assert main(["plot", str(wav), str(wav), "-o", str(tmp_path / "picture.svg")]) == 0
    assert (tmp_path / "picture.svg").read_text().lstrip().startswith("<?xml")
    assert not (tmp_path / "picture.png").exists()
    picture.write_text("mine")
    assert main(["demo", "--out", str(picture)]) == 2
    assert f"--out {picture} is a file: name a folder" in capsys.readouterr().err
    assert picture.read_text() == "mine"


def test_overwrite_replaces(wav, tmp_path):
    out = tmp_path / "out.wav"
    out.write_bytes(b"old")
    assert main(_edit(wav, "--source", "a", "--target", "b", "-o", out, "--overwrite")) == 0
    assert sf.info(out).frames == 8000


def test_performance_paths_give_the_same_edit(wav, tmp_path):
    """The same edit to a tenth of how far it moved from the source, in log-mel L1 (the model's
    Griffin-Lim phase moves samples by up to 0.01 between latents equal to float rounding)."""
    from steer.metrics import log_mel_distance

    outputs = {}
    for path in ("reference", "batched"):
        outputs[path] = tmp_path / f"{path}.wav"
        argv = _swap_model(_edit(wav, "--source", "a piano", "--target", "a violin", "-o", outputs[path]))
        assert main([*argv, "--performance", path]) == 0
    reference, batched = (torch.from_numpy(sf.read(p, dtype="float32")[0]) for p in outputs.values())
    source, rate = sf.read(wav, dtype="float32")
    moved = log_mel_distance(reference, torchaudio.functional.resample(torch.from_numpy(source), rate, 16000))
    assert reference.abs().max() > 0.1 and log_mel_distance(batched, reference) < moved / 10


def test_compile_backend_autotune_step_graph_and_fused_projections_set_their_paths_and_are_refused_elsewhere(wav, tmp_path, capsys):
    out = tmp_path / "out.wav"
    argv = _edit(wav, "--source", "a piano", "--target", "a violin", "-o", out)
    for backend in ("steer-cudagraphs", "cudagraphs"):
        args = _parser().parse_args([*argv, "--performance", "fused", "--compile-backend", backend])
        assert _edit_settings(args)["performance"] == dataclasses.replace(PRESETS["fused"], compile_backend=backend)
    for preset in ("fused", "fused-checkpointed"):
        args = _parser().parse_args([*argv, "--performance", preset, "--autotune"])
        assert _edit_settings(args)["performance"] == dataclasses.replace(PRESETS[preset], autotune=True)
    for preset in ("batched", "checkpointed", "fused-checkpointed"):
        args = _parser().parse_args([*argv, "--performance", preset, "--step-graph"])
        assert _edit_settings(args)["performance"] == dataclasses.replace(PRESETS[preset], step_graph=True)
    for preset in ("reference", "bf16", "fused"):
        args = _parser().parse_args([*argv, "--performance", preset, "--fuse-projections"])
        assert _edit_settings(args)["performance"] == dataclasses.replace(PRESETS[preset], fuse_projections=True)
        args = _parser().parse_args([*argv, "--performance", preset, "--merge-lora"])
        assert _edit_settings(args)["performance"] == dataclasses.replace(PRESETS[preset], merge_lora=True)
    for more, message in [
        (["--compile-backend", "cudagraphs"], "--compile-backend applies to the compiled paths: add --performance fused"),
        (["--performance", "fused", "--compile-backend", "nope"], "unknown --compile-backend 'nope': use one of"),
        (["--autotune"], "--autotune tunes inductor's kernels: use it with --performance fused or "
         "fused-checkpointed on the inductor backend (got --performance batched)"),
        (["--performance", "fused", "--compile-backend", "steer-cudagraphs", "--autotune"],
         "(got --performance fused --compile-backend steer-cudagraphs)"),
        (["--recipe", "sdedit", "--autotune"], "--autotune applies to the score-distillation recipes"),
        (["--performance", "fp16", "--step-graph"], "cannot hold fp16's loss scaling or the "
         "steer-cudagraphs and cudagraphs backends' own graphs: use another --performance or "
         "--compile-backend (got --performance fp16)"),
        (["--performance", "fused", "--compile-backend", "steer-cudagraphs", "--step-graph"],
         "(got --performance fused --compile-backend steer-cudagraphs)"),
        (["--recipe", "ddim_inversion", "--step-graph"], "--step-graph applies to the score-distillation recipes"),
        (["--recipe", "sdedit", "--fuse-projections"], "--fuse-projections applies to the score-distillation recipes"),
        (["--recipe", "sdedit", "--merge-lora"], "--merge-lora applies to the score-distillation recipes"),
        (["--dtype", "float16", "--performance", "fused"],
         "--performance fused computes in bf16, which cannot run --dtype float16 weights: use --dtype float32 or bfloat16"),
        (["--dtype", "bfloat16", "--performance", "fp16"],
         "--performance fp16 computes in fp16, which cannot run --dtype bfloat16 weights: use --dtype float32 or float16"),
    ]:
        assert main([*argv, *more]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    assert not out.exists()


@pytest.mark.parametrize("recipe", ["sdedit", "ddim_inversion", "ddpm_inversion"])
def test_a_baseline_recipe_edits_like_its_editor(recipe, wav, tmp_path):
    """``--recipe`` runs the paper's baselines with the options they have (steps, guidance,
    seed); the file is the editor's own edit."""
    from backbones import load_backbone
    from steer import load_audio, save_audio
    from steer.runner import BASELINES

    out = tmp_path / "out.wav"
    argv = _edit(wav, "--source", "a piano", "--target", "a violin", "-o", out)
    assert main([*argv, "--recipe", recipe, "--guidance", "5", "--seed", "3"]) == 0
    editor = BASELINES[recipe](load_backbone("tiny"), steps=2, guidance_scale=5.0)
    result = editor.edit(load_audio(wav), source="a piano", target="a violin", seed=3)
    save_audio(tmp_path / "direct.wav", result.audio[0], result.sample_rate)
    assert out.read_bytes() == (tmp_path / "direct.wav").read_bytes()


@pytest.mark.parametrize(
    "more, message",
    [
        (["--recipe", "ddpm_inversion", "--lr", "0.1"], "--lr applies to the score-distillation recipes"),
        (["--recipe", "sdedit", "--performance", "fused"], "--performance applies to the score-distillation"),
        (["--recipe", "ddim_inversion", "--concept", "my-guitar"], "--recipe ddim_inversion takes no --concept"),
        (["--recipe", "steermusic_plus"], "--recipe steermusic_plus needs --concept"),
    ],
)
def test_options_a_recipe_does_not_have_are_refused(more, message, wav, tmp_path, capsys):
    out = tmp_path / "out.wav"
    assert main([*_edit(wav, "--source", "a piano", "--target", "a violin", "-o", out), *more]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()


def test_console_script_reports_errors_without_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "steer.cli", *_edit(tmp_path / "x.wav", "--source", "a", "--target", "b", "-o", tmp_path / "o.wav")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"steer: error: input file not found: {tmp_path / 'x.wav'}"


def test_demo_writes_clips_picture_and_scores(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--backbone", "tiny", "--steps", "2", "--device", "cpu"]) == 0
    for name in ("source", "edit", "ground_truth"):
        assert sf.info(out / f"{name}.wav").frames == 40960
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "source vs the real violin: 0.9" in printed  # the shipped pair is a true swap
    assert "random weights" in printed
    # a second run refuses to overwrite
    assert main(["demo", "--out", str(out), "--backbone", "tiny", "--steps", "2"]) == 2


def test_demo_scores_an_edit_at_another_rate_and_channel_count_at_the_sources_rate(tmp_path, capsys, monkeypatch):
    """A Stable Audio edit (44.1 kHz stereo) was scored as if it were 16 kHz: the real violin,
    returned as such an edit, scored -0.617 instead of its 0.979."""
    import torchaudio.functional

    import steer.cli
    from steer import load_audio, save_audio

    truth = load_audio(steer.cli.DEMO_TRUTH)

    def edit_is_the_truth_at_44k_stereo(args, editing, audio, source, target, path):
        waveform = torchaudio.functional.resample(truth.waveform, truth.sample_rate, 44100)
        save_audio(path, waveform.expand(2, -1), 44100)
        return path

    monkeypatch.setattr(steer.cli, "_edit", edit_is_the_truth_at_44k_stereo)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--backbone", "tiny-stable-audio"]) == 0
    printed = capsys.readouterr().out
    kept, real = map(float, re.search(r"source vs edit\): (\S+); source vs the real violin: (\S+)", printed).groups())
    assert kept == pytest.approx(real, abs=0.01) and real > 0.9  # the edit is the real violin
    assert "the 'tiny-stable-audio' backbone has random weights" in printed and "classifier hears" not in printed


def test_demo_refuses_a_backbone_that_is_no_folder_before_it_makes_out(tmp_path, capsys, no_model_loads):
    """`--backbone weights/typo` asked the Hub for it for 30 s, failed with a long
    LocalEntryNotFoundError, and left the empty --out behind."""
    typo = tmp_path / "weights" / "typo"
    typo.parent.mkdir()
    out = tmp_path / "new" / "demo"
    assert main(["demo", "--out", str(out), "--backbone", str(typo)]) == 2
    assert capsys.readouterr().err == (
        f"steer: error: --backbone {typo} not found: pass a folder written by save_pretrained, or a Hub repo id\n"
    )
    assert not (tmp_path / "new").exists()
    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"RIFF")
    assert main(["demo", "--out", str(out), "--backbone", str(clip)]) == 2  # was "not found"
    assert capsys.readouterr().err == (
        f"steer: error: --backbone {clip} is a file, not a model folder: pass a folder written by save_pretrained, "
        "or a Hub repo id\n"
    )


def test_a_format_that_cannot_hold_the_backbones_channels_is_refused_before_the_steps(wav, tmp_path, capsys, monkeypatch):
    """.xi writes mono alone: a stereo backbone's edit ran every step, then failed to be written."""
    import steer.cli

    def no_edit(*args):
        raise AssertionError("the edit began")

    monkeypatch.setattr(steer.cli, "build_editor", no_edit)
    out = tmp_path / "out.xi"
    args = [*_edit(wav, "--source", "a piano", "--target", "a violin", "-o", out)]
    args[args.index("--backbone") + 1] = "tiny-stable-audio"
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"steer: error: cannot write {out} as XI: the format takes no 2-channel audio at 44100 Hz (Format not "
        "recognised.), what this backbone makes; name a .wav or .flac output\n"
    )
    assert not out.exists()


def test_an_empty_concept_is_refused(wav, tmp_path, capsys, no_model_loads):
    """It was read as no --concept: "a sks guitar" edited by plain SteerMusic, without a word."""
    assert main([*_edit(wav, "--source", "a piano", "--target", "a sks guitar", "-o", tmp_path / "o.wav"), "--concept", ""]) == 2
    assert capsys.readouterr().err == (
        "steer: error: --concept is empty: name a concept folder or Hub repo id, or leave --concept out\n"
    )


def test_a_demo_cut_short_leaves_none_of_its_outputs_nor_a_folder_it_made(tmp_path, monkeypatch):
    """It wrote edit.wav first: after a Ctrl-C, the rerun was refused ("edit.wav exists; pass --overwrite")."""
    import steer.cli
    from steer import save_audio

    def edit(args, editing, audio, source, target, path):
        save_audio(path, audio.waveform, audio.sample_rate)
        return path

    def edit_then_interrupted(*args):
        edit(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(steer.cli, "_edit", edit_then_interrupted)
    out = tmp_path / "new" / "demo"
    assert main(["demo", "--out", str(out), "--backbone", "tiny"]) == 130
    assert not (tmp_path / "new").exists()
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(out), "--backbone", "tiny"]) == 130
    assert [path.name for path in out.iterdir()] == ["notes.txt"]  # nor the folder it made them in

    monkeypatch.setattr(steer.cli, "_edit", edit)
    assert main(["demo", "--out", str(out), "--backbone", "tiny"]) == 0
    names = ["comparison.png", "edit.wav", "ground_truth.wav", "notes.txt", "source.wav"]
    assert sorted(path.name for path in out.iterdir()) == names


def test_a_metric_named_twice_is_scored_once():
    """``--metrics cqt1_pcc,cqt1_pcc`` printed the columns twice and listed the name twice in eval.json."""
    assert _metric_names("cqt1_pcc, log_mel,cqt1_pcc,") == ["cqt1_pcc", "log_mel"]


linux = pytest.mark.skipif(sys.platform != "linux", reason="writes into /proc, where no file can be created")


@linux
def test_outputs_that_cannot_be_written_are_refused_before_a_model_loads(wav, tmp_path, capsys, no_model_loads):
    """They were found after the whole edit, as tracebacks from soundfile, matplotlib or mkdir,
    and the edit was lost; an input name too long raised OSError from Path.is_dir."""
    long = tmp_path / ("a" * 256 + ".wav")
    cases = [
        (_edit(wav, "--source", "a", "--target", "b", "-o", "/proc/x.wav"),
         "cannot write /proc/x.wav: no file can be created in /proc (No such file or directory): choose a folder you can write to"),
        (_edit(wav, "--source", "a", "--target", "b", "-o", long),
         f"cannot write {long}: its name is 260 bytes long, more than the 255 a file name may have: shorten it"),
        (["plot", str(wav), str(wav), "-o", "/proc/x.png"], "cannot write /proc/x.png: no file can be created in /proc"),
        (["plot", str(wav), str(wav), "-o", str(long.with_suffix(".png"))],
         f"cannot write {long.with_suffix('.png')}: its name is 260 bytes long"),
        (["demo", "--out", "/proc/demo", "--backbone", "tiny"], "cannot create --out /proc/demo: No such file or directory: name a folder where you can write"),
        (_edit(long, "--source", "a", "--target", "b", "-o", tmp_path / "out.wav"), f"input file not found: {long}"),
        (_edit(wav, "--source", "a", "--target", "b", "-o", wav / "x.wav"),  # said "output folder does not exist"
         f"{wav} is a file, not a folder: name an output in a folder"),
        (_edit(wav, "--source", "a", "--target", "b", "-o", wav),  # said "pass --overwrite", then refused it
         f"{wav} is the input clip: name another output, the input is never replaced"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"steer: error: {message}") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav"]


def test_steer_run_into_the_clips_folder_names_the_source_clip_it_would_replace(wav, capsys, no_model_loads):
    """The item's own source clip was taken for a wav another program wrote: "move it away ... or
    --overwrite", and --overwrite was then refused for another reason."""
    manifest = wav.parent / "manifest.jsonl"
    manifest.write_text(json.dumps({"id": wav.stem, "audio": wav.name, "source": "a piano", "target": "a violin"}) + "\n")
    before = wav.read_bytes()
    for overwrite in ([], ["--overwrite"]):
        assert main(["run", str(manifest), "--out", str(wav.parent), "--backbone", "tiny", "--device", "cpu", *overwrite]) == 2
        assert capsys.readouterr().err == (
            f"steer: error: item {wav.stem!r} would write its edit to {wav.resolve()}, its own source clip: pass another --out\n"
        )
    assert wav.read_bytes() == before


@linux
def test_steer_run_refuses_an_out_it_cannot_create_before_a_model_loads(wav, tmp_path, capsys, no_model_loads):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"id": "c0", "audio": str(wav), "source": "a piano", "target": "a violin"}) + "\n")
    assert main(["run", str(manifest), "--out", "/proc/run", "--backbone", "tiny", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == "steer: error: cannot create --out /proc/run: No such file or directory: name a folder where you can write\n"


def test_demo_refuses_its_options_before_it_creates_the_folder(tmp_path, capsys):
    out = tmp_path / "new" / "dir"
    assert main(["demo", "--out", str(out), "--steps", "0"]) == 2
    assert "--steps must be between 1" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_a_baselines_steps_beyond_a_loaded_backbones_timesteps_name_the_option(wav, tmp_path, capsys):
    """Beyond the offline builds, the timesteps are known once the backbone loads; the refusal
    said "steps must be in [1, 1000], got 5000", without the option's name."""
    out = tmp_path / "out.wav"
    argv = [*_edit(wav, "--source", "a", "--target", "b", "-o", out), "--recipe", "sdedit"]
    argv[argv.index("--backbone") + 1] = str(SWAP_BACKBONE)
    argv[argv.index("--steps") + 1] = "5000"
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "steer: error: --steps must be between 1 and the backbone's training timesteps for sdedit "
        f"(1000 for {SWAP_BACKBONE}), got 5000\n"
    )
    assert not out.exists()


def test_every_offline_build_has_the_timesteps_the_steps_check_assumes():
    from backbones import load_backbone
    from backbones.auto import TINY

    assert {name: load_backbone(name).num_train_timesteps for name in TINY} == dict.fromkeys(TINY, TINY_TIMESTEPS)


def test_a_diverged_edit_says_which_options_to_lower(wav, tmp_path, capsys, monkeypatch):
    import steer.cli
    from steer.editor import EditResult

    class Diverged:
        def edit(self, audio, **kwargs):
            return EditResult(latent=torch.zeros(1), audio=torch.full((1, 8000), float("nan")), sample_rate=16000)

    monkeypatch.setattr(steer.cli, "build_editor", lambda *args: Diverged())
    out = tmp_path / "out.wav"
    for recipe, options in (("steermusic", "--lr or --guidance"), ("sdedit", "--guidance")):
        assert main([*_edit(wav, "--source", "a", "--target", "b", "-o", out), "--recipe", recipe]) == 2
        assert capsys.readouterr().err == (
            f"steer: error: 8000 samples are NaN or infinite (a diverged edit?): nothing written to {out}; "
            f"lower {options}\n"
        )
    # the demo's edit is written aside first: the error named that temporary file, already gone
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2
    assert capsys.readouterr().err == (
        "steer: error: 8000 samples are NaN or infinite (a diverged edit?): nothing written to "
        f"{tmp_path / 'demo' / 'edit.wav'}; lower --lr or --guidance\n"
    )


def test_equal_prompts_warn_before_the_steps(wav, tmp_path):
    with pytest.warns(UserWarning, match="the source and target prompts are the same, so the delta score between them is zero"):
        assert main(_edit(wav, "--source", "a piano", "--target", "a piano", "-o", tmp_path / "out.wav")) == 0


def test_the_help_says_what_the_outputs_are(capsys):
    for command in ("edit", "plot"):
        with pytest.raises(SystemExit):
            _parser().parse_args([command, "--help"])
    printed = " ".join(capsys.readouterr().out.split())
    assert "where to write the edit, at the backbone's sample rate and channels" in printed
    assert "the picture to write: PNG, or any format matplotlib writes, by its suffix" in printed


@pytest.mark.parametrize(
    ("command", "after"),
    [
        ("edit", "nothing was written"),
        ("run", "run the same command again to resume: finished edits are kept, the interrupted ones redone"),
    ],
)
def test_an_interrupted_command_exits_130_with_one_line_saying_what_it_left(command, after, wav, tmp_path, capsys, monkeypatch):
    """Ctrl-C printed a KeyboardInterrupt traceback, and exited 1 as a crash does."""
    import steer.cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(steer.cli, f"_{command}", interrupted)
    if command == "edit":
        argv = ["edit", str(wav), "--source", "a piano", "--target", "a violin", "-o", str(tmp_path / "e.wav"),
                "--backbone", "tiny"]
    else:
        argv = ["run", str(tmp_path / "manifest.jsonl"), "--out", str(tmp_path / "out")]
    capsys.readouterr()
    assert main(argv) == 130
    assert capsys.readouterr().err == f"\nsteer: interrupted; {after}\n"


def test_an_interrupted_personalize_says_whether_a_checkpoint_can_be_resumed(wav, tmp_path, capsys, monkeypatch):
    from steer.concepts import cli as concepts_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(concepts_cli, "run_personalize", interrupted)
    monkeypatch.setattr("steer.cli.run_personalize", interrupted)
    checkpoints = tmp_path / "ck"
    argv = ["personalize", str(wav), "--token", "sks", "-o", str(tmp_path / "c"), "--checkpoint-dir", str(checkpoints)]
    capsys.readouterr()
    assert main(argv) == 130
    assert capsys.readouterr().err == f"\nsteer: interrupted; no checkpoint was saved in {checkpoints} yet, and no concept\n"
    for name in ("trainable.safetensors", "state.safetensors", "trainer_state.json"):
        (checkpoints / "checkpoint-4").mkdir(parents=True, exist_ok=True)
        (checkpoints / "checkpoint-4" / name).write_text("")
    assert main(argv) == 130
    assert capsys.readouterr().err == f"\nsteer: interrupted; add --resume to go on from the newest checkpoint, {checkpoints / 'checkpoint-4'}\n"
    # the concept's folder is the checkpoints' (or holds them): the rerun needs --overwrite too
    argv[argv.index("-o") + 1] = str(checkpoints)
    assert main(argv) == 130
    assert capsys.readouterr().err == (
        f"\nsteer: interrupted; add --resume (and --overwrite: {checkpoints} now holds files, which it keeps) to go on "
        f"from the newest checkpoint, {checkpoints / 'checkpoint-4'}\n"
    )


def test_an_interrupt_says_what_was_written_where_the_command_had_written_something(wav, tmp_path, capsys, monkeypatch):
    """A personalize interrupted in its push said "nothing was written" with the concept saved; an
    interrupted `run --overwrite` said to run "the same command" again, which redoes every item."""
    from steer.concepts import Concept

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Concept, "push_to_hub", interrupted)
    out = tmp_path / "c"
    capsys.readouterr()
    assert main(["personalize", str(wav), "--token", "sks", "-o", str(out), "--backbone", "tiny", "--steps", "1",
                 "--batch-size", "1", "--push-to-hub", "me/c"]) == 130
    err = capsys.readouterr().err
    assert f"steer: interrupted; the concept is saved at {out} but not pushed: push it with python -c" in err
    assert (out / "concept_config.json").is_file()
    monkeypatch.setattr("steer.cli._run", interrupted)
    assert main(["run", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "o"), "--overwrite"]) == 130
    assert capsys.readouterr().err.endswith("run it again without --overwrite to keep the edits it finished and redo "
                                            "the rest (refused while edits of the old settings remain), or with "
                                            "--overwrite to redo every item\n")


def _warning_in_plot(*options: str) -> subprocess.CompletedProcess:
    """``steer plot`` in a new Python (``options`` before ``-c``) whose plotting only warns, twice."""
    code = (
        "import sys, warnings, steer.cli as cli\n"
        "def plot(args):\n"
        "    warnings.warn('a4.wav: 14 of 11610 samples clipped', RuntimeWarning)\n"
        "    warnings.warn('equal prompts')\n"
        "cli._plot = plot\n"
        "sys.exit(cli.main(['plot', 'a.wav', 'b.wav', '-o', 'c.png']))\n"
    )
    return subprocess.run([sys.executable, *options, "-c", code], capture_output=True, text=True)


def test_warnings_are_one_line_and_their_filters_still_apply():
    """They were Python's two lines: file, line number, category, then the source line."""
    done = _warning_in_plot()
    assert done.returncode == 0
    assert done.stderr == (
        "steer: warning: RuntimeWarning: a4.wav: 14 of 11610 samples clipped\nsteer: warning: equal prompts\n"
    )
    done = _warning_in_plot("-W", "error::RuntimeWarning")
    assert done.returncode == 1 and "RuntimeWarning: a4.wav: 14 of 11610 samples clipped" in done.stderr
    assert "steer: warning" not in done.stderr
    assert _warning_in_plot("-W", "ignore").stderr == ""


def test_the_warnings_format_is_restored_when_main_returns(tmp_path):
    import warnings

    before = warnings.formatwarning
    assert main(["eval", str(tmp_path / "no-such-folder")]) == 2
    assert warnings.formatwarning is before


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--out", ""],
        ["plot", "a.wav", "", "-o", "x.png"],
        ["personalize", "a.wav", "--token", "sks", "-o", ""],
    ],
)
def test_an_empty_path_is_refused_not_read_as_the_current_folder(argv, tmp_path, capsys, monkeypatch, no_model_loads):
    """Path("") is ".": `steer demo --out ""` wrote its four files into the current folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    assert "is empty: name a file or folder (. for the current folder)" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
