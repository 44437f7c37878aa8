"""``render_dataset`` and ``python -m steer.data`` refuse impossible settings before writing
anything, name the limit a window no melody can fill runs into, refuse files under their names that
are not theirs, and clips are read at the rate a model asks for."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

import steer.data.__main__
import steer.data.dataset
import steer.data.melodies
from steer.data import (
    collection_name,
    iter_melodies,
    list_works,
    load_clip,
    read_manifest,
    render_dataset,
)
from steer.data.__main__ import main
from steer.data._files import atomic_write_wav


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"sample_rate": 0}, r"^sample_rate \(--sample-rate\) must be a whole number of Hz, at least 16000: .* got 0$"),
        ({"sample_rate": 1}, r"at least 16000: .* got 1$"),  # wrote 1-sample WAVs
        ({"sample_rate": 8000}, r"at least 16000: .* got 8000$"),
        ({"seed": -1}, r"^seed \(--seed\) must be a non-negative integer, got -1$"),  # numpy's words
        # each parsed the whole collection first; 0 left notes.json behind
        ({"seconds": math.nan}, r"^seconds \(--seconds\) must be a finite clip length, at most 67109 s at 16000 Hz \(the most a WAV file holds\), got nan$"),
        ({"seconds": math.inf}, r"must be a finite clip length, .* got inf$"),
        ({"seconds": 1e9}, r"must be a finite clip length, .* got 1e\+09$"),
        ({"seconds": 1e-5}, r"^seconds \(--seconds\) must be at least 0.514 s, the shortest clip whose melody line CQT-1 PCC .* reads, got 1e-05$"),
        ({"seconds": 0}, r"must be at least 0.514 s, .* got 0$"),
        ({"qpm": 0}, r"^qpm \(--qpm\) must be a positive number of quarter notes a minute, got 0$"),
        ({"qpm": math.nan}, r"got nan$"),
        ({"test_fraction": 1.5}, r"^test_fraction \(--test-fraction\) must be in \[0, 1\), got 1.5$"),
        ({"instruments": []}, r"^instruments \(--instruments\) is empty: name one or more$"),
    ],
)
def test_settings_no_render_can_use_are_refused_before_any_work(setting, message, tmp_path, monkeypatch):
    def load_melodies(*args, **kwargs):
        raise AssertionError("the collection was parsed")

    monkeypatch.setattr(steer.data.dataset, "load_melodies", load_melodies)
    with pytest.raises(ValueError, match=message):
        render_dataset(tmp_path, n_melodies=1, **setting)
    assert not list(tmp_path.iterdir())  # no notes.json, no render_config.json locking the folder


def test_the_command_line_names_the_option_of_a_refused_setting(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--out", str(tmp_path), "--seed", "-1"])  # said "expected non-negative integer"
    assert exit.value.code == 2
    assert capsys.readouterr().err.endswith("error: seed (--seed) must be a non-negative integer, got -1\n")


def test_an_out_that_is_a_file_is_refused(tmp_path, capsys):
    out = tmp_path / "data"
    out.write_text("the user's\n")
    with pytest.raises(SystemExit) as exit:
        main(["--out", str(out), "--n-melodies", "1"])
    assert exit.value.code == 2 and f"{out} is a file, not a dataset folder" in capsys.readouterr().err
    assert out.read_text() == "the user's\n"


def test_a_missing_synthesiser_is_named_with_its_install_command_before_any_file(tmp_path, capsys, monkeypatch):
    """`pip install steer[data]` leaves out tinysoundfont (scripts/setup.sh installs it): the
    render parsed every score and wrote notes.json and render_config.json, then a traceback."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tinysoundfont" else find_spec(name, *a))
    out = tmp_path / "data"
    with pytest.raises(SystemExit) as exit:
        main(["--out", str(out), "--collection", "bach", "--n-melodies", "2"])
    assert exit.value.code == 2
    assert capsys.readouterr().err.endswith(
        'error: rendering needs tinysoundfont, not installed: pip install --no-deps "tinysoundfont==0.3.*" '
        "(or bash scripts/setup.sh)\n"
    )
    assert not out.exists()


@pytest.fixture
def three_works(monkeypatch) -> list[steer.data.melodies.Melody]:
    """A collection of Ryan's first three works, and their melodies."""
    works = list_works("ryansMammoth")[:3]
    monkeypatch.setattr(steer.data.melodies, "list_works", lambda collection: works)
    return list(iter_melodies("ryansMammoth"))


@pytest.mark.parametrize("seconds, usable", [(600, 0), (40, 2)])  # 7thRegimentReel lasts 18.9 s
def test_a_window_too_few_melodies_can_fill_names_the_limit(seconds, usable, three_works, tmp_path):
    longest = max(m.quarters for m in three_works) * 60 / 100  # seconds at the default 100 qpm
    with pytest.raises(ValueError) as error:
        render_dataset(tmp_path, n_melodies=3, instruments=["piano"], seconds=seconds)
    message = str(error.value)
    assert message.startswith(f"collection 'ryansMammoth' has only {usable} usable melodies, 3 asked for: ")
    assert f"a {seconds:g} s window starting on a note in which notes sound 60% of the time" in message
    assert "3 distinct pitches or more start" in message
    assert f"the longest of the {len(three_works)} melodies tried lasts {longest:.1f} s at 100 qpm" in message
    fewer = f", or ask for {usable} or fewer (--n-melodies)" if usable else ""
    assert message.endswith(f": choose other seconds (--seconds) or qpm (--qpm){fewer}")
    assert not (tmp_path / "render_config.json").exists()


