"""Manifests and ZoME-Bench metadata as other tools write them: raw line separators inside
strings, byte order marks, YouTube ids starting with "-", float type ids."""

from __future__ import annotations

import json

import pytest

from steer.manifest import read_edit_manifest, read_zome_bench

GOOD = {"id": "a", "audio": "a.wav", "source": "x", "target": "y"}
ZOME = {"ytid": "-0Gj8-vB1q4", "original_prompt": "a [piano] solo", "editing_prompt": "a [violin] solo"}


@pytest.mark.parametrize("separator", ["\u2028", "\u0085", "\u2029"])
def test_raw_line_separators_inside_strings_are_json_lines(tmp_path, separator):
    """json.dumps(..., ensure_ascii=False) writes them raw; str.splitlines() cut the line there."""
    path = tmp_path / "m.jsonl"
    rows = [{**GOOD, "target": f"a{separator}b"}, {**GOOD, "id": "b"}]
    path.write_text("\r\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\r\n", encoding="utf-8")
    items = read_edit_manifest(path)
    assert [(item.id, item.target) for item in items] == [("a", f"a{separator}b"), ("b", "y")]
    path.write_text(path.read_text(encoding="utf-8") + "{bad\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"m\.jsonl:3: not JSON"):
        read_edit_manifest(path)


@pytest.mark.parametrize("name", ["zome.csv", "zome.json", "zome.jsonl"])
def test_zome_bench_metadata_with_a_byte_order_mark_is_read(tmp_path, name):
    rows = [ZOME, {**ZOME, "ytid": "abc", "editing_type_id": "3"}]
    if name.endswith(".csv"):
        text = "ytid,original_prompt,editing_prompt,editing_type_id\n" + "".join(
            f"{r['ytid']},{r['original_prompt']},{r['editing_prompt']},{r.get('editing_type_id', '')}\n" for r in rows
        )
    elif name.endswith(".jsonl"):
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        text = json.dumps(rows)
    (tmp_path / name).write_text("\ufeff" + text, encoding="utf-8")
    for where in (tmp_path / name, tmp_path):
        items = read_edit_manifest(where)
        assert [(item.id, item.edit_type) for item in items] == [("0000_-0Gj8-vB1q4", None), ("0001_abc", "change_genre")]


def test_zome_bench_keys_may_start_with_a_dash(tmp_path):
    path = tmp_path / "zome.json"
    path.write_text(json.dumps({"-0Gj8-vB1q4": ZOME, "_x": ZOME}))
    assert [item.id for item in read_zome_bench(path)] == ["-0Gj8-vB1q4", "_x"]
    path.write_text(json.dumps({".hidden": ZOME}))
    with pytest.raises(ValueError, match=r"row 0 \(key '\.hidden'\): field 'id' '\.hidden' must be a file name"):
        read_zome_bench(path)


def test_zome_bench_keys_made_alike_are_named_as_written(tmp_path):
    path = tmp_path / "zome.json"
    path.write_text(json.dumps({"a b": ZOME, "a/b": ZOME}))
    with pytest.raises(ValueError) as error:
        read_zome_bench(path)
    assert str(error.value) == (
        f"{path}: row 1 (key 'a/b'): field 'id' 'a_b' is already used at {path}: row 0 (key 'a b')"
    )


@pytest.mark.parametrize("value, kind", [(4.0, "change_mood"), ("4.0", "change_mood"), (4, "change_mood"),
                                         (12.0, "type_12"), (4.5, "type_4.5"), (None, None), ("", None)])
def test_zome_bench_type_ids_may_be_integral_floats(tmp_path, value, kind):
    path = tmp_path / "zome.json"
    path.write_text(json.dumps([{**ZOME, "editing_type_id": value}]))
    assert read_zome_bench(path)[0].edit_type == kind


def test_audio_and_concept_paths_may_start_with_the_users_home(tmp_path, monkeypatch):
    """``~/clip.wav`` was taken as ``<manifest folder>/~/clip.wav``."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({**GOOD, "audio": "~/clip.wav", "concept": "~/guitar"}) + "\n")
    item = read_edit_manifest(path)[0]
    assert item.audio == tmp_path / "home" / "clip.wav" and item.concept == str(tmp_path / "home" / "guitar")


@pytest.mark.parametrize("name", ["zome.json", "zome.jsonl"])
def test_zome_bench_metadata_of_one_row_is_read(tmp_path, name):
    """A one-line file was read as an object keyed by id, and refused as a steer manifest
    ("unknown field 'editing_prompt'"); as a folder, no metadata file was found."""
    (tmp_path / name).write_text(json.dumps(ZOME) + "\n")
    for where in (tmp_path / name, tmp_path):
        assert [(item.id, item.target) for item in read_edit_manifest(where)] == [("0000_-0Gj8-vB1q4", "a violin solo")]
    (tmp_path / "m.jsonl").write_text(json.dumps(GOOD) + "\n")  # a steer manifest of one line is still one
    assert [item.id for item in read_edit_manifest(tmp_path / "m.jsonl")] == ["a"]


def test_a_broken_line_of_zome_bench_metadata_is_named(tmp_path):
    """It fell through to the steer manifest's reader ("unknown field 'editing_prompt'"), or as a
    folder to "found none"."""
    path = tmp_path / "zome.jsonl"
    path.write_text(json.dumps(ZOME) + "\n" + json.dumps(ZOME)[:20] + "\n")
    for where in (path, tmp_path):
        with pytest.raises(ValueError, match=rf"^{path}:2: not JSON \(.*\); got '{{\"ytid\""):
            read_edit_manifest(where)


def test_zome_bench_metadata_under_data_finds_the_audio_as_its_folder_does(tmp_path):
    """Passed as the file (as the folder's error advises), data/m.jsonl looked for data/audio/."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "m.jsonl").write_text(json.dumps(ZOME) + "\n")
    items = read_edit_manifest(tmp_path / "data" / "m.jsonl")
    assert items == read_edit_manifest(tmp_path) and items[0].audio == tmp_path / "audio" / "-0Gj8-vB1q4.wav"
    assert read_edit_manifest(tmp_path / "data") == items  # the data folder: looked in data/audio/
