"""``steer run``: manifests (ours and ZoME-Bench's), failures, resuming after a kill, sharding."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from backbones import load_backbone
from steer.cli import SWAP_BACKBONE, main
from steer.manifest import EditItem, read_edit_manifest
from steer.performance import Performance
from steer.runner import ManifestRunner, read_record

REPOSITORY = Path(__file__).resolve().parents[2]
SOURCE, TARGET = "a recording of a piano", "a recording of a violin"


def _clip(path: Path, f0: float, seconds: float = 0.5) -> Path:
    t = np.arange(round(seconds * 16000)) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * f0 * t * (1 + t))).astype(np.float32), 16000)
    return path


def _manifest(folder: Path, n: int, *, seconds: float = 0.5, extra: dict | None = None) -> Path:
    rows = []
    for i in range(n):
        _clip(folder / f"c{i}.wav", 220 + 30 * i, seconds)
        rows.append({"id": f"c{i}", "audio": f"c{i}.wav", "source": SOURCE, "target": TARGET,
                     "edit_type": "even" if i % 2 == 0 else "odd", **(extra or {}).get(i, {})})
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _run_args(manifest: Path, out: Path, *more: str) -> list[str]:
    return ["run", str(manifest), "--out", str(out), "--backbone", str(SWAP_BACKBONE),
            "--steps", "2", "--device", "cpu", *more]


# -- manifests ------------------------------------------------------------------------------------
GOOD = {"id": "a", "audio": "a.wav", "source": "x", "target": "y"}


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not JSON"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "target"}), "missing field 'target'"),
        (json.dumps({**GOOD, "targt": "y"}), "unknown field 'targt'"),
        (json.dumps({**GOOD, "source": " "}), "field 'source' must be a non-empty string"),
        (json.dumps({**GOOD, "concept": 3}), "field 'concept' must be a non-empty string"),
        (json.dumps({**GOOD, "id": "../a"}), "field 'id' '../a' must be a file name"),
        # "letters" it said, and refused the letter ü
        (json.dumps({**GOOD, "id": "gitarre-ü"}), "field 'id' 'gitarre-ü' must be a file name: ASCII letters (a-z, A-Z), digits"),
        (json.dumps({**GOOD, "id": "a" * 252}), "field 'id' is 252 characters long, too long for a file name"),
        (json.dumps(GOOD), "field 'id' 'a' is already used at"),
        ('{"id": "b", "audio": "a.wav", "source": "x", "target": "y", "id": "c"}', "field 'id' is given twice: keep one"),
    ],
)
def test_manifest_errors_name_the_line_and_the_field(tmp_path, line, message):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({**GOOD, "id": "first"}) + "\n" + json.dumps(GOOD) + "\n\n" + line + "\n")
    with pytest.raises(ValueError) as error:
        read_edit_manifest(path)
    assert str(error.value).startswith(f"{path}:4: ") and message in str(error.value)


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("m.csv", "id,audio,source,target\na,a.wav,x,y\n",
         ("m.csv:1: not JSON (Expecting value): a manifest is JSON Lines, one JSON object per line; "
          "got 'id,audio,source,target'")),
        ("list.json", json.dumps([GOOD]) + "\n",
         ("list.json holds a JSON array, not JSON Lines: a manifest is JSON Lines, one JSON object per "
          "line; write each element of the array on its own line")),
        ("list.json", json.dumps([GOOD], indent=2) + "\n",
         "list.json holds a JSON array, not JSON Lines"),
        ("m.jsonl", json.dumps(GOOD) + "\n[1, 2]\n",
         ("m.jsonl:2: expected a JSON object, got list: a manifest is JSON Lines, one JSON object per line; "
          "got '[1, 2]'")),
    ],
)
def test_a_manifest_in_another_format_is_refused_saying_it_must_be_json_lines(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError) as error:
        read_edit_manifest(tmp_path / name)
    assert str(error.value).startswith(f"{tmp_path}/") and message in str(error.value)


def test_a_manifest_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "id": "b"}) + "\n").encode())
    assert [item.id for item in read_edit_manifest(path)] == ["a", "b"]
    path.write_bytes((json.dumps(GOOD) + "\n").encode("utf-16"))
    with pytest.raises(ValueError, match="m.jsonl is not UTF-8 text: a manifest is JSON Lines"):
        read_edit_manifest(path)


def test_manifest_paths_are_relative_to_its_folder(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "id": "b", "audio": "/abs/b.wav", "concept": "c"}) + "\n")
    assert read_edit_manifest(path) == [
        EditItem("a", tmp_path / "a.wav", "x", "y"),
        EditItem("b", Path("/abs/b.wav"), "x", "y", concept="c"),
    ]


def test_zome_bench_metadata_folder_and_file(tmp_path):
    (tmp_path / "audio").mkdir()
    _clip(tmp_path / "audio" / "-0SdAVK79lg_30_40.wav", 220)
    rows = {
        "000": {"ytid": "-0SdAVK79lg", "original_prompt": "a [piano] solo", "editing_prompt": "a [violin] solo",
                "editing_type_id": "0", "blended_word": "piano violin"},
        "001": {"ytid": "zzzzzzzzzzz", "original_prompt": "calm jazz", "editing_prompt": "calm rock",
                "editing_type_id": "3"},
    }
    (tmp_path / "ZoME-Bench.json").write_text(json.dumps(rows))
    items = read_edit_manifest(tmp_path)
    assert items == read_edit_manifest(tmp_path / "ZoME-Bench.json")
    assert items == [
        EditItem("000", tmp_path / "audio" / "-0SdAVK79lg_30_40.wav", "a piano solo", "a violin solo",
                 edit_type="change_instrument"),
        EditItem("001", tmp_path / "audio" / "zzzzzzzzzzz.wav", "calm jazz", "calm rock", edit_type="change_genre"),
    ]
    (tmp_path / "ZoME-Bench.json").write_text(json.dumps([{**rows["001"], "original_prompt": ""}]))
    with pytest.raises(ValueError, match="row 0: missing field 'original_prompt'"):
        read_edit_manifest(tmp_path / "ZoME-Bench.json")


# -- runs in this process --------------------------------------------------------------------------
def test_failing_items_are_recorded_and_the_summary_counts_them(tmp_path, capsys):
    manifest = _manifest(tmp_path, 3, seconds=1.0)
    (tmp_path / "c1.wav").write_bytes(b"RIFF garbage")  # unreadable audio
    out = tmp_path / "out"
    assert main(_run_args(manifest, out, "--metrics", "cqt1_pcc,log_mel")) == 1  # an item failed
    printed = capsys.readouterr().out
    assert "steer run: 2 done, 0 skipped, 1 failed" in printed
    lines = [line for line in printed.splitlines() if line.startswith(("steer run: c",))]  # one an item, as it ends
    assert [line.split(" in ")[0] if " done " in line else line.split(": ValueError")[0] for line in lines] == [
        "steer run: c0 done", "steer run: c1 failed (2 of 3 to edit)", "steer run: c2 done"
    ]
    assert lines[2].endswith(" s (3 of 3 to edit)")
    failed = read_record(out / "records" / "c1.json")
    assert failed.status == "failed" and "cannot read audio" in failed.error and not (out / "c1.wav").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["items"], summary["done"], summary["failed"]) == (3, 2, 0 + 1)
    assert summary["this_run"] == {"done": 2, "skipped": 0, "failed": 1}
    groups = {row["edit_type"]: row for row in summary["groups"]}
    assert [row["edit_type"] for row in summary["groups"]] == ["even", "all"] and groups["all"]["n"] == 2
    values = [read_record(out / "records" / f"c{i}.json").metrics["log_mel"] for i in (0, 2)]
    assert groups["all"]["log_mel"] == pytest.approx(sum(values) / 2)
    assert "| even | 2 |" in (out / "summary.md").read_text()
    # `steer eval` over the run folder agrees with the run's own per-clip values, and names the
    # failed item, which its means leave out (it said nothing: the run looked better than it was)
    capsys.readouterr()
    assert main(["eval", str(out), "--device", "cpu"]) == 0
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["groups"] == summary["groups"] and evaluation["missing"] == ["c1"]
    note = f"1 item(s) have no edit in {out} (first: c1); the means leave them out."
    assert note in capsys.readouterr().out and note in (out / "eval.md").read_text()
    # a rerun skips what is done and retries the failure
    assert main(_run_args(manifest, out)) == 1
    assert "steer run: 0 done, 2 skipped, 1 failed" in capsys.readouterr().out
    # without --metrics, the summary keeps the per-clip values the records hold (it dropped them)
    assert json.loads((out / "summary.json").read_text())["groups"] == summary["groups"]
    assert read_record(out / "records" / "c1.json").attempt == 2
    # resuming with other settings would mix edits in one folder: refused, nothing touched
    before = {p.name: p.read_bytes() for p in (out / "records").iterdir()}
    assert main([*_run_args(manifest, out), "--guidance", "3"]) == 2
    assert "holds edits made with other settings" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (out / "records").iterdir()} == before


def test_a_concept_is_loaded_once_and_a_bad_one_fails_only_its_items(tmp_path):
    manifest = _manifest(tmp_path, 3, extra={0: {"concept": "no/such"}, 2: {"concept": "no/such"}})
    loads = []

    def load_concept(reference):
        loads.append(reference)
        raise ValueError(f"concept not found: {reference}")

    runner = ManifestRunner(read_edit_manifest(manifest), tmp_path / "out",
                            backbone=load_backbone(str(SWAP_BACKBONE)), settings={"steps": 2},
                            load_concept=load_concept)
    counts = runner.run()
    assert (counts.done, counts.skipped, counts.failed) == (1, 0, 2) and loads == ["no/such"]
    record = read_record(tmp_path / "out" / "records" / "c2.json")
    assert record.recipe == "steermusic_plus" and "concept not found: no/such" in record.error


def test_a_batched_run_edits_each_item_as_it_is_edited_alone(tmp_path, capsys):
    """``--batch-size 2`` edits items of one length together (prompts per clip), a clip of
    another length and an unreadable one alone; each wav is the one-at-a-time run's, up to
    rounding, and the records say how many clips shared the call."""
    manifest = _manifest(tmp_path, 5, extra={1: {"target": "a recording of a flute"}})
    _clip(tmp_path / "c3.wav", 300, seconds=0.3)
    (tmp_path / "c4.wav").write_bytes(b"RIFF garbage")
    assert main(_run_args(manifest, tmp_path / "one")) == 1  # c4 failed
    assert main(_run_args(manifest, tmp_path / "two", "--batch-size", "2")) == 1
    assert "steer run: 4 done, 0 skipped, 1 failed" in capsys.readouterr().out
    records = [read_record(tmp_path / "two" / "records" / f"c{i}.json") for i in range(5)]
    assert [r.batch for r in records] == [2, 2, 1, 1, 1]
    assert [r.status for r in records] == ["done"] * 4 + ["failed"] and "cannot read audio" in records[4].error
    assert records[0].settings == read_record(tmp_path / "one" / "records" / "c0.json").settings
    for i in range(4):  # rounding in the batched calls, grown by Griffin-Lim: about -60 dB measured
        alone, batched = (sf.read(tmp_path / run / f"c{i}.wav")[0] for run in ("one", "two"))
        assert np.sqrt(np.mean((batched - alone) ** 2)) < 0.01 * np.sqrt(np.mean(alone**2))
    flute, violin = (sf.read(tmp_path / "two" / f"c{i}.wav")[0] for i in (1, 0))
    assert np.abs(flute[: len(violin)] - violin).max() > 0.01  # each clip kept its own prompt


def test_an_item_that_fails_before_its_batchs_edit_takes_none_of_its_time(tmp_path):
    """Its record had the batch's time over all its items, as if edited (and the edited one half)."""
    manifest = _manifest(tmp_path, 2)
    data, rate = sf.read(tmp_path / "c1.wav", dtype="float32")
    data[10] = np.nan
    sf.write(tmp_path / "c1.wav", data, rate, subtype="FLOAT")  # its header reads as c0's: one batch
    runner = ManifestRunner(read_edit_manifest(manifest), tmp_path / "out", backbone=load_backbone(str(SWAP_BACKBONE)),
                            settings={"steps": 2}, batch_size=2)
    counts = runner.run()
    assert (counts.done, counts.failed) == (1, 1)
    edited, failed = (read_record(tmp_path / "out" / "records" / f"c{i}.json") for i in range(2))
    assert failed.status == "failed" and "NaN" in failed.error and failed.seconds == 0.0 < edited.seconds


