"""The benchmark's real-size model runs, with and without its LoRA concept: prompts get
conditionings of the UNet's real widths."""

import importlib
import itertools
import math
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEvent

from benchmarks.models import RealSizeBackbone, lora_concept
from benchmarks.profiling import device_time_us, host_summary, profile_summary
from benchmarks.test_bench_steps import performance


def test_real_size_backbone_predicts_noise_from_its_own_conditioning():
    backbone = RealSizeBackbone.build()
    assert 340e6 < sum(p.numel() for p in backbone.denoiser.parameters()) < 355e6
    cond = backbone.encode_prompt(["a piano melody", "a guitar melody"])
    assert cond.cond["encoder_hidden_states"].shape == (2, 8, 768)
    assert cond.cond["encoder_hidden_states_1"].shape == (2, 16, 1024)
    x_t = torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eps = backbone.predict_noise(x_t, torch.tensor([10, 900]), cond, 3.0)
    assert eps.shape == x_t.shape and eps.isfinite().all()
    # the prompts reach the UNet: another prompt, another prediction
    with torch.no_grad():
        other = backbone.predict_noise(x_t, torch.tensor([10, 900]), backbone.encode_prompt(["a", "b"]), 3.0)
    assert (other - eps).abs().max() > 1e-4
    with lora_concept().apply(backbone) as personalized, torch.no_grad():
        personal = personalized.predict_noise(x_t, torch.tensor([10, 900]), cond, 3.0)
    torch.testing.assert_close(personal, eps)  # the adapter starts at B = 0: ε' = ε


def test_real_size_steermusic_plus_step_runs_on_a_small_latent():
    """What `pytest benchmarks --real-size` runs, one batched step on a 16×16 latent: the LoRA
    concept applies and PCon finds its layers in the real-size UNet."""
    from steer import SteerMusicPlus

    backbone = RealSizeBackbone.build()
    latent = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    with SteerMusicPlus(backbone, lora_concept(), steps=1, pcon_positions=8) as editor:
        result = editor.edit_latent(latent, source="a piano melody", target="a sks guitar melody")
    assert result.latent.isfinite().all() and (result.latent - latent).abs().max() > 1e-4
    assert result.history[0]["PersonalizedContrastiveLoss"] > 0


def test_agreement_compares_the_paths_with_their_options_against_a_drawn_lora_concept():
    """`python -m benchmarks.agreement`: B drawn (not 0), and the paths with ε′'s LoRA merged and
    the projections fused follow the reference's gradient (tiny model)."""
    from benchmarks.agreement import agreement
    from benchmarks.models import build_backbone

    backbone = build_backbone(real_size=False, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="drawing B needs the backbone"):
        lora_concept(std=0.1)
    drawn = lora_concept(backbone=backbone, std=0.3)
    lora_b = [w for name, w in drawn.weights.items() if "lora_B" in name]
    assert lora_b and all(w.abs().max() > 0 for w in lora_b)
    options = {"merge_lora": True, "fuse_projections": True}
    rows = agreement(
        recipe="steermusic_plus", paths=["batched"], seeds=[0], real_size=False, device=torch.device("cpu"),
        options=options, lora_std=0.3,
    )
    assert [(r["path"], r["skipped"]) for r in rows] == [("batched", False)] and rows[0]["cosine"] > 0.999


def test_agreement_measures_a_loaded_backbone_on_the_demos_clip(capsys):
    """`--backbone`: SteerMusic on the shipped trained model, where bf16's first step is checked
    (the benchmark models are random); the demo's clip and prompts, its guidance 30."""
    from backbones import load_backbone
    from benchmarks.agreement import agreement, first_gradient, main
    from steer import SteerMusic, load_audio
    from steer.cli import DEMO_PROMPTS, DEMO_SOURCE, SWAP_BACKBONE

    rows = agreement(recipe="steermusic", paths=["batched", "bf16"], seeds=[3], real_size=False,
                     device=torch.device("cpu"), backbone_name=str(SWAP_BACKBONE))
    backbone = load_backbone(str(SWAP_BACKBONE))
    clip = load_audio(DEMO_SOURCE)
    latent = backbone.encode_audio(clip.waveform[None], clip.sample_rate)
    reference = first_gradient(SteerMusic(backbone, steps=1, performance="reference"), latent, 3, DEMO_PROMPTS)
    bf16 = first_gradient(SteerMusic(backbone, steps=1, performance="bf16"), latent, 3, DEMO_PROMPTS)
    expected = torch.nn.functional.cosine_similarity(bf16.flatten(), reference.flatten(), dim=0).item()
    assert rows[0]["cosine"] > 0.9999 and rows[1]["cosine"] == pytest.approx(expected, abs=1e-6)
    assert rows[1]["cosine"] < 0.95  # seed 3 draws t = 863: bf16's rounding against a small delta
    with pytest.raises(SystemExit):
        main(["--backbone", str(SWAP_BACKBONE), "--recipe", "steermusic_plus"])
    assert "--backbone measures SteerMusic on that model" in capsys.readouterr().err


