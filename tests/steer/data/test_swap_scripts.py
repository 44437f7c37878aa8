"""The swap benchmark's scripts (benchmarks/swap/) refuse, before any work, what would replace a
user's files or crash late, and record every setting of a training run."""

from __future__ import annotations

import json
import shlex
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from backbones.mel_diffusion import MelDiffusionModel, default_unet_config
from benchmarks.swap import evaluate, evaluate_concept, train_backbone, train_classifier
from steer.data import ManifestEntry, instrument_prompt, write_manifest
from steer.data._files import atomic_write_wav
from steer.metrics.instrument import InstrumentClassifier

WEIGHTS = Path(__file__).parents[3] / "weights"


@pytest.fixture
def torch_threads():
    """The scripts set torch's thread count (--threads) for the whole process: put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def write_tones(
    folder: Path,
    *,
    splits: dict[str, str],
    instruments=("piano", "violin"),
    seconds: float = 1.28,
    sample_rate: int = 16000,
) -> Path:
    """A manifest of synthetic clips: each melody (id -> split) four rising notes, played by
    "piano" as sines and by the other instruments with their own mix of harmonics; the same
    continuous signal at any ``sample_rate``."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    entries = []
    for k, (melody, split) in enumerate(splits.items()):
        pitches = np.array([60, 64, 67, 72]) + 2 * k
        hz = 440 * 2 ** ((pitches[(4 * t / seconds).astype(int)] - 69) / 12)
        for j, instrument in enumerate(instruments):
            audio = sum(np.sin(2 * np.pi * h * hz * t) / h ** (3 - j) for h in (1, 2, 3))
            path = f"audio/{melody}/{instrument}.wav"
            atomic_write_wav(folder / path, (0.5 * audio / np.abs(audio).max()).astype(np.float32), sample_rate)
            entries.append(ManifestEntry(path, melody, instrument, instrument_prompt(instrument), split, "c"))
    return write_manifest(folder / "manifest.jsonl", entries)


class Loaded(Exception):
    """Raised in place of loading a model: the checks before it passed."""


@pytest.fixture
def no_loads(monkeypatch):
    """The evaluate scripts' model loads raise :class:`Loaded`."""

    def load(*args, **kwargs):
        raise Loaded

    for script in (evaluate, evaluate_concept):
        monkeypatch.setattr(script, "load_backbone", load)


@pytest.fixture
def short_clips(tmp_path) -> Path:
    """A manifest of two 1.28-s training clips (128 mel frames)."""
    t = np.arange(20480) / 16000
    entries = []
    for instrument, hz in [("piano", 262.0), ("violin", 392.0)]:
        audio = f"audio/{instrument}.wav"
        atomic_write_wav(tmp_path / audio, np.sin(2 * np.pi * hz * t).astype(np.float32), 16000)
        prompt = f"a recording of a {instrument}"
        entries.append(ManifestEntry(audio, "m", instrument, prompt, "train", "c"))
    return write_manifest(tmp_path / "manifest.jsonl", entries)


@pytest.mark.parametrize(
    "script, out, existing",
    [
        (train_backbone, "model", "model/training.json"),
        (train_classifier, "model", "model/model.safetensors"),
        (evaluate, "swap-benchmark.json", "swap-benchmark.json"),
        (evaluate_concept, "swap-concept.json", "swap-concept.json"),
    ],
)
def test_an_existing_out_is_refused_before_any_work(script, out, existing, tmp_path, capsys):
    existing = tmp_path / existing
    existing.parent.mkdir(exist_ok=True)
    existing.write_text("the user's\n")
    missing = str(tmp_path / "missing")  # any work would fail on these
    argv = ["--data", missing, "--out", str(tmp_path / out)]
    if script in (evaluate, evaluate_concept):
        argv += ["--backbone", missing, "--classifier", missing]
    with pytest.raises(SystemExit) as exit:
        script.main(argv)
    assert exit.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert existing.read_text() == "the user's\n"


def test_clips_shorter_than_the_crop_are_refused_with_the_fix(short_clips, tmp_path, torch_threads):
    argv = ["--data", str(short_clips), "--out", str(tmp_path / "model"), "--threads", "1"]
    fix = r"128 mel frames \(1.28 s\) long, shorter than --crop-frames 256: pass --crop-frames 128"
    with pytest.raises(SystemExit, match=fix):
        train_backbone.main(argv)
    assert not (tmp_path / "model").exists()


def test_training_records_every_setting(short_clips, tmp_path, torch_threads):
    out = tmp_path / "model"
    out.mkdir()
    (out / "training.json").write_text("{}\n")  # replaced: --overwrite
    argv = ["--data", str(short_clips), "--out", str(out), "--steps", "1", "--batch", "1"]
    argv += ["--threads", "1", "--crop-frames", "64", "--warmup", "1", "--ema", "0.5"]
    argv += ["--p-uncond", "0.25", "--overwrite"]
    with torch.random.fork_rng():  # the script seeds torch's global generator
        train_backbone.main(argv)
    record = json.loads((out / "training.json").read_text())
    assert record | {"final_loss": None, "seconds": None} == {
        "data": [str(short_clips)],
        "out": str(out),
        "steps": 1,
        "batch": 1,
        "lr": 1e-3,
        "warmup": 1,
        "ema": 0.5,
        "p_uncond": 0.25,
        "crop_frames": 64,
        "seed": 0,
        "threads": 1,
        "overwrite": True,
        "clips": 2,
        "final_loss": None,
        "seconds": None,
        "device": "cpu",
    }
    assert (out / "model.safetensors").is_file()