def test_a_batch_whose_edit_fails_fails_each_of_its_items_retried_alone(tmp_path):
    manifest = _manifest(tmp_path, 3, extra={0: {"concept": "no/such"}, 2: {"concept": "no/such"}})

    def load_concept(reference):
        raise ValueError(f"concept not found: {reference}")

    runner = ManifestRunner(read_edit_manifest(manifest), tmp_path / "out", backbone=load_backbone(str(SWAP_BACKBONE)),
                            settings={"steps": 2}, load_concept=load_concept, batch_size=2)
    counts = runner.run()
    assert (counts.done, counts.failed) == (1, 2)
    records = [read_record(tmp_path / "out" / "records" / f"c{i}.json") for i in range(3)]
    assert [(r.status, r.batch) for r in records] == [("failed", 1), ("done", 1), ("failed", 1)]
    assert all("concept not found: no/such" in records[i].error for i in (0, 2))


@pytest.mark.parametrize("recipe", ["steermusic", "sdedit"])
def test_a_bad_batch_size_is_refused_before_loading_anything(tmp_path, capsys, recipe):
    args = _run_args(_manifest(tmp_path, 1), tmp_path / "out", "--batch-size", "0", "--recipe", recipe)
    args[args.index("--backbone") + 1] = "no/such-backbone"  # never loaded
    assert main(args) == 2
    assert "--batch-size: the batch size must be a whole number >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", ["sdedit", "ddim_inversion", "ddpm_inversion"])
def test_a_batched_baseline_run_writes_the_wavs_of_one_at_a_time(tmp_path, capsys, recipe):
    """A baseline draws its noise for one clip and gives it to each, so ``--batch-size 2`` edits
    each item as it is alone: the same bits on one CPU, up to 0.63 % RMS (DDIM inversion, whose
    inversion carries the rounding on) on an AMD EPYC whose kernels round a batch of 2 otherwise;
    2 % allowed. When SDEdit and DDPM inversion drew noise for the whole batch, the second clip's
    wav was another edit: another seed's differs by 65-150 % RMS."""
    manifest = _manifest(tmp_path, 2, extra={1: {"target": "a recording of a flute"}})
    for run, size in (("one", "1"), ("two", "2")):
        assert main(_run_args(manifest, tmp_path / run, "--recipe", recipe, "--batch-size", size)) == 0
    assert [read_record(tmp_path / "two" / "records" / f"c{i}.json").batch for i in (0, 1)] == [2, 2]
    for i in (0, 1):
        alone, batched = (sf.read(tmp_path / run / f"c{i}.wav")[0] for run in ("one", "two"))
        assert np.sqrt(np.mean((batched - alone) ** 2)) < 0.02 * np.sqrt(np.mean(alone**2))


def test_steermusic_plus_needs_a_concept_before_loading_anything(tmp_path, capsys):
    manifest = _manifest(tmp_path, 2)
    args = _run_args(manifest, tmp_path / "out", "--recipe", "steermusic_plus")
    args[args.index("--backbone") + 1] = "no/such-backbone"  # never loaded
    assert main(args) == 2
    assert "needs a concept for every item; 2 have none (first: 'c0')" in capsys.readouterr().err


def test_a_default_concept_is_checked_against_every_target_before_loading_anything(tmp_path, capsys):
    manifest = _manifest(tmp_path, 2)
    args = _run_args(manifest, tmp_path / "out", "--concept", str(tmp_path / "no-such-concept"))
    args[args.index("--backbone") + 1] = "no/such-backbone"  # never loaded
    assert main(args) == 2
    assert f"--concept: no concept folder {tmp_path / 'no-such-concept'}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -- subprocesses ----------------------------------------------------------------------------------
def test_a_baseline_recipe_edits_a_manifest_and_keeps_its_folder_to_itself(tmp_path, capsys):
    """``--recipe ddpm_inversion`` edits every item with the baseline (the file is its editor's
    own edit); its records name it, and another recipe cannot resume into its folder."""
    from steer import DDPMInversion, load_audio, save_audio

    manifest = _manifest(tmp_path, 2)
    out = tmp_path / "out"
    assert main(_run_args(manifest, out, "--recipe", "ddpm_inversion")) == 0
    assert "steer run: 2 done, 0 skipped, 0 failed" in capsys.readouterr().out
    record = read_record(out / "records" / "c1.json")
    assert record.recipe == "ddpm_inversion" and record.settings["recipe"] == "ddpm_inversion"
    assert record.settings["settings"] == {"steps": 2}  # no execution path: the baselines have none
    editor = DDPMInversion(load_backbone(str(SWAP_BACKBONE)), steps=2)
    result = editor.edit(load_audio(tmp_path / "c1.wav"), source=SOURCE, target=TARGET, seed=0)
    save_audio(tmp_path / "direct.wav", result.audio[0], result.sample_rate)
    assert (out / "c1.wav").read_bytes() == (tmp_path / "direct.wav").read_bytes()
    before = {p.name: p.read_bytes() for p in (out / "records").iterdir()}
    assert main(_run_args(manifest, out, "--recipe", "sdedit")) == 2
    assert "holds edits made with other settings" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (out / "records").iterdir()} == before


