"""Options and shared state of the step benchmarks (``pytest benchmarks``).

``--real-size`` runs AudioLDM2-music's UNet architecture on a 10.24-s latent (for a GPU); the
default is the tiny offline model on a 1.28-s latent, so the code stays exercised on the CPU.
The session ends with a table: per recipe and batch, each path's time, memory, MFU and its
speed-up over ``reference`` measured in the same run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from benchmarks.mfu import Peak, matmul_peak
from benchmarks.models import REAL_LATENT, TINY_LATENT, build_backbone, compile_backend_option


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("steer step benchmarks")
    group.addoption("--real-size", action="store_true", help="AudioLDM2-music's UNet size and a 10.24-s latent")
    group.addoption("--steps", type=int, default=None, help="steps per timed edit (default: 3 tiny, 20 real size)")
    group.addoption("--rounds", type=int, default=3, help="timed edits per case; the fastest counts")
    group.addoption(
        "--cpu-compile", action="store_true",
        help="compile the fused paths on the CPU too (inductor: minutes per case on a small CPU)",
    )
    group.addoption(
        "--compile-backend", default="inductor", type=compile_backend_option,
        help="torch.compile backend of the compiled paths (default inductor; aot_eager traces without code "
        "generation); fused-cudagraphs, fused-steer-cudagraphs and fused-checkpointed-steer-cudagraphs keep their "
        "CUDA-graph backends, fused-autotune inductor (max-autotune is inductor's), and the step-graph paths are "
        "skipped on a CUDA-graph backend",
    )
    group.addoption(
        "--profile-file", type=Path, default=None,
        help="profile one more edit per case and append its summary here (wall and kernel time a step, top ops)",
    )
    group.addoption(
        "--warm-only", action="store_true",
        help="run each case's warm-up edit only, timing nothing: its compile fills inductor's on-disk cache "
        "(TORCHINDUCTOR_CACHE_DIR) for a later run's",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Refuse counts no case can time and a profile file that cannot be written, before any case
    starts (each case would fail after its warm-up edit)."""
    steps, rounds = config.getoption("--steps"), config.getoption("--rounds")
    if steps is not None and steps < 1:
        raise pytest.UsageError(f"--steps must be at least 1 (steps per timed edit), got {steps}")
    if rounds < 1:
        raise pytest.UsageError(f"--rounds must be at least 1 (timed edits per case), got {rounds}")
    profile_file: Path | None = config.getoption("--profile-file")
    if profile_file is not None:
        if profile_file.is_dir():
            raise pytest.UsageError(f"--profile-file {profile_file} is a folder: name a file (the profiles are appended)")
        if not profile_file.parent.is_dir():
            raise pytest.UsageError(
                f"--profile-file {profile_file}: no folder {profile_file.parent}; create it or name a file in a folder"
            )


@dataclass
class Settings:
    device: torch.device
    real_size: bool
    steps: int
    rounds: int
    compile: bool
    compile_backend: str
    latent_shape: tuple[int, ...]
    peak: Peak
    profile_file: Path | None = None
    #: ``--warm-only``: compile each case and time nothing
    warm_only: bool = False
    #: (recipe, batch) -> path -> measured figures
    results: dict[tuple[str, int], dict[str, dict[str, float | None]]] = field(default_factory=dict)


@pytest.fixture(scope="session")
def settings(request: pytest.FixtureRequest) -> Settings:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    real_size = request.config.getoption("--real-size")
    steps = request.config.getoption("--steps")
    settings = Settings(
        device=device,
        real_size=real_size,
        steps=(20 if real_size else 3) if steps is None else steps,
        rounds=request.config.getoption("--rounds"),
        compile=device.type == "cuda" or request.config.getoption("--cpu-compile"),
        compile_backend=request.config.getoption("--compile-backend"),
        latent_shape=REAL_LATENT if real_size else TINY_LATENT,
        peak=matmul_peak(device),
        profile_file=request.config.getoption("--profile-file"),
        warm_only=request.config.getoption("--warm-only"),
    )
    request.config._steer_bench = settings  # read by the terminal summary
    return settings


@pytest.fixture(scope="session")
def bench_backbone(settings: Settings):
    return build_backbone(real_size=settings.real_size, device=settings.device)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    settings: Settings | None = getattr(config, "_steer_bench", None)
    if settings is None or not settings.results:
        return
    write = terminalreporter.write_line
    model = "real-size AudioLDM2-music UNet" if settings.real_size else "tiny AudioLDM2"
    write("")
    write(
        f"steer step benchmarks: {model}, latent (B, {', '.join(map(str, settings.latent_shape))}), "
        f"{settings.device.type}, torch {torch.__version__}, {settings.steps} steps per timed edit, "
        f"fused paths compiled: {settings.compile_backend if settings.compile else 'no'}; "
        f"MFU against the {settings.peak.label} = {settings.peak.flops_per_s / 1e12:.3g} TFLOP/s"
    )
    width = max(len(path) for paths in settings.results.values() for path in paths) + 1
    write(
        f"{'recipe':<16}{'B':>3} {'path':<{width}}{'ms/step':>10}{'set-up ms':>11}{'s/400-step edit':>17}{'peak MiB':>10}"
        f"{'MFU':>8}{'vs reference':>14}{'graph breaks':>14}{'uncaptured':>12}"
    )
    for (recipe, batch), paths in sorted(settings.results.items()):
        reference = paths.get("reference", {}).get("ms_per_step")
        for path, r in paths.items():
            memory = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            speedup = "" if reference is None else f"{reference / r['ms_per_step']:.2f}x"
            breaks, uncaptured = ("" if r[k] is None else str(r[k]) for k in ("graph_breaks", "uncaptured_graphs"))
            write(
                f"{recipe:<16}{batch:>3} {path:<{width}}{r['ms_per_step']:>10.2f}{r['set_up_ms']:>11.1f}{r['edit_400_s']:>17.2f}"
                f"{memory:>10}{r['mfu']:>8.1%}{speedup:>14}{breaks:>14}{uncaptured:>12}"
            )
