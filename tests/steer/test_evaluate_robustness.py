"""``steer eval`` on awkward folders: edit types named like the overall row, missing or
unreadable files, folders with nothing to evaluate."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from steer.cli import main
from steer.evaluate import (
    Pair,
    aggregate,
    comparison_table,
    markdown_table,
    score_pairs,
    write_run_summary,
)
from steer.manifest import EditItem
from steer.metrics import FrechetAudioDistance, LogMelDistance
from steer.runner import ItemRecord, RunCounts, write_json


class _FrameEmbedding(torch.nn.Module):
    """A cheap frame-level embedding for FAD: 3-dim statistics of 64-sample frames."""

    sample_rate = 16000

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        frames = waveform[:, : waveform.shape[-1] // 64 * 64].unflatten(-1, (-1, 64))
        return torch.stack([frames.mean(-1), frames.std(-1), frames.abs().amax(-1)], -1)


def _noise(path: Path, level: float, seed: int, n: int = 8000) -> Path:
    rng = np.random.default_rng(seed)
    sf.write(path, (level * rng.standard_normal(n)).astype(np.float32), 16000)
    return path


def _run_folder(folder: Path, statuses: dict[str, str]) -> Path:
    """A ``steer run`` folder: per id a source clip, a record of the given status and, for done
    ones, the edit ``<id>.wav``."""
    (folder / "records").mkdir(parents=True)
    for i, (name, status) in enumerate(statuses.items()):
        source = _noise(folder / f"src-{name}.wav", 0.3, i)
        if status == "done":
            _noise(folder / f"{name}.wav", 0.2, 100 + i)
        record = ItemRecord(
            id=name, status=status, attempt=1, rank=0, audio=str(source), edit=str(folder / f"{name}.wav"),
            source="s", target="t", concept=None, edit_type="k", recipe="steermusic", started_at="now",
        )
        write_json(folder / "records" / f"{name}.json", asdict(record))
    return folder


# -- 3: any edit type name ------------------------------------------------------------------------
def test_an_edit_type_named_all_is_a_group_of_its_own(tmp_path):
    """Two identical copies typed "all" and two others typed "zz": FAD was 0.0158 in all three
    rows (the type's metrics overwrote the overall set and were merged into themselves)."""
    pairs = []
    for i, kind in enumerate(["all", "all", "zz", "zz"]):
        source = _noise(tmp_path / f"s{i}.wav", 0.3, i)
        edit = source if kind == "all" else _noise(tmp_path / f"e{i}.wav", 0.1, 10 + i)
        pairs.append(Pair(f"x{i}", kind, source, edit, "t"))
    fad = FrechetAudioDistance(sample_rate=16000, embedding=_FrameEmbedding())
    scores = score_pairs(pairs, {"fad": fad}, sample_rate=16000)
    assert scores.by_type["all"]["fad"] == 0.0
    zz, overall = scores.by_type["zz"]["fad"], scores.overall["fad"]
    assert zz > overall > 0
    rows = aggregate([(p.edit_type, {}) for p in pairs], ["fad"], by_type=scores.by_type, overall=scores.overall)
    assert [(r["edit_type"], r["overall"], r["n"], r["fad"]) for r in rows] == [
        ("all", False, 2, 0.0), ("zz", False, 2, zz), ("all", True, 4, overall)
    ]
    labels = [line.split(" | ")[0] for line in markdown_table(rows, ["fad"]).splitlines()[2:]]
    assert labels == ['| "all"', "| zz", "| all"]


def test_items_without_a_type_and_a_type_named_none_stay_apart():
    rows = aggregate([(None, {"m": 1.0}), ("(none)", {"m": 3.0}), ("a|b", {"m": 5.0})], ["m"])
    assert [(r["edit_type"], r["m"]) for r in rows] == [(None, 1.0), ("(none)", 3.0), ("a|b", 5.0), ("all", 3.0)]
    labels = [line.split(" | ")[0] for line in markdown_table(rows, ["m"]).splitlines()[2:]]
    assert labels == ["| (none)", '| "(none)"', '| "a\\|b"', "| all"]


def test_edit_types_a_table_would_show_alike_or_break_are_quoted():
    """"genre " (a cell trims it), "café" composed and decomposed, and a type ending in a
    backslash (it escaped the cell's pipe, shifting the columns) read as written."""
    import unicodedata

    kinds = ["genre", "genre ", unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café"), "strings\\"]
    rows = aggregate([(kind, {"m": float(i)}) for i, kind in enumerate(kinds)], ["m"])
    lines = markdown_table(rows, ["m"]).splitlines()[2:]
    assert lines[-1].startswith("| all | 5 | 2.0000 |")
    labels = {line.split(" | ")[2]: line.split(" | ")[0].removeprefix("| ") for line in lines[:-1]}  # by value
    assert labels == {
        "0.0000": "genre", "1.0000": '"genre "', "2.0000": "café",
        "3.0000": '"' + unicodedata.normalize("NFD", "café") + '"', "4.0000": '"strings\\\\"',
    }
    assert all(line.count(" | ") == 3 for line in lines)  # label, n, value, NaN count


def test_a_table_of_items_without_types_has_the_overall_row_alone():
    """It printed a "(none)" row and an "all" row of the same numbers."""
    rows = aggregate([(None, {"m": 1.0}), (None, {"m": 3.0})], ["m"])
    assert len(rows) == 2  # eval.json keeps both
    assert markdown_table(rows, ["m"]).splitlines()[2:] == ["| all | 2 | 2.0000 | 0 |"]


# -- 6: one bad item does not stop steer eval ---------------------------------------------------
@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda folder: (folder / "b.wav").unlink(), r"^b is not scored: its edit file is missing: .*/run/b\.wav;"),
        (lambda folder: (folder / "b.wav").write_bytes(b""), r"^b is not scored: its edit file cannot be read \("),
        (lambda folder: (folder / "src-b.wav").unlink(), r"^b is not scored: its source file is missing: .*/src-b\.wav;"),
    ],
    ids=["edit deleted", "edit emptied", "source deleted"],
)
def test_a_missing_or_unreadable_file_leaves_its_item_unscored_and_the_rest_is_scored(tmp_path, spoil, message):
    folder = _run_folder(tmp_path / "run", {"a": "done", "b": "done", "c": "done"})
    spoil(folder)
    with pytest.warns(RuntimeWarning, match=message):
        assert main(["eval", str(folder), "--device", "cpu", "--metrics", "log_mel"]) == 0
    result = json.loads((folder / "eval.json").read_text())
    assert result["items"]["b"] == {"log_mel": None} and list(result["unscored"]) == ["b"]
    assert result["items"]["a"]["log_mel"] is not None and result["groups"][-1]["log_mel_nan"] == 1