def test_eval_compares_runs_in_one_table_and_says_when_they_scored_different_items(tmp_path, capsys, monkeypatch):
    """One folder per recipe, as the paper's Table 1 compares methods: ``steer eval`` scores each
    (its own eval.json / eval.md) and prints one table with a row per run and edit type; the
    metrics (a CLAP model) are built once for all (they were built again for each folder)."""
    import steer.metrics.collection

    built, build = [], steer.metrics.collection.build_metrics
    monkeypatch.setattr(steer.metrics.collection, "build_metrics", lambda *a, **k: built.append(a) or build(*a, **k))
    manifest = _manifest(tmp_path, 3)
    runs = {recipe: tmp_path / recipe for recipe in ("sdedit", "ddpm_inversion")}
    for recipe, out in runs.items():
        assert main(_run_args(manifest, out, "--recipe", recipe)) == 0
    shorter = tmp_path / "two.jsonl"  # a third run edits only two of the items
    shorter.write_text("".join(manifest.read_text().splitlines(keepends=True)[:2]))
    partial = tmp_path / "partial"
    assert main(_run_args(shorter, partial, "--recipe", "sdedit")) == 0
    capsys.readouterr()
    evaluate = ["eval", "--metrics", "log_mel", "--device", "cpu"]
    assert main([*evaluate, *map(str, runs.values())]) == 0
    printed = capsys.readouterr().out
    table = printed[printed.index("## 2 runs compared") :].splitlines()
    assert table[2] == "| run | edit type | N | log_mel | log_mel NaN |"
    rows = [line for line in table[4:] if line.startswith("| ")]
    expected = []
    for out in runs.values():
        for group in json.loads((out / "eval.json").read_text())["groups"]:
            expected.append(f"| {out} | {group['edit_type']} | {group['n']} | {group['log_mel']:.4f} | 0 |")
    assert rows == expected and len(rows) == 6  # even, odd, all per run
    assert len(built) == 1
    assert float(rows[2].split(" | ")[3]) != float(rows[5].split(" | ")[3])  # the methods differ
    assert "scored different items" not in printed
    # a run that finished fewer items: said under the table
    assert main([*evaluate, "--overwrite", str(runs["sdedit"]), str(partial)]) == 0
    printed = capsys.readouterr().out
    assert f"The runs scored different items ({runs['sdedit']} 3, {partial} 2; 2 in all of them)" in printed
    # every output is checked before anything is written; a folder twice is refused
    for name in ("eval.json", "eval.md"):
        (runs["ddpm_inversion"] / name).unlink()
    before = (runs["sdedit"] / "eval.json").read_bytes()
    assert main([*evaluate, str(runs["ddpm_inversion"]), str(runs["sdedit"])]) == 2
    assert f"{runs['sdedit'] / 'eval.json'} exists; pass --overwrite" in capsys.readouterr().err
    assert not (runs["ddpm_inversion"] / "eval.json").exists()
    assert main([*evaluate, "--overwrite", str(partial), str(partial)]) == 2
    assert "a folder is given twice" in capsys.readouterr().err
    assert (runs["sdedit"] / "eval.json").read_bytes() == before


def test_a_baseline_recipe_refuses_concepts_before_loading_anything(tmp_path, capsys):
    manifest = _manifest(tmp_path, 3, extra={1: {"concept": "my-guitar"}})
    args = _run_args(manifest, tmp_path / "out", "--recipe", "sdedit")
    args[args.index("--backbone") + 1] = "no/such-backbone"  # never loaded
    assert main(args) == 2
    assert "recipe sdedit takes no concept, but 1 item(s) name one (first: 'c1')" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}


def test_a_killed_run_resumes_and_every_item_is_edited_once(tmp_path):
    n = 5
    manifest = _manifest(tmp_path, n)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "steer.cli", *_run_args(manifest, out, "--threads", "1")]
    steps = command.index("--steps") + 1
    command[steps] = "30"  # most of a second per item: time to see records and kill mid-run
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    records = {}
    while time.monotonic() < deadline:
        records = {p.stem: read_record(p) for p in (out / "records").glob("*.json")} if out.is_dir() else {}
        if sum(r is not None and r.status == "done" for r in records.values()) >= 2:
            break
        time.sleep(0.02)
    still_running = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert still_running, "the run ended before it could be killed"
    # read again: between the last look and the kill the run may have finished or started an item
    records = {p.stem: read_record(p) for p in (out / "records").glob("*.json")}
    done_before = {i: r for i, r in records.items() if r is not None and r.status == "done"}
    started = {i for i, r in records.items() if r is not None and r.status == "running"}
    assert 2 <= len(done_before) < n
    # half-written items, as a kill during a write leaves them: a temporary file; a wav whose record
    # still says running (killed between writing the wav and its record), which the run wrote
    pending = sorted({f"c{i}" for i in range(n)} - set(done_before) - started)
    (out / f".{pending[0]}.wav.partial").write_bytes(b"half")
    (out / f"{pending[-1]}.wav").write_bytes(b"half")
    killed = dataclasses.replace(next(iter(done_before.values())), id=pending[-1], status="running", attempt=1)
    (out / "records" / f"{pending[-1]}.json").write_text(json.dumps(dataclasses.asdict(killed)))
    started.add(pending[-1])

    resumed = subprocess.run(command, env=_env(), capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(done_before)} skipped, 0 failed" in resumed.stdout
    after = {i: read_record(out / "records" / f"c{i}.json") for i in range(n)}
    assert all(r.status == "done" for r in after.values())
    for i, record in done_before.items():  # untouched by the rerun
        assert after[int(i[1:])] == record
    # every start is counted: the items done before the kill once, the one killed mid-edit twice
    assert sum(r.attempt for r in after.values()) == n + len(started)
    for i in range(n):
        info = sf.info(out / f"c{i}.wav")
        assert (info.frames, info.samplerate) == (8000, 16000)
    assert not [p.name for p in out.rglob(".*")]  # no temporary files left


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# `steer run` as `python -m steer.cli` runs it, then each process writes the names of the native
# threads it still has: the process group's (gloo's "pt_gloo_runloop") must be gone by then, or
# they race the interpreter's exit, which now and then aborted a process.
STEER_RUN_AND_LIST_THREADS = """
import os, sys
from pathlib import Path
from steer.cli import main
status = main()
tasks = Path("/proc/self/task")
names = [(task / "comm").read_text().strip() for task in tasks.iterdir()] if tasks.is_dir() else ["(unknown)"]
Path(sys.argv[sys.argv.index("--out") + 1]).parent.joinpath(f"threads-{os.environ['RANK']}.txt").write_text(" ".join(names))
sys.exit(status)
"""


