#!/usr/bin/env bash
# The step benchmarks' cases that benchmarks/README.md still needs from a GPU (issue 5): those
# it has no figures for, and those measured before a step's time left an edit's fixed cost out;
# on the real-size model, most telling first, each printing its figures as it ends: a run
# stopped by a time limit keeps what it measured, and SIGINT still prints the closing table.
#
#   bash benchmarks/gpu_figures.sh OUT_DIR [first|rest] [pytest options...]
#
# `first` fits a 10-minute call on one H100/H200 (STEER_GPU_SECONDS, default 540, then SIGINT;
# SteerMusic+'s inductor compile is not known, so the last case may not be reached);
# `rest` holds the cases measured after it. OUT_DIR gets the log, the pytest-benchmark JSON,
# the profile summaries, nvidia-smi's report and the package versions.
set -uo pipefail
if [[ $# -lt 1 || ${1:0:1} == "-" ]]; then
    echo "usage: bash benchmarks/gpu_figures.sh OUT_DIR [first|rest] [pytest options...]" >&2
    exit 2
fi
out=$1
plan=${2:-first}
shift $(( $# >= 2 ? 2 : 1 ))
python=${PYTHON:-python3}

# The H100 run of 2026-11-26 (benchmarks/README.md) measured SteerMusic B=1 on every path but
# with an edit's fixed cost spread over its 20 steps, and inductor at B=8. First now: SteerMusic
# B=1 on inductor again, its set-up apart; SteerMusic+ against its reference and on inductor
# with checkpointing (the memory goal on the fused default); steer-cudagraphs at B=8.
first=(
    steermusic-reference-1 steermusic-fused-1 steermusic_plus-reference-1
    steermusic_plus-fused-checkpointed-1 steermusic-fused-steer-cudagraphs-8
)
# `rest` opens with inductor's autotuned kernels (`--autotune`, not yet run on a GPU; its compile
# time is unknown) at batch 1 and 8, against `fused` in `first` and below.
rest=(
    steermusic-fused-autotune-1 steermusic-fused-autotune-8
    steermusic_plus-fused-checkpointed-steer-cudagraphs-1 steermusic-fused-steer-cudagraphs-1
    steermusic-reference-8 steermusic-fused-8 steermusic_plus-checkpointed-1
    steermusic_plus-fused-1 steermusic_plus-fused-steer-cudagraphs-1
)
case $plan in
    first) cases=("${first[@]}") ;;
    rest) cases=("${rest[@]}") ;;
    *) echo "unknown plan '$plan': use first or rest" >&2; exit 2 ;;
esac

mkdir -p "$out"
ids=()
for c in "${cases[@]}"; do ids+=("benchmarks/test_bench_steps.py::test_step_time[$c]"); done
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
"$python" -c 'import diffusers, torch, transformers
triton = __import__("importlib.util").util.find_spec("triton") and __import__("triton").__version__
print(f"torch {torch.__version__}, triton {triton}, diffusers {diffusers.__version__}, transformers {transformers.__version__}")' \
    | tee "$out/versions.txt"
PYTHONUNBUFFERED=1 timeout -s INT -k 30 "${STEER_GPU_SECONDS:-540}" \
    "$python" -m pytest "${ids[@]}" --real-size --steps 20 --rounds 2 -p no:cacheprovider \
    --benchmark-json "$out/bench.json" --profile-file "$out/profiles.txt" "$@" 2>&1 | tee "$out/log.txt"
