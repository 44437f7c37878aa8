"""The instrument-swap data: real melodies, eight instruments, a manifest and a cache.

One tiny dataset (3 melodies x 8 instruments x 2.56 s) is rendered once per session.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile

import steer.data.melodies
from steer.data import (
    DEFAULT_INSTRUMENTS,
    choose_clip,
    instrument_prompt,
    list_works,
    load_melodies,
    read_manifest,
    render_dataset,
    render_melody,
    split_melodies,
    swap_pairs,
)
from steer.metrics import cqt1_pcc, cqt1_pcc_batch, cqt_top1

SECONDS = 2.56
SR = 16000
FRAMES = round(SECONDS * SR)
# Instruments whose loudest CQT bin is the fundamental (measured: >= 0.9 of frames); for church
# organ (a sub-octave stop), trumpet and clarinet it is often a harmonic instead, see
# test_every_instrument_plays_the_written_notes.
FUNDAMENTAL_DOMINANT = ("piano", "violin", "acoustic guitar", "marimba")


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("swap")
    render_dataset(out, n_melodies=3, seconds=SECONDS, seed=0, test_fraction=0.34)
    return out


@pytest.fixture(scope="session")
def clips(dataset) -> dict[tuple[str, str], np.ndarray]:
    """(melody id, instrument) -> audio."""
    return {
        (e.melody_id, e.instrument): soundfile.read(dataset / e.audio, dtype="float32")[0]
        for e in read_manifest(dataset / "manifest.jsonl")
    }


@pytest.fixture(scope="session")
def melodies(dataset):
    return load_melodies(n_melodies=3, seed=0, cache=dataset / "notes.json")


def test_clips_have_the_promised_format(clips):
    assert len(clips) == 3 * 8
    for audio in clips.values():
        assert audio.dtype == np.float32 and audio.shape == (FRAMES,)
        assert np.abs(audio).max() == pytest.approx(0.9, abs=1e-6)  # one peak for every clip


def test_rendering_is_bitwise_deterministic(dataset, clips, melodies):
    melody = melodies[0]
    first = render_melody(melody, "violin", seconds=SECONDS, seed=0)
    again = render_melody(melody, "violin", seconds=SECONDS, seed=0)
    assert np.array_equal(first, again)
    assert np.array_equal(first, clips[melody.id, "violin"])  # and the WAV round trip is exact
    other_seed = render_melody(melody, "violin", seconds=SECONDS, seed=1)
    assert not np.array_equal(first, other_seed)  # the seed moves the window


def test_melodies_are_monophonic_note_lists(melodies):
    assert [m.id for m in melodies] == [
        "ryansMammoth/SteamboatHornpipe.abc",
        "ryansMammoth/StatenIslandHornpipe.abc",
        "ryansMammoth/WhiteStarReel.abc",
    ]
    for melody in melodies:
        assert len(melody.notes) > 20
        for note, following in itertools.pairwise(melody.notes):
            assert note.duration > 0 and note.onset + note.duration <= following.onset


def test_collection_is_a_parameter():
    works = list_works("bach")
    assert all(not w.endswith((".krn", ".rntxt")) for w in works)  # formats deduplicated
    assert len(works) == len(set(works)) > 400
    (chorale,) = load_melodies("bach", n_melodies=1, seed=0)
    assert chorale.collection == "bach" and chorale.id.startswith("bach/")
    assert 60 <= min(n.pitch for n in chorale.notes) and max(n.pitch for n in chorale.notes) <= 81
    tunes = list_works("oneills1850")  # many tunes per ABC file
    assert any("#" in w for w in tunes)


def test_clip_window_is_mostly_notes(melodies):
    for melody in melodies:
        clip = choose_clip(melody, seconds=SECONDS, seed=0)
        assert clip.coverage >= 0.6
        assert all(0 <= on < off <= SECONDS for _, on, off in clip.notes)
        assert choose_clip(melody, seconds=SECONDS, seed=0) == clip


def average_log_spectrum(audio: np.ndarray) -> np.ndarray:
    frames = audio[: len(audio) // 1024 * 1024].reshape(-1, 1024) * np.hanning(1024)
    return 10 * np.log10((np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(0) + 1e-10)


def test_the_eight_instruments_sound_different(clips, melodies):
    spectra = {
        i: np.mean([average_log_spectrum(clips[m.id, i]) for m in melodies], axis=0)
        for i in DEFAULT_INSTRUMENTS
    }
    for a, b in itertools.combinations(DEFAULT_INSTRUMENTS, 2):
        rms_db = np.sqrt(np.mean((spectra[a] - spectra[b]) ** 2))
        assert rms_db > 4.0, (a, b)  # measured: the closest pair, violin/guitar, 6.5 dB


def midi_hz(pitch: int) -> float:
    return 440.0 * 2 ** ((pitch - 69) / 12)


def harmonic_fraction(top: np.ndarray, notes) -> float:
    """Share of frames inside a note whose loudest CQT bin (``top``, from ``cqt_top1``) is a
    harmonic of the written pitch (sub-octave, 1, 2, 3 or 4 times the fundamental, within a bin).
    """
    times = np.arange(len(top)) * 512 / SR
    written = np.full(len(top), np.nan)
    for pitch, on, off in notes:
        written[(times >= on + 0.03) & (times < off)] = 24 * math.log2(midi_hz(pitch) / 65)
    inside = ~np.isnan(written)
    offsets = top[inside, None] - written[inside, None] - 24 * np.log2([0.5, 1, 2, 3, 4])[None]
    return float((np.abs(offsets).min(axis=1) <= 1.0).mean())


def test_every_instrument_plays_the_written_notes(clips, melodies):
    notes = [choose_clip(m, seconds=SECONDS, seed=0).notes for m in melodies]
    for (k, melody), instrument in itertools.product(enumerate(melodies), DEFAULT_INSTRUMENTS):
        top = cqt_top1(clips[melody.id, instrument]).numpy()
        own = harmonic_fraction(top, notes[k])
        other = harmonic_fraction(top, notes[(k + 1) % len(melodies)])
        assert own > 0.9, (melody.id, instrument, own)  # measured: >= 0.95
        assert other < 0.6, (melody.id, instrument, other)  # another melody's: <= 0.28


def test_ground_truth_pairs_keep_the_melody_and_other_melodies_do_not(clips, melodies):
    def pcc(pairs):
        reference, estimate = zip(*[(clips[x], clips[y]) for x, y in pairs])
        return cqt1_pcc_batch(np.stack(reference), np.stack(estimate)).numpy()

    same = pcc(
        ((m.id, a), (m.id, b))
        for m in melodies
        for a, b in itertools.combinations(FUNDAMENTAL_DOMINANT, 2)
    )
    different = pcc(
        ((m.id, a), (n.id, b))
        for m, n in itertools.combinations(melodies, 2)
        for a, b in itertools.product(FUNDAMENTAL_DOMINANT, repeat=2)
    )
    assert same.mean() > 0.8 and same.min() > 0.4  # measured: mean 0.84, min 0.47
    assert abs(different.mean()) < 0.2 and different.max() < 0.5  # measured: mean 0.01, max 0.18
    for m in melodies:
        assert cqt1_pcc(clips[m.id, "piano"], clips[m.id, "piano"]) == 1.0


def test_manifest_lines_and_split_by_melody(dataset):
    lines = (dataset / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 24
    rows = [json.loads(line) for line in lines]
    assert all(
        set(r) == {"audio", "melody_id", "instrument", "prompt", "split", "collection"}
        for r in rows
    )
    assert all((dataset / r["audio"]).is_file() for r in rows)
    assert {r["prompt"] for r in rows if r["instrument"] == "acoustic guitar"} == {
        "a recording of an acoustic guitar"
    }
    assert instrument_prompt("violin") == "a recording of a violin"
    splits = {}
    for r in rows:
        splits.setdefault(r["melody_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values())  # no melody in both splits
    assert sorted(s for (s,) in splits.values()) == ["test", "train", "train"]
    pairs = swap_pairs(read_manifest(dataset / "manifest.jsonl", split="test"))
    assert len(pairs) == 8 * 7 and all(a.melody_id == b.melody_id for a, b in pairs)


def test_split_is_deterministic_and_ignores_order():
    ids = [f"m{i}" for i in range(50)]
    split = split_melodies(ids, test_fraction=0.2, seed=0)
    assert split == split_melodies(ids[::-1], test_fraction=0.2, seed=0)
    assert sum(s == "test" for s in split.values()) == 10
    assert split != split_melodies(ids, test_fraction=0.2, seed=1)


def test_cache_skips_valid_files_and_redoes_broken_ones(dataset, monkeypatch):
    manifest = dataset / "manifest.jsonl"
    wavs = sorted((dataset / "audio").rglob("*.wav"))
    before = {p: p.stat().st_mtime_ns for p in wavs}
    text = manifest.read_text()

    def no_parsing(*args, **kwargs):
        raise AssertionError("the note cache should make parsing unnecessary")

    monkeypatch.setattr(steer.data.melodies, "parse_melody", no_parsing)
    broken = wavs[0]
    good = broken.read_bytes()
    broken.write_bytes(good[: len(good) // 2])  # a half-written file is not valid

    render_dataset(dataset, n_melodies=3, seconds=SECONDS, seed=0, test_fraction=0.34)

    assert manifest.read_text() == text
    assert broken.read_bytes() == good  # re-rendered, bit-identical
    assert all(p.stat().st_mtime_ns == before[p] for p in wavs[1:])  # untouched
    assert not list(dataset.rglob("*.tmp"))


def test_other_settings_and_bad_names_are_refused(dataset, tmp_path):
    with pytest.raises(ValueError, match="seed"):
        render_dataset(dataset, n_melodies=3, seconds=SECONDS, seed=1)
    with pytest.raises(ValueError, match="unknown instrument"):
        render_dataset(tmp_path, n_melodies=1, instruments=["kazoo"])
    with pytest.raises(ValueError, match="no collection"):
        render_dataset(tmp_path, n_melodies=1, collection="notACollection")
    assert not (tmp_path / "render_config.json").exists()
