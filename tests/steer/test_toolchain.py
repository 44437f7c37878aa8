"""The host compiler's check (steer/toolchain.py) and what a compiled 16-bit CPU path does with
it: AVX2 code from inductor where the check finds AVX-512 code wrong."""

import shutil
import warnings

import pytest
import torch
from torch._inductor.utils import fresh_cache

from steer import toolchain
from steer.performance import Performance

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture()
def wrong(monkeypatch):
    """Sets what the compiler check finds (``wrong.values``) and records the dtypes it is asked about."""

    class Wrong:
        values = 0
        asked: list[torch.dtype] = []

    def wrong_values(dtype, simdlen=None):
        Wrong.asked.append(dtype)
        return Wrong.values

    monkeypatch.setattr(toolchain, "wrong_values", wrong_values)
    return Wrong


@pytest.fixture()
def compiles(monkeypatch):
    """Records how torch.compile was asked; compiles nothing."""
    calls = []

    def compile_(fn, **kwargs):
        calls.append(kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", compile_)
    return calls


def test_a_16_bit_inductor_path_on_the_cpu_writes_avx2_code_where_the_compiler_gets_avx512_wrong(wrong):
    wrong.values = 3304
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        assert Performance(precision=precision, compile=True).inductor_options(CPU) == {"cpp.simdlen": 256}
        assert wrong.asked[-1] == dtype
    asked = len(wrong.asked)
    # fp32, another backend, not compiled, or CUDA: nothing to check, nothing added
    for performance, device in [(Performance(compile=True), CPU),
                                (Performance(precision="bf16", compile=True, compile_backend="aot_eager"), CPU),
                                (Performance(precision="bf16"), CPU),
                                (Performance(precision="bf16", compile=True), CUDA)]:
        assert performance.inductor_options(device) == {}
    assert len(wrong.asked) == asked
    wrong.values = 0
    assert Performance(precision="bf16", compile=True).inductor_options(CPU) == {}


def test_the_compiler_passes_the_options_and_folds_autotunes_mode_into_them(wrong, compiles):
    wrong.values = 1
    Performance(precision="bf16", compile=True).compiler(CPU)(lambda: None)
    assert compiles[-1]["mode"] is None and compiles[-1]["options"] == {"cpp.simdlen": 256}
    # torch.compile takes a mode or options: autotune's mode goes in as the settings it stands for
    Performance(precision="bf16", compile=True, autotune=True).compiler(CPU)(lambda: None)
    assert compiles[-1]["mode"] is None
    assert compiles[-1]["options"] == {"max_autotune": True, "coordinate_descent_tuning": True, "cpp.simdlen": 256}
    wrong.values = 0
    Performance(precision="bf16", compile=True, autotune=True).compiler(CPU)(lambda: None)
    assert compiles[-1]["mode"] == "max-autotune-no-cudagraphs" and compiles[-1]["options"] is None


def test_check_warns_where_the_avx2_code_stands_in(wrong):
    wrong.values = 3304
    with pytest.warns(RuntimeWarning, match=r"AVX-512 code for bf16 .* came out wrong .*3304 of 4096 .*CXX"):
        Performance(precision="bf16", compile=True).check(CPU)
    wrong.values = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Performance(precision="bf16", compile=True).check(CPU)


@pytest.fixture()
def generic_gxx(tmp_path):
    """Inductor builds with g++ tuned for no CPU in particular (``-mtune=generic`` after its own
    ``-march=native``), in an empty cache. Tuned so, g++ 12.2 drops the transpose's stores on
    an AMD EPYC (Zen 4), which its own tuning there (znver3) does not, as plain ``-march=native``
    did on the Intel CPU (AVX-512 with AMX) where the NaN was found: the defect shows on both."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("no g++ on this machine")
    script = tmp_path / "g++"
    script.write_text(f'#!/bin/sh\nexec {gxx} "$@" -mtune=generic\n')
    script.chmod(0o755)
    toolchain.wrong_values.cache_clear()
    with torch._inductor.config.patch({"cpp.cxx": (None, str(script))}), fresh_cache():
        yield
    toolchain.wrong_values.cache_clear()


@pytest.mark.slow  # inductor compiles three small C++ kernels: about a minute on 2 cores
def test_a_compiled_bf16_path_is_exact_where_the_compiler_gets_avx512_wrong(generic_gxx):
    wrong = toolchain.wrong_values(torch.bfloat16)
    if not wrong:
        pytest.skip("g++ tuned generic gets inductor's AVX-512 code right here (no AVX-512, or no defect)")
    assert toolchain.wrong_values(torch.bfloat16, simdlen=256) == 0  # the stand-in itself
    generator = torch.Generator().manual_seed(1)
    a, b, c = (torch.randint(-4, 5, toolchain.SHAPE, generator=generator).to(torch.bfloat16) for _ in range(3))
    a, b = (t.contiguous(memory_format=torch.channels_last) for t in (a, b))

    def mix(a, b, c):
        return c + a * b

    compiled = Performance(precision="bf16", compile=True).compiler(CPU)(mix)
    with torch.no_grad():
        torch.testing.assert_close(compiled(a, b, c), c + a * b, rtol=0, atol=0)


def test_a_cpu_compile_is_refused_with_the_fix_where_inductors_compiler_does_not_run():
    assert toolchain.compiler() is not None  # this machine's g++ (or CXX)
    with torch._inductor.config.patch({"cpp.cxx": (None, "/nowhere/g++")}):
        assert toolchain.compiler() is None
        fix = r"none of inductor's \(/nowhere/g\+\+\) runs: install g\+\+ or name one in the CXX"
        with pytest.raises(ValueError, match=fix):
            Performance(compile=True).check(CPU)
        Performance(compile=True, compile_backend="aot_eager").check(CPU)  # no C++ needed
    assert toolchain.compiler() is not None