def test_asking_for_more_melodies_than_a_collection_holds_says_to_ask_for_fewer(three_works, tmp_path, monkeypatch):
    """The advice was "choose other seconds (--seconds) or qpm (--qpm)" when every melody was
    usable already (four works, one of them without a melody)."""
    works, parse = steer.data.melodies.list_works("ryansMammoth"), steer.data.melodies.parse_melody
    monkeypatch.setattr(steer.data.melodies, "list_works", lambda collection: [*works, "ryansMammoth/none.abc"])
    monkeypatch.setattr(steer.data.melodies, "parse_melody", lambda work, **kw: None if "none" in work else parse(work, **kw))
    with pytest.raises(ValueError) as error:
        render_dataset(tmp_path, n_melodies=4, instruments=["piano"], seconds=1.28)
    assert str(error.value) == (
        "collection 'ryansMammoth' has only 3 usable melodies, 4 asked for; it holds 3 melodies in "
        "all, so no other --seconds or --qpm gives 4: ask for 3 or fewer (--n-melodies), or render "
        "another collection (--collection)"
    )


def test_more_melodies_than_a_collection_has_works_are_refused_before_any_is_parsed(three_works, tmp_path, capsys, monkeypatch):
    """`--collection bach --n-melodies 100000` parsed the 410 chorales for over a minute, silently,
    to find that it could not: each work gives one melody at most."""

    def parse(work, **kwargs):
        raise AssertionError(f"parsed {work}")

    monkeypatch.setattr(steer.data.melodies, "parse_melody", parse)
    out = tmp_path / "xh"
    with pytest.raises(SystemExit) as exit:
        main(["--out", str(out), "--n-melodies", "100000", "--instruments", "piano", "--seconds", "0.6"])
    assert exit.value.code == 2 and capsys.readouterr().err.endswith(
        "error: collection 'ryansMammoth' has 3 works, each giving one melody at most, so not 100000 melodies: "
        "ask for 3 or fewer (--n-melodies), or render a larger collection (--collection)\n"
    )
    assert not out.exists() or not any(out.iterdir())


SMALL = {"n_melodies": 1, "instruments": ["piano"], "seconds": 1.28}


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("notes.json", "precious\n", r"a note cache \(it is not JSON: Expecting value: line 1 column 1 \(char 0\)\): if it is yours, move it out of .*; if it is a damaged cache, delete it"),
        ("notes.json", '{"a": 1}\n', r"a note cache \(its entry 'a' is no melody\): if it is yours"),  # TypeError
        ("notes.json", None, r"a note cache \(it is a folder\)"),
        ("render_config.json", "precious\n", r"a render config \(it is not JSON: .*\): without the settings .* render into another folder \(--out\)$"),
        ("render_config.json", "[1, 2]\n", r"a render config \(it holds \[1, 2\], not a JSON object\)"),  # AttributeError
        ("manifest.jsonl", None, r"a manifest \(it is a folder\): move it out of .*, or render into another folder \(--out\)$"),  # IsADirectoryError
    ],
)
def test_a_file_under_a_dataset_name_that_is_not_ours_is_named_and_kept(name, content, problem, three_works, tmp_path):
    target = tmp_path / name
    if content is None:
        (target / "inside").mkdir(parents=True)
    else:
        target.write_text(content)
    with pytest.raises(ValueError, match=f"^{re.escape(str(target))} is not {problem}"):
        render_dataset(tmp_path, **SMALL)
    assert (target / "inside").is_dir() if content is None else target.read_text() == content
    assert not (tmp_path / "render_config.json").is_file() or name == "render_config.json"
    assert not (tmp_path / "audio").exists()


def test_collections_are_recorded_as_the_corpus_spells_them(three_works, tmp_path):
    """`--collection Bach` was recorded as "Bach", and `bach` was then refused ("collection differ")."""
    assert collection_name("BACH") == "bach" and collection_name("ryansmammoth") == "ryansMammoth"
    with pytest.raises(ValueError, match="music21's corpus has no collection 'site-packages'"):
        collection_name("site-packages")  # a folder above the corpus: music21 matched all of it
    manifest = render_dataset(tmp_path, collection="Bach", **SMALL)
    config = tmp_path / "render_config.json"
    assert json.loads(config.read_text())["collection"] == "bach"
    assert {e.collection for e in read_manifest(manifest)} == {"bach"}
    render_dataset(tmp_path, collection="bach", **SMALL)

    # a folder that recorded "Bach" before is re-rendered, and respelt, without --overwrite
    for path in config, manifest:
        path.write_text(path.read_text().replace('"bach"', '"Bach"'))
    render_dataset(tmp_path, collection="bach", **SMALL)
    assert json.loads(config.read_text())["collection"] == "bach"
    assert {e.collection for e in read_manifest(manifest)} == {"bach"}


def test_an_interrupted_render_exits_with_one_line_saying_a_rerun_resumes(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(steer.data.__main__, "render_dataset", interrupted)
    try:
        assert main(["--out", str(tmp_path)]) == 130
    except KeyboardInterrupt:  # which would end the test session
        pytest.fail("the interrupt came through, as a traceback")
    assert capsys.readouterr().err == (
        "python -m steer.data: interrupted; run the same command again to resume: clips already "
        "rendered and notes already parsed are kept\n"
    )


def test_clips_are_read_at_the_rate_asked(tmp_path):
    def tone(rate: int) -> np.ndarray:
        return (0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)

    for rate in 16000, 22050:
        atomic_write_wav(tmp_path / f"{rate}.wav", tone(rate), rate)
    native = load_clip(tmp_path / "16000.wav", 16000)
    assert torch.equal(native, torch.from_numpy(tone(16000)))  # sample for sample
    resampled = load_clip(tmp_path / "22050.wav", 16000)
    assert resampled.shape == (16000,) and resampled.dtype == torch.float32
    assert (resampled - native)[100:-100].abs().max() < 1e-2  # the same tone, away from the edges
