"""The benchmark's real-size model runs, with and without its LoRA concept: prompts get
conditionings of the UNet's real widths."""

import itertools
import os
import re
import subprocess
import sys
import time
import types

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

    def edit():  # 3 "steps", each one matmul and one sleep of 20 ms
        for _ in range(3):
            a @ a
            time.sleep(0.02)

    summary = profile_summary(edit, steps=3, device=torch.device("cpu"), rows=5)
    wall = float(re.match(r"profiled wall ([\d.]+) ms a step", summary).group(1))
    assert 20 <= wall < 50  # the edit's 60 ms over its 3 steps
    mm = next(line for line in summary.splitlines() if line.strip().startswith("aten::mm"))
    assert mm.split()[-1] == "3"  # its number of calls
    assert "kernels" not in summary  # device time is only given on CUDA


def _spin(n: int) -> int:
    total = 0
    for i in range(n):  # Python's own work: no calls for cProfile to charge elsewhere
        total += i
    return total


def test_host_summary_ranks_python_functions_by_their_own_time_a_step():
    def edit():  # 3 "steps", each one _spin and a 1-ms sleep
        for _ in range(3):
            _spin(300_000)
            time.sleep(0.001)

    summary = host_summary(edit, steps=3, rows=4)
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


@pytest.fixture(scope="module")
def gpu_figures_cases(tmp_path_factory) -> dict[str, list[list[str]]]:
    """What `benchmarks/gpu_figures.sh` would run with `--collect-only`, by plan: one list of
    case ids per pytest it starts (`prewarm` with 4 jobs)."""
    out = tmp_path_factory.mktemp("gpu_figures")
    env = {**os.environ, "PYTHON": sys.executable, "STEER_PREWARM_JOBS": "4"}
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
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0 and "2 passed" in run.stdout, run.stdout + run.stderr
    assert len(re.findall(r"B=1 (?:bf16|fused): warm-up edit took [\d.]+ s", run.stdout)) == 2
    assert "ms/step" not in run.stdout and "steer step benchmarks" not in run.stdout


@pytest.mark.parametrize(
    ("plan", "jobs", "error"),
    [
        ("all", "6", "unknown plan 'all': use prewarm, first, rest or agree"),
        ("prewarm", "0", "STEER_PREWARM_JOBS must be a number of processes ≥ 1, got '0'"),
    ],
)
def test_the_gpu_figures_script_refuses_an_unknown_plan_or_job_count(tmp_path, plan, jobs, error):
    run = subprocess.run(
        ["bash", "benchmarks/gpu_figures.sh", str(tmp_path / "out"), plan],
        capture_output=True, text=True, env={**os.environ, "STEER_PREWARM_JOBS": jobs},
    )
    assert run.returncode == 2 and error in run.stderr
    assert not (tmp_path / "out").exists()


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
        ["bash", "benchmarks/gpu_wheels.sh", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    wheels = sorted(path.name for path in tmp_path.glob("*.whl"))
    assert [wheel.split("-")[:2] for wheel in wheels] == [list(pair) for pair in zip(names, versions)]
    assert "-cp312-" in wheels[0] and "manylinux_2_28" in wheels[4]  # cffi built; libsndfile inside
    refused = subprocess.run(["bash", "benchmarks/gpu_wheels.sh", "a", "b"], capture_output=True, text=True)
    assert refused.returncode == 2 and "usage: bash benchmarks/gpu_wheels.sh [DIR]" in refused.stderr


def test_the_gpu_figures_agree_plan_runs_the_agreement_script_for_each_recipe(tmp_path):
    """`agree` runs `benchmarks.agreement` on the real-size model, SteerMusic then SteerMusic+
    (both options, B drawn), each writing its JSON, with the extra options passed on (a stand-in
    Python records the commands)."""
    calls = tmp_path / "calls.txt"
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    python.chmod(0o755)
    out = tmp_path / "out"
    run = subprocess.run(
        ["bash", "benchmarks/gpu_figures.sh", str(out), "agree", "--seeds", "0"],
        capture_output=True, text=True, env={**os.environ, "PYTHON": str(python)},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    agreement = [line.split() for line in calls.read_text().splitlines() if "benchmarks.agreement" in line]
    assert [call[:3] for call in agreement] == [["-m", "benchmarks.agreement", "--real-size"]] * 2
    assert agreement[0][-3:] == [str(out / "agreement-0.json"), "--seeds", "0"]
    assert "--recipe steermusic_plus --merge-lora --fuse-projections --lora-std 0.05" in " ".join(agreement[1])
    assert "fused-checkpointed" in agreement[1] and "fused" in agreement[0]