def test_nothing_scorable_is_an_error_naming_the_folder(tmp_path, capsys):
    folder = _run_folder(tmp_path / "run", {"a": "done", "b": "done"})
    for name in "ab":
        (folder / f"{name}.wav").unlink()
    with pytest.warns(RuntimeWarning, match="is not scored"):
        assert main(["eval", str(folder), "--device", "cpu"]) == 2
    assert f"steer: error: no edit in {folder} could be scored (2 tried; first: a: its edit file is missing" in (
        capsys.readouterr().err
    )
    assert not (folder / "eval.json").exists()


def test_a_run_summary_scores_the_set_metrics_without_an_item_whose_source_is_gone(tmp_path):
    """steer run --metrics fad stopped at "input file not found" and left a stale summary.json."""
    folder = _run_folder(tmp_path / "run", {f"x{i}": "done" for i in range(4)})
    (folder / "src-x1.wav").unlink()
    items = [EditItem(f"x{i}", folder / f"src-x{i}.wav", "s", "t", edit_type="k") for i in range(4)]
    fad = FrechetAudioDistance(sample_rate=16000, embedding=_FrameEmbedding())
    with pytest.warns(RuntimeWarning, match=r"^x1 is not scored: its source file is missing"):
        summary = write_run_summary(folder, items, [], RunCounts(4, 0, 0), set_metrics={"fad": fad})
    assert math.isfinite(summary["groups"][-1]["fad"])
    assert json.loads((folder / "summary.json").read_text()) == summary


