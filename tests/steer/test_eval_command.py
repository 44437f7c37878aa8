"""``steer eval``: a manifest plus a folder of edits, scored per edit type with NaN counts."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import soundfile as sf
import torch

from steer.cli import main
from steer.metrics import cqt1_pcc, log_mel_distance


def _chirp(f0: float, n: int = 24000, rate: int = 16000) -> np.ndarray:
    t = np.arange(n) / rate
    return (0.3 * np.sin(2 * np.pi * f0 * t * (1 + t))).astype(np.float32)


@pytest.fixture()
def edits(tmp_path):
    """Three sources, their edits (one silent: no melody, CQT-1 PCC is NaN) and a manifest."""
    (tmp_path / "edits").mkdir()
    clips = {"a": (220, 230, "timbre"), "b": (330, 500, "timbre"), "c": (440, None, "genre")}
    rows, pairs = [], {}
    for name, (f_source, f_edit, kind) in clips.items():
        source = _chirp(f_source)
        edit = _chirp(f_edit) if f_edit else np.zeros(24000, np.float32)
        sf.write(tmp_path / f"{name}.wav", source, 16000, subtype="FLOAT")
        sf.write(tmp_path / "edits" / f"{name}.wav", edit, 16000, subtype="FLOAT")
        rows.append({"id": name, "audio": f"{name}.wav", "source": "x", "target": "y", "edit_type": kind})
        pairs[name] = source, edit
    rows.append({"id": "d", "audio": "a.wav", "source": "x", "target": "y", "edit_type": "genre"})  # no edit
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path, pairs


def test_eval_equals_the_metrics_computed_directly(edits, capsys):
    folder, pairs = edits
    args = ["eval", "--manifest", str(folder / "m.jsonl"), "--edits", str(folder / "edits"), "--device", "cpu"]
    assert main(args) == 0
    result = json.loads((folder / "edits" / "eval.json").read_text())
    expected = {
        name: {"cqt1_pcc": cqt1_pcc(s, e), "log_mel": log_mel_distance(e, s)} for name, (s, e) in pairs.items()
    }
    assert math.isnan(expected["c"]["cqt1_pcc"])
    for name, values in expected.items():
        for metric, value in values.items():
            got = result["items"][name][metric]
            assert got is None if math.isnan(value) else got == pytest.approx(value, abs=1e-6)
    rows = {row["edit_type"]: row for row in result["groups"]}
    assert [row["edit_type"] for row in result["groups"]] == ["genre", "timbre", "all"]
    assert (rows["timbre"]["n"], rows["genre"]["n"], rows["all"]["n"]) == (2, 1, 3)
    assert rows["timbre"]["cqt1_pcc"] == pytest.approx((expected["a"]["cqt1_pcc"] + expected["b"]["cqt1_pcc"]) / 2)
    assert (rows["genre"]["cqt1_pcc"], rows["genre"]["cqt1_pcc_nan"], rows["all"]["cqt1_pcc_nan"]) == (None, 1, 1)
    assert rows["all"]["log_mel"] == pytest.approx(np.mean([v["log_mel"] for v in expected.values()]))
    assert result["missing"] == ["d"]
    printed = capsys.readouterr().out
    assert "| genre | 1 | — | 1 |" in printed and "1 item(s) have no edit" in printed
    assert (folder / "edits" / "eval.md").read_text() in printed
    # the tables are outputs like any other: not replaced without --overwrite
    assert main(args) == 2
    assert main([*args, "--overwrite"]) == 0


def test_eval_takes_threads_as_the_editing_commands_do(edits, monkeypatch):
    folder, _ = edits
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)  # this process's own stay as they are
    args = ["eval", "--manifest", str(folder / "m.jsonl"), "--edits", str(folder / "edits"), "--device", "cpu"]
    assert main([*args, "--threads", "1"]) == 0 and threads == [1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--manifest", "m.jsonl"], "--manifest and --edits go together"),
        ([], "give 'steer run' folders, or --manifest and --edits"),
        (["nowhere"], "folder not found"),
        (["m.jsonl"], "m.jsonl is a file, not a 'steer run' folder: to score a manifest's edits, pass --manifest m.jsonl --edits FOLDER"),
        (["edits"], "holds no records/"),
        (["--metrics", "nope", "edits"], "unknown metric 'nope'"),
        (["--threads", "0", "edits"], "--threads must be between 1 and"),
    ],
)
def test_eval_usage_errors(edits, args, message, capsys, monkeypatch):
    folder, _ = edits
    monkeypatch.chdir(folder)
    assert main(["eval", *args]) == 2
    assert message in capsys.readouterr().err


class _FrameEmbedding(torch.nn.Module):
    """A cheap frame-level embedding for FAD: 4-dim statistics of 64-sample frames; counts calls."""

    sample_rate = 16000

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, waveform):
        self.calls += 1
        frames = waveform[:, : waveform.shape[-1] // 64 * 64].unflatten(-1, (-1, 64))
        return torch.stack([frames.mean(-1), frames.std(-1), frames.abs().amax(-1), frames.diff(dim=-1).std(-1)], -1)


def test_set_metrics_embed_each_clip_once_and_all_merges_the_groups(tmp_path):
    from steer.evaluate import Pair, score_pairs
    from steer.metrics import FrechetAudioDistance

    rng = np.random.default_rng(0)
    pairs = []
    for i, group in enumerate("aabbb"):
        paths = []
        for kind, level in (("src", 0.3), ("edit", 0.2 + 0.05 * i)):
            paths.append(tmp_path / f"{kind}{i}.wav")
            sf.write(paths[-1], (level * rng.standard_normal(8000)).astype(np.float32), 16000)
        pairs.append(Pair(f"x{i}", group, paths[0], paths[1], "t"))
    embedding = _FrameEmbedding()
    fad = FrechetAudioDistance(sample_rate=16000, embedding=embedding)
    scores = score_pairs(pairs, {"fad": fad}, sample_rate=16000)
    assert embedding.calls == 2 * len(pairs)  # edited and source of each pair, once
    direct = FrechetAudioDistance(sample_rate=16000, embedding=_FrameEmbedding())
    for pair in pairs:
        edited, source = (torch.from_numpy(sf.read(p, dtype="float32")[0])[None] for p in (pair.edit, pair.source))
        direct.update(edited, source)
    assert math.isclose(scores.overall["fad"], float(direct.compute()), rel_tol=1e-9)
    assert scores.by_type["a"]["fad"] != scores.by_type["b"]["fad"]


def test_an_edit_type_too_small_for_fad_is_left_empty_and_the_others_are_scored(tmp_path):
    from steer.evaluate import Pair, score_pairs
    from steer.metrics import FrechetAudioDistance

    class ClipEmbedding(_FrameEmbedding):  # one row per clip: a single clip has no covariance
        def forward(self, waveform):
            return super().forward(waveform).mean(1)

    rng = np.random.default_rng(0)
    pairs = []
    for i, group in enumerate("abbb"):
        paths = [tmp_path / f"{kind}{i}.wav" for kind in ("src", "edit")]
        for path, level in zip(paths, (0.3, 0.2 + 0.05 * i)):
            sf.write(path, (level * rng.standard_normal(8000)).astype(np.float32), 16000)
        pairs.append(Pair(f"x{i}", group, *paths, "t"))
    fad = FrechetAudioDistance(sample_rate=16000, embedding=ClipEmbedding())
    with pytest.warns(RuntimeWarning, match="fad of edit type 'a' is left empty: FAD needs at least 2"):
        scores = score_pairs(pairs, {"fad": fad}, sample_rate=16000)
    assert math.isnan(scores.by_type["a"]["fad"])
    b, overall = scores.by_type["b"]["fad"], scores.overall["fad"]
    assert math.isfinite(b) and math.isfinite(overall) and b != overall


def test_every_clip_is_scored_at_one_rate_whatever_else_the_folder_holds(edits):
    """A pair's score was taken at the rate of the folder's first edit: 0.90 or 0.81 as that
    edit was at 44.1 or 16 kHz. Now each clip is resampled to 16 kHz (SCORING_RATE)."""
    from steer.evaluate import Pair, evaluate

    folder, pairs = edits
    source, edit = pairs["b"]
    loud = folder / "edits" / "a44.wav"  # another pair's edit at 44.1 kHz, listed first
    sf.write(loud, np.interp(np.arange(66150) / 44100, np.arange(24000) / 16000, pairs["a"][1]), 44100, subtype="FLOAT")
    b = Pair("b", "timbre", folder / "b.wav", folder / "edits" / "b.wav", "y")
    a = Pair("a", "timbre", folder / "a.wav", loud, "y")
    alone = evaluate([b], ["log_mel"])["items"]["b"]["log_mel"]
    mixed = evaluate([a, b], ["log_mel"])["items"]["b"]["log_mel"]
    assert alone == mixed == pytest.approx(log_mel_distance(torch.from_numpy(edit), torch.from_numpy(source)))


def test_edits_shorter_or_longer_than_their_source_are_named_in_a_warning(edits):
    """The metrics compare the common start of a pair: a 0.5-s edit of a 1.5-s source was scored
    on its first 0.5 s without a word."""
    from steer.evaluate import Pair, score_pairs
    from steer.metrics import LogMelDistance

    folder, _ = edits
    sf.write(folder / "edits" / "short.wav", _chirp(230, n=8000), 16000, subtype="FLOAT")
    sf.write(folder / "edits" / "near.wav", _chirp(230, n=24000 - 400), 16000, subtype="FLOAT")  # 25 ms: resampling's kind
    metrics = {"log_mel": LogMelDistance(sample_rate=16000)}
    pairs = [Pair("short", None, folder / "a.wav", folder / "edits" / "short.wav", "y"),
             Pair("near", None, folder / "a.wav", folder / "edits" / "near.wav", "y"),
             Pair("a", None, folder / "a.wav", folder / "edits" / "a.wav", "y")]
    with pytest.warns(RuntimeWarning, match=r"^1 edit\(s\) differ in duration .*: short \(0.50 s edit, 1.50 s source\)$"):
        items = score_pairs(pairs, metrics, sample_rate=16000).items
    assert items["short"]["log_mel"] == pytest.approx(log_mel_distance(_chirp(230, n=8000), _chirp(220)[:8000]), abs=1e-6)


def test_a_too_short_clip_or_a_diverged_edit_gets_nan_metrics_and_the_rest_is_scored(edits, capsys):
    """One 200-sample clip stopped `steer eval` (log-mel: "clips must hold at least 1024 samples"),
    and so did an edit holding NaN (load_audio refuses it), with no item named and nothing written."""
    folder, pairs = edits
    sf.write(folder / "tiny.wav", _chirp(440, n=200), 16000, subtype="FLOAT")
    sf.write(folder / "edits" / "tiny.wav", _chirp(450, n=200), 16000, subtype="FLOAT")
    diverged = _chirp(440)
    diverged[10] = np.nan
    sf.write(folder / "edits" / "nan.wav", diverged, 16000, subtype="FLOAT")
    rows = [{"id": "tiny", "audio": "tiny.wav", "source": "x", "target": "y", "edit_type": "genre"},
            {"id": "nan", "audio": "a.wav", "source": "x", "target": "y", "edit_type": "timbre"}]
    with (folder / "m.jsonl").open("a") as manifest:
        manifest.write("".join(json.dumps(r) + "\n" for r in rows))
    args = ["eval", "--manifest", str(folder / "m.jsonl"), "--edits", str(folder / "edits"), "--device", "cpu"]
    with pytest.warns(RuntimeWarning) as caught:
        assert main(args) == 0
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("tiny: log-mel distance is NaN: a clip of 0.013 s is too short") for m in messages)
    assert any(m.startswith("tiny: CQT-1 PCC is NaN: a clip of 0.013 s is too short") for m in messages)
    assert any(
        m.startswith("nan is not scored: its edit holds NaN or infinite samples") and "its per-clip metrics are NaN" in m
        for m in messages
    )
    result = json.loads((folder / "edits" / "eval.json").read_text())
    assert result["items"]["tiny"] == result["items"]["nan"] == {"cqt1_pcc": None, "log_mel": None}
    for name, (source, edit) in pairs.items():
        assert result["items"][name]["log_mel"] == pytest.approx(log_mel_distance(edit, source), abs=1e-6)
    rows = {row["edit_type"]: row for row in result["groups"]}
    assert (rows["all"]["n"], rows["all"]["log_mel_nan"], rows["all"]["cqt1_pcc_nan"]) == (5, 2, 3)
    assert (rows["timbre"]["log_mel_nan"], rows["genre"]["log_mel_nan"]) == (1, 1)
    assert rows["all"]["log_mel"] == pytest.approx(np.mean([log_mel_distance(e, s) for s, e in pairs.values()]))


def test_a_diverged_edit_is_left_out_of_the_set_metrics_and_named(edits):
    from steer.evaluate import Pair, score_pairs
    from steer.metrics import FrechetAudioDistance, LogMelDistance

    folder, _ = edits
    diverged = _chirp(300)
    diverged[5:9] = np.inf
    sf.write(folder / "edits" / "inf.wav", diverged, 16000, subtype="FLOAT")
    scored = [Pair(name, "t", folder / f"{name}.wav", folder / "edits" / f"{name}.wav", "y") for name in "abc"]
    pairs = [*scored[:1], Pair("inf", "t", folder / "b.wav", folder / "edits" / "inf.wav", "y"), *scored[1:]]
    metrics = {"log_mel": LogMelDistance(sample_rate=16000),
               "fad": FrechetAudioDistance(sample_rate=16000, embedding=_FrameEmbedding())}
    with pytest.warns(RuntimeWarning, match=r"^inf is not scored: .* left out of the set-level metrics \(fad\)"):
        scores = score_pairs(pairs, metrics, sample_rate=16000)
    assert list(scores.items) == ["a", "inf", "b", "c"] and math.isnan(scores.items["inf"]["log_mel"])
    expected = score_pairs(scored, metrics, sample_rate=16000)
    assert {k: v for k, v in scores.items.items() if k != "inf"} == expected.items
    assert scores.overall["fad"] == expected.overall["fad"] and math.isfinite(scores.overall["fad"])


def test_a_run_summary_shows_the_set_metrics_it_computes(tmp_path):
    """write_run_summary(out, items, [], counts, set_metrics={"fad": ...}) computed FAD and left it
    out: the metric names came from the records only."""
    from steer.evaluate import write_run_summary
    from steer.manifest import EditItem
    from steer.metrics import FrechetAudioDistance
    from steer.runner import ItemRecord, RunCounts, write_json

    (tmp_path / "records").mkdir()
    items, rng = [], np.random.default_rng(1)
    for i in range(4):
        sf.write(tmp_path / f"src{i}.wav", (0.3 * rng.standard_normal(8000)).astype(np.float32), 16000)
        sf.write(tmp_path / f"x{i}.wav", (0.2 * rng.standard_normal(8000)).astype(np.float32), 16000)
        items.append(EditItem(f"x{i}", tmp_path / f"src{i}.wav", "s", "t", None, "k"))
        record = ItemRecord(
            id=f"x{i}", status="done", attempt=1, rank=0, audio=str(tmp_path / f"src{i}.wav"),
            edit=str(tmp_path / f"x{i}.wav"), source="s", target="t", concept=None, edit_type="k",
            recipe="steermusic", started_at="now", metrics={"log_mel": 0.5 + i},
        )
        write_json(tmp_path / "records" / f"x{i}.json", asdict(record))
    fad = FrechetAudioDistance(sample_rate=16000, embedding=_FrameEmbedding())
    summary = write_run_summary(tmp_path, items, [], RunCounts(4, 0, 0), set_metrics={"fad": fad})
    assert summary["metrics"] == ["log_mel", "fad"]
    everything = summary["groups"][-1]
    assert everything["log_mel"] == 2.0 and math.isfinite(everything["fad"]) and everything["fad"] > 0
    assert "| log_mel | log_mel NaN | fad | fad NaN |" in (tmp_path / "summary.md").read_text()


def test_missing_edits_there_in_another_format_are_named_with_how_to_convert_them(edits, capsys):
    """c2.flac beside c0.wav and c1.wav was counted missing without a word of why: the hint to
    convert came only when no edit at all was a .wav."""
    from steer.evaluate import pairs_from_manifest

    folder, _ = edits
    sf.write(folder / "edits" / "d.flac", _chirp(230), 16000)
    (folder / "edits" / "d.json").write_text("{}")  # not audio: never named
    message = (
        f"1 missing edit(s) are in {folder / 'edits'} in another format, which steer eval does not read (it "
        f"reads <id>.wav): d.flac; convert them to <id>.wav, e.g. ffmpeg -i {folder / 'edits' / 'd.flac'} "
        f"{folder / 'edits' / 'd.wav'}"
    )
    with pytest.warns(RuntimeWarning) as caught:
        pairs, missing = pairs_from_manifest(folder / "m.jsonl", folder / "edits")
    assert [str(w.message) for w in caught] == [message]
    assert [pair.id for pair in pairs] == ["a", "b", "c"] and missing == ["d"]
    from steer.evaluate import _other_formats  # soundfile's formats under other suffixes too

    assert _other_formats(["d.aif", "d.aifc", "d.oga", "d.snd", "d.txt"], ["d"]) == ["d.aif", "d.aifc", "d.oga", "d.snd"]