# --- the rate clips were rendered at --------------------------------------------------------------


def test_evaluate_scores_data_of_any_rate_as_the_backbone_reads_it(tmp_path, torch_threads):
    """22.05 kHz data scores as 16 kHz data of the same melody (it was read as 16 kHz before)."""
    summaries = {}
    for rate in (16000, 22050):
        manifest = write_tones(tmp_path / str(rate), splits={"m": "test"}, seconds=2.56, sample_rate=rate)
        out = tmp_path / f"{rate}.json"
        evaluate.main([
            "--data", str(manifest), "--backbone", str(WEIGHTS / "mel-diffusion-swap"),
            "--classifier", str(WEIGHTS / "instrument-classifier"), "--methods", "identity", "ground-truth",
            "--n", "2", "--threads", "1", "--out", str(out),
        ])
        summaries[rate] = json.loads(out.read_text())["summary"]
    for method in ("identity", "ground-truth"):
        native, resampled = summaries[16000][method], summaries[22050][method]
        assert resampled["pcc"] == pytest.approx(native["pcc"], abs=0.02), method
        assert resampled["distance"] == pytest.approx(native["distance"], abs=0.05), method
        assert resampled["target_accuracy"] == native["target_accuracy"], method


def test_training_clips_of_any_rate_are_read_at_16_khz(tmp_path):
    manifest = write_tones(tmp_path, splits={"m": "train"}, sample_rate=22050)
    waveforms, instruments = train_classifier.load_clips(manifest, "train")
    assert waveforms.shape == (2, round(1.28 * 16000)) and instruments == ["piano", "violin"]


# --- checks before any model loads or training starts ---------------------------------------------


@pytest.mark.parametrize("n", ["0", "-1"])
def test_evaluate_refuses_n_below_one(n, tmp_path, no_loads, capsys):
    manifest = write_tones(tmp_path, splits={"m": "test"})
    with pytest.raises(SystemExit) as exit:
        evaluate.main(["--data", str(manifest), "--n", n, "--out", str(tmp_path / "out.json")])
    assert exit.value.code == 2 and f"--n must be at least 1, got {n}" in capsys.readouterr().err


def test_evaluate_refuses_a_split_without_pairs(tmp_path, no_loads):
    manifest = write_tones(tmp_path, splits={"m": "train"})
    with pytest.raises(SystemExit, match="no test-split melody rendered with two instruments"):
        evaluate.main(["--data", str(manifest), "--out", str(tmp_path / "out.json")])


def test_evaluate_says_when_fewer_pairs_than_asked(tmp_path, no_loads, capsys, torch_threads):
    manifest = write_tones(tmp_path, splits={"m": "test"})
    with pytest.raises(Loaded):
        evaluate.main(["--data", str(manifest), "--n", "5", "--seconds", "1.28", "--out", str(tmp_path / "out.json")])
    assert "has 2 test-split pairs, fewer than --n 5: evaluating 2" in capsys.readouterr().out


@pytest.mark.parametrize("script", [evaluate, evaluate_concept])
def test_a_missing_classifier_is_named(script, tmp_path, no_loads, monkeypatch):
    manifest = write_tones(tmp_path, splits={"m": "test"})
    missing = tmp_path / "no-classifier"
    with pytest.raises(SystemExit, match=f"--classifier {missing} not found"):
        script.main(["--data", str(manifest), "--classifier", str(missing), "--out", str(tmp_path / "out.json")])
    # the README's relative form, shaped like a Hub repo id: a typo in a local folder is not asked of the Hub
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    with pytest.raises(SystemExit, match="--classifier weights/instrument-classifier-retrainde not found"):
        script.main(["--data", str(manifest), "--classifier", "weights/instrument-classifier-retrainde",
                     "--out", str(tmp_path / "out.json")])


@pytest.mark.parametrize("script", [evaluate, evaluate_concept])
def test_missing_data_is_named_with_the_command_that_renders_it(script, tmp_path, no_loads):
    with pytest.raises(SystemExit, match="not found: render the data first, e.g. python -m steer.data"):
        script.main(["--data", str(tmp_path / "manifest.jsonl"), "--out", str(tmp_path / "out.json")])


@pytest.mark.parametrize("script", [evaluate, train_backbone, train_classifier])
def test_the_usage_examples_continue_their_lines_in_help(script):
    """A non-raw docstring ate the backslash and newline of the example's continued line:
    --help showed one run-on line."""
    assert " \\\n        --" in script.__doc__