def test_the_agreements_reference_runs_without_tf32_and_leaves_the_users_settings_as_they_were():
    """On a GPU torch lets cuDNN's convolutions use TF32 by default: the reference gradient is
    taken without it (and without TF32 matmuls, where a user allowed them)."""
    from benchmarks.agreement import full_fp32

    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with pytest.raises(RuntimeError, match="inside"), full_fp32():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
            raise RuntimeError("inside")
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def test_profile_summary_gives_the_time_a_step_and_the_ops_that_took_it():
    """`pytest benchmarks --profile-file` writes this per case: the wall time divided by the
    edit's steps, and the ops with the most time, with their call counts."""
    a = torch.randn(64, 64)

    def edit(callback):  # 3 "steps", each one matmul and one sleep of 20 ms
        assert callback is None  # the whole edit is profiled: no step to wait for
        for _ in range(3):
            a @ a
            time.sleep(0.02)

    summary = profile_summary(edit, steps=3, device=torch.device("cpu"), rows=5)
    wall = float(re.match(r"profiled wall ([\d.]+) ms a step", summary).group(1))
    assert 20 <= wall < 50  # the edit's 60 ms over its 3 steps
    mm = next(line for line in summary.splitlines() if line.strip().startswith("aten::mm"))
    assert mm.split()[-1] == "3"  # its number of calls
    assert "kernels" not in summary  # device time is only given on CUDA


def test_profiles_cover_only_the_steps_after_the_first_ones_asked():
    """A step graph's profile (`--profile-file` on CUDA): its 3 replays, not the steps run as they
    are or the recording before them, each much slower here."""
    a = torch.randn(64, 64)

    def edit(callback):  # 2 slow steps, then 3 of one matmul and a 20-ms sleep
        for step in range(5):
            if step >= 2:
                a @ a
            time.sleep(0.2 if step < 2 else 0.02)
            callback(types.SimpleNamespace(step=step))

    cpu = torch.device("cpu")
    summary = profile_summary(edit, steps=3, after=2, device=cpu, rows=5)
    assert 20 <= float(re.match(r"profiled wall ([\d.]+) ms a step", summary).group(1)) < 50
    mm = next(line for line in summary.splitlines() if line.strip().startswith("aten::mm"))
    assert mm.split()[-1] == "3"
    host = host_summary(edit, steps=3, after=2, device=cpu, rows=4)
    assert 20 <= float(re.match(r"host under cProfile ([\d.]+) ms a step", host).group(1)) < 50
    with pytest.raises(ValueError, match="the edit ran fewer than after=6 steps"):
        profile_summary(edit, steps=3, after=6, device=cpu)


def test_an_editors_profile_after_its_first_steps_holds_the_later_steps_ops_only():
    """The step benchmarks' profiled edit passes the editor's per-step callback: after 2 of 3
    steps, one step's ops (one noise draw) are profiled, where the whole edit has 3."""
    from benchmarks.models import build_backbone, make_editor
    from steer.performance import Performance

    backbone = build_backbone(real_size=False, device=torch.device("cpu"))
    latent = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    with make_editor("steermusic", backbone, Performance(), steps=3) as editor:

        def edit(callback):
            return editor.edit_latent(latent, source="a piano melody", target="a violin melody", callback=callback)

        def draws(after: int) -> int:
            summary = profile_summary(edit, steps=3 - after, after=after, device=torch.device("cpu"), rows=200)
            return int(next(line for line in summary.splitlines() if line.strip().startswith("aten::randn ")).split()[-1])

        assert (draws(0), draws(2)) == (3, 1)


def _spin(n: int) -> int:
    total = 0
    for i in range(n):  # Python's own work: no calls for cProfile to charge elsewhere
        total += i
    return total


