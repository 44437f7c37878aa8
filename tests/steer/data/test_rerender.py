"""Rendering again into a dataset folder: it may grow, but never move a melody between splits
and never lose a manifest line without ``overwrite``.

With seed 0 and ``test_fraction=0.34``, the first 3 melodies of Ryan's Mammoth put the 2nd in
test; 4 melodies keep that split, 5 send the 1st to test as well (round(0.34 * 5) = 2).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from steer.data import load_melodies, read_manifest, render_dataset
from steer.data.__main__ import main

SETTINGS = dict(instruments=["piano", "violin"], seconds=1.28, seed=0, test_fraction=0.34)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """3 melodies x 2 instruments x 1.28 s, with notes of the first 5 melodies in the cache."""
    out = tmp_path_factory.mktemp("rerender")
    load_melodies(n_melodies=5, seed=0, cache=out / "notes.json")
    render_dataset(out, n_melodies=3, **SETTINGS)
    return out


@pytest.fixture
def folder(rendered, tmp_path) -> Path:
    return Path(shutil.copytree(rendered, tmp_path / "data"))


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file but the note cache: (inode, mtime, bytes), so a rewrite shows even when the
    bytes are the same."""
    return {
        str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "notes.json"
    }


def splits(folder: Path) -> dict[str, str]:
    return {e.melody_id: e.split for e in read_manifest(folder / "manifest.jsonl")}


def test_a_render_moving_a_melody_to_the_other_split_is_refused(folder):
    before = snapshot(folder)
    with pytest.raises(ValueError, match="SteamboatHornpipe.abc train -> test"):
        render_dataset(folder, n_melodies=5, **SETTINGS)
    with pytest.raises(ValueError, match="new folder"):
        render_dataset(folder, n_melodies=5, **SETTINGS, overwrite=True)
    assert snapshot(folder) == before  # no clip rendered, nothing rewritten


def test_growing_without_moving_a_melody_adds_clips_and_lines(folder):
    old = read_manifest(folder / "manifest.jsonl")
    render_dataset(folder, n_melodies=4, **SETTINGS)
    new = read_manifest(folder / "manifest.jsonl")
    assert len(new) == 8 and set(old) <= set(new)
    more_instruments = {**SETTINGS, "instruments": ["piano", "violin", "flute"]}
    render_dataset(folder, n_melodies=4, **more_instruments)
    assert len(read_manifest(folder / "manifest.jsonl")) == 12
    assert list(splits(folder).values()).count("test") == 1


def test_test_fraction_is_recorded_and_another_is_refused(folder):
    assert json.loads((folder / "render_config.json").read_text())["test_fraction"] == 0.34
    before = snapshot(folder)
    with pytest.raises(ValueError, match="test_fraction differ"):
        render_dataset(folder, n_melodies=3, **{**SETTINGS, "test_fraction": 0.2})
    assert snapshot(folder) == before


def test_a_folder_without_a_recorded_fraction_takes_one_that_moves_no_melody(folder):
    config = folder / "render_config.json"
    older = json.loads(config.read_text())
    del older["test_fraction"]
    config.write_text(json.dumps(older, indent=2) + "\n")
    with pytest.raises(ValueError, match="other split"):
        render_dataset(folder, n_melodies=5, **SETTINGS)
    assert "test_fraction" not in json.loads(config.read_text())

    render_dataset(folder, n_melodies=3, **SETTINGS)
    assert json.loads(config.read_text()) == {**older, "test_fraction": 0.34}


def test_an_unchanged_manifest_is_not_rewritten(folder):
    before = snapshot(folder)
    render_dataset(folder, n_melodies=3, **SETTINGS)
    assert snapshot(folder) == before


def test_an_edited_manifest_is_replaced_only_with_overwrite(folder):
    manifest = folder / "manifest.jsonl"
    rendered = manifest.read_text()
    edited = rendered.replace("a recording of a piano", "a recording of a grand piano", 1)
    manifest.write_text(edited)
    with pytest.raises(ValueError, match="--overwrite"):
        render_dataset(folder, n_melodies=3, **SETTINGS)
    with pytest.raises(ValueError, match="--overwrite"):  # fewer instruments drop lines too
        render_dataset(folder, n_melodies=3, **{**SETTINGS, "instruments": ["piano"]})
    assert manifest.read_text() == edited

    render_dataset(folder, n_melodies=3, **SETTINGS, overwrite=True)
    assert manifest.read_text() == rendered


def test_the_command_line_refuses_an_edited_manifest_and_takes_overwrite(folder, capsys):
    manifest = folder / "manifest.jsonl"
    rendered = manifest.read_text()
    manifest.write_text(rendered.replace('"train"', '"test"', 1))
    argv = ["--out", str(folder), "--n-melodies", "3", "--instruments", "piano", "violin"]
    argv += ["--seconds", "1.28", "--test-fraction", "0.34"]
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2 and "new folder" in capsys.readouterr().err  # a split moved

    manifest.write_text(rendered[: rendered.rindex("{")])  # a line deleted: only growth
    assert main(argv) == 0 and manifest.read_text() == rendered
    manifest.write_text(rendered.replace("violin", "fiddle"))
    with pytest.raises(SystemExit):
        main(argv)
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0 and manifest.read_text() == rendered