def test_the_evaluate_example_uses_the_readme_tables_settings():
    """The docstring's command runs the settings of the README's table, not the paper's
    defaults, which overshoot the small backbone."""
    command = evaluate.__doc__.split("python benchmarks/swap/evaluate.py", 1)[1].split("\n\n", 1)[0]
    args = evaluate.build_parser().parse_args(command.replace("\\\n", " ").split())
    assert (args.n, args.steps, args.guidance, args.lr) == (8, 200, 7.5, 0.005)


@pytest.fixture
def concept_data(tmp_path) -> Path:
    """Two training and two test melodies, on piano and violin."""
    return write_tones(tmp_path, splits={"a": "train", "b": "train", "c": "test", "d": "test"})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--instrument", "trumpet"], r"no training clips of 'trumpet': choose --instrument from those in both splits \(piano, violin\)"),
        (["--instrument", "violin", "--references", "3"], "has 2 training clips of 'violin', fewer than --references 3: pass --references 2"),
        (["--instrument", "violin", "--references", "2", "--n", "3"], "has 2 test clips of other instruments .* fewer than --n 3: pass --n 2"),
    ],
)
def test_evaluate_concept_checks_the_clips_before_training(argv, message, concept_data, tmp_path, no_loads):
    with pytest.raises(SystemExit, match=message):
        evaluate_concept.main(["--data", str(concept_data), "--out", str(tmp_path / "out.json"), *argv])


@pytest.mark.parametrize("instrument, word", [("trumpet", "trumpet"), ("acoustic guitar", "guitar")])
def test_the_class_word_follows_the_instrument(instrument, word, tmp_path, monkeypatch):
    instruments = ("piano", instrument)
    data = write_tones(tmp_path, splits={"a": "train", "c": "test"}, instruments=instruments)
    monkeypatch.setattr(evaluate_concept, "load_backbone", lambda name: None)
    classifier = InstrumentClassifier(classes=instruments)
    monkeypatch.setattr(evaluate_concept.InstrumentClassifier, "from_pretrained", lambda name: classifier)

    def train(backbone, references, **kwargs):
        raise Loaded(kwargs["class_word"])

    monkeypatch.setattr(evaluate_concept.Concept, "train", train)
    argv = ["--data", str(data), "--instrument", instrument, "--references", "1", "--n", "1", "--seconds", "1.28"]
    with pytest.raises(Loaded, match=f"^{word}$"):
        evaluate_concept.main([*argv, "--out", str(tmp_path / "out.json")])


def test_the_shipped_concept_results_used_the_default_class_word():
    results = sorted((Path(evaluate.__file__).parent / "results").glob("*.json"))
    assert results
    for path in results:
        settings = json.loads(path.read_text())["settings"]
        assert settings["class_word"] == settings["instrument"].split()[-1], path.name


def test_clips_of_different_lengths_are_refused_with_the_fix(short_clips, tmp_path, torch_threads):
    longer = write_tones(tmp_path / "longer", splits={"m": "train"}, seconds=2.56)
    argv = ["--data", str(short_clips), str(longer), "--out", str(tmp_path / "model"), "--threads", "1"]
    with pytest.raises(SystemExit, match=r"differ in length \(.*: 1.28 s, .*: 2.56 s\): train on data rendered with one --seconds"):
        train_backbone.main(argv)
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("script", [train_backbone, train_classifier])
@pytest.mark.parametrize("option, value", [("--steps", "0"), ("--warmup", "-1")])
def test_training_settings_are_checked(script, option, value, short_clips, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        script.main(["--data", str(short_clips), "--out", str(tmp_path / "model"), option, value])
    assert exit.value.code == 2 and "--steps must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("script", [train_backbone, train_classifier])
def test_an_out_that_is_a_file_is_refused_before_any_work(script, tmp_path, capsys):
    out = tmp_path / "model"
    out.write_text("the user's\n")
    with pytest.raises(SystemExit) as exit:
        script.main(["--data", str(tmp_path / "missing"), "--out", str(out), "--overwrite"])
    error = capsys.readouterr().err
    assert exit.value.code == 2 and f"--out {out} exists and is not a folder; choose another --out" in error
    assert out.read_text() == "the user's\n"


@pytest.fixture
def classifier_data(tmp_path) -> Path:
    """One training and one test melody, on piano and violin."""
    return write_tones(tmp_path / "data", splits={"a": "train", "b": "test"})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "{short_clips}"], "has no test clips to evaluate the classifier on"),
        (["--data", "{classifier_data}", "--crop-seconds", "3"],
         r"the training clips are 1.28 s long, shorter than --crop-seconds 3.0: pass --crop-seconds 1.28 or less"),
        (["--data", "{classifier_data}", "--bach", "{bach}"], "has clips of trumpet, which .* training split lacks"),
    ],
)
def test_the_classifier_is_not_trained_for_an_evaluation_that_would_fail(
    argv, message, short_clips, classifier_data, tmp_path, torch_threads
):
    bach = write_tones(tmp_path / "bach", splits={"x": "test"}, instruments=("piano", "trumpet"))
    paths = {"short_clips": short_clips, "classifier_data": classifier_data, "bach": bach}
    argv = [a.format(**paths) for a in argv] + ["--out", str(tmp_path / "model"), "--threads", "1"]
    with pytest.raises(SystemExit, match=message):
        train_classifier.main(argv)
    assert not (tmp_path / "model").exists()