def test_two_processes_under_accelerate_split_the_manifest(tmp_path):
    n = 10
    manifest = _manifest(tmp_path, n)
    out = tmp_path / "out"
    program = tmp_path / "steer_run.py"
    program.write_text(STEER_RUN_AND_LIST_THREADS)
    # accelerate's --cpu launcher starts one process unless mpirun is set up; --multi_gpu starts
    # them with torchrun, and `steer run` sets up gloo when there is no CUDA device.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), str(program)]
    # a process that aborts prints where its Python threads were
    env = {**_env(), "PYTHONFAULTHANDLER": "1"}
    done = subprocess.run([*launch, *_run_args(manifest, out, "--threads", "1")], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    # a failure's cause is above torchrun's closing report: keep the lines that name it too
    causes = [line for line in done.stderr.splitlines() if any(w in line for w in ("terminate", "rror", "abort"))]
    assert done.returncode == 0, "\n".join([*causes[:20], "...", done.stderr[-2000:]])
    records = [read_record(out / "records" / f"c{i}.json") for i in range(n)]
    assert [r.rank for r in records] == [i % 2 for i in range(n)]
    assert all(r.status == "done" and r.attempt == 1 for r in records)
    assert done.stdout.count("steer run: 10 done, 0 skipped, 0 failed") == 1  # the main process's summary
    for rank in (0, 1):  # and a line an item from each process
        assert sorted(re.findall(rf"steer run: (c\d) done in [\d.]+ s \(\d of 5 to edit on process {rank}\)", done.stdout)) == [
            f"c{i}" for i in range(rank, n, 2)
        ]
    assert json.loads((out / "summary.json").read_text())["done"] == n
    for rank in (0, 1):
        threads = (tmp_path / f"threads-{rank}.txt").read_text().split()
        if threads != ["(unknown)"]:  # where /proc lists no threads, nothing to check
            assert not [name for name in threads if name.startswith("pt_gloo")], (rank, threads)


def test_zome_bench_as_the_hub_serves_it_parquet_under_data(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    from pyarrow import parquet

    rows = [
        {"ytid": "abc", "original_prompt": "a [piano] solo", "editing_prompt": "a [violin] solo", "editing_type_id": 0},
        {"ytid": "def", "original_prompt": "calm jazz", "editing_prompt": "calm rock", "editing_type_id": 3},
    ]
    (tmp_path / "data").mkdir()
    table = pyarrow.Table.from_pylist(rows)
    parquet.write_table(table, tmp_path / "data" / "train-00000-of-00001.parquet")
    items = read_edit_manifest(tmp_path)
    assert [(i.id, i.audio, i.source, i.target, i.edit_type) for i in items] == [
        ("0000_abc", tmp_path / "audio" / "abc.wav", "a piano solo", "a violin solo", "change_instrument"),
        ("0001_def", tmp_path / "audio" / "def.wav", "calm jazz", "calm rock", "change_genre"),
    ]


def test_settings_fingerprint_keeps_only_non_default_performance_fields():
    """A Performance field added later with a default must not refuse resuming older runs."""
    from steer.performance import Performance
    from steer.runner import _non_default

    assert _non_default(Performance()) == {}
    assert _non_default(Performance(precision="bf16", compile=True)) == {"precision": "bf16", "compile": True}


def test_a_compiled_batched_run_fills_up_a_smaller_batch_instead_of_tracing_again(tmp_path, dynamo):
    """With a compiled editor, the third clip of three at ``batch_size=2`` is edited beside a
    copy of itself, by the graphs traced for the first two: no more graphs than a run of two
    clips traces, and its edit is the one it gets alone (up to rounding)."""
    from steer.performance import Performance

    backbone = load_backbone(str(SWAP_BACKBONE))
    items = read_edit_manifest(_manifest(tmp_path, 3))

    def run(out: str, items: list[EditItem], batch_size: int, compile: bool = True) -> None:
        settings = {"steps": 2, "performance": Performance(compile=compile, compile_backend="eager")}
        runner = ManifestRunner(items, tmp_path / out, backbone=backbone, settings=settings, batch_size=batch_size)
        assert runner.run().done == len(items)

    run("two", items[:2], 2)
    first = dynamo.graphs()
    run("again", items[:2], 2)  # what a new editor traces again (not the losses' maths)
    again = dynamo.graphs()
    run("three", items, 2)
    assert dynamo.graphs() - again == again - first >= 1
    assert [read_record(tmp_path / "three" / "records" / f"c{i}.json").batch for i in range(3)] == [2, 2, 1]
    run("alone", items[2:], 1, compile=False)
    alone, filled = (sf.read(tmp_path / run / "c2.wav")[0] for run in ("alone", "three"))
    assert np.sqrt(np.mean((filled - alone) ** 2)) < 0.01 * np.sqrt(np.mean(alone**2))


# -- outputs, paths and fingerprints ---------------------------------------------------------------
def test_a_run_never_overwrites_a_wav_it_did_not_write(tmp_path):
    """An item's own source clip is never written over, even with ``overwrite`` (refused before
    anything is written); a wav the run did not write is kept unless ``overwrite``; a deleted
    output is still redone on resuming."""
    backbone = load_backbone(str(SWAP_BACKBONE))
    items = read_edit_manifest(_manifest(tmp_path, 2))

    def run(out: Path, overwrite: bool = False) -> tuple[int, int, int]:
        counts = ManifestRunner(items, out, backbone=backbone, settings={"steps": 2}, overwrite=overwrite).run()
        return counts.done, counts.skipped, counts.failed

    sources = {p.name: p.read_bytes() for p in tmp_path.glob("*.wav")}
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"item 'c0' would write its edit to .*c0.wav, its own source clip"):
            run(tmp_path, overwrite)
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.wav")} == sources
    assert not (tmp_path / "records").exists()
    out = tmp_path / "out"
    out.mkdir()
    (out / "c1.wav").write_bytes(b"someone else's file")
    assert run(out) == (1, 0, 1) and run(out) == (0, 1, 1)  # a failed attempt does not make it the run's
    assert (out / "c1.wav").read_bytes() == b"someone else's file"
    assert "exists and was not written by steer run: move it away" in read_record(out / "records" / "c1.json").error
    (out / "c0.wav").unlink()
    assert run(out) == (1, 0, 1)  # its own output, deleted: redone
    assert run(out, overwrite=True) == (2, 0, 0) and sf.read(out / "c1.wav")[0].size > 0


def test_zome_bench_given_as_a_relative_folder(tmp_path, monkeypatch):
    (tmp_path / "zome" / "audio").mkdir(parents=True)
    _clip(tmp_path / "zome" / "audio" / "abc123_30_40.wav", 220)
    rows = [{"original_prompt": "a [piano] solo", "editing_prompt": "a [violin] solo", "editing_type_id": 0, "ytid": ytid}
            for ytid in ("abc123", "nothere")]
    (tmp_path / "zome" / "meta.json").write_text(json.dumps(rows))
    monkeypatch.chdir(tmp_path)
    items = read_edit_manifest("zome")
    assert [item.audio for item in items] == [Path("zome/audio/abc123_30_40.wav"), Path("zome/audio/nothere.wav")]
    assert items[0].audio.is_file()


def test_records_hold_absolute_paths_and_eval_reads_them_from_anywhere(tmp_path, monkeypatch):
    """``steer eval`` from another folder finds each edit's source, in new records (absolute
    paths) and in older ones (paths relative to the folder the run started from)."""
    from steer.evaluate import pairs_from_run

    (tmp_path / "m" / "sub").mkdir(parents=True)
    _manifest(tmp_path / "m" / "sub", 1)
    monkeypatch.chdir(tmp_path)
    items = read_edit_manifest("m/sub/manifest.jsonl")
    assert ManifestRunner(items, "out", backbone=load_backbone(str(SWAP_BACKBONE)), settings={"steps": 2}).run().done == 1
    record_path = tmp_path / "out" / "records" / "c0.json"
    record = json.loads(record_path.read_text())
    source = (tmp_path / "m" / "sub" / "c0.wav").resolve()
    assert (record["audio"], record["edit"]) == (str(source), str((tmp_path / "out" / "c0.wav").resolve()))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert [pair.source for pair in pairs_from_run(tmp_path / "out")[0]] == [source]
    record_path.write_text(json.dumps({**record, "audio": "m/sub/c0.wav", "edit": "out/c0.wav"}))  # an older record
    assert [pair.source.resolve() for pair in pairs_from_run(tmp_path / "out")[0]] == [source]
    assert [pair.source.resolve() for pair in pairs_from_run("../out")[0]] == [source]


def test_resuming_refuses_another_dtype_or_concept_and_accepts_the_backbone_by_another_path(tmp_path, monkeypatch):
    import torch

    items = read_edit_manifest(_manifest(tmp_path, 1))
    out = tmp_path / "out"
    assert ManifestRunner(items, out, backbone=load_backbone(str(SWAP_BACKBONE)), settings={"steps": 2}).run().done == 1
    concept = tmp_path / "guitar"
    concept.mkdir()
    (concept / "concept_config.json").write_text("{}")
    for backbone, default_concept in [
        (load_backbone(str(SWAP_BACKBONE), torch_dtype=torch.bfloat16), None),
        (load_backbone(str(SWAP_BACKBONE)), str(concept)),
    ]:
        runner = ManifestRunner(items, out, backbone=backbone, settings={"steps": 2}, default_concept=default_concept)
        with pytest.raises(ValueError, match="holds edits made with other settings"):
            runner.run()
    monkeypatch.chdir(SWAP_BACKBONE.parent)
    counts = ManifestRunner(items, out, backbone=load_backbone(SWAP_BACKBONE.name), settings={"steps": 2}).run()
    assert (counts.done, counts.skipped) == (0, 1)
    # a setting given at the recipe's default is the same run (--guidance 30 was refused)
    same = {"steps": 2, "guidance_scale": 30.0, "lr": 0.02, "performance": Performance()}
    counts = ManifestRunner(items, out, backbone=load_backbone(str(SWAP_BACKBONE)), settings=same).run()
    assert (counts.done, counts.skipped) == (0, 1)
    with pytest.raises(ValueError, match="holds edits made with other settings"):
        ManifestRunner(items, out, backbone=load_backbone(str(SWAP_BACKBONE)), settings={"steps": 2, "lr": 0.03}).run()
    # a concept is known by its content: moved, the same; changed in place, another
    runner = ManifestRunner(items, out, backbone=load_backbone(str(SWAP_BACKBONE)), settings={"steps": 2})
    first = runner.fingerprint_of(EditItem("x", tmp_path / "a.wav", "s", "t", concept=str(concept)))
    moved = concept.rename(tmp_path / "moved")
    assert runner.fingerprint_of(EditItem("x", tmp_path / "a.wav", "s", "t", concept=str(moved))) == first
    (moved / "concept_config.json").write_text('{"retrained": true}')
    assert ManifestRunner(items, out, backbone=load_backbone(str(SWAP_BACKBONE)), settings={"steps": 2}).fingerprint_of(
        EditItem("x", tmp_path / "a.wav", "s", "t", concept=str(moved))) != first


def test_a_manifest_concept_beside_it_is_found_from_any_folder(tmp_path, monkeypatch):
    (tmp_path / "m" / "concepts" / "guitar").mkdir(parents=True)
    path = tmp_path / "m" / "manifest.jsonl"
    path.write_text(json.dumps({**GOOD, "concept": "concepts/guitar"}) + "\n"
                    + json.dumps({**GOOD, "id": "b", "concept": "me/guitar"}) + "\n")
    monkeypatch.chdir(tmp_path)
    assert [item.concept for item in read_edit_manifest("m/manifest.jsonl")] == ["m/concepts/guitar", "me/guitar"]


def test_a_killed_batch_never_takes_a_wav_that_was_there_before_for_its_own(tmp_path, monkeypatch):
    """A batch whose first item's wav is the user's, killed mid-edit: the rerun wrote over the wav
    (its "running" record, written before the check, passed for proof that the run wrote it). Now
    the item fails on every run and the file is kept."""
    items = read_edit_manifest(_manifest(tmp_path, 2))
    out = tmp_path / "out"
    out.mkdir()
    (out / "c0.wav").write_bytes(b"the user's own c0")

    def runner() -> ManifestRunner:
        return ManifestRunner(items, out, backbone=load_backbone(str(SWAP_BACKBONE)), settings={"steps": 1},
                              batch_size=2)

    def killed(*_):  # what a kill during the edit leaves: nothing after it is written
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(ManifestRunner, "_edit_batch", killed)
        with pytest.raises(KeyboardInterrupt):
            runner().run()
    assert not (out / "records" / "c0.json").exists()  # checked before any record said running
    started = read_record(out / "records" / "c1.json")
    assert (started.status, started.owns_wav) == ("running", True)  # no wav when it began
    for attempt in (1, 2):
        counts = runner().run()
        assert (counts.done, counts.skipped, counts.failed) == (2 - attempt, attempt - 1, 1)
        record = read_record(out / "records" / "c0.json")
        assert (record.status, record.attempt, record.owns_wav) == ("failed", attempt, False)
        assert "c0.wav exists and was not written by steer run: move it away" in record.error
        assert (out / "c0.wav").read_bytes() == b"the user's own c0"
    done = read_record(out / "records" / "c1.json")
    assert (done.status, done.attempt, done.owns_wav) == ("done", 2, True)


def test_a_running_record_owns_only_a_wav_that_was_absent_or_the_runs_own_when_it_began(tmp_path, monkeypatch):
    """Killed after ``overwrite`` replaced a user's wav (or before), the record cannot say whose
    the wav is: a rerun without ``overwrite`` refuses it. A failed attempt keeps the run's own
    earlier edit its own."""
    items = read_edit_manifest(_manifest(tmp_path, 1))
    out = tmp_path / "out"
    out.mkdir()
    (out / "c0.wav").write_bytes(b"the user's own c0")
    backbone = load_backbone(str(SWAP_BACKBONE))

    def run(overwrite: bool = False) -> tuple[int, int, int]:
        counts = ManifestRunner(items, out, backbone=backbone, settings={"steps": 1}, overwrite=overwrite).run()
        return counts.done, counts.skipped, counts.failed

    def killed(*_):
        raise KeyboardInterrupt

    def failing(*_):
        raise RuntimeError("the edit failed")

    with monkeypatch.context() as patch:
        patch.setattr(ManifestRunner, "_edit_batch", killed)
        with pytest.raises(KeyboardInterrupt):
            run(overwrite=True)
    assert read_record(out / "records" / "c0.json").owns_wav is False
    assert run() == (0, 0, 1) and (out / "c0.wav").read_bytes() == b"the user's own c0"
    assert run(overwrite=True) == (1, 0, 0)
    edit = (out / "c0.wav").read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(ManifestRunner, "_edit_batch", failing)
        assert run(overwrite=True) == (0, 0, 1)  # a failed attempt: the edit stays, the run's own
    record = read_record(out / "records" / "c0.json")
    assert (record.status, record.owns_wav) == ("failed", True) and (out / "c0.wav").read_bytes() == edit
    assert run() == (1, 0, 0)


def test_every_process_refuses_other_settings_in_items_of_another_process(tmp_path):
    """Process 1 of 2 refuses a folder where item c1 (process 0's: the one finished item goes
    to the first process) was edited with other settings, before it edits or records anything:
    every process comes to the same answer."""
    items = read_edit_manifest(_manifest(tmp_path, 2))
    out = tmp_path / "out"
    backbone = load_backbone(str(SWAP_BACKBONE))
    assert ManifestRunner(items[1:], out, backbone=backbone, settings={"steps": 2}).run().done == 1
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    runner = ManifestRunner(items, out, backbone=backbone, settings={"steps": 1}, rank=1, num_processes=2)
    assert [item.id for item in runner.share()] == []  # c0 pending, c1 finished: both process 0's
    with pytest.raises(ValueError, match=r"holds edits made with other settings \(c1: settings.steps: 2 → 1\): "):
        runner.run()
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_reruns_pending_items_are_dealt_out_evenly_among_the_processes(tmp_path):
    """Items c0, c2 and c4 to redo (their wavs deleted): all were process 0's of 2, as the
    manifest's items were dealt out, and process 1 waited idle for it (long enough, the closing
    barrier timed out). The pending items are dealt out now, the finished ones likewise."""
    items = read_edit_manifest(_manifest(tmp_path, 6))
    out = tmp_path / "out"
    backbone = load_backbone(str(SWAP_BACKBONE))
    assert ManifestRunner(items, out, backbone=backbone, settings={"steps": 1}).run().done == 6
    for i in (0, 2, 4):
        (out / f"c{i}.wav").unlink()
    runners = [ManifestRunner(items, out, backbone=backbone, settings={"steps": 1}, rank=r, num_processes=2)
               for r in (0, 1)]
    for runner in runners:  # every process plans before any edits (steer run: before its barrier)
        runner.plan()
    assert [[item.id for item in runner.share()] for runner in runners] == [["c0", "c4", "c1", "c5"], ["c2", "c3"]]
    assert [vars(runner.run()) for runner in runners] == [
        {"done": 2, "skipped": 2, "failed": 0}, {"done": 1, "skipped": 1, "failed": 0}
    ]
    records = {i: read_record(out / "records" / f"c{i}.json") for i in range(6)}
    assert [(records[i].rank, records[i].attempt) for i in (0, 2, 4)] == [(0, 2), (1, 2), (0, 2)]


def test_a_second_steer_run_on_a_folder_being_written_is_refused(tmp_path, capsys):
    """Two runs on one --out without a launcher each edited every item, and one removed the
    other's temporary record mid-write (that one died on its rename)."""
    from steer.cli import run_folder_lock

    manifest, out = _manifest(tmp_path, 1), tmp_path / "out"
    out.mkdir()
    with run_folder_lock(out):  # another run, editing
        assert main(_run_args(manifest, out)) == 2
        assert not (out / "records").exists() and not (out / "c0.wav").exists()
    message = capsys.readouterr().err
    assert f"steer: error: another steer run (process {os.getpid()}) is writing into {out}: wait for it" in message
    assert main(_run_args(manifest, out)) == 0 and main(_run_args(manifest, out)) == 0  # released after each
    assert not (out / ".steer-run.lock").exists()
    assert read_record(out / "records" / "c0.json").attempt == 1


def test_steer_runs_processes_wait_for_each_other_longer_than_torchs_default(tmp_path, monkeypatch):
    """A process done with its share waits in the closing barrier while the others edit: with
    torch's default timeout (10 min with NCCL) it raised there, and the launcher stopped the run
    without a summary."""
    import accelerate

    made = {}

    class Stop(Exception):
        pass

    def state(**kwargs):
        made.update(kwargs)
        raise Stop

    monkeypatch.setattr(accelerate, "PartialState", state)
    with pytest.raises(Stop):
        main(_run_args(_manifest(tmp_path, 1), tmp_path / "out"))
    assert made["timeout"].total_seconds() >= 7 * 24 * 3600


def test_under_accelerate_every_process_refuses_other_settings_before_any_edit(tmp_path):
    """Process 1's item edited with other settings: process 0 edited its item and died in the
    closing barrier (gloo: connection closed by peer) while process 1 refused. Now both refuse
    before editing, the error said once."""
    manifest = _manifest(tmp_path, 2)
    out = tmp_path / "out"
    only_c1 = tmp_path / "c1.jsonl"
    only_c1.write_text(manifest.read_text().splitlines(keepends=True)[1])
    assert main(_run_args(only_c1, out)) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), "-m", "steer.cli"]
    args = _run_args(manifest, out, "--threads", "1")
    args[args.index("--steps") + 1] = "1"
    done = subprocess.run([*launch, *args], env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode != 0
    assert done.stderr.count("steer: error: ") == 1, done.stderr[-3000:]
    assert f"steer: error: {out} holds edits made with other settings (c1: " in done.stderr
    assert "Connection closed" not in done.stderr and "[rank0]: Traceback" not in done.stderr
    assert "[rank1]: Traceback" not in done.stderr
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_run_removes_only_its_own_temporary_files(tmp_path):
    """An interrupted write leaves ``.<name>.<pid>.tmp`` or ``.<name>.partial``; a rerun removes
    those and keeps the user's files that merely start like them."""
    items = read_edit_manifest(_manifest(tmp_path, 1))
    out = tmp_path / "out"
    (out / "records").mkdir(parents=True)
    ours = [out / ".c0.wav.partial", out / "records" / ".c0.json.4242.tmp", out / ".c0.wav.17.tmp"]
    theirs = [out / ".c0.wav.orig", out / "records" / ".c0.json.draft", out / ".c0.wav.x.tmp", out / ".c0.wav.partial.bak"]
    for path in ours + theirs:
        path.write_bytes(b"x")
    assert ManifestRunner(items, out, backbone=load_backbone(str(SWAP_BACKBONE)), settings={"steps": 1}).run().done == 1
    assert [path.exists() for path in ours] == [False] * 3
    assert [path.read_bytes() for path in theirs] == [b"x"] * 4


@pytest.mark.parametrize(
    "name, content",
    [("summary.md", "# my notes\n"), ("summary.json", '{"mine": 1}\n'), ("summary.json", "# steer run summary\n")],
)
def test_a_summary_steer_run_did_not_write_is_refused_before_loading_anything(tmp_path, capsys, name, content):
    manifest = _manifest(tmp_path, 1)
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text(content)
    args = _run_args(manifest, out)
    args[args.index("--backbone") + 1] = "no/such-backbone"  # never loaded
    assert main(args) == 2
    assert (f"steer: error: {out / name} exists and was not written by steer run, which writes its summary "
            "there: pass --overwrite to replace it, or another --out") in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == [name] and (out / name).read_text() == content


def test_a_run_replaces_its_own_summary_and_with_overwrite_the_users(tmp_path, capsys):
    manifest = _manifest(tmp_path, 1)
    out = tmp_path / "out"
    assert main(_run_args(manifest, out)) == 0
    assert main(_run_args(manifest, out)) == 0  # its own summary: rewritten
    assert json.loads((out / "summary.json").read_text())["this_run"] == {"done": 0, "skipped": 1, "failed": 0}
    (out / "summary.md").write_text("# my notes\n")
    assert main(_run_args(manifest, out)) == 2
    assert f"{out / 'summary.md'} exists and was not written by steer run" in capsys.readouterr().err
    assert (out / "summary.md").read_text() == "# my notes\n"
    assert main(_run_args(manifest, out, "--overwrite")) == 0
    assert (out / "summary.md").read_text().startswith("# steer run summary\n\n1 of 1 items done")


# -- reruns: changed manifests, other manifests, metrics added ---------------------------------------
def _rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def _write_rows(manifest: Path, rows: list[dict]) -> None:
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _files(folder: Path) -> dict[Path, bytes]:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_rerun_refuses_items_whose_prompts_or_clip_changed_and_follows_a_new_edit_type(tmp_path, capsys):
    """Changed in the manifest, c0's target and c1's clip refuse the rerun, naming them (deleting
    their wavs redoes them, ``--overwrite`` every item); c2's edit type alone does not change its
    edit: it is skipped, and its record and the summary take the new type."""
    manifest = _manifest(tmp_path, 3)
    out = tmp_path / "out"
    assert main(_run_args(manifest, out)) == 0
    before = _files(out / "records")
    rows = _rows(manifest)
    _clip(tmp_path / "other.wav", 500)
    rows[0]["target"], rows[1]["audio"], rows[2]["edit_type"] = "a recording of a flute", "other.wav", "new"
    _write_rows(manifest, rows)
    capsys.readouterr()
    assert main(_run_args(manifest, out)) == 2
    error = capsys.readouterr().err
    assert (f"steer: error: {out} holds edits made from other inputs than the manifest's (c0's target prompt "
            f"'a recording of a violin' → 'a recording of a flute'; c1's audio {(tmp_path / 'c1.wav').resolve()} → "
            f"{(tmp_path / 'other.wav').resolve()}): delete their wavs to redo them (or pass --overwrite to redo "
            "every item), or pass another --out") in error
    assert _files(out / "records") == before
    rows[0]["target"], rows[1]["audio"] = TARGET, "c1.wav"  # only c2's edit type changed
    _write_rows(manifest, rows)
    assert main(_run_args(manifest, out)) == 0
    assert "steer run: 0 done, 3 skipped, 0 failed" in capsys.readouterr().out
    assert read_record(out / "records" / "c2.json").edit_type == "new"
    assert read_record(out / "records" / "c2.json").attempt == 1
    summary = json.loads((out / "summary.json").read_text())
    assert [(row["edit_type"], row["n"]) for row in summary["groups"]] == [("even", 1), ("new", 1), ("odd", 1), ("all", 3)]
    rows[0]["target"] = "a recording of a flute"
    _write_rows(manifest, rows)
    assert main(_run_args(manifest, out, "--overwrite")) == 0
    assert "steer run: 3 done, 0 skipped, 0 failed" in capsys.readouterr().out
    assert read_record(out / "records" / "c0.json").target == "a recording of a flute"
    # deleting an item's wav redoes that item alone (its record refused the rerun all the same)
    rows[1]["audio"] = "other.wav"
    _write_rows(manifest, rows)
    (out / "c0.wav").unlink()
    assert main(_run_args(manifest, out)) == 2
    assert "other inputs than the manifest's (c1's audio" in capsys.readouterr().err
    (out / "c1.wav").unlink()
    assert main(_run_args(manifest, out)) == 0
    assert "steer run: 2 done, 1 skipped, 0 failed" in capsys.readouterr().out
    assert [read_record(out / "records" / f"c{i}.json").attempt for i in range(3)] == [3, 3, 2]


def test_a_clip_is_known_by_its_content_and_an_older_record_is_never_refused_for_it(tmp_path):
    """A clip rewritten in place refuses the rerun; one copied elsewhere, its manifest line
    following it, is the same clip (the record takes its new path); a record older than
    ``audio_file`` is not refused for a clip it cannot know, wherever the manifest's clip is now
    (it was, when the dataset moved), and is not given one."""
    items = read_edit_manifest(_manifest(tmp_path, 1))
    out = tmp_path / "out"
    backbone = load_backbone(str(SWAP_BACKBONE))

    def run(items: list[EditItem]) -> tuple[int, int, int]:
        counts = ManifestRunner(items, out, backbone=backbone, settings={"steps": 1}).run()
        return counts.done, counts.skipped, counts.failed

    assert run(items) == (1, 0, 0)
    moved = tmp_path / "moved.wav"
    moved.write_bytes((tmp_path / "c0.wav").read_bytes())
    assert run([dataclasses.replace(items[0], audio=moved)]) == (0, 1, 0)
    assert read_record(out / "records" / "c0.json").audio == str(moved.resolve())
    _clip(moved, 400)
    with pytest.raises(ValueError, match=rf"c0's audio {moved.resolve()} \(its content\)\): delete their wavs to redo them"):
        run([dataclasses.replace(items[0], audio=moved)])
    record = json.loads((out / "records" / "c0.json").read_text())
    del record["audio_file"]  # as an older steer wrote it
    (out / "records" / "c0.json").write_text(json.dumps(record))
    assert run([dataclasses.replace(items[0], audio=moved)]) == (0, 1, 0)
    assert run(items) == (0, 1, 0)
    assert read_record(out / "records" / "c0.json").audio_file is None


def test_a_touched_clip_is_read_once_by_a_rerun_and_not_by_the_next(tmp_path, monkeypatch, capsys):
    """Its mtime changed (touch, git checkout, cp without -p), a clip is read once by a rerun,
    which checks the folder twice (before the run and as it starts), and its record takes the
    new mtime: the next rerun reads no clip."""
    from steer.runner import _sha256

    manifest = _manifest(tmp_path, 2)
    out = tmp_path / "out"
    assert main(_run_args(manifest, out)) == 0
    mtime = (tmp_path / "c0.wav").stat().st_mtime_ns + 10**9
    for i in range(2):
        os.utime(tmp_path / f"c{i}.wav", ns=(mtime, mtime))
    read = []
    monkeypatch.setattr("steer.runner._sha256", lambda path: read.append(path.name) or _sha256(path))
    assert main(_run_args(manifest, out)) == 0
    assert sorted(read) == ["c0.wav", "c1.wav"]
    assert [read_record(out / "records" / f"c{i}.json").audio_file["mtime_ns"] for i in range(2)] == [mtime, mtime]
    read.clear()
    assert main(_run_args(manifest, out)) == 0
    assert read == []
    assert capsys.readouterr().out.count("steer run: 0 done, 2 skipped, 0 failed") == 2


def test_a_run_refuses_a_folder_holding_another_manifests_edits_made_with_other_settings(tmp_path, capsys):
    """``steer eval`` reads every record of a folder: a second manifest edited into it with
    other settings is refused (``--overwrite`` does not redo the first's items, so it is
    refused too); with the same settings it is welcome."""
    manifest = _manifest(tmp_path, 2)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(manifest.read_text().splitlines(keepends=True)[0])
    second.write_text(manifest.read_text().splitlines(keepends=True)[1])
    out = tmp_path / "rs"
    assert main(_run_args(first, out)) == 0
    before = _files(out)
    for more in ((), ("--overwrite",)):
        assert main([*_run_args(second, out, "--seed", "7", *more)]) == 2
        assert (f"steer: error: {out} holds edits made with other settings (c0, an item this manifest does not "
                "hold: seed: 0 → 7): pass another --out") in capsys.readouterr().err
    assert _files(out) == before
    assert main(_run_args(second, out)) == 0


def test_an_output_that_is_another_items_source_is_refused_before_loading_anything(tmp_path, capsys):
    """Item b's edit would be written over b.wav, item c's clip (with ``--overwrite`` it was,
    and c then edited b's edit): refused, naming both, before any model loads."""
    _clip(tmp_path / "a.wav", 220)
    _clip(tmp_path / "b.wav", 330)
    manifest = tmp_path / "m.jsonl"
    _write_rows(manifest, [{"id": "b", "audio": "a.wav", "source": SOURCE, "target": TARGET},
                           {"id": "c", "audio": "b.wav", "source": SOURCE, "target": TARGET}])
    before = _files(tmp_path)
    args = _run_args(manifest, tmp_path, "--overwrite")
    args[args.index("--backbone") + 1] = "no/such-backbone"  # never loaded
    assert main(args) == 2
    assert (f"steer: error: item 'b' would write its edit to {(tmp_path / 'b.wav').resolve()}, the source clip "
            "of item 'c': pass another --out") in capsys.readouterr().err
    assert _files(tmp_path) == before


def test_metrics_added_on_a_rerun_are_scored_from_the_finished_edits(tmp_path, capsys):
    """``--metrics`` on a rerun of a finished run: each done item gets the values it lacks from
    its wav (no edit again), the ones steer eval computes, so the summary holds no NaN."""
    manifest = _manifest(tmp_path, 2, seconds=1.0)
    out = tmp_path / "out"
    assert main(_run_args(manifest, out, "--metrics", "log_mel")) == 0
    wavs = {i: (out / f"c{i}.wav").read_bytes() for i in range(2)}
    log_mel = read_record(out / "records" / "c0.json").metrics["log_mel"]
    capsys.readouterr()
    assert main(_run_args(manifest, out, "--metrics", "cqt1_pcc,log_mel")) == 0
    assert "steer run: 0 done, 2 skipped, 0 failed" in capsys.readouterr().out
    assert {i: (out / f"c{i}.wav").read_bytes() for i in range(2)} == wavs
    records = [read_record(out / "records" / f"c{i}.json") for i in range(2)]
    assert records[0].metrics["log_mel"] == log_mel and all(r.attempt == 1 for r in records)
    assert main(["eval", str(out), "--metrics", "cqt1_pcc", "--device", "cpu"]) == 0
    scored = json.loads((out / "eval.json").read_text())["items"]
    assert [r.metrics["cqt1_pcc"] for r in records] == pytest.approx([scored[f"c{i}"]["cqt1_pcc"] for i in range(2)])
    all_row = json.loads((out / "summary.json").read_text())["groups"][-1]
    assert (all_row["cqt1_pcc_nan"], all_row["log_mel_nan"]) == (0, 0)


def test_a_metric_that_fails_keeps_the_edit_and_a_rerun_scores_it(tmp_path, capsys, monkeypatch):
    """A metric that raised (a GPU out of memory) failed the item and deleted its wav, which the
    edit had written: every edit of the run was lost, and the rerun edited them all again."""
    from steer.metrics.collection import build_metrics
    from steer.metrics.functional import SCORING_RATE

    items = read_edit_manifest(_manifest(tmp_path, 2, seconds=1.0))
    metrics = build_metrics(["log_mel"], sample_rate=SCORING_RATE)
    runner = ManifestRunner(items, tmp_path / "out", backbone=load_backbone(str(SWAP_BACKBONE)),
                            settings={"steps": 1}, metrics=metrics)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    with monkeypatch.context() as failing:
        failing.setattr("steer.evaluate._add_pair", out_of_memory)
        assert runner.run().done == 2
    printed = capsys.readouterr().out
    assert "steer run: c0: cannot score log_mel: CUDA out of memory (the edit is kept; a rerun scores it)" in printed
    wavs = {i: (tmp_path / "out" / f"c{i}.wav").read_bytes() for i in range(2)}
    records = [read_record(tmp_path / "out" / "records" / f"c{i}.json") for i in range(2)]
    assert all(r.status == "done" and r.owns_wav and r.metrics == {} for r in records)
    assert runner.run().skipped == 2
    records = [read_record(tmp_path / "out" / "records" / f"c{i}.json") for i in range(2)]
    assert all(r.attempt == 1 and r.metrics["log_mel"] > 0 for r in records)
    assert {i: (tmp_path / "out" / f"c{i}.wav").read_bytes() for i in range(2)} == wavs


def test_a_failed_batch_is_retried_one_item_at_a_time(tmp_path, capsys):
    """One prompt the text encoder refuses fails its item alone; the item beside it in the
    batch is edited (alone) and done."""
    manifest = _manifest(tmp_path, 2, extra={0: {"source": "!!!"}})
    out = tmp_path / "out"
    assert main(_run_args(manifest, out, "--batch-size", "2")) == 1
    assert "steer run: 1 done, 0 skipped, 1 failed" in capsys.readouterr().out
    bad, good = (read_record(out / "records" / f"c{i}.json") for i in range(2))
    assert (bad.status, bad.batch) == ("failed", 1) and "the prompt '!!!' has no words" in bad.error
    assert (good.status, good.batch, good.error) == ("done", 1, None)


@pytest.mark.parametrize(
    "metrics, message",
    [("fad", "--metrics: fad need(s) a CLAP model"), ("cdpam", "--metrics: CDPAM needs the cdpam package")],
)
def test_metrics_that_cannot_be_built_are_refused_before_loading_anything(tmp_path, capsys, metrics, message):
    if metrics == "cdpam" and importlib.util.find_spec("cdpam") is not None:
        pytest.skip("cdpam is installed here: nothing to refuse")
    args = _run_args(_manifest(tmp_path, 1), tmp_path / "out", "--metrics", metrics)
    args[args.index("--backbone") + 1] = "no/such-backbone"  # never loaded
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_clip_too_short_for_a_metric_is_named_in_the_warning(tmp_path):
    from steer.metrics.collection import build_metrics
    from steer.metrics.functional import SCORING_RATE

    items = read_edit_manifest(_manifest(tmp_path, 1, seconds=0.3))
    metrics = build_metrics(["cqt1_pcc"], sample_rate=SCORING_RATE)
    runner = ManifestRunner(items, tmp_path / "out", backbone=load_backbone(str(SWAP_BACKBONE)),
                            settings={"steps": 1}, metrics=metrics)
    with pytest.warns(RuntimeWarning, match="^c0: CQT-1 PCC is NaN: a clip of 0.300 s is too short"):
        assert runner.run().done == 1


def _concept_folder(folder: Path) -> Path:
    """A concept's files (never loaded: only their identity counts)."""
    folder.mkdir()
    (folder / "concept_config.json").write_text("{}")
    (folder / "concept.safetensors").write_bytes(b"weights")
    (folder / "README.md").write_text("# card\n")
    return folder


def _a_run_then_a_concept(tmp_path: Path) -> tuple[list, Path, Path, Callable[[], ManifestRunner]]:
    """A finished one-item run in ``tmp_path/out``, a concept folder, and a maker of runners of
    that run with the concept as its default."""
    items = read_edit_manifest(_manifest(tmp_path, 1))
    out = tmp_path / "out"
    backbone = load_backbone(str(SWAP_BACKBONE))
    assert ManifestRunner(items, out, backbone=backbone, settings={"steps": 1}).run().done == 1
    concept = _concept_folder(tmp_path / "guitar")

    def runner() -> ManifestRunner:
        return ManifestRunner(items, out, backbone=backbone, settings={"steps": 1}, default_concept=str(concept))

    return items, out, concept, runner


def test_a_concept_is_known_by_its_config_and_weights_and_a_refusal_says_which_changed(tmp_path):
    """Its model card edited, a concept is the same; its config changed, the refusal names the
    file. A record of an older steer (a digest of every file) is accepted for the same files."""
    from steer.runner import _folder_digest

    items, out, concept, runner = _a_run_then_a_concept(tmp_path)

    record = json.loads((out / "records" / "c0.json").read_text())
    record["settings"] = runner().fingerprint_of(items[0])
    (out / "records" / "c0.json").write_text(json.dumps(record))
    (concept / "README.md").write_text("# card\nmore notes\n")
    runner().check_settings()
    record["settings"]["concept"] = _folder_digest(str(concept))  # as an older steer wrote it
    (out / "records" / "c0.json").write_text(json.dumps(record))
    runner().check_settings()
    (concept / "concept_config.json").write_text('{"retrained": true}')
    with pytest.raises(ValueError, match=r"\(c0: concept: a file of its folder changed since an older steer recorded it \(that steer counted every "
                       r"file, README.md included; steer now counts its config and weights\)\): pass another --out, or --overwrite"):
        runner().check_settings()
    record["settings"]["concept"] = {"concept_config.json": "sha256:" + "0" * 64,
                                     **{k: v for k, v in runner().fingerprint_of(items[0])["concept"].items()
                                        if k != "concept_config.json"}}
    (out / "records" / "c0.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"\(c0: concept.concept_config.json: 'sha256:000000000000…' → 'sha256:[0-9a-f]{12}…'\): "
                                         "pass another --out, or --overwrite to redo them"):
        runner().check_settings()


def test_an_older_steers_concept_digest_is_replaced_by_a_rerun_and_not_computed_by_the_next(tmp_path, monkeypatch):
    """A finished record holding an older steer's digest of the concept's folder is accepted
    for the same files and takes the concept's identity: the next rerun digests no folder."""
    from steer.runner import _folder_digest

    items, out, concept, runner = _a_run_then_a_concept(tmp_path)

    record = json.loads((out / "records" / "c0.json").read_text())
    record["settings"] = {**runner().fingerprint_of(items[0]), "concept": _folder_digest(str(concept))}
    (out / "records" / "c0.json").write_text(json.dumps(record))
    digested = []
    monkeypatch.setattr("steer.runner._folder_digest", lambda folder: digested.append(folder) or _folder_digest(folder))
    assert runner().run().skipped == 1
    assert digested == [str(concept)]
    assert read_record(out / "records" / "c0.json").settings == runner().fingerprint_of(items[0])
    digested.clear()
    assert runner().run().skipped == 1
    assert digested == []


def test_a_run_recorded_before_offline_builds_were_named_resumes(tmp_path):
    """Records made with `--backbone tiny` before the offline builds carried their name say
    'AudioLDM2Backbone:None'; the named build refused to resume them ('... → AudioLDM2Backbone:tiny')."""
    items = read_edit_manifest(_manifest(tmp_path, 1))
    out = tmp_path / "out"

    def runner(name: str = "tiny") -> ManifestRunner:
        return ManifestRunner(items, out, backbone=load_backbone(name), settings={"steps": 1})

    assert runner().run().done == 1
    record = json.loads((out / "records" / "c0.json").read_text())
    assert record["settings"]["backbone"] == "AudioLDM2Backbone:tiny"
    record["settings"]["backbone"] = "AudioLDM2Backbone:None"  # as steer recorded it before
    (out / "records" / "c0.json").write_text(json.dumps(record))
    runner().check_settings()
    with pytest.raises(ValueError, match=r"backbone: 'AudioLDM2Backbone:None' → 'AudioLDMBackbone:tiny-audioldm'"):
        runner("tiny-audioldm").check_settings()


def test_the_offline_build_is_recorded_by_name_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    """`--backbone tiny` loads the offline build even where the working folder holds a `tiny`
    entry; its record named that folder's absolute path, so a rerun from elsewhere was refused."""
    items = read_edit_manifest(_manifest(tmp_path, 1))
    (tmp_path / "tiny").mkdir()
    monkeypatch.chdir(tmp_path)
    ManifestRunner(items, tmp_path / "out", backbone=load_backbone("tiny"), settings={"steps": 1}).run()
    record = json.loads((tmp_path / "out" / "records" / "c0.json").read_text())
    assert record["settings"]["backbone"] == "AudioLDM2Backbone:tiny"


# -- checks before loading, and what a run says of its folder --------------------------------------
def _readable_concept(folder: Path) -> Path:
    """A concept folder whose config (token "sks", learnt on the shipped backbone) can be read
    (its weights never are: the checks before loading read the config alone)."""
    folder.mkdir()
    config = {"method": "textual_inversion", "token": "sks", "class_word": "guitar", "family": "mel-diffusion",
              "base_model": str(SWAP_BACKBONE)}
    (folder / "concept_config.json").write_text(json.dumps(config))
    return folder


def test_an_items_own_concept_gives_the_backbone_and_a_target_without_its_token_is_named_first(
    tmp_path, capsys, no_model_loads
):
    """The concept's config was read only through a target naming its token: without one, the
    default cvssp/audioldm2-music was loaded (offline: 30 s of Hub retries, then another error)."""
    concept = _readable_concept(tmp_path / "guitar")
    manifest = _manifest(tmp_path, 1, extra={0: {"concept": str(concept), "target": "a recording of a guitar"}})
    assert main(["run", str(manifest), "--out", str(tmp_path / "out"), "--steps", "2", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (
        "steer: error: none of the 1 item(s) to edit can be edited (first: item 'c0': the target prompt "
        "'a recording of a guitar' does not name the concept token 'sks': write e.g. 'a sks guitar melody'): "
        "fix the manifest\n"
    )
    assert not (tmp_path / "out").exists()
    # beside an item that runs, the concept still gives the backbone, and the item is named
    manifest = _manifest(tmp_path, 2, extra={0: {"concept": str(concept), "target": "a recording of a guitar"}})
    with pytest.raises(AssertionError, match="a model was loaded"):
        main(["run", str(manifest), "--out", str(tmp_path / "out"), "--steps", "2", "--device", "cpu"])
    assert capsys.readouterr().err == (
        "steer: warning: 1 of the 2 item(s) to edit cannot be edited and will fail (first: item 'c0': the target "
        "prompt 'a recording of a guitar' does not name the concept token 'sks': write e.g. 'a sks guitar melody'); "
        f"fix them in the manifest and run again to edit them\nnote: --backbone {SWAP_BACKBONE}, the base model the "
        "concept was learnt on\n"
    )


def test_items_whose_audio_is_missing_are_named_before_a_model_loads(tmp_path, capsys, no_model_loads):
    manifest = _manifest(tmp_path, 3)
    (tmp_path / "c1.wav").unlink()
    (tmp_path / "c2.wav").unlink()
    with pytest.raises(AssertionError, match="a model was loaded"):  # the other items are edited
        main(_run_args(manifest, tmp_path / "out"))
    assert capsys.readouterr().err == (
        f"steer: warning: 2 of the 3 item(s) to edit cannot be edited and will fail (first: item 'c1': input file "
        f"not found: {tmp_path / 'c1.wav'}); fix them in the manifest and run again to edit them\n"
    )
    (tmp_path / "c0.wav").unlink()
    assert main(_run_args(manifest, tmp_path / "out2")) == 2
    assert "none of the 3 item(s) to edit can be edited (first: item 'c0': input file not found" in capsys.readouterr().err


def test_wavs_the_run_did_not_write_are_named_before_a_model_loads(tmp_path, capsys, no_model_loads):
    """Found only once the backbone had loaded, each item failing in turn (records/ deleted, the
    wavs kept, every item failed: exit 1 after the load)."""
    manifest = _manifest(tmp_path, 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "c1.wav").write_bytes(b"someone else's")
    with pytest.raises(AssertionError, match="a model was loaded"):  # c0 is edited
        main(_run_args(manifest, out))
    assert capsys.readouterr().err == (
        f"steer: warning: 1 of the 2 item(s) to edit cannot be edited and will fail (first: item 'c1': {out / 'c1.wav'} "
        "exists and was not written by steer run: move it away for steer run to write this edit there, or pass another "
        "--out (or --overwrite, which redoes every item)); fix them in the manifest and run again to edit them\n"
    )
    (out / "c0.wav").write_bytes(b"someone else's")
    assert main(_run_args(manifest, out)) == 2
    assert "none of the 2 item(s) to edit can be edited (first: item 'c0': " in capsys.readouterr().err
    with pytest.raises(AssertionError, match="a model was loaded"):  # --overwrite writes over them
        main(_run_args(manifest, out, "--overwrite"))
    assert capsys.readouterr().err == ""
    assert (out / "c1.wav").read_bytes() == b"someone else's"


def test_a_rerun_whose_items_to_edit_must_all_fail_still_scores_the_finished_ones(tmp_path, capsys):
    """It was refused (exit 2, "none of the 1 item(s) to edit can be edited"): the finished
    items never got the metrics a rerun adds, though the README says a rerun scores them."""
    manifest = _manifest(tmp_path, 3)
    (tmp_path / "c2.wav").unlink()
    out = tmp_path / "out"
    assert main(_run_args(manifest, out)) == 1
    capsys.readouterr()
    assert main(_run_args(manifest, out, "--metrics", "log_mel")) == 1
    printed = capsys.readouterr()
    assert "steer: warning: 1 of the 1 item(s) to edit cannot be edited and will fail (first: item 'c2'" in printed.err
    assert "steer run: 0 done, 2 skipped, 1 failed" in printed.out
    assert all(read_record(out / "records" / f"c{i}.json").metrics["log_mel"] > 0 for i in range(2))


def test_a_run_says_its_folder_holds_edits_of_items_not_in_its_manifest(tmp_path, capsys):
    """summary.md said "1 of 1 items done" while steer eval scored the 3 edits of the folder."""
    manifest = _manifest(tmp_path, 3)
    out = tmp_path / "out"
    assert main(_run_args(manifest, out)) == 0
    shorter = tmp_path / "one.jsonl"
    shorter.write_text(manifest.read_text().splitlines(keepends=True)[0])
    capsys.readouterr()
    assert main(_run_args(shorter, out)) == 0
    line = f"2 finished edit(s) of items not in this manifest are in {out} too (first: c1); steer eval scores them as well"
    assert capsys.readouterr().out.splitlines()[-1] == line
    assert json.loads((out / "summary.json").read_text())["other_items_done"] == 2
    assert (out / "summary.md").read_text().endswith(f"\n\n{line}.\n")
    assert main(_run_args(manifest, out)) == 0  # the whole manifest again: nothing to say
    assert "not in this manifest" not in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["other_items_done"] == 0


def test_a_refusal_of_another_recipe_names_the_recipe_of_the_folders_edits(tmp_path, capsys):
    """It said ``recipe: (unset) → 'sdedit'``: SteerMusic's fingerprint names no recipe."""
    manifest = _manifest(tmp_path, 1)
    out = tmp_path / "out"
    assert main(_run_args(manifest, out)) == 0
    capsys.readouterr()
    assert main(_run_args(manifest, out, "--recipe", "sdedit")) == 2
    err = capsys.readouterr().err
    assert "recipe: 'steermusic' → 'sdedit'" in err and "(unset) → 'sdedit'" not in err
