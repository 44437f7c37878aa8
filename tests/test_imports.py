"""Light imports stay light: ``steer``, ``steer.data``, ``steer.metrics``, ``backbones`` and the
command line import no diffusers, transformers, peft, accelerate, matplotlib or scipy at start-up
(seconds on a 2-core machine), so that ``steer --help`` and usage errors are quick. The packages'
names load on first use (PEP 562) and are the same objects as their modules'."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import backbones
import steer
import steer.concepts

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("diffusers", "transformers", "peft", "accelerate", "matplotlib", "scipy", "torchmetrics")


def _heavy_after(code: str) -> list[str]:
    """The heavy packages a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    return eval(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "code",
    [
        "import steer",
        "import steer.data",
        "import steer.metrics",
        "import backbones",
        "import steer, steer.cli",
        "from steer.cli import _parser; _parser()",
    ],
)
def test_light_imports_leave_out_heavy_packages(code: str) -> None:
    assert _heavy_after(code) == []


def test_usage_errors_leave_out_heavy_packages(tmp_path: Path) -> None:
    """``steer --help`` and an argument refused before any model loads."""
    audio = ROOT / "examples" / "audio" / "hornpipe_piano.wav"
    code = f"""
from steer.cli import main
for argv in (["--help"], ["edit", "--help"], ["personalize", "--help"]):
    try:
        main(argv)
    except SystemExit as exit:
        assert exit.code == 0, (argv, exit.code)
    else:
        raise AssertionError(argv)
argv = ["edit", {str(audio)!r}, "--source", "a", "--target", "b", "-o", {str(tmp_path / "o.wav")!r}, "--lr", "-1"]
assert main(argv) == 2
"""
    assert _heavy_after(code) == []


@pytest.mark.parametrize("package", [steer, backbones, steer.concepts], ids=lambda m: m.__name__)
def test_lazy_names_resolve(package) -> None:
    for name in package.__all__:
        value = getattr(package, name)
        module = importlib.import_module(f"{package.__name__}.{package._LAZY[name]}")
        assert value is getattr(module, name)
    assert set(package.__all__) <= set(dir(package))
    assert set(package._LAZY) == set(package.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        package.nope  # noqa: B018


def test_from_imports() -> None:
    from backbones import AudioLDM2Backbone
    from backbones.audioldm2 import AudioLDM2Backbone as direct
    from steer import SteerMusic
    from steer.recipes import SteerMusic as recipe

    assert SteerMusic is recipe and AudioLDM2Backbone is direct


def test_submodules_are_reached_through_the_package_as_when_it_imported_them_all() -> None:
    """`import steer; steer.concepts.Concept` raised AttributeError once the package stopped
    importing every submodule."""
    code = """
import steer, backbones
assert steer.concepts.Concept is steer.Concept and steer.editor.Editor is steer.Editor
assert backbones.auto.TINY and "concepts" in dir(steer)
try:
    steer.no_such_module
except AttributeError as error:
    assert str(error) == "module 'steer' has no attribute 'no_such_module'", error
else:
    raise AssertionError
"""
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_a_metric_without_its_extra_names_the_install_command() -> None:
    """Without torchmetrics, ``steer.metrics.CLAPScore`` said only "No module named
    'torchmetrics'"; the pure functions stay importable."""
    code = """
import sys
sys.modules["torchmetrics"] = None  # as if not installed
import steer.metrics
assert callable(steer.metrics.cqt1_pcc)
for name in ("CLAPScore", "clap"):
    try:
        getattr(steer.metrics, name)
    except ModuleNotFoundError as error:
        assert error.name == "torchmetrics", error.name
        assert str(error) == (
            f"steer.metrics.{name} needs torchmetrics, which is not installed: pip install 'steer[metrics]'"
        ), error
    else:
        raise AssertionError(name)
"""
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