def test_warmup_zero_trains_without_warm_up(short_clips, tmp_path, torch_threads):
    argv = ["--data", str(short_clips), "--out", str(tmp_path / "model"), "--steps", "1", "--batch", "1"]
    argv += ["--threads", "1", "--crop-frames", "64", "--warmup", "0"]
    with torch.random.fork_rng():
        train_backbone.main(argv)
    assert json.loads((tmp_path / "model" / "training.json").read_text())["warmup"] == 0


# --- records that match the weights ---------------------------------------------------------------


class Interrupted(Exception):
    pass


def test_an_interrupted_backbone_run_leaves_no_stale_record(short_clips, tmp_path, torch_threads, monkeypatch):
    out = tmp_path / "model"
    out.mkdir()
    for name in "training.json", "model.safetensors":  # a previous run's, replaced: --overwrite
        (out / name).write_text('{"steps": 3000}\n')
    save = MelDiffusionModel.save_pretrained

    def save_then_stop(self, path, **kwargs):
        save(self, path, **kwargs)
        raise Interrupted

    monkeypatch.setattr(MelDiffusionModel, "save_pretrained", save_then_stop)
    argv = ["--data", str(short_clips), "--out", str(out), "--steps", "1", "--batch", "1"]
    argv += ["--threads", "1", "--crop-frames", "64", "--overwrite"]
    with torch.random.fork_rng(), pytest.raises(Interrupted):
        train_backbone.main(argv)
    assert (out / "model.safetensors").stat().st_size > 1000 and not (out / "training.json").exists()


def test_an_interrupted_classifier_run_leaves_no_stale_record(classifier_data, tmp_path, torch_threads, monkeypatch):
    out = tmp_path / "model"
    out.mkdir()
    for name in "training.json", "model.safetensors":  # a previous run's, replaced: --overwrite
        (out / name).write_text('{"steps": 1200}\n')

    def stop(*args, **kwargs):
        raise Interrupted

    monkeypatch.setattr(train_classifier, "evaluate", stop)  # the minutes after the weights are saved
    argv = ["--data", str(classifier_data), "--out", str(out), "--steps", "1", "--batch", "2"]
    argv += ["--threads", "1", "--crop-seconds", "1.28", "--overwrite"]
    with torch.random.fork_rng(), pytest.raises(Interrupted):
        train_classifier.main(argv)
    assert (out / "model.safetensors").stat().st_size > 1000 and not (out / "training.json").exists()


def test_the_classifiers_record_gives_the_command_it_was_run_with(classifier_data, tmp_path, torch_threads, monkeypatch):
    """main(argv) called from Python recorded the calling process's arguments (pytest's here)."""
    monkeypatch.setattr(train_classifier, "evaluate", lambda *args: {"accuracy": 1.0})  # minutes: not what is checked
    monkeypatch.setattr(train_classifier, "griffin_lim_round_trip", lambda waveforms, **kwargs: waveforms)
    monkeypatch.setattr(train_classifier, "print_confusion", lambda *args: None)
    out = tmp_path / "my model"
    argv = ["--data", str(classifier_data), "--out", str(out), "--steps", "1", "--batch", "2"]
    argv += ["--threads", "1", "--crop-seconds", "1.28"]
    with torch.random.fork_rng():
        train_classifier.main(argv)
    command = json.loads((out / "training.json").read_text())["command"]
    assert shlex.split(command) == ["python", "benchmarks/swap/train_classifier.py", *argv]


# --- options refused when parsed, before any data or model is read -------------------------------


def refusal(script, argv: list[str], capsys) -> str:
    """``script``'s parser error for ``argv`` (exit status 2), which must come before any work:
    ``argv`` names no data, so anything after the checks would fail otherwise."""
    with pytest.raises(SystemExit) as exit:
        script.main(argv)
    error = capsys.readouterr().err
    assert exit.value.code == 2, exit.value.code
    return error


