"""Learning a concept: the loss falls, seeds reproduce, resuming equals not stopping, bad clips fail."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from concept_helpers import tiny_mel_backbone, tone
from huggingface_hub import HfApi

from steer import Audio, save_audio
from steer.concepts import Concept, diffusion_loss
from steer.concepts import concept as concept_module
from steer.concepts.cli import add_personalize_parser, run_personalize
from steer.concepts.train import MAX_LR, load_references

PROMPT = "a recording of a sks guitar"


def _train(backbone, references, method, **kwargs):
    kwargs = {"progress": False, **kwargs}
    return Concept.train(backbone, references, token="sks", class_word="guitar", method=method, **kwargs)


def _equal(a: Concept, b: Concept) -> bool:
    return a.weights.keys() == b.weights.keys() and all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)


def _reference_loss(backbone, concept, clips) -> float:
    """ε-loss of the concept's ε' on the (first 1.28 s of the) references, at fixed t and ε."""
    waves = torch.stack([c.waveform[0, :20480] for c in clips])
    latents = backbone.encode_audio(waves, 16000).repeat(3, 1, 1, 1)  # 2 clips × 3 timesteps
    t = torch.tensor([50, 400, 900]).repeat_interleave(len(clips))
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(123))
    with concept.apply(backbone) as personalized:
        return diffusion_loss(personalized, latents, [PROMPT] * len(latents), t=t, noise=noise)


@pytest.mark.parametrize(
    ("family", "method", "lr", "steps", "gain"),
    [  # gain: the least relative fall of the loss; seen: -6 % (LoRA) to -20 % (dreambooth) in 8 steps
        ("audioldm2", "lora", 1e-1, 8, 0.03),
        ("audioldm2", "dreambooth", 3e-3, 8, 0.03),
        ("mel-diffusion", "lora", 1e-1, 8, 0.03),
        ("mel-diffusion", "dreambooth", 3e-3, 8, 0.03),
        # A random model's ε depends little on the prompt, so one learnt embedding can gain only a
        # little; it must still gain (seen: mel-diffusion 1.1213 -> 1.1197, tiny AudioLDM2, whose
        # prompt reaches the UNet through GPT-2, 1.14563 -> 1.14548).
        ("mel-diffusion", "textual_inversion", 3e-1, 15, 4e-4),
        ("audioldm2", "textual_inversion", 1.0, 15, 7e-5),
    ],
)
def test_training_lowers_the_loss_on_the_references(family, method, lr, steps, gain, tiny_backbone, mel_backbone, clips):
    backbone = tiny_backbone if family == "audioldm2" else mel_backbone
    kwargs = {"lr": lr, "batch_size": 2, "seed": 0, "crop_seconds": 0.64}
    before = _reference_loss(backbone, _train(backbone, clips, method, steps=0, **kwargs), clips)
    after = _reference_loss(backbone, _train(backbone, clips, method, steps=steps, **kwargs), clips)
    assert after < (1 - gain) * before, (before, after)


def test_the_same_seed_gives_the_same_weights(mel_backbone, clips):
    a = _train(mel_backbone, clips, "lora", steps=3, batch_size=2, lr=1e-2, seed=7)
    b = _train(mel_backbone, clips, "lora", steps=3, batch_size=2, lr=1e-2, seed=7)
    c = _train(mel_backbone, clips, "lora", steps=3, batch_size=2, lr=1e-2, seed=8)
    assert _equal(a, b) and not _equal(a, c)
    assert a.config == b.config


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("method", ["lora", "textual_inversion"])
def test_resuming_from_a_checkpoint_equals_an_uninterrupted_run(method, mel_backbone, clips, tmp_path):
    kwargs = {"steps": 5, "batch_size": 2, "lr": 1e-2, "seed": 3, "checkpoint_every": 2}
    whole = _train(mel_backbone, clips, method, **kwargs)

    def crash(state):
        if state.step == 2:  # after checkpoint-2 was written at the end of step index 1
            raise Interrupted

    with pytest.raises(Interrupted):
        _train(mel_backbone, clips, method, checkpoint_dir=tmp_path, callback=crash, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-000002"]
    steps_seen = []
    resumed = _train(
        mel_backbone, clips, method, checkpoint_dir=tmp_path, resume=True,
        callback=lambda s: steps_seen.append(s.step), **kwargs,
    )
    assert steps_seen == [2, 3, 4]
    assert _equal(resumed, whole)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-000002", "checkpoint-000004"]
    # the base model is as it was: no adapter, no new word
    assert "sks" not in mel_backbone.model.text_encoder.vocabulary
    assert not hasattr(mel_backbone.denoiser, "peft_config")


def test_resuming_with_other_settings_fails(mel_backbone, clips, tmp_path):
    _train(mel_backbone, clips, "lora", steps=2, batch_size=1, checkpoint_dir=tmp_path, checkpoint_every=2)
    with pytest.raises(ValueError, match=r"other settings \(lr\)"):
        _train(mel_backbone, clips, "lora", steps=4, batch_size=1, lr=5e-4, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="other settings.*references"):
        _train(mel_backbone, clips[:1], "lora", steps=4, batch_size=1, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="needs the checkpoint_dir"):
        _train(mel_backbone, clips, "lora", steps=4, resume=True)


def test_resuming_names_a_folder_without_checkpoints_and_the_steps_to_pass(mel_backbone, clips, tmp_path):
    kwargs = {"batch_size": 1, "crop_seconds": 0.64, "resume": True}
    misspelt = tmp_path / "chekpoints"  # was trained from scratch without a word
    with pytest.warns(UserWarning, match=rf"^resuming, but checkpoint_dir {re.escape(str(misspelt))} does not exist: training starts from step 0"):
        _train(mel_backbone, clips, "lora", steps=2, checkpoint_dir=misspelt, checkpoint_every=2, **kwargs)
    latest = misspelt / "checkpoint-000002"
    message = f"cannot resume from {latest}: it is at step 2, past steps=1; pass steps=2 or more (steer personalize --steps 2)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _train(mel_backbone, clips, "lora", steps=1, checkpoint_dir=misspelt, checkpoint_every=2, **kwargs)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.warns(UserWarning, match="checkpoint_dir .*empty holds no checkpoint: training starts from step 0"):
        _train(mel_backbone, clips, "lora", steps=1, checkpoint_dir=empty, **kwargs)


def test_checkpoints_never_touch_what_the_run_did_not_write(mel_backbone, clips, tmp_path):
    foreign = tmp_path / "checkpoint-500"  # another tool's checkpoint, numbered past this run's
    foreign.mkdir()
    (foreign / "pytorch_model.bin").write_text("someone's weights")
    kwargs = {"steps": 3, "batch_size": 1, "checkpoint_dir": tmp_path, "checkpoint_every": 1, "keep_checkpoints": 2}
    _train(mel_backbone, clips, "lora", **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-000002", "checkpoint-000003", "checkpoint-500"]
    assert (foreign / "pytorch_model.bin").read_text() == "someone's weights"
    # a second run that does not resume would mix its checkpoints with the first one's
    with pytest.raises(ValueError, match=r"already holds checkpoints of a run \(newest: checkpoint-000003\).*resume=True"):
        _train(mel_backbone, clips, "lora", seed=1, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-000002", "checkpoint-000003", "checkpoint-500"]
    with pytest.raises(ValueError, match="keep_checkpoints must be at least 0, got -1"):
        _train(mel_backbone, clips, "lora", steps=1, keep_checkpoints=-1)


def test_a_folder_named_as_this_runs_checkpoints_that_is_not_one_is_refused_before_training(mel_backbone, clips, tmp_path):
    """Another tool's checkpoint-000002/ was replaced by the run's (or pruned), its files lost."""
    kwargs = {"steps": 2, "batch_size": 1, "checkpoint_dir": tmp_path, "checkpoint_every": 1, "keep_checkpoints": 0}
    foreign = tmp_path / "checkpoint-000002"
    foreign.mkdir()
    (foreign / "model.bin").write_text("someone's weights")
    (foreign / "trainer_state.json").write_text("{}")
    for resume in (False, True):
        with pytest.raises(ValueError, match=rf"^checkpoint_dir {re.escape(str(tmp_path))} holds checkpoint-000002, which is not a steer checkpoint .* use another folder$"):
            _train(mel_backbone, clips, "lora", resume=resume, **kwargs)
    assert sorted(p.name for p in foreign.iterdir()) == ["model.bin", "trainer_state.json"]


@pytest.mark.parametrize(
    "file, damage, said",
    [
        ("trainable.safetensors", lambda p: p.write_bytes(p.read_bytes()[:100]), "trainable.safetensors is damaged"),
        ("state.safetensors", lambda p: p.write_bytes(b""), "state.safetensors is damaged"),
        ("trainer_state.json", lambda p: p.write_text("[]"), "trainer_state.json is damaged (not the JSON object"),
        ("trainer_state.json", lambda p: p.write_text('{"step": '), "trainer_state.json is damaged (Expecting value"),
    ],
)
def test_a_damaged_checkpoint_names_its_file_and_the_one_before_it(file, damage, said, mel_backbone, clips, tmp_path):
    """Tracebacks (SafetensorError, AttributeError) or json's bare message naming no file."""
    kwargs = {"batch_size": 1, "checkpoint_dir": tmp_path, "checkpoint_every": 1}
    _train(mel_backbone, clips, "lora", steps=2, **kwargs)
    damage(tmp_path / "checkpoint-000002" / file)
    fix = f"delete {tmp_path / 'checkpoint-000002'} to resume from the checkpoint before it, or use another checkpoint_dir"
    with pytest.raises(ValueError, match=rf"^cannot resume from {re.escape(str(tmp_path / 'checkpoint-000002'))}: {re.escape(said)}.*; {re.escape(fix)}$"):
        _train(mel_backbone, clips, "lora", steps=3, resume=True, **kwargs)
    shutil.rmtree(tmp_path / "checkpoint-000002")  # the way on it names
    assert _train(mel_backbone, clips, "lora", steps=3, resume=True, **kwargs).config.training["steps"] == 3


