"""The instrument classifier (shipped weights, on melodies it never heard) and the swap metrics.

The shipped classifier was trained on Ryan's Mammoth tunes only; a few Bach chorales rendered
here (3 melodies x 8 instruments x 2.56 s, once per session) are another collection entirely.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import numpy as np
import pytest
import soundfile
import torch
from huggingface_hub import hub_mixin

import backbones.auto
from backbones import MelFrontEnd
from backbones.griffin_lim import GriffinLimVocoder
from steer.data import DEFAULT_INSTRUMENTS, read_manifest, render_dataset
from steer.metrics import InstrumentClassifier, instrument_accuracy, log_mel_distance

WEIGHTS = Path(__file__).resolve().parents[3] / "weights" / "instrument-classifier"
SR = 16000
SECONDS = 2.56


@pytest.fixture(scope="session")
def classifier() -> InstrumentClassifier:
    return InstrumentClassifier.from_pretrained(str(WEIGHTS))


@pytest.fixture(scope="session")
def chorales(tmp_path_factory) -> dict[tuple[str, str], np.ndarray]:
    """(melody id, instrument) -> 2.56-s clip of three Bach chorales."""
    out = tmp_path_factory.mktemp("bach")
    manifest = render_dataset(out, collection="bach", n_melodies=3, seconds=SECONDS, seed=0)
    return {
        (e.melody_id, e.instrument): soundfile.read(out / e.audio, dtype="float32")[0]
        for e in read_manifest(manifest)
    }


@pytest.fixture(scope="session")
def batch(chorales) -> tuple[np.ndarray, list[str]]:
    keys = sorted(chorales)
    return np.stack([chorales[k] for k in keys]), [instrument for _, instrument in keys]


@pytest.fixture(scope="session")
def vocoded(batch) -> torch.Tensor:
    """Griffin-Lim round trips of ``batch``, which is how the mel-diffusion backbone's edits
    sound: waveform -> log-mel -> GriffinLimVocoder -> waveform."""
    mel = MelFrontEnd()
    with torch.no_grad():
        return GriffinLimVocoder(mel)(mel(mel.normalize(torch.from_numpy(batch[0]))).squeeze(1))


def tiny(**kwargs) -> InstrumentClassifier:
    torch.manual_seed(0)
    return InstrumentClassifier(classes=["piano", "violin", "flute"], channels=(4, 4, 8, 8), **kwargs).eval()


# -- the shipped weights ---------------------------------------------------------------------
def test_shipped_weights_are_small_and_know_the_eight_instruments(classifier):
    assert (WEIGHTS / "model.safetensors").stat().st_size < 2_000_000
    assert classifier.classes == list(DEFAULT_INSTRUMENTS)
    assert not classifier.training  # from_pretrained leaves it in eval mode


def test_shipped_classifier_names_instruments_of_unseen_melodies(classifier, batch):
    waveforms, instruments = batch
    predicted = classifier.predict(waveforms)
    accuracy = np.mean([p == t for p, t in zip(predicted, instruments)])
    assert accuracy >= 0.85, list(zip(instruments, predicted))  # measured: 24/24; chance: 1/8
    assert instrument_accuracy(classifier, waveforms, instruments) == accuracy


def test_shipped_classifier_hears_the_instrument_through_griffin_lim(classifier, batch, vocoded):
    assert instrument_accuracy(classifier, vocoded, batch[1]) >= 0.75  # measured: 24/24


def test_probabilities_are_a_distribution_and_agree_with_predict(classifier, batch):
    waveforms, _ = batch
    p = classifier.probabilities(waveforms[:4])
    assert p.shape == (4, 8)
    torch.testing.assert_close(p.sum(-1), torch.ones(4))
    assert [classifier.classes[i] for i in p.argmax(-1)] == classifier.predict(waveforms[:4])


# -- the module --------------------------------------------------------------------------------
def test_save_and_load_give_identical_logits(tmp_path):
    model = tiny(mel_mean=-4.0, mel_std=2.0)
    with torch.no_grad():  # make batch norm's running statistics non-trivial
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "model.safetensors"}
    loaded = InstrumentClassifier.from_pretrained(str(tmp_path))
    assert loaded.classes == model.classes and (loaded.mel_mean, loaded.mel_std) == (-4.0, 2.0)
    x = torch.randn(2, SR)
    assert torch.equal(loaded.logits(x), model.logits(x))


def test_a_folder_under_the_home_directory_loads_with_a_tilde(tmp_path, monkeypatch):
    """"~/models/classifier" (quoted, so no shell expanded it) was taken for a Hub repo id."""
    monkeypatch.setenv("HOME", str(tmp_path))
    model = tiny()
    model.save_pretrained(tmp_path / "models" / "classifier")
    loaded = InstrumentClassifier.from_pretrained("~/models/classifier")
    x = torch.randn(1, SR)
    assert torch.equal(loaded.logits(x), model.logits(x))


def test_saving_refuses_to_replace_a_classifier_unasked_and_keeps_other_files(tmp_path):
    """The Hub mixin deleted and rewrote config.json and model.safetensors without a word."""
    for name in "config.json", "model.safetensors", "notes.txt":
        (tmp_path / name).write_text("the user's\n")
    model = tiny()
    message = (
        f"the model folder {tmp_path} already holds config.json, model.safetensors, which saving would "
        "replace or remove: pass overwrite=True to replace them, or choose another folder"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        model.save_pretrained(tmp_path)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == dict.fromkeys(
        ["config.json", "model.safetensors", "notes.txt"], "the user's\n"
    )
    assert model.save_pretrained(tmp_path, overwrite=True) == tmp_path
    assert (tmp_path / "notes.txt").read_text() == "the user's\n"
    x = torch.randn(1, SR)
    assert torch.equal(InstrumentClassifier.from_pretrained(tmp_path).logits(x), model.logits(x))


def test_saving_into_a_file_or_an_unwritable_folder_is_refused(tmp_path, monkeypatch):
    model = tiny()
    file = tmp_path / "notes.txt"
    file.write_text("the user's\n")
    with pytest.raises(ValueError, match=re.escape(f"the model folder {file} exists and is not a folder; choose")):
        model.save_pretrained(file)
    with pytest.raises(ValueError, match=re.escape(f"the model folder {file}/c cannot be a folder: {file} is a file;")):
        model.save_pretrained(file / "c")
    locked = tmp_path / "locked"
    locked.mkdir()
    access = os.access  # as root, chmod would not stop a write: the check asks os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kwargs: Path(path) != locked and access(path, mode, **kwargs))
    with pytest.raises(ValueError, match=re.escape(f"the model folder {locked} cannot be written: {locked} is not")):
        model.save_pretrained(locked)
    assert list(locked.iterdir()) == [] and file.read_text() == "the user's\n"


def test_push_to_hub_still_saves_into_a_fresh_folder(tmp_path, monkeypatch):
    uploaded = []

    class Api:  # the Hub, offline: what the mixin's push_to_hub calls
        def __init__(self, token=None) -> None:
            pass

        def create_repo(self, repo_id, **kwargs) -> SimpleNamespace:
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, *, repo_id, folder_path, **kwargs) -> str:
            uploaded.append((repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            return f"https://huggingface.co/{repo_id}/commit/1"

    monkeypatch.setattr(hub_mixin, "HfApi", Api)
    model = tiny()
    assert model.push_to_hub("me/classifier") == "https://huggingface.co/me/classifier/commit/1"
    # the commit's URL, as the mixin returns it (a folder is returned only without the push)
    assert model.save_pretrained(tmp_path / "c", push_to_hub=True, repo_id="me/other") == "https://huggingface.co/me/other/commit/1"
    files = ["README.md", "config.json", "model.safetensors"]
    assert uploaded == [("me/classifier", files), ("me/other", files)]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == files


def test_any_length_shape_and_rate():
    model = tiny()
    for samples in (1024, SR, 3 * SR + 123):
        assert model.logits(torch.randn(2, samples)).shape == (2, 3)
    assert model.logits(np.zeros(SR, dtype=np.float32)).shape == (1, 3)  # (time,), numpy
    stereo = torch.randn(1, 2, 44100)
    torch.testing.assert_close(
        model.logits(stereo, sample_rate=44100), model.logits(stereo.mean(1), sample_rate=44100)
    )
    assert set(model.predict(torch.randn(5, SR))) <= set(model.classes)


def test_gain_does_not_change_the_answer():
    model = tiny()
    x = torch.randn(2, SR)
    torch.testing.assert_close(model.logits(0.1 * x), model.logits(x), rtol=1e-4, atol=1e-4)


def test_errors_are_clear():
    model = tiny()
    with pytest.raises(ValueError, match="too short"):
        model.logits(torch.randn(1, 1000))
    with pytest.raises(ValueError, match="NaN"):
        model.predict(torch.full((1, SR), float("nan")))
    with pytest.raises(ValueError, match="expected a waveform"):
        model.logits(torch.randn(1, 1, 1, SR))
    with pytest.raises(ValueError, match="distinct"):
        InstrumentClassifier(classes=["piano", "piano"])
    with pytest.raises(ValueError, match="distinct"):
        InstrumentClassifier(classes=["piano"])
    with pytest.raises(ValueError, match="kazoo"):
        instrument_accuracy(model, torch.randn(1, SR), ["kazoo"])
    with pytest.raises(ValueError, match="2 clips but 1 targets"):
        instrument_accuracy(model, torch.randn(2, SR), ["piano"])


def test_instrument_accuracy_takes_clips_of_different_lengths():
    model = tiny()
    clips = [torch.randn(SR), np.random.default_rng(0).normal(size=2 * SR).astype(np.float32), torch.randn(SR)]
    names = model.predict(torch.stack([clips[0], clips[2]]))
    targets = [names[0], model.predict(clips[1])[0], names[1]]
    assert instrument_accuracy(model, clips, targets, batch_size=1) == 1.0
    wrong = [next(c for c in model.classes if c != t) for t in targets]
    assert instrument_accuracy(model, clips, wrong) == 0.0
    clips[1] = torch.full((SR,), float("nan"))  # a diverged edit is a miss, not a crash
    assert instrument_accuracy(model, clips, targets) == pytest.approx(2 / 3)


# -- log-mel distance ------------------------------------------------------------------------
def test_log_mel_distance_of_a_clip_with_itself_is_zero_and_grows_with_noise(chorales):
    clip = chorales[sorted(chorales)[0]]
    assert log_mel_distance(clip, clip) == 0.0
    assert log_mel_distance(clip, 0.3 * clip) == pytest.approx(0.0, abs=1e-5)  # normalised gain
    noise = np.random.default_rng(0).normal(size=clip.shape).astype(np.float32)
    distances = [log_mel_distance(clip + level * noise, clip) for level in (1e-3, 1e-2, 1e-1)]
    assert 0 < distances[0] < distances[1] < distances[2]


def test_log_mel_distance_batches_and_cuts_to_the_shorter(chorales):
    a, b, c = (chorales[k] for k in sorted(chorales)[:3])
    batched = log_mel_distance(np.stack([a, b]), torch.from_numpy(np.stack([b, c])))
    assert batched.shape == (2,)
    assert batched[0].item() == pytest.approx(log_mel_distance(a, b), rel=1e-5)
    assert log_mel_distance(a[:SR], a) == 0.0  # the common second only
    assert log_mel_distance(a, b[:SR]) == log_mel_distance(a[:SR], b)
    broken = b.copy()
    broken[100] = np.inf
    assert np.isnan(log_mel_distance(broken, a))  # a diverged edit is NaN, not a number
    with pytest.raises(ValueError, match="both"):
        log_mel_distance(a, np.stack([a, b]))
    with pytest.raises(ValueError, match="estimate"):
        log_mel_distance(a[None, None], a)
    with pytest.warns(RuntimeWarning, match="at least 0.064 s"):  # NaN, as CQT-1 PCC's of a too-short clip
        assert np.isnan(log_mel_distance(a[:500], a))


def test_distance_to_the_target_falls_as_a_clip_moves_towards_it(chorales):
    """A crude partial edit: the source cross-faded into the ground-truth target."""
    melodies = sorted({m for m, _ in chorales})
    for m, (a, b) in itertools.product(melodies, itertools.permutations(DEFAULT_INSTRUMENTS[:4], 2)):
        source, target = chorales[m, a], chorales[m, b]
        distances = [log_mel_distance((1 - w) * source + w * target, target) for w in (0, 0.25, 0.5, 0.75, 1)]
        assert all(x > y for x, y in itertools.pairwise(distances)), (m, a, b, distances)
        assert distances[-1] == 0.0


def test_griffin_lim_damage_is_small_next_to_a_swap(chorales, batch, vocoded):
    """The floor of what a mel-diffusion edit (decoded by Griffin-Lim) can reach lies well below
    the distance between two instruments playing the same notes."""
    floor = log_mel_distance(vocoded, batch[0]).mean().item()
    swaps = np.mean([
        log_mel_distance(chorales[m, a], chorales[m, b])
        for m, a in sorted(chorales)
        for b in DEFAULT_INSTRUMENTS
        if b != a
    ])
    assert floor < 0.6 * swaps, (floor, swaps)  # measured: 0.81 against 2.01


def test_where_the_hub_is_unreachable_a_callers_own_choice_stands(monkeypatch):
    """local_files_only=False or force_download=True were overridden (force_download then failed
    with "Cannot pass 'force_download=True' and 'local_files_only=True'", unasked)."""
    asked = []
    monkeypatch.setattr(backbones.auto, "hub_unreachable", lambda timeout=3.0: "huggingface.co cannot be reached: no network")
    monkeypatch.setattr(hub_mixin.PyTorchModelHubMixin, "from_pretrained", classmethod(lambda cls, name, **kwargs: asked.append(kwargs)))
    for kwargs in ({"local_files_only": False}, {"force_download": True}, {}):
        InstrumentClassifier.from_pretrained("me/classifier", **kwargs)
    loaded = [{key: value for key, value in kwargs.items() if key != "strict"} for kwargs in asked]  # strict: always
    assert loaded == [{"local_files_only": False}, {"force_download": True}, {"local_files_only": True}]


def test_where_the_hub_is_unreachable_a_repo_id_is_read_from_the_cache_alone(monkeypatch, tmp_path):
    """Offline, the mixin retried for ~25 s, then said to set 'local_files_only' to False."""
    monkeypatch.setattr(backbones.auto, "hub_unreachable", lambda timeout=3.0: "huggingface.co cannot be reached: no network")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    message = (
        "'me/classifier' is not a local folder, and the Hugging Face Hub cannot be asked for it (huggingface.co cannot "
        "be reached: no network) nor is a copy cached: pass a folder written by save_pretrained"
    )
    with pytest.raises(huggingface_hub.errors.LocalEntryNotFoundError, match=f"^{re.escape(message)}$"):
        InstrumentClassifier.from_pretrained("me/classifier")