def test_a_diverged_source_leaves_its_item_unscored(tmp_path):
    source = tmp_path / "s.wav"
    sf.write(source, np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")
    pairs = [Pair("x", None, source, _noise(tmp_path / "e.wav", 0.2, 0), "t")]
    with pytest.warns(RuntimeWarning, match=r"^x is not scored: its source holds NaN or infinite samples"):
        scores = score_pairs(pairs, {"log_mel": LogMelDistance(sample_rate=16000)}, sample_rate=16000)
    assert math.isnan(scores.items["x"]["log_mel"]) and set(scores.unscored) == {"x"}


# -- 9: every folder is checked before any is scored -------------------------------------------
def test_a_folder_with_nothing_to_evaluate_is_named_before_any_is_scored(tmp_path, capsys):
    good = _run_folder(tmp_path / "rs", {"a": "done", "b": "done"})
    failed = _run_folder(tmp_path / "rp", {"a": "failed", "b": "failed"})
    assert main(["eval", str(good), str(failed), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (
        f"steer: error: {failed} has no finished edit to evaluate: none of its 2 records is done (2 failed); "
        "rerun 'steer run' there or leave the folder out\n"
    )
    assert not (good / "eval.json").exists()


def test_a_folder_that_cannot_be_scored_stops_them_all_before_any_is_written(tmp_path, capsys):
    """Its edits all unreadable, the second folder used to fail once the first's eval.json was written."""
    good = _run_folder(tmp_path / "rs", {"a": "done", "b": "done"})
    spoilt = _run_folder(tmp_path / "rp", {"a": "done", "b": "done"})
    for name in "ab":
        (spoilt / f"{name}.wav").write_bytes(b"")
    with pytest.warns(RuntimeWarning, match="is not scored"):
        assert main(["eval", str(good), str(spoilt), "--device", "cpu", "--metrics", "log_mel"]) == 2
    assert f"steer: error: no edit in {spoilt} could be scored" in capsys.readouterr().err
    assert not (good / "eval.json").exists() and not (good / "eval.md").exists()
    (spoilt / "a.wav").unlink()
    _noise(spoilt / "a.wav", 0.2, 7)
    with pytest.warns(RuntimeWarning, match="^b is not scored"):
        assert main(["eval", str(good), str(spoilt), "--device", "cpu", "--metrics", "log_mel"]) == 0
    assert "1 item(s) could not be scored in" in (spoilt / "eval.md").read_text()
    assert (good / "eval.json").exists()


@pytest.mark.parametrize(
    "name, found, fix",
    [
        ("{}.flac", "a.flac, b.flac", "convert the edits to .wav"),
        ("edit_{}.wav", "edit_a.wav, edit_b.wav", "name each edit <id>.wav"),  # wavs: nothing to convert
    ],
    ids=["flac", "wav named otherwise"],
)
def test_edits_not_named_id_wav_are_described(tmp_path, capsys, name, found, fix):
    (tmp_path / "edits").mkdir()
    rows = []
    for item in "ab":
        _noise(tmp_path / f"{item}.wav", 0.3, 0)
        _noise(tmp_path / "edits" / name.format(item), 0.3, 0)
        rows.append(json.dumps({"id": item, "audio": f"{item}.wav", "source": "x", "target": "y"}) + "\n")
    (tmp_path / "m.jsonl").write_text("".join(rows))
    args = ["eval", "--manifest", str(tmp_path / "m.jsonl"), "--edits", str(tmp_path / "edits")]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"steer: error: {tmp_path / 'edits'} holds no edit of the manifest's 2 item(s): steer eval reads "
        f"<id>.wav (e.g. a.wav) and found 2 file(s): {found}; {fix}\n"
    )


def test_runs_whose_means_count_different_items_are_told_apart_when_one_item_is_unscored():
    """Both runs list items x and y, but in run b y is unscored (NaN in every metric): their
    means are over different clips, which the line under the table says."""

    def result(values: dict[str, float], unscored: dict[str, str]) -> dict:
        rows = aggregate([("k", {"m": v}) for v in values.values()], ["m"])
        return {"groups": rows, "items": {i: {"m": v} for i, v in values.items()}, "unscored": unscored}

    same = {"a": result({"x": 1.0, "y": 2.0}, {}), "b": result({"x": 1.0, "y": 3.0}, {})}
    assert "different" not in comparison_table(same, ["m"])
    one_unscored = {**same, "b": result({"x": 1.0, "y": math.nan}, {"y": "its edit file is missing"})}
    assert comparison_table(one_unscored, ["m"]).endswith(
        "\nThe runs scored different items (a 2, b 1; 1 in all of them): their means are over different clips.\n"
    )
    piped = comparison_table({"run|x": same["a"], "b": same["b"]}, ["m"]).splitlines()
    assert piped[2].startswith("| run\\|x | k |") and piped[2].count(" | ") == piped[0].count(" | ")  # the cell held


# -- a run folder the scorer cannot write to -------------------------------------------------------
def test_eval_out_takes_the_report_of_a_folder_that_cannot_be_written(tmp_path, capsys, monkeypatch):
    run = _run_folder(tmp_path / "run", {"a": "done", "b": "done"})
    args = ["eval", str(run), "--device", "cpu", "--metrics", "log_mel"]
    assert main(args) == 0
    expected = json.loads((run / "eval.json").read_text())
    (run / "eval.json").unlink()
    (run / "eval.md").unlink()
    capsys.readouterr()

    # as root a read-only folder is written all the same: refuse files there as the OS would
    made = tempfile.NamedTemporaryFile

    def no_file_in_run(*a, dir=None, **k):
        if dir is not None and Path(dir) == run:
            raise PermissionError(13, "Permission denied")
        return made(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", no_file_in_run)
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"steer: error: cannot write {run / 'eval.json'}: no file can be created in {run} (Permission denied): "
        "choose a folder you can write to, or pass --out to write the report to another folder\n"
    )
    (run / "eval.json").write_text("its owner's")  # --overwrite would not help: --out is named first
    assert main(args) == 2
    assert "or pass --out to write the report to another folder" in capsys.readouterr().err
    (run / "eval.json").unlink()
    assert main([*args, "--out", str(tmp_path / "report")]) == 0
    assert f"wrote {tmp_path / 'report' / 'eval.json'} and {tmp_path / 'report' / 'eval.md'}" in capsys.readouterr().out
    assert json.loads((tmp_path / "report" / "eval.json").read_text()) == expected
    assert sorted(p.name for p in run.iterdir()) == ["a.wav", "b.wav", "records", "src-a.wav", "src-b.wav"]


def test_eval_out_gives_several_folders_one_subfolder_each_and_refuses_folders_named_alike(tmp_path, capsys):
    first = _run_folder(tmp_path / "zeta", {"a": "done"})
    second = _run_folder(tmp_path / "sdedit", {"a": "done"})
    out = tmp_path / "reports"
    assert main(["eval", str(first), str(second), "--device", "cpu", "--metrics", "log_mel", "--out", str(out)]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "sdedit", "sdedit/eval.json", "sdedit/eval.md", "zeta", "zeta/eval.json", "zeta/eval.md"
    ]
    assert not (first / "eval.json").exists() and not (second / "eval.json").exists()
    # the tables are outputs like any other: not replaced without --overwrite
    assert main(["eval", str(first), "--device", "cpu", "--metrics", "log_mel", "--out", str(out / "zeta")]) == 2
    assert f"{out / 'zeta' / 'eval.json'} exists; pass --overwrite" in capsys.readouterr().err

    alike = _run_folder(tmp_path / "again" / "zeta", {"a": "done"})
    assert main(["eval", str(first), str(alike), "--device", "cpu", "--out", str(tmp_path / "new")]) == 2
    assert capsys.readouterr().err == (
        "steer: error: --out: several scored folders are named 'zeta', and each one's report goes to "
        f"{tmp_path / 'new'}/<folder name>: score them one at a time, each with its own --out\n"
    )
    assert not (tmp_path / "new").exists()
    # told apart as a file system blind to case would (macOS's: one folder for both reports)
    cased = _run_folder(tmp_path / "other" / "Zeta", {"a": "done"})
    assert main(["eval", str(first), str(cased), "--device", "cpu", "--out", str(tmp_path / "new")]) == 2
    assert "several scored folders are named 'Zeta' and 'zeta' (one name where case is not told apart)," in (
        capsys.readouterr().err
    )


def test_eval_out_is_made_only_when_the_reports_are_written(tmp_path, capsys, monkeypatch):
    """The --out folders were made before the checks and the scoring: a refused or interrupted
    eval left empty report folders behind."""
    first = _run_folder(tmp_path / "zeta", {"a": "done"})
    second = _run_folder(tmp_path / "sdedit", {"a": "done"})
    args = ["eval", str(first), str(second), "--device", "cpu", "--metrics", "log_mel"]
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "sdedit").mkdir()
    (taken / "sdedit" / "eval.md").write_text("mine")
    assert main([*args, "--out", str(taken)]) == 2
    assert f"{taken / 'sdedit' / 'eval.md'} exists; pass --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in taken.iterdir()) == ["sdedit"]  # no "zeta" made for nothing

    paper = tmp_path / "paper"
    paper.write_text("mine")
    assert main([*args, "--out", str(paper)]) == 2
    assert capsys.readouterr().err == f"steer: error: --out {paper} is a file: name a folder\n"
    assert main([*args, "--out", str(paper / "reports")]) == 2
    assert capsys.readouterr().err == (
        f"steer: error: --out folder {paper / 'reports' / 'zeta'} cannot be a folder: {paper} is a file; "
        "choose another --out\n"
    )
    assert paper.read_text() == "mine"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("steer.evaluate.evaluate", interrupted)
    assert main([*args, "--out", str(tmp_path / "reports")]) == 130
    assert "only the eval.json and eval.md it said it wrote were written" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()


def test_eval_out_names_a_linked_folder_s_report_by_the_link(tmp_path, capsys):
    """The subfolder is named as the folder was given: a link (``runs/latest``) by its own name."""
    first = _run_folder(tmp_path / "zeta", {"a": "done"})
    (tmp_path / "latest").symlink_to(first)
    second = _run_folder(tmp_path / "sdedit", {"a": "done"})
    out = tmp_path / "reports"
    cmd = ["eval", str(tmp_path / "latest"), str(second), "--device", "cpu", "--metrics", "log_mel", "--out", str(out)]
    assert main(cmd) == 0
    assert sorted(p.name for p in out.iterdir()) == ["latest", "sdedit"]