def test_host_summary_ranks_python_functions_by_their_own_time_a_step():
    def edit(callback):  # 3 "steps", each one _spin and a 1-ms sleep
        for _ in range(3):
            _spin(300_000)
            time.sleep(0.001)

    summary = host_summary(edit, steps=3, device=torch.device("cpu"), rows=4)
    wall = float(re.match(r"host under cProfile ([\d.]+) ms a step", summary).group(1))
    own, calls, function = summary.splitlines()[1].split()
    assert function.startswith("test_benchmark_models.py:") and function.endswith("(_spin)")
    assert float(calls) == 1.0 and 0.6 * wall <= float(own) <= wall  # once a step, most of it
    sleep = next(line for line in summary.splitlines() if "sleep" in line)
    assert float(sleep.split()[1]) == 1.0 and 1.0 <= float(sleep.split()[0]) < 20


def test_device_time_counts_kernels_and_copies_but_not_the_profilers_own_activities():
    """A profiled SteerMusic+ edit on an H100 listed CUPTI's "Activity Buffer Request" and
    "Buffer Flush" among its device events, a third of their time: they are not the edit's."""

    def event(name: str, us: float, device: DeviceType = DeviceType.CUDA) -> FunctionEvent:
        return FunctionEvent(id=0, name=name, thread=0, start_us=0, end_us=us, use_device="cuda", device_type=device)

    events = [
        event("void at::native::elementwise_kernel<128, 4>", 30.0),
        event("Memcpy DtoD (Device -> Device)", 2.0),
        event("Activity Buffer Request", 500.0),
        event("Buffer Flush", 400.0),
        event("aten::mm", 999.0, DeviceType.CPU),  # a host op: its kernels are events of their own
    ]
    assert [e.self_device_time_total for e in events[:4]] == [30.0, 2.0, 500.0, 400.0]
    assert device_time_us(events) == 32.0


def stand_in_python(folder: Path, then: str) -> Path:
    """A Python for `benchmarks/gpu_figures.sh` that finds a CUDA GPU, records every command
    line in `calls.txt` beside it and then runs the shell code `then`."""
    python = folder / "python"
    python.write_text(
        f'#!/bin/sh\necho "$*" >> {folder / "calls.txt"}\ncase "$*" in *cuda.is_available*) exit 0 ;; esac\n{then}\n'
    )
    python.chmod(0o755)
    return python