def test_a_checkpoint_every_beyond_the_steps_is_warned_of(mel_backbone, clips, tmp_path):
    """--steps 3 with the default --checkpoint-every 50 saved nothing, silently."""
    with pytest.warns(UserWarning, match=rf"^checkpoint_every=50 is more than steps=3: no checkpoint will be saved in {re.escape(str(tmp_path))} "):
        _train(mel_backbone, clips, "lora", steps=3, batch_size=1, crop_seconds=0.64, checkpoint_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unusable_references_name_the_file(mel_backbone, clips, clip_files, tmp_path):
    missing = tmp_path / "missing.wav"
    unreadable = tmp_path / "notes.wav"
    unreadable.write_text("not audio")
    silent = save_audio(tmp_path / "silent.wav", torch.zeros(1, 16000), 16000)
    short = save_audio(tmp_path / "short.wav", tone(440.0, seconds=0.2).waveform, 16000)
    for path, match in [
        (missing, "not found: .*missing.wav"),
        (unreadable, "cannot read audio from .*notes.wav"),
        (silent, r"silent.wav is silent"),
        (short, r"short.wav is too short: 0.20 s"),
    ]:
        with pytest.raises(ValueError, match=match):
            _train(mel_backbone, [clip_files[0], path], "lora", steps=1)
    with pytest.raises(ValueError, match="no reference clips"):
        _train(mel_backbone, [], "lora", steps=1)
    with pytest.raises(ValueError, match="NaN"):
        _train(mel_backbone, [Audio(torch.full((1, 16000), float("nan")), 16000)], "lora", steps=1)
    # a bare waveform: pathlib's "expected str, bytes or os.PathLike object, not Tensor", or for a
    # (1, samples) tensor "Boolean value of Tensor with more than one value is ambiguous"
    fix = "pass audio files or steer.Audio clips, e.g. Audio(waveform, sample_rate) for a (channels, samples) waveform"
    with pytest.raises(TypeError, match=f"^reference 1 is a Tensor: {re.escape(fix)}$"):
        _train(mel_backbone, [clip_files[0], clips[0].waveform], "lora", steps=1)
    with pytest.raises(TypeError, match=f"^the references are a Tensor: {re.escape(fix)}$"):
        _train(mel_backbone, clips[0].waveform, "lora", steps=1)


def test_files_and_clips_train_alike(mel_backbone, clips, clip_files):
    # wav files hold 16-bit samples: the same clips within quantisation, so close weights
    a = _train(mel_backbone, clip_files, "lora", steps=2, batch_size=1, lr=1e-2)
    b = _train(mel_backbone, clips, "lora", steps=2, batch_size=1, lr=1e-2)
    assert a.config.training["references"] == ["ref0.wav", "ref1.wav"]
    for key in a.weights:
        torch.testing.assert_close(a.weights[key], b.weights[key], rtol=1e-2, atol=1e-3)


def test_defaults_depend_on_method_and_family():
    from steer.concepts.train import DEFAULTS, defaults_for

    assert (DEFAULTS["dreambooth"].steps, DEFAULTS["dreambooth"].lr) == (100, 1e-5)  # SteerMusic 5.1
    assert defaults_for("dreambooth", "audioldm2") == DEFAULTS["dreambooth"]
    assert defaults_for("lora", "mel-diffusion").lr > DEFAULTS["lora"].lr


def test_personalize_command(clip_files, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="steer")
    add_personalize_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "my-guitar"
    argv = ["personalize", *map(str, clip_files), "--token", "sks", "--class-word", "guitar",
            "--method", "lora", "-o", str(out), "--backbone", "tiny", "--steps", "1", "--batch-size", "1"]
    assert run_personalize(parser.parse_args(argv)) == out
    assert "a recording of a sks guitar" in capsys.readouterr().out
    assert Concept.from_pretrained(out).config.training["steps"] == 1
    with pytest.raises(ValueError, match="my-guitar holds a concept; pass --overwrite to replace it$"):
        run_personalize(parser.parse_args(argv))
    missing = [a if a != str(clip_files[0]) else str(tmp_path / "nope.wav") for a in argv]
    with pytest.raises(ValueError, match="reference clip not found: .*nope.wav"):
        run_personalize(parser.parse_args([*missing, "--overwrite"]))
    ti = [*argv, "--overwrite"]
    ti[ti.index("lora")] = "textual_inversion"
    run_personalize(parser.parse_args(ti))
    assert Concept.from_pretrained(out).weights.keys() == {"token_embedding.tokenizer", "token_embedding.tokenizer_2"}


CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@pytest.mark.parametrize(
    "option, value, message, library",
    [
        ("--lr", "nan", "lr must be a positive number <= 3.403e+37 (AdamW's first step, lr / (1 - beta1), must fit a float32), got nan", True),
        ("--lr", "0", "lr must be a positive number <= 3.403e+37 (AdamW's first step, lr / (1 - beta1), must fit a float32), got 0.0", True),
        ("--lr", "1e39", "lr must be a positive number <= 3.403e+37 (AdamW's first step, lr / (1 - beta1), must fit a float32), got 1e+39", True),
        # was torch's "value cannot be converted to type float without overflow" in AdamW's step
        ("--lr", "1e38", "lr must be a positive number <= 3.403e+37 (AdamW's first step, lr / (1 - beta1), must fit a float32), got 1e+38", True),
        ("--batch-size", "0", "batch_size must be at least 1, got 0", True),
        ("--rank", "0", "rank must be at least 1, got 0", True),  # was refused after the model loaded
        # was PyTorch's "Overflow when unpacking long long", after the model loaded
        ("--seed", str(2**70), f"seed must be an integer from -2**63 to 2**64 - 1 (a 64-bit seed), got {2**70}", True),
        ("--crop-seconds", "inf", "crop_seconds must be a finite number of seconds >= 0.5 (the shortest reference clip), got inf", True),
        # was "audio is too short: 160 samples", mid-training
        ("--crop-seconds", "0.01", "crop_seconds must be a finite number of seconds >= 0.5 (the shortest reference clip), got 0.01", True),
        ("--checkpoint-every", "0", "checkpoint_every must be at least 1, got 0", True),
        # the command refuses what the library allows (0 steps saved an untrained concept) or cannot name
        ("--steps", "-1", "--steps must be at least 1 (0 would save an untrained concept), got -1", False),
        ("--steps", "0", "--steps must be at least 1 (0 would save an untrained concept), got 0", False),
        ("--device", "foo", "--device foo: use cpu, cuda, cuda:N or auto", False),  # was the backbone's error
        ("--threads", "0", f"--threads must be between 1 and {CPUS} (the CPUs this process may use), got 0", False),
    ],
)
def test_bad_training_numbers_are_refused_before_a_model_loads(
    option, value, message, library, clip_files, mel_backbone, tmp_path, no_model_loads
):
    parser = argparse.ArgumentParser(prog="steer")
    add_personalize_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "concept"
    argv = ["personalize", *map(str, clip_files), "--token", "sks", "-o", str(out), "--backbone", "tiny", option, value]
    name = option.removeprefix("--").replace("-", "_")
    # the command names its option (it named the Python parameter, e.g. batch_size), the library its parameter
    with pytest.raises(ValueError, match=f"^{re.escape(option + message.removeprefix(name) if library else message)}$"):
        run_personalize(parser.parse_args(argv))
    assert not out.exists()
    if library:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            _train(mel_backbone, clip_files, "lora", **{name: getattr(parser.parse_args(argv), name)})


def test_personalize_records_the_base_the_backbone_was_loaded_from(clip_files, tmp_path):
    """An offline build's name was not recorded: `steer edit --concept` then took the Hub default."""
    parser = argparse.ArgumentParser(prog="steer")
    add_personalize_parser(parser.add_subparsers(dest="command"))
    common = [*map(str, clip_files), "--token", "sks", "--class-word", "guitar", "--steps", "1", "--batch-size", "1"]
    tiny = run_personalize(parser.parse_args(["personalize", *common, "-o", str(tmp_path / "a"), "--backbone", "tiny-audioldm"]))
    assert Concept.from_pretrained(tiny).config.base_model == "tiny-audioldm"  # an offline build, the same at every build
    shipped = str(Path(__file__).parents[3] / "weights" / "mel-diffusion-swap")
    concept = run_personalize(parser.parse_args(["personalize", *common, "-o", str(tmp_path / "b"), "--backbone", shipped]))
    assert Concept.from_pretrained(concept).config.base_model == shipped


def test_personalize_refuses_folders_it_would_spoil_before_a_model_loads(clip_files, tmp_path, no_model_loads):
    parser = argparse.ArgumentParser(prog="steer")
    add_personalize_parser(parser.add_subparsers(dest="command"))
    peft_folder = tmp_path / "peft"
    peft_folder.mkdir()
    (peft_folder / "adapter_config.json").write_text("{}")
    argv = ["personalize", *map(str, clip_files), "--token", "sks", "--backbone", "tiny", "--steps", "1"]
    with pytest.raises(ValueError, match="not a steer concept's folder but holds adapter_config.json"):
        run_personalize(parser.parse_args([*argv, "-o", str(peft_folder), "--overwrite"]))
    checkpoints = tmp_path / "checkpoints" / "checkpoint-000001"
    checkpoints.mkdir(parents=True)
    for name in ("trainable.safetensors", "state.safetensors", "trainer_state.json"):
        (checkpoints / name).write_text("")
    with pytest.raises(ValueError, match="already holds checkpoints of a run.*resume=True"):
        run_personalize(parser.parse_args([*argv, "-o", str(tmp_path / "c"), "--checkpoint-dir", str(checkpoints.parent)]))
    assert (peft_folder / "adapter_config.json").read_text() == "{}" and not (tmp_path / "c").exists()


def test_resuming_a_finished_run_keeps_its_final_loss(mel_backbone, clips, tmp_path):
    kwargs = {"steps": 4, "batch_size": 1, "crop_seconds": 0.64, "checkpoint_dir": tmp_path / "ck", "checkpoint_every": 2}
    finished = _train(mel_backbone, clips, "lora", **kwargs)
    resumed = _train(mel_backbone, clips, "lora", resume=True, **kwargs)  # nothing left to train
    assert _equal(finished, resumed)
    assert resumed.config.training["final_loss"] == finished.config.training["final_loss"] is not None
    assert "final training loss" in resumed.model_card().text


@pytest.mark.parametrize("alpha", [0.0, -4.0, float("nan"), float("inf")])
def test_a_useless_lora_alpha_is_refused_before_training(alpha, mel_backbone, clips):
    steps = []
    with pytest.raises(ValueError, match=f"^alpha must be a positive finite number, got {alpha}$"):
        _train(mel_backbone, clips, "lora", steps=1, alpha=alpha, callback=steps.append)
    assert steps == []


def test_a_batch_of_clips_is_refused_in_the_shape_given(mel_backbone):
    batch = Audio(torch.randn(2, 1, 16000) * 0.1, 16000)
    with pytest.raises(ValueError, match=r"^reference clip 0 is a batch of 2 clips \(shape \(2, 1, 16000\)\): pass each clip"):
        _train(mel_backbone, [batch], "lora", steps=1)


def _personalize_args(references, tmp_path, *extra):
    parser = argparse.ArgumentParser(prog="steer")
    add_personalize_parser(parser.add_subparsers(dest="command"))
    argv = ["personalize", *map(str, references), "--token", "sks", "-o", str(tmp_path / "concept"),
            "--backbone", "tiny", "--steps", "1", "--batch-size", "1", *extra]
    return parser.parse_args(argv)


def test_personalize_checks_everything_it_can_before_a_model_loads(clip_files, tmp_path, no_model_loads):
    unreadable = tmp_path / "notes.wav"
    unreadable.write_text("not audio")
    silent = save_audio(tmp_path / "silent.wav", torch.zeros(1, 16000), 16000)
    short = save_audio(tmp_path / "short.wav", tone(440.0, seconds=0.2).waveform, 16000)
    folder = tmp_path / "refs"
    folder.mkdir()
    for references, extra, message in [
        ([clip_files[0], unreadable], (), "cannot read audio from .*notes.wav"),
        ([clip_files[0], silent], (), "silent.wav is silent"),
        ([short], (), "short.wav is too short: 0.20 s"),
        ([folder], (), r"refs is a folder: pass the audio files in it as references \(e.g. .*refs/\*.wav\)"),
        (clip_files, ("--token", "s ks"), "token must be one word without spaces, got 's ks'"),
        (clip_files, ("--token", ""), "token must be one word without spaces, got ''"),
        (clip_files, ("--class-word", " "), r"the class word is empty: .* or give none \(class_word=None; leave out steer personalize --class-word\)$"),
        # was accepted: 'a recording of a violin violin', and the prior term's prompt lost the class word
        (clip_files, ("--token", "violin", "--class-word", "violin"), r"^the concept token 'violin' is a word of the class word 'violin': the prompts would read 'a recording of a violin violin' .* use a new word as the token \(e.g. 'sks'\)$"),
        (clip_files, ("--token", "Guitar", "--class-word", "electric guitar", "--method", "textual_inversion"), "the concept token 'Guitar' is a word of the class word 'electric guitar'"),
        # was accepted: every training prompt read 'a recording of a recording guitar'
        (clip_files, ("--token", "Recording"), r"^the concept token 'Recording' is a word of the training prompt template 'a recording of a \{token\} \{class_word\}'"),
        (clip_files, ("--push-to-hub", "me/my/guitar"), "--push-to-hub 'me/my/guitar' is not a Hub repo id: Repo id must be"),
        (clip_files, ("--push-to-hub", "me/my guitar"), "--push-to-hub 'me/my guitar' is not a Hub repo id"),
    ]:
        with pytest.raises(ValueError, match=message):
            run_personalize(_personalize_args(references, tmp_path, *extra))
    assert not (tmp_path / "concept").exists()


def test_personalize_refuses_push_to_hub_offline_before_training(clip_files, tmp_path, monkeypatch):
    """HF_HUB_OFFLINE is known before the model loads: the push failed only after training."""
    from huggingface_hub import constants

    import backbones

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(backbones, "load_backbone", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(ValueError, match=r"^--push-to-hub cannot push while HF_HUB_OFFLINE is set: unset it, or drop"):
        run_personalize(_personalize_args(clip_files, tmp_path, "--push-to-hub", "me/my-guitar"))
    assert not (tmp_path / "concept").exists()


def test_personalize_private_to_a_public_repo_is_refused_saying_where_the_concept_is(clip_files, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from huggingface_hub import HfApi, RepoUrl, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as online, whatever the environment says
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(HfApi, "repo_info", lambda self, repo_id, **kwargs: SimpleNamespace(private=False))
    saved = tmp_path / "concept"
    message = (
        "the Hub repo me/my-guitar exists and is public, and --private does not make an existing repo private: make "
        f"it private in its settings on the Hub, or push to a new repo; nothing was uploaded; the concept IS saved at {saved}"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        run_personalize(_personalize_args(clip_files, tmp_path, "--push-to-hub", "me/my-guitar", "--private"))
    assert Concept.from_pretrained(saved).token == "sks"


def test_a_failed_push_says_where_the_concept_is_saved(clip_files, tmp_path, monkeypatch):
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    from steer.concepts.concept import PushError

    def offline(self, *args, **kwargs):
        raise OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the push itself fails: the Hub client's error
    monkeypatch.setattr(HfApi, "create_repo", offline)
    args = _personalize_args(clip_files, tmp_path, "--push-to-hub", "me/my-guitar", "--private")
    saved = tmp_path / "concept"
    retry = f"""Concept.from_pretrained({str(saved)!r}).push_to_hub('me/my-guitar', private=True)"""
    with pytest.raises(PushError, match=rf"me/my-guitar failed \(OfflineModeIsEnabled: .*\); the concept IS saved at {re.escape(str(saved))}: .*{re.escape(retry)}"):
        run_personalize(args)
    assert Concept.from_pretrained(saved).token == "sks"
    # the command runs as printed in a shell, whatever the path (a ' in it was a bash syntax error)
    folder = tmp_path / "it's $HOME"
    folder.mkdir()
    with pytest.raises(PushError) as failed:
        run_personalize(_personalize_args(clip_files, folder, "--push-to-hub", "me/my-guitar"))
    command = str(failed.value).split("push it with ")[1]
    assert command.startswith('python -c "')
    said = subprocess.run(["bash", "-c", "printf %s" + command.removeprefix("python -c")], capture_output=True, text=True)
    assert said.stdout == (
        f"from steer.concepts import Concept; Concept.from_pretrained({str(folder / 'concept')!r}).push_to_hub('me/my-guitar')"
    )


# -- training that diverges ------------------------------------------------------------------------
def test_training_that_diverges_stops_at_the_step_and_names_the_learning_rate(mel_backbone, clips, tmp_path):
    kwargs = {"steps": 3, "batch_size": 1, "crop_seconds": 0.64, "checkpoint_dir": tmp_path, "checkpoint_every": 1}
    message = (  # a rerun with a lower lr in the same folder is refused: it holds this run's checkpoints
        "training diverged at step 2: the loss is nan; train again with a learning rate below lr=1e+30 (steer "
        f"personalize --lr) and another checkpoint_dir ({tmp_path} holds this run's checkpoints)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):  # was a concept of NaN weights
        _train(mel_backbone, clips, "lora", lr=1e30, **kwargs)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-000001"]  # no checkpoint of the diverged step
    assert not hasattr(mel_backbone.denoiser, "peft_config")  # the adapter is taken out again


@pytest.mark.parametrize("method", ["lora", "textual_inversion"])
def test_the_largest_learning_rate_diverges_instead_of_crashing(method, mel_backbone, clips):
    """An lr AdamW's first step turned into lr / (1 - beta1) past float32's largest crashed in torch."""
    with pytest.raises(ValueError, match=rf"^training diverged at step \d: .* below lr={re.escape(f'{MAX_LR:g}')} "):
        _train(mel_backbone, clips, method, lr=MAX_LR, steps=3, batch_size=1, crop_seconds=0.64)


@pytest.mark.parametrize("method", ["lora", "textual_inversion", "dreambooth"])
def test_a_last_update_that_blows_up_finitely_is_refused(method, mel_backbone, clips):
    """Weights of 1e30 are finite; the concept was saved, and its edits diverged, blaming --lr of the edit."""
    message = "training diverged at step 1: the loss of the learnt weights is nan; train again with a learning rate below lr=1e+30 (steer personalize --lr)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _train(mel_backbone, clips, method, lr=1e30, steps=1, batch_size=1, crop_seconds=0.64)
    assert not hasattr(mel_backbone.denoiser, "peft_config")


def test_the_last_checkpoint_holds_checked_weights_and_a_resume_there_checks_them(mel_backbone, clips, tmp_path, monkeypatch):
    """The last step's checkpoint was written before the check: --resume then took training as
    done and saved a concept of 1e30 weights, whose edits were all NaN."""
    from steer.concepts import train

    kwargs = {"steps": 1, "batch_size": 1, "crop_seconds": 0.64, "checkpoint_dir": tmp_path, "checkpoint_every": 1}
    with pytest.raises(ValueError, match="^training diverged at step 1: the loss of the learnt weights is nan;"):
        _train(mel_backbone, clips, "lora", lr=1e30, **kwargs)
    assert list(tmp_path.iterdir()) == []
    _train(mel_backbone, clips, "lora", **kwargs)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-000001"]
    monkeypatch.setattr(train._Batches, "loss", lambda *args: torch.tensor(float("nan")))
    with pytest.raises(ValueError, match="^training diverged at step 1: the loss of the learnt weights is nan;"):
        _train(mel_backbone, clips, "lora", resume=True, **kwargs)


def test_weights_that_stop_being_finite_are_refused(mel_backbone, clips, monkeypatch):
    def nan_gradients(params, max_norm):  # a finite loss whose update is not: the last step's weights
        for p in params:
            p.grad.fill_(float("nan"))

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", nan_gradients)
    with pytest.raises(ValueError, match=r"^training diverged at step 1: the weight lora\.\S+ is not finite; .* below lr=0.001 "):
        _train(mel_backbone, clips, "lora", steps=1, batch_size=1, crop_seconds=0.64)


def test_personalize_saves_and_pushes_nothing_when_training_diverges(clip_files, mel_folder, tmp_path, monkeypatch):
    created = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: created.append(repo_id))
    args = _personalize_args(
        clip_files, tmp_path, "--backbone", str(mel_folder), "--lr", "1e4", "--steps", "5", "--crop-seconds", "0.64",
        "--push-to-hub", "me/my-guitar",
    )
    with pytest.raises(ValueError, match=r"^training diverged at step \d: the loss is nan; .* below lr=10000 \(steer personalize --lr\)$"):
        run_personalize(args)  # was "wrote ... (lora)", exit 0, and a concept that could not be loaded
    assert not (tmp_path / "concept").exists() and created == []


# -- checks before a model loads -------------------------------------------------------------------
def test_folders_that_cannot_be_made_are_refused_before_a_model_loads(
    clip_files, mel_backbone, clips, tmp_path, monkeypatch, no_model_loads
):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for extra, message in [  # were NotADirectoryError after training, FileExistsError at the first checkpoint
        (("-o", str(notes / "concept")), f"the concept folder {notes / 'concept'} cannot be a folder: {notes} is a file"),
        (("-o", str(notes)), f"the concept folder {notes} exists and is not a folder"),
        (("--checkpoint-dir", str(notes)), f"checkpoint_dir {notes} exists and is not a folder"),
        (("--checkpoint-dir", str(notes / "ck")), f"checkpoint_dir {notes / 'ck'} cannot be a folder: {notes} is a file"),
    ]:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}; choose another path$"):
            run_personalize(_personalize_args(clip_files, tmp_path, *extra))
    steps = []
    with pytest.raises(ValueError, match=f"^checkpoint_dir {re.escape(str(notes))} exists and is not a folder"):
        _train(mel_backbone, clips, "lora", steps=1, checkpoint_dir=notes, callback=steps.append)
    assert steps == [] and notes.read_text() == "mine"
    if sys.platform == "linux":  # os.access says yes to root there; it passed, and the save failed after training
        for extra, folder in [(("-o", "/proc/concept"), "the concept folder /proc/concept"),
                              (("--checkpoint-dir", "/proc/ck"), "checkpoint_dir /proc/ck")]:
            message = f"{folder} cannot be written: nothing can be created in /proc (No such file or directory); choose another path"
            with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
                run_personalize(_personalize_args(clip_files, tmp_path, *extra))
    monkeypatch.setattr(concept_module.os, "access", lambda path, mode: Path(path) != tmp_path)  # tests run as root
    message = f"the concept folder {tmp_path / 'concept'} cannot be written: {tmp_path} is not writable; choose another path"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        run_personalize(_personalize_args(clip_files, tmp_path))


def test_personalize_refuses_a_token_the_mel_vocabulary_cannot_hold_before_it_loads(clip_files, mel_folder, tmp_path, no_model_loads):
    message = f"--token 'SKS' is not one lower-case word, which the mel-diffusion model {mel_folder} needs (e.g. 'sks' or '[s]')"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):  # was refused once the model had loaded
        run_personalize(_personalize_args(clip_files, tmp_path, "--backbone", str(mel_folder), "--token", "SKS"))
    with pytest.raises(AssertionError, match="a model was loaded"):  # AudioLDM2's tokenizers take it: the model loads
        run_personalize(_personalize_args(clip_files, tmp_path, "--token", "SKS"))


def test_personalize_refuses_private_without_a_push(clip_files, tmp_path, no_model_loads):
    with pytest.raises(ValueError, match=r"^--private applies with --push-to-hub: add --push-to-hub REPO_ID or drop --private$"):
        run_personalize(_personalize_args(clip_files, tmp_path, "--private"))


def test_overwrite_says_what_it_does_in_a_folder_of_other_files(clip_files, mel_folder, tmp_path):
    out = tmp_path / "concept"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ("--backbone", str(mel_folder), "--crop-seconds", "0.64")
    message = f"{out} is a folder holding other files; pass --overwrite to save the concept beside them (they are kept)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}, or choose an empty or new folder$"):  # was "exists; pass --overwrite to replace it"
        run_personalize(_personalize_args(clip_files, tmp_path, *args))
    run_personalize(_personalize_args(clip_files, tmp_path, *args, "--overwrite"))
    assert (out / "notes.txt").read_text() == "mine" and Concept.from_pretrained(out).token == "sks"
    parser = argparse.ArgumentParser(prog="steer")
    add_personalize_parser(parser.add_subparsers(dest="command"))
    assert "other files are kept" in parser._subparsers._group_actions[0].choices["personalize"].format_help()


@pytest.mark.parametrize(
    "name, value, message",
    [  # were PyTorch's TypeErrors from deep inside, or a list of the string's characters
        ("rank", 2.5, "rank must be a whole number, got 2.5"),
        ("steps", 1.5, "steps must be a whole number, got 1.5"),
        ("batch_size", 1.5, "batch_size must be a whole number, got 1.5"),
        ("lr", "0.1", "lr must be a positive number <= 3.403e+37 (AdamW's first step, lr / (1 - beta1), must fit a float32), got '0.1'"),
        ("templates", "a {token} x", "templates must be a list of prompt templates, got the string 'a {token} x': pass ['a {token} x']"),
    ],
)
def test_settings_of_the_wrong_type_are_refused_by_name(name, value, message, mel_backbone, clips):
    steps = []
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _train(mel_backbone, clips, "lora", **{"steps": 1, name: value}, callback=steps.append)
    assert steps == []


def test_a_stereo_clip_whose_channels_cancel_is_silent(mel_backbone):
    wave = tone(220.0).waveform
    cancelling = Audio(torch.cat([wave, -wave]), 16000)  # each channel loud, the mono mix training reads silent
    with pytest.raises(ValueError, match=r"^reference clip 0 is silent once its channels are mixed to mono \(peak 0\.0e\+00\)"):
        _train(mel_backbone, [cancelling], "lora", steps=1)


def test_resuming_on_another_base_model_fails(mel_backbone, tiny_backbone, clips, tmp_path):
    kwargs = {"batch_size": 1, "crop_seconds": 0.64, "checkpoint_dir": tmp_path}
    _train(mel_backbone, clips, "lora", steps=2, checkpoint_every=2, **kwargs)
    latest = re.escape(str(tmp_path / "checkpoint-000002"))
    for other, why in [
        (tiny_mel_backbone(seed=1), r"the backbone's denoiser has different weights \(first: .*\)"),  # was resumed silently
        (tiny_mel_backbone(widths=(16, 32, 32)), "the backbone's denoiser has a different architecture"),
        (tiny_backbone, "its family is mel-diffusion, this backbone's audioldm2"),
    ]:
        with pytest.raises(ValueError, match=rf"^cannot resume from {latest}: it was trained on another base model \({why}\); resume on the base model"):
            _train(other, clips, "lora", steps=4, resume=True, **kwargs)
    resumed = _train(mel_backbone, clips, "lora", steps=4, resume=True, **kwargs)  # its own base resumes
    assert resumed.config.training["steps"] == 4


def test_every_bit_of_the_seed_counts_for_a_fresh_lora(mel_backbone, clips):
    """The LoRA's A was drawn after torch.manual_seed(seed), which on the CPU reads 32 bits:
    seeds 5 and 2**32 + 5 started from the same weights."""
    a, b, again = (_train(mel_backbone, clips, "lora", steps=0, seed=seed) for seed in (5, 2**32 + 5, 5))
    keys = [key for key in a.weights if "lora_A" in key]
    assert keys and all(torch.equal(a.weights[key], again.weights[key]) for key in keys)
    assert not any(torch.equal(a.weights[key], b.weights[key]) for key in keys)


def test_training_refuses_a_token_that_is_a_word_of_the_class_word(clip_files, mel_backbone):
    for method in ("lora", "textual_inversion"):
        with pytest.raises(ValueError, match="^the concept token 'Violin' is a word of the class word 'violin'"):
            Concept.train(mel_backbone, clip_files, token="Violin", class_word="violin", method=method, steps=1)


def test_training_refuses_a_token_that_is_a_word_of_a_prompt_template(clip_files, mel_backbone):
    """The default template's words and a custom template's; the fields' names are no words."""
    for token, templates in [("of", ("a recording of a {token} {class_word}",)), ("clip", ("{token} {class_word} clip",))]:
        with pytest.raises(ValueError, match=f"^the concept token '{token}' is a word of the training prompt template"):
            Concept.train(mel_backbone, clip_files, token=token, class_word="violin", templates=templates, steps=1)
    concept = Concept.train(mel_backbone, clip_files, token="token", class_word="violin", templates=("a {token} {class_word}",), steps=0)
    assert concept.token == "token"


def test_references_below_the_backbones_rate_or_beyond_full_scale_are_warned_about():
    """Both trained without a word: an 8-kHz phone recording teaches the concept a dull band, and
    samples at 100 × full scale lie far outside what the VAE was trained on."""
    good, low, loud = tone(220.0), tone(220.0, sample_rate=8000), tone(220.0)
    loud = Audio(loud.waveform * 200, loud.sample_rate)  # peak 100
    with pytest.warns(UserWarning) as caught:
        clips = load_references([good, low, loud], sample_rate=16000, keeps_level=True)
    assert [str(w.message) for w in caught] == [
        "reference clip 1 is at 8000 Hz, below the backbone's 16000 Hz: upsampled, it holds nothing above 4000 Hz, "
        "and the concept learns that as part of the sound; record it at 16000 Hz or more",
        "reference clip 2 peaks at 100, beyond full scale (±1), which the backbone's VAE was trained within "
        "(it keeps a clip's level): normalise it (e.g. divide by its peak)",
    ]
    with pytest.warns(UserWarning) as caught:  # the mel backbones scale every clip to one peak
        load_references([good, low, loud], sample_rate=16000)
    assert len(caught) == 1 and "8000 Hz" in str(caught[0].message)
    assert [clip.waveform.shape for clip in clips] == [(20480,)] * 3
    torch.testing.assert_close(clips[2].waveform, 200 * clips[0].waveform)


def test_keep_checkpoints_bounds_the_checkpoints_personalize_leaves(clip_files, tmp_path):
    """The option was the library's alone (2): the command could not keep more or fewer."""
    parser = argparse.ArgumentParser(prog="steer")
    add_personalize_parser(parser.add_subparsers(dest="command"))
    checkpoints = tmp_path / "ck"
    run_personalize(parser.parse_args([
        "personalize", *map(str, clip_files), "--token", "sks", "--class-word", "guitar", "--steps", "3",
        "--batch-size", "1", "-o", str(tmp_path / "c"), "--backbone", "tiny", "--checkpoint-dir", str(checkpoints),
        "--checkpoint-every", "1", "--keep-checkpoints", "1",
    ]))
    assert [path.name for path in checkpoints.iterdir()] == ["checkpoint-000003"]
    with pytest.raises(ValueError, match="^--keep-checkpoints must be at least 0, got -1$"):
        run_personalize(parser.parse_args([
            "personalize", *map(str, clip_files), "--token", "sks", "-o", str(tmp_path / "d"), "--backbone", "tiny",
            "--keep-checkpoints", "-1",
        ]))


def test_one_short_reference_shortening_every_crop_is_named(mel_backbone, tmp_path):
    """A 0.5-s clip among 3-s ones made every training crop 0.5 s (against the mel family's
    2.56 s) without a word; clips all of one length below the crop say nothing."""
    short = save_audio(tmp_path / "short.wav", tone(220.0, seconds=0.5, seed=0).waveform, 16000)
    long = save_audio(tmp_path / "long.wav", tone(330.0, seconds=3.0, seed=1).waveform, 16000)
    message = r"every clip trains in crops of 0\.50 s, the length of the shortest reference .*short\.wav, not crop_seconds=2\.56"
    with pytest.warns(UserWarning, match=message):
        concept = _train(mel_backbone, [short, long], "lora", steps=0)
    assert concept.config.training["crop_seconds"] == pytest.approx(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(mel_backbone, [tone(220.0, seconds=1.0, seed=0), tone(330.0, seconds=1.0, seed=1)], "lora", steps=0)