@pytest.mark.parametrize(
    "script, options, message",
    [
        (evaluate, ["--threads", "0"], "--threads must be at least 1, got 0"),
        (evaluate_concept, ["--threads", "0"], "--threads must be at least 1, got 0"),
        (train_backbone, ["--threads", "0"], "--threads must be at least 1, got 0"),
        (train_backbone, ["--batch", "0"], "--batch must be at least 1, got 0"),
        (train_backbone, ["--batch", "-1"], "--batch must be at least 1, got -1"),
        (train_backbone, ["--crop-frames", "0"], "--crop-frames must be at least 1, got 0"),
        (train_backbone, ["--crop-frames", "-4"], "--crop-frames must be at least 1, got -4"),
        (train_backbone, ["--lr", "-1"], "--lr must be a positive number, got -1.0"),
        (train_backbone, ["--lr", "nan"], "--lr must be a positive number, got nan"),
        (train_backbone, ["--ema", "2"], "--ema is a decay, from 0 to 1; got 2.0"),
        (train_backbone, ["--ema", "nan"], "--ema is a decay, from 0 to 1; got nan"),
        (train_backbone, ["--p-uncond", "2"], "--p-uncond is a probability, from 0 to 1; got 2.0"),
        (train_backbone, ["--p-uncond", "-0.1"], "--p-uncond is a probability, from 0 to 1; got -0.1"),
        (train_classifier, ["--threads", "0"], "--threads must be at least 1, got 0"),
        (train_classifier, ["--batch", "0"], "--batch must be at least 1, got 0"),
        (train_classifier, ["--lr", "-1"], "--lr must be a positive number, got -1.0"),
        (train_classifier, ["--p-griffin-lim", "1.5"], "--p-griffin-lim is a probability, from 0 to 1; got 1.5"),
        (train_classifier, ["--crop-seconds", "inf"], "--crop-seconds positive, got 1200, 50 and inf"),
        (train_classifier, ["--train-griffin-lim-iters", "0"], "--train-griffin-lim-iters must be at least 1, got 0"),
        # steps 0 scored the unedited source as SteerMusic's edit (the identity row's figures)
        (evaluate, ["--steps", "0"], "--steps must be at least 1, got 0"),
        (evaluate, ["--baseline-steps", "-1"], "--baseline-steps must be at least 1, got -1"),
        (evaluate, ["--lr", "0"], "--lr must be a positive number, got 0.0"),
        (evaluate, ["--lr", "inf"], "--lr must be a positive number, got inf"),
        (evaluate, ["--guidance", "nan"], "--guidance must be a finite number, got nan"),
        (evaluate, ["--sdedit-strength", "1.5"], "--sdedit-strength: strength must be a number in (0, 1], got 1.5"),
        (evaluate, ["--sdedit-strength", "nan"], "--sdedit-strength: strength must be a number in (0, 1], got nan"),
        (evaluate_concept, ["--steps", "0"], "--steps must be at least 1, got 0"),
        (evaluate_concept, ["--lr", "nan"], "--lr must be a positive number, got nan"),
        (evaluate_concept, ["--guidance", "inf"], "--guidance must be a finite number, got inf"),
    ],
)
def test_bad_numbers_are_refused_when_parsed(script, options, message, tmp_path, capsys):
    argv = ["--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "out"), *options]
    assert message in refusal(script, argv, capsys)


@pytest.mark.parametrize("script", [evaluate, evaluate_concept])
@pytest.mark.parametrize("seconds", ["0", "-1", "nan", "inf", "0.3", "0.05"])
def test_seconds_must_be_a_length_cqt1_pcc_reads(script, seconds, tmp_path, capsys):
    """0.3 s ran the whole benchmark into a table of NaN melody scores; 0.05 s failed after the
    models loaded (evaluate_concept: after the concept's training)."""
    argv = ["--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "out.json"), "--seconds", seconds]
    message = f"--seconds must be at least 0.514 s, the shortest clip whose melody line CQT-1 PCC reads, got {float(seconds):g}"
    assert message in refusal(script, argv, capsys)


@pytest.mark.parametrize("script", [evaluate, evaluate_concept])
def test_an_out_that_is_a_folder_is_refused_before_any_work(script, tmp_path, capsys):
    """It was refused only when writing the results, after every edit (IsADirectoryError)."""
    argv = ["--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path), "--overwrite"]
    error = refusal(script, argv, capsys)
    assert f"--out {tmp_path} is a folder: name the JSON file to write, e.g. {tmp_path}" in error


@pytest.mark.parametrize("script", [evaluate, evaluate_concept])
def test_an_out_inside_a_file_is_refused_before_any_work(script, tmp_path, capsys):
    blocking = tmp_path / "a-file"
    blocking.write_text("the user's\n")
    argv = ["--data", str(tmp_path / "missing.jsonl"), "--out", str(blocking / "results" / "out.json")]
    assert f"{blocking} is a file, not a folder; choose another --out" in refusal(script, argv, capsys)


@pytest.mark.parametrize("script", [evaluate, evaluate_concept])
def test_an_out_in_an_unwritable_folder_is_refused_before_any_work(script, tmp_path, capsys, monkeypatch):
    """It was refused only when writing the results, after every edit."""
    locked = lock(tmp_path / "locked", monkeypatch)
    for out in locked / "out.json", locked / "results" / "out.json":
        argv = ["--data", str(tmp_path / "missing.jsonl"), "--out", str(out)]
        assert f"--out {out} cannot be written: {locked} is not writable; choose another --out" in refusal(
            script, argv, capsys
        )
    if sys.platform == "linux":  # os.access says yes to root in /proc, where nothing can be created
        argv = ["--data", str(tmp_path / "missing.jsonl"), "--out", "/proc/results/out.json"]
        message = "--out /proc/results/out.json cannot be written: nothing can be created in /proc (No such file or directory)"
        assert message in refusal(script, argv, capsys)


def test_a_cache_that_is_a_file_or_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """It failed after the training clips' Griffin–Lim round trips."""
    cache = tmp_path / "a-file"
    cache.write_text("the user's\n")
    argv = ["--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "model"), "--cache"]
    assert f"--cache {cache} exists and is not a folder; choose another --cache" in refusal(
        train_classifier, [*argv, str(cache)], capsys
    )
    assert f"--cache {cache / 'cache'} cannot be a folder: {cache} is a file; choose another --cache" in refusal(
        train_classifier, [*argv, str(cache / "cache")], capsys
    )
    assert cache.read_text() == "the user's\n"
    locked = lock(tmp_path / "locked", monkeypatch)
    assert f"--cache {locked / 'cache'} cannot be written: {locked} is not writable; choose another --cache" in refusal(
        train_classifier, [*argv, str(locked / "cache")], capsys
    )


# --- checks of the data and models named, before any model is loaded ------------------------------


@pytest.mark.parametrize("script", [evaluate, evaluate_concept])
def test_seconds_longer_than_the_clips_are_refused_with_their_length(script, concept_data, tmp_path, no_loads):
    """Not cropped to the clip silently while the results recorded the --seconds asked for."""
    argv = ["--data", str(concept_data), "--out", str(tmp_path / "out.json"), "--seconds", "2"]
    if script is evaluate_concept:
        argv += ["--instrument", "violin", "--references", "1", "--n", "1"]
    fix = r"--seconds 2.0 is longer than the clips \(1.2800 s\): pass --seconds 1.28 or less"
    with pytest.raises(SystemExit, match=fix):
        script.main(argv)


@pytest.mark.parametrize("script", [evaluate, evaluate_concept])
def test_a_backbone_in_a_missing_local_folder_is_named(script, concept_data, tmp_path, no_loads, monkeypatch):
    """``weights/typo`` was asked of the Hub (retries, then a traceback)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    out = tmp_path / "results" / "out.json"
    argv = ["--data", str(concept_data), "--backbone", "weights/typo", "--out", str(out)]
    argv += ["--classifier", str(WEIGHTS / "instrument-classifier")]
    with pytest.raises(SystemExit, match="--backbone weights/typo not found: pass a folder written by save_pretrained"):
        script.main(argv)
    assert not out.parent.exists()


def test_evaluate_refuses_targets_the_classifier_cannot_name(tmp_path, no_loads, torch_threads):
    """Their target accuracy was 0.00, whatever the edit."""
    data = write_tones(tmp_path, splits={"m": "test"}, instruments=("cello", "harp"))
    argv = ["--data", str(data), "--classifier", str(WEIGHTS / "instrument-classifier"), "--seconds", "1.28"]
    with pytest.raises(SystemExit, match=r"target instruments \['cello', 'harp'\] are not among this classifier's"):
        evaluate.main([*argv, "--out", str(tmp_path / "out.json")])


def test_evaluate_concept_refuses_an_instrument_the_classifier_cannot_name(tmp_path, no_loads, torch_threads):
    data = write_tones(tmp_path, splits={"a": "train", "c": "test"}, instruments=("piano", "cello"))
    argv = ["--data", str(data), "--classifier", str(WEIGHTS / "instrument-classifier"), "--instrument", "cello"]
    argv += ["--references", "1", "--n", "1", "--seconds", "1.28", "--out", str(tmp_path / "out.json")]
    with pytest.raises(SystemExit, match=r"--instrument: instruments \['cello'\] are not among this classifier's"):
        evaluate_concept.main(argv)


# --- the classifier's report ------------------------------------------------------------------------


@pytest.mark.parametrize("seconds, key", [(5.12, "accuracy_2.56s"), (1.28, "accuracy_0.64s")])
def test_the_halves_accuracy_is_named_by_their_length(seconds, key, capsys):
    """Always "accuracy_2.56s" and "2.56-s halves" before; the shipped 5.12-s data keeps its key."""
    classifier = InstrumentClassifier(classes=["piano", "violin"])
    waveforms = torch.randn(2, round(seconds * 16000), generator=torch.Generator().manual_seed(0))
    result = train_classifier.evaluate(classifier, waveforms, torch.tensor([0, 1]))
    assert list(result) == ["clips", "accuracy", key, "confusion"]
    train_classifier.print_confusion("test", result, classifier.classes, waveforms.shape[-1])
    assert f"(whole clips), {result[key]:.3f} ({key[9:-1]}-s halves)" in capsys.readouterr().out


def test_griffin_lim_round_trips_keep_the_clips_length():
    """The vocoder gives whole hops: a clip with a part-hop came back shorter, so its halves were
    named differently from the clean clip's, and a crop as long as the clip failed to stack."""
    mel = train_classifier.MelFrontEnd()
    waveforms = torch.randn(1, 20 * mel.hop_length + 7, generator=torch.Generator().manual_seed(0))
    out = train_classifier.griffin_lim_round_trip(waveforms, n_iter=1, cache=None, mel=mel, label="test")
    assert out.shape == waveforms.shape


# --- the data folder and --out checked by steer.data._files (proposed) -----------------------------

ALL_SCRIPTS = [evaluate, evaluate_concept, train_backbone, train_classifier]


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_a_data_folder_is_answered_with_its_manifest(script, concept_data, tmp_path):
    """It was called "not found: render the data first" though it was there."""
    folder = concept_data.parent
    with pytest.raises(SystemExit, match=f"{folder} is a folder, not a manifest: pass {concept_data}"):
        script.main(["--data", str(folder), "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_a_missing_clip_is_named_with_the_command_that_renders_it(script, concept_data, tmp_path):
    """Was ``ValueError: input file not found`` from deep in the loading (the classifier's test
    clips: after training)."""
    (concept_data.parent / "audio/d/violin.wav").unlink()
    message = f"lists 1 clips that are not there, e.g. {concept_data.parent / 'audio/d/violin.wav'}: run the command"
    with pytest.raises(SystemExit, match=message):
        script.main(["--data", str(concept_data), "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("script", [train_backbone, train_classifier])
def test_a_model_folder_inside_a_file_is_refused_before_any_work(script, tmp_path, capsys):
    """It failed when the first weights were saved, after the training."""
    blocking = tmp_path / "a-file"
    blocking.write_text("the user's\n")
    with pytest.raises(SystemExit) as exit:
        script.main(["--data", str(tmp_path / "missing"), "--out", str(blocking / "model")])
    error = capsys.readouterr().err
    assert exit.value.code == 2
    assert f"--out {blocking / 'model'} cannot be a folder: {blocking} is a file; choose another --out" in error


def lock(folder: Path, monkeypatch) -> Path:
    """Make ``folder`` and have ``os.access`` call it unwritable (as root, chmod would not stop a
    write: the check asks os.access)."""
    folder.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kwargs: Path(path) != folder and access(path, mode, **kwargs))
    return folder


class Trained(Exception):
    """Raised in place of reading the training clips: the training began."""


@pytest.mark.parametrize("script, reads", [(train_backbone, "load_log_mels"), (train_classifier, "load_clips")])
def test_an_unwritable_out_is_refused_before_the_training(script, reads, classifier_data, tmp_path, monkeypatch, capsys):
    """It was found only when the first weights were saved, after the training."""

    def train(*args, **kwargs):
        raise Trained

    monkeypatch.setattr(script, reads, train)
    locked = lock(tmp_path / "locked", monkeypatch)
    argv = ["--data", str(classifier_data), "--out", str(locked / "model"), "--overwrite"]
    message = f"--out {locked / 'model'} cannot be written: {locked} is not writable; choose another --out"
    assert message in refusal(script, argv, capsys)
    assert list(locked.iterdir()) == []


def tiny_mel_diffusion() -> MelDiffusionModel:
    unet = default_unet_config()
    unet.update(block_out_channels=[16, 16, 32], norm_num_groups=8)
    return MelDiffusionModel(words=["a", "piano"], unet=unet, text_layers=1)


@pytest.mark.parametrize(
    "script, model",
    [(train_backbone, tiny_mel_diffusion), (train_classifier, lambda: InstrumentClassifier(classes=["piano", "violin"]))],
)
@pytest.mark.parametrize("case", ["a file", "under a file", "unwritable", "holding a model"])
def test_a_training_script_refuses_what_its_save_would_after_the_training(script, model, case, tmp_path, monkeypatch, capsys):
    """Asked before any work, the save's own check, its fixes named as the script's options."""
    blocking = tmp_path / "a-file"
    blocking.write_text("the user's\n")
    held = tmp_path / "held"
    held.mkdir()
    (held / "model.safetensors").write_text("the user's\n")
    out = {
        "a file": blocking,
        "under a file": blocking / "model",
        "unwritable": lock(tmp_path / "locked", monkeypatch) / "model",
        "holding a model": held,
    }[case]
    with pytest.raises(ValueError) as saving:
        model().save_pretrained(out)
    expected = str(saving.value).replace("the model folder", "--out").replace("overwrite=True", "--overwrite")
    expected = re.sub("another (path|folder)$", "another --out", expected)
    assert refusal(script, ["--data", str(tmp_path / "missing"), "--out", str(out)], capsys).endswith(f": {expected}\n")


def test_a_backbone_folder_under_home_is_found_as_load_backbone_finds_it(tmp_path, monkeypatch):
    """``~/models/mel`` (quoted, so the shell left the ``~``) was called not found, though
    load_backbone expands it."""
    from steer.data._files import model_source_problem

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models" / "mel").mkdir(parents=True)
    assert model_source_problem("~/models/mel", "--backbone") is None
    assert "not found" in model_source_problem("~/models/typo", "--backbone")


def test_evaluate_concept_runs_the_methods_named(concept_data, tmp_path, monkeypatch, torch_threads):
    """--methods dreamsound: SteerMusic+'s baseline with the same concept, alone (the other rows
    come from earlier runs of the same seed)."""
    train = evaluate_concept.Concept.train
    monkeypatch.setattr(evaluate_concept.Concept, "train", lambda *args, **kwargs: train(*args, **{**kwargs, "steps": 1}))
    out = tmp_path / "out.json"
    evaluate_concept.main([
        "--data", str(concept_data), "--backbone", str(WEIGHTS / "mel-diffusion-swap"),
        "--classifier", str(WEIGHTS / "instrument-classifier"), "--instrument", "violin", "--references", "1",
        "--n", "1", "--seconds", "1.28", "--methods", "dreamsound", "--out", str(out),
    ])
    result = json.loads(out.read_text())
    assert list(result["summary"]) == ["unedited source", "dreamsound (concept)"]
    assert result["settings"]["methods"] == ["dreamsound"]
    assert 0 < result["summary"]["dreamsound (concept)"]["pcc"] < 1  # edited, and of the source's melody
    with pytest.raises(SystemExit):
        evaluate_concept.main(["--data", str(concept_data), "--methods", "zeta", "--out", str(tmp_path / "x.json")])


@pytest.mark.parametrize("script", [train_backbone, train_classifier])
def test_manifests_that_split_a_melody_apart_are_refused(script, tmp_path):
    """Two renders of one collection with different --n-melodies may put a melody in train in
    one and test in the other: training on both heard a test melody, without a word."""
    one = write_tones(tmp_path / "one", splits={"a": "train", "b": "test"})
    two = write_tones(tmp_path / "two", splits={"a": "test", "c": "train"})
    data = ["--data", str(one), str(two)] if script is train_backbone else ["--data", str(one), "--bach", str(two)]
    message = f"melody a (c) is train in {one} but test in {two}: a model trained on both would have heard a test melody"
    with pytest.raises(SystemExit, match=re.escape(message)):
        script.main([*data, "--out", str(tmp_path / "model")])
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_a_manifest_line_that_cannot_be_read_is_named_without_a_traceback(script, tmp_path):
    folder = tmp_path / "data"
    manifest = write_tones(folder, splits={"a": "train", "b": "test"})
    manifest.write_text(manifest.read_text().replace('"split": "test"', '"split": "val"'))
    with pytest.raises(SystemExit, match=re.escape(f"{manifest}:3: not a manifest line (split must be 'train' or 'test', got 'val')")):
        script.main(["--data", str(manifest), "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("script", [evaluate, evaluate_concept])
def test_the_default_models_are_the_shipped_ones_wherever_the_script_runs(
    script, concept_data, tmp_path, no_loads, monkeypatch, torch_threads
):
    """They were "weights/..." of the working folder: run elsewhere, a Hub repo id, and the
    classifier's load failed with the Hub's traceback (online, a stranger's model)."""
    monkeypatch.chdir(tmp_path)
    argv = ["--data", str(concept_data), "--out", str(tmp_path / "out.json"), "--seconds", "1.28", "--n", "1"]
    if script is evaluate_concept:
        argv += ["--instrument", "violin", "--references", "1"]
    with pytest.raises(Loaded):  # the shipped classifier loaded; the backbone's load is where this stops
        script.main(argv)


def test_a_griffin_lim_cache_cut_short_is_computed_again(tmp_path, capsys):
    """An interrupted torch.save left a cut file, and every later run died on it with
    "PytorchStreamReader failed reading zip archive", naming no file."""
    mel = train_classifier.MelFrontEnd()
    waveforms = torch.randn(1, 20 * mel.hop_length, generator=torch.Generator().manual_seed(0))
    first = train_classifier.griffin_lim_round_trip(waveforms, n_iter=1, cache=tmp_path, mel=mel, label="test")
    (cached,) = tmp_path.iterdir()  # written whole, under its name alone
    cached.write_bytes(cached.read_bytes()[:100])
    again = train_classifier.griffin_lim_round_trip(waveforms, n_iter=1, cache=tmp_path, mel=mel, label="test")
    assert torch.equal(again, first) and f"{cached} cannot be read" in capsys.readouterr().out
    assert torch.equal(torch.load(cached), first)


def test_evaluate_concept_counts_a_diverged_edit_as_a_miss(concept_data, tmp_path, monkeypatch, torch_threads):
    """The classifier refused its NaN audio, and the run stopped, its rows lost (evaluate.py's
    guard was missing here)."""
    from types import SimpleNamespace

    train = evaluate_concept.Concept.train
    monkeypatch.setattr(evaluate_concept.Concept, "train", lambda *args, **kwargs: train(*args, **{**kwargs, "steps": 1}))
    monkeypatch.setattr(
        evaluate_concept.DreamSoundEditing, "edit",
        lambda self, audio, **kwargs: SimpleNamespace(audio=torch.full_like(audio.waveform, torch.nan)),
    )
    out = tmp_path / "out.json"
    evaluate_concept.main([
        "--data", str(concept_data), "--instrument", "violin", "--references", "1", "--n", "1",
        "--seconds", "1.28", "--methods", "dreamsound", "--out", str(out),
    ])
    (row,) = [r for r in json.loads(out.read_text())["rows"] if r["method"] == "dreamsound (concept)"]
    assert row["predicted"] == "(non-finite output)"