@pytest.fixture(scope="module")
def gpu_figures_cases(tmp_path_factory) -> dict[str, list[list[str]]]:
    """What `benchmarks/gpu_figures.sh` would run with `--collect-only`, by plan: one list of
    case ids per pytest it starts (`prewarm` with 4 jobs; this Python, told it has a GPU)."""
    out = tmp_path_factory.mktemp("gpu_figures")
    python = stand_in_python(tmp_path_factory.mktemp("python"), f'exec {sys.executable} "$@"')
    env = {**os.environ, "PYTHON": str(python), "STEER_PREWARM_JOBS": "4"}
    runs = {
        plan: subprocess.Popen(
            ["bash", "benchmarks/gpu_figures.sh", str(out / plan), plan, "--collect-only", "-q"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        for plan in ("first", "rest", "prewarm")
    }
    for run in runs.values():
        output = run.communicate(timeout=300)[0]
        assert run.returncode == 0, output
    logs = {"first": ["log.txt"], "rest": ["log.txt"], "prewarm": [f"prewarm-{j}.txt" for j in range(4)]}
    assert not (out / "prewarm" / "prewarm-4.txt").exists()
    return {
        plan: [re.findall(r"test_step_time\[([\w-]+)\]", (out / plan / log).read_text()) for log in names]
        for plan, names in logs.items()
    }


@pytest.mark.parametrize(("plan", "cases"), [("first", 8), ("rest", 13)])
def test_the_gpu_figures_script_names_step_benchmark_cases_that_exist(gpu_figures_cases, plan, cases):
    """`benchmarks/gpu_figures.sh` names its cases by id: each must be a case of the step
    benchmarks (pytest fails on an id it cannot find), run in the script's order."""
    [collected] = gpu_figures_cases[plan]
    assert len(collected) == cases and len(set(collected)) == cases
    assert collected[0] == ("steermusic-reference-1" if plan == "first" else "steermusic-fused-projections-step-graph-1")


def test_the_gpu_figures_prewarm_plan_compiles_every_inductor_case_of_the_timed_plans(gpu_figures_cases):
    """`prewarm` deals the cases of `first` and `rest` that inductor compiles (and only those:
    the others gain nothing from its cache) to its jobs in turn, each a pytest of its own with
    `--warm-only`, SteerMusic+'s longest compile first."""
    settings = types.SimpleNamespace(compile=True, compile_backend="inductor")

    def inductor(case: str) -> bool:
        path = re.fullmatch(r"(?:steermusic|steermusic_plus)-(.+)-\d+", case).group(1)
        perf = performance(path, settings)
        return perf.compile and perf.compile_backend == "inductor"

    timed = [case for plan in ("first", "rest") for case in gpu_figures_cases[plan][0]]
    jobs = gpu_figures_cases["prewarm"]
    dealt = [case for turn in itertools.zip_longest(*jobs) for case in turn if case is not None]
    assert sorted(dealt) == sorted(case for case in timed if inductor(case))
    assert len(dealt) == 11 and dealt[0] == "steermusic_plus-fused-checkpointed-step-graph-1"
    assert [len(job) for job in jobs] == [3, 3, 3, 2]


def test_warm_only_runs_each_cases_warm_up_edit_and_times_nothing():
    """`--warm-only` (the `prewarm` plan's processes): the warm-up edit, checked, and no timed
    rounds, figures or closing table."""
    cases = [f"benchmarks/test_bench_steps.py::test_step_time[{c}]" for c in ("steermusic-bf16-1", "steermusic-fused-1")]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", *cases, "--warm-only", "-q", "-p", "no:cacheprovider"],
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert run.returncode == 0 and "2 passed" in run.stdout, run.stdout + run.stderr
    assert len(re.findall(r"B=1 (?:bf16|fused): warm-up edit took [\d.]+ s", run.stdout)) == 2
    assert "ms/step" not in run.stdout and "steer step benchmarks" not in run.stdout


@pytest.mark.parametrize(
    ("plan", "jobs", "seconds", "error"),
    [
        ("all", "6", "540", "unknown plan 'all': use prewarm, first, rest or agree"),
        ("prewarm", "0", "540", "STEER_PREWARM_JOBS must be a number of processes ≥ 1, got '0'"),
        ("prewarm", "6", "0", "STEER_GPU_SECONDS must be a number of seconds ≥ 1, got '0'"),
        ("first", "6", "-5", "STEER_GPU_SECONDS must be a number of seconds ≥ 1, got '-5'"),
        ("first", "6", "540", "no CUDA GPU here"),
    ],
)
def test_the_gpu_figures_script_refuses_an_unknown_plan_a_bad_count_or_no_gpu(tmp_path, plan, jobs, seconds, error):
    """Refused before anything runs, the GPU looked for with this Python's torch and no device."""
    env = {**os.environ, "STEER_PREWARM_JOBS": jobs, "STEER_GPU_SECONDS": seconds, "PYTHON": sys.executable,
           "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        ["bash", "benchmarks/gpu_figures.sh", str(tmp_path / "out"), plan], capture_output=True, text=True, check=False, env=env
    )
    assert run.returncode == 2 and error in run.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("plan", "error"),
    [
        ("prewarm", "prewarm job 1 failed (exit 1): see prewarm-1.txt"),
        ("agree", "agreement run 1 failed (exit 1"),
        ("rest", ""),
    ],
)
def test_the_gpu_figures_script_fails_when_a_run_fails(tmp_path, plan, error):
    """Every prewarm job and agreement run failing gave exit status 0."""
    stand_in_python(tmp_path, 'case "$*" in *-m*) exit 1 ;; esac')
    run = subprocess.run(
        ["bash", "benchmarks/gpu_figures.sh", str(tmp_path / "out"), plan], capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHON": str(tmp_path / "python"), "STEER_PREWARM_JOBS": "2"},
    )
    assert run.returncode == 1 and error in run.stderr
    assert "prewarm job 0 failed" in run.stderr or plan != "prewarm"


def test_the_gpu_figures_script_stops_when_the_time_is_spent(tmp_path):
    """`first`'s GPU tests can take all of STEER_GPU_SECONDS: the step benchmarks are then not
    started (a remainder of 0 meant no limit to `timeout`, a negative one its usage error)."""
    stand_in_python(tmp_path, 'case "$*" in *test_step_graph*) sleep 2 ;; esac')
    run = subprocess.run(
        ["bash", "benchmarks/gpu_figures.sh", str(tmp_path / "out"), "first"], capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHON": str(tmp_path / "python"), "STEER_GPU_SECONDS": "1"},
    )
    assert run.returncode == 1
    assert "STEER_GPU_SECONDS=1 spent: the step benchmarks of 'first' not run" in run.stderr
    assert "test_bench_steps" not in (tmp_path / "calls.txt").read_text()


def test_the_gpu_wheels_script_fetches_this_venvs_versions_for_the_gpu_machines_python(tmp_path):
    """`benchmarks/gpu_wheels.sh` (from the package index, as the install does): one wheel per
    package a CUDA image lacks, each at the version `.venv` holds (which need not be the Python
    running the tests), binary ones for CPython 3.12."""
    names = ("cffi", "diffusers", "peft", "pycparser", "soundfile", "torchsde", "trampoline")
    versions = subprocess.run(
        [".venv/bin/python", "-c", f"from importlib.metadata import version; print(*map(version, {names}))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    run = subprocess.run(
        ["bash", "benchmarks/gpu_wheels.sh", str(tmp_path)], capture_output=True, text=True, check=False, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    wheels = sorted(path.name for path in tmp_path.glob("*.whl"))
    assert [wheel.split("-")[:2] for wheel in wheels] == [list(pair) for pair in zip(names, versions)]
    assert "-cp312-" in wheels[0] and "manylinux_2_28" in wheels[4]  # cffi built; libsndfile inside
    refused = subprocess.run(["bash", "benchmarks/gpu_wheels.sh", "a", "b"], capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and "usage: bash benchmarks/gpu_wheels.sh [DIR]" in refused.stderr


def test_the_gpu_figures_agree_plan_runs_the_agreement_script_for_each_recipe(tmp_path):
    """`agree` runs `benchmarks.agreement` on the real-size model, SteerMusic then SteerMusic+
    (both options, B drawn), each writing its JSON, with the extra options passed on (a stand-in
    Python records the commands)."""
    python = stand_in_python(tmp_path, "")
    calls = tmp_path / "calls.txt"
    out = tmp_path / "out"
    run = subprocess.run(
        ["bash", "benchmarks/gpu_figures.sh", str(out), "agree", "--seeds", "0"],
        capture_output=True, text=True, check=False, env={**os.environ, "PYTHON": str(python)},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    agreement = [line.split() for line in calls.read_text().splitlines() if "benchmarks.agreement" in line]
    assert [call[:3] for call in agreement] == [["-m", "benchmarks.agreement", "--real-size"]] * 2
    assert agreement[0][-4:] == [str(out / "agreement-0.json"), "--overwrite", "--seeds", "0"]  # its own file
    assert "--recipe steermusic_plus --merge-lora --fuse-projections --lora-std 0.05" in " ".join(agreement[1])
    assert "fused-checkpointed" in agreement[1] and "fused" in agreement[0]


def test_compiled_benchmark_paths_follow_the_compile_backend_but_those_with_their_own():
    """`--compile-backend aot_eager` compiles every compiled path with it, variants included,
    but the CUDA-graph backends' variants and `fused-autotune` (inductor's max-autotune); a
    step graph cannot take a CUDA-graph backend; with compiling off nothing compiles."""
    from benchmarks.test_bench_steps import OWN_BACKEND, PATHS, VARIANTS

    own = {"fused-cudagraphs": "cudagraphs", "fused-steer-cudagraphs": "steer-cudagraphs",
           "fused-checkpointed-steer-cudagraphs": "steer-cudagraphs", "fused-autotune": "inductor"}
    assert set(OWN_BACKEND) == set(own)
    compiled = types.SimpleNamespace(compile=True, compile_backend="aot_eager")
    backends = {path: performance(path, compiled).compile_backend for path in PATHS if performance(path, compiled).compile}
    assert backends == {**dict.fromkeys(set(backends) - set(own), "aot_eager"), **own}
    assert {"fused", "fused-step-graph", "fused-checkpointed-merge-lora-fuse-projections-step-graph"} < set(backends)
    assert len(backends) == 2 + len([p for p in VARIANTS.values() if p.compile])  # fused, fused-checkpointed
    assert performance("fused-autotune", compiled).autotune
    with pytest.raises(ValueError, match="step_graph records each step as one CUDA graph"):
        performance("fused-step-graph", types.SimpleNamespace(compile=True, compile_backend="cudagraphs"))
    off = types.SimpleNamespace(compile=False, compile_backend="aot_eager")
    assert not any(performance(path, off).compile or performance(path, off).autotune for path in PATHS)


@pytest.mark.parametrize(
    ("steps", "rounds", "error"),
    [
        (0, 3, "--steps must be at least 1 (steps per timed edit), got 0"),
        (-1, 3, "--steps must be at least 1 (steps per timed edit), got -1"),
        (None, 0, "--rounds must be at least 1 (timed edits per case), got 0"),
    ],
)
def test_the_step_benchmarks_refuse_counts_no_case_can_time(steps, rounds, error):
    """`--steps 0` was taken for the default and `--steps -1` failed every step-graph case with
    its own message: both are refused before any case runs, on every path."""
    from benchmarks.conftest import pytest_configure

    with pytest.raises(pytest.UsageError) as refused:
        pytest_configure(_bench_options(steps=steps, rounds=rounds))
    assert str(refused.value) == error
    pytest_configure(_bench_options(rounds=1))


def _bench_options(**given) -> types.SimpleNamespace:
    """A pytest config whose step-benchmark options are their defaults but those ``given``."""
    options = {"--steps": None, "--rounds": 3, "--profile-file": None}
    options.update({f"--{name.replace('_', '-')}": value for name, value in given.items()})
    return types.SimpleNamespace(getoption=options.__getitem__)


@pytest.mark.parametrize(
    ("where", "error"),
    [
        ("missing/profiles.txt", "/missing/profiles.txt: no folder "),
        (".", "is a folder: name a file (the profiles are appended)"),
    ],
)
def test_the_step_benchmarks_refuse_a_profile_file_they_cannot_write_before_any_case(tmp_path, where, error):
    """A profile file in a missing folder failed each case after its warm-up (compiling) edit."""
    from benchmarks.conftest import pytest_configure

    with pytest.raises(pytest.UsageError, match=re.escape(error)):
        pytest_configure(_bench_options(profile_file=tmp_path / where))
    pytest_configure(_bench_options(profile_file=tmp_path / "profiles.txt"))


@pytest.mark.parametrize("script", ["memory", "compile_cost"])
def test_the_scripts_refuse_an_unknown_compile_backend_before_building_a_model(monkeypatch, capsys, script):
    module = importlib.import_module(f"benchmarks.{script}")
    monkeypatch.setattr(module, "measure" if script == "memory" else "compile_cost", lambda *_, **__: pytest.fail("ran"))
    with pytest.raises(SystemExit) as refused:
        module.main(["--compile-backend", "inductr"])
    assert refused.value.code == 2
    assert "argument --compile-backend: 'inductr' is not a torch.compile backend here: use one of " in capsys.readouterr().err


def test_the_agreement_fails_a_non_finite_gradient_but_skips_an_fp16_overflow(monkeypatch):
    """A NaN gradient off fp16 is a failure, not a skip; fp16's non-finite gradient (its scaled
    loss overflowed, the step not taken) is the one skip."""
    from benchmarks import agreement

    def first_gradient(editor, latent, seed, prompts):
        gradient = torch.ones(4)
        if editor.performance.precision == "bf16" and seed == 1:
            gradient[0] = math.nan
        if editor.performance.precision == "fp16":
            gradient[0] = math.inf
        return gradient

    monkeypatch.setattr(agreement, "first_gradient", first_gradient)
    rows = agreement.agreement(recipe="steermusic", paths=["bf16", "fp16"], seeds=[0, 1], real_size=False,
                               device=torch.device("cpu"))
    assert [(r["path"], r["seed"], r["skipped"], r["failed"]) for r in rows] == [
        ("bf16", 0, False, False), ("fp16", 0, True, False), ("bf16", 1, False, True), ("fp16", 1, True, False),
    ]


def test_the_agreement_summary_shows_a_nan_seed_and_the_script_fails_on_it(monkeypatch, capsys, tmp_path):
    """`min`/`max` over [0.99, nan] gave 0.99, 0.99: the summary says NaN and which seed, and the
    script exits non-zero after writing its JSON."""
    from benchmarks import agreement

    def row(path: str, seed: int, cosine: float, *, skipped: bool = False) -> dict:
        return {"recipe": "steermusic", "path": path, "seed": seed, "cosine": cosine, "skipped": skipped,
                "failed": math.isnan(cosine) and not skipped}

    rows = [row("bf16", 0, 0.995), row("bf16", 1, math.nan), row("bf16", 2, 0.994),
            row("fp16", 0, 0.9999), row("fp16", 1, math.nan, skipped=True), row("batched", 0, 1.0)]
    monkeypatch.setattr(agreement, "agreement", lambda **_: rows)
    with pytest.raises(SystemExit, match="non-finite gradient on bf16, not an fp16 overflow"):
        agreement.main(["--paths", "bf16", "fp16", "batched", "--seeds", "0", "1", "2", "--json", str(tmp_path / "a.json")])
    out = capsys.readouterr().out
    assert "bf16: cosine with reference min nan, max 0.99500 over seeds [0, 1, 2]; FAILED (non-finite gradient) for seeds [1]" in out
    assert "fp16: cosine with reference min 0.99990, max 0.99990 over seeds [0]; skipped (fp16 overflow) for seeds [1]" in out
    assert "batched: cosine with reference min 1.00000, max 1.00000 over seeds [0] (" in out
    assert (tmp_path / "a.json").exists()
    monkeypatch.setattr(agreement, "agreement", lambda **_: rows[3:])
    agreement.main(["--paths", "fp16", "batched"])  # a skip alone is no failure


@pytest.mark.parametrize("script", ["compile_cost", "host_time"])
def test_the_scripts_refuse_a_missing_gpu_before_building_a_model(monkeypatch, capsys, script):
    module = importlib.import_module(f"benchmarks.{script}")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(module, "build_backbone", lambda **_: pytest.fail("built a model"))
    with pytest.raises(SystemExit) as refused:
        module.main(["--device", "cuda"])
    assert refused.value.code == 2
    assert "argument --device: 'cuda': torch finds no CUDA GPU here; run on a GPU machine or give cpu" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["compile_cost", "host_time"])
@pytest.mark.parametrize("device", ["mps", "meta"])
def test_the_scripts_refuse_a_device_they_cannot_run_on_before_building_a_model(monkeypatch, capsys, script, device):
    """mps and meta were taken: a traceback from inside the model ("not linked with support for
    mps devices", "Tensor.item() cannot be called on meta tensors")."""
    module = importlib.import_module(f"benchmarks.{script}")
    monkeypatch.setattr(module, "build_backbone", lambda **_: pytest.fail("built a model"))
    with pytest.raises(SystemExit) as refused:
        module.main(["--device", device])
    assert refused.value.code == 2
    assert f"argument --device: '{device}': the benchmarks run on cpu or cuda, not {device}" in capsys.readouterr().err


def test_agreement_refuses_a_json_it_cannot_write_before_any_work(monkeypatch, capsys, tmp_path):
    """It wrote the JSON after the run: FileNotFoundError or IsADirectoryError lost the run's
    minutes (hours at real size), and an existing file was replaced."""
    from benchmarks import agreement

    monkeypatch.setattr(agreement, "agreement", lambda **_: pytest.fail("ran"))
    kept = tmp_path / "rows.json"
    kept.write_text("mine")
    for path, error in [
        (kept, f"{kept} exists; pass --overwrite to replace it, or choose another --json"),
        (tmp_path, f"--json {tmp_path} is a folder: name the JSON file to write"),
        (kept / "x.json", f"--json {kept / 'x.json'} cannot be written: {kept} is a file, not a folder"),
    ]:
        with pytest.raises(SystemExit) as refused:
            agreement.main(["--json", str(path)])
        assert refused.value.code == 2 and error in capsys.readouterr().err
    assert kept.read_text() == "mine"


@pytest.mark.parametrize(
    ("script", "options", "error"),
    [
        ("compile_cost", ["--concepts", "-1"], "--concepts must be at least 0 and --steps at least 1, got -1 and 2"),
        ("compile_cost", ["--steps", "0"], "--concepts must be at least 0 and --steps at least 1, got 1 and 0"),
        ("host_time", ["--threads", "0"], "--rounds and --threads at least 1, got 50, 3 and 0"),
    ],
)
def test_the_scripts_refuse_counts_that_measure_nothing(monkeypatch, capsys, script, options, error):
    module = importlib.import_module(f"benchmarks.{script}")
    monkeypatch.setattr(module, "build_backbone", lambda **_: pytest.fail("built a model"))
    with pytest.raises(SystemExit) as refused:
        module.main(["--device", "cpu", *options])
    assert refused.value.code == 2 and error in capsys.readouterr().err


def test_profile_file_gets_each_cases_profiles(tmp_path):
    """`--profile-file` on the CPU: the profiled edit, given the editor's step callback, leaves
    the wall time a step, its top ops and the host's Python functions."""
    profiles = tmp_path / "profiles.txt"
    case = "benchmarks/test_bench_steps.py::test_step_time[steermusic-batched-1]"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", case, "--steps", "1", "--rounds", "1", "--benchmark-disable",
         "--profile-file", str(profiles), "-q", "-p", "no:cacheprovider"],
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout + run.stderr
    text = profiles.read_text()
    assert text.startswith("\n== steermusic B=1 batched: Performance(")
    assert re.search(r"profiled wall [\d.]+ ms a step", text) and re.search(r"host under cProfile [\d.]+ ms a step", text)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (["--steps", "0"], "--steps must be at least 1 (steps per timed edit), got 0"),
        (["--compile-backend", "inductr"], "argument --compile-backend: 'inductr' is not a torch.compile backend here"),
    ],
)
def test_the_step_benchmarks_refuse_bad_options_before_collecting(options, error):
    """The refusals above, wired: pytest stops with a usage error before any case."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", *options, "--collect-only", "-q", "-p", "no:cacheprovider"],
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert run.returncode == 4 and error in run.stderr, run.stderr


@pytest.mark.filterwarnings("ignore:.*Profiler clears events")
def test_host_time_counts_an_edits_set_up_once_not_in_every_step(monkeypatch):
    """The figures divided a whole edit by its steps, so an edit's fixed part (the weights'
    fingerprint: ~16,700 ops) was counted as 4227 eager ops a step where 41 were: a step's
    figures are now what the steps add over a 0-step edit, and the fixed part is its own."""
    from benchmarks import host_time

    class Editor:
        """Makes 100 aten ops an edit and 3 a step."""

        steps = 2

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def edit_latent(self, latent, **prompts):
            for _ in range(100 + 3 * self.steps):
                torch.neg(latent)

    monkeypatch.setattr(host_time, "build_backbone", lambda **_: None)
    monkeypatch.setattr(host_time, "make_editor", lambda *args, **kwargs: Editor())
    figures = host_time.host_time(recipe="steermusic", real_size=False, device=torch.device("cpu"), path="fused",
                                  steps=4, rounds=1)
    for guards in ("first-step", "every-step"):
        assert figures[f"guards={guards} eager ops a step"] == 3
        assert figures[f"guards={guards} set-up eager ops"] == 100
        assert math.isfinite(figures[f"guards={guards} ms a step"]) and figures[f"guards={guards} set-up ms"] > 0


def test_the_agreement_names_a_non_finite_reference_not_the_path_compared_with_it(monkeypatch, capsys):
    """A NaN reference made every path's cosine NaN, and the script blamed them ("non-finite
    gradient on batched"): it stops at the reference, naming it."""
    from benchmarks import agreement

    def first_gradient(editor, latent, seed, prompts):
        return torch.full((4,), math.nan if editor.performance.path == "reference" else 1.0)

    monkeypatch.setattr(agreement, "first_gradient", first_gradient)
    with pytest.raises(SystemExit, match="the reference path's gradient is not finite for seed 0") as stopped:
        agreement.main(["--paths", "batched", "--seeds", "0"])
    assert "batched" not in str(stopped.value) and "seed 0:" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (["--lora-std", "nan"], "--lora-std must be a finite standard deviation of at least 0, got nan"),
        (["--lora-std", "inf"], "--lora-std must be a finite standard deviation of at least 0, got inf"),
        (["--lora-std", "-0.1"], "--lora-std must be a finite standard deviation of at least 0, got -0.1"),
        (["--lora-std", "0.05", "--recipe", "steermusic"], "--lora-std draws SteerMusic+'s LoRA B"),
    ],
)
def test_the_agreement_refuses_a_lora_std_it_cannot_draw_or_would_not_use(monkeypatch, capsys, options, error):
    from benchmarks import agreement

    monkeypatch.setattr(agreement, "build_backbone", lambda **_: pytest.fail("built a model"))
    with pytest.raises(SystemExit) as refused:
        agreement.main(["--recipe", "steermusic_plus", *options])
    assert refused.value.code == 2 and error in capsys.readouterr().err


def test_per_step_splits_an_edit_into_its_steps_and_its_fixed_part():
    from benchmarks.profiling import per_step

    assert per_step(130.0, 100.0, steps=10) == (3.0, 100.0)  # 100 fixed, 3 a step
    assert per_step(130.0, 109.0, steps=10, fixed_steps=3) == (3.0, 100.0)
    with pytest.raises(ValueError, match=r"the longer edit's steps \(3\) must exceed the shorter's \(3\)"):
        per_step(1.0, 1.0, steps=3, fixed_steps=3)  # was ZeroDivisionError


def test_the_agreement_script_compiles_the_fused_paths_with_the_backend_given(monkeypatch, capsys):
    """`--compile-backend aot_eager` reaches every compared path's Performance (inductor's C++ code
    takes minutes on a CPU); a backend torch does not have is refused before a model is built."""
    from benchmarks import agreement as script

    seen = {}

    def fake(**kwargs):
        seen.update(kwargs)
        return [{"recipe": "steermusic", "path": "fused", "seed": 0, "cosine": 1.0, "skipped": False, "failed": False}]

    monkeypatch.setattr(script, "agreement", fake)
    script.main(["--paths", "fused", "--seeds", "0", "--compile-backend", "aot_eager"])
    assert seen["options"]["compile_backend"] == "aot_eager" and seen["paths"] == ["fused"]
    script.main(["--paths", "fused", "--seeds", "0"])
    assert seen["options"]["compile_backend"] == "inductor"
    seen.clear()
    with pytest.raises(SystemExit):
        script.main(["--compile-backend", "inductr"])
    assert not seen and "'inductr' is not a torch.compile backend" in capsys.readouterr().err
