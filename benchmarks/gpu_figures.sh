#!/usr/bin/env bash
# The step benchmarks' cases that benchmarks/README.md still needs from a GPU (issue 5): those
# it has no figures for, and those measured before a step's time left an edit's fixed cost out;
# on the real-size model, most telling first, each printing its figures as it ends: a run
# stopped by a time limit keeps what it measured, and SIGINT still prints the closing table.
#
#   bash benchmarks/gpu_figures.sh OUT_DIR [prewarm|first|rest|agree] [pytest options...]
#
# `first` fits a 10-minute call on one H100/H200 (STEER_GPU_SECONDS, default 540, then SIGINT;
# SteerMusic+'s inductor compile is not known, so the last case may not be reached);
# `rest` holds the cases measured after it. OUT_DIR gets the log, the pytest-benchmark JSON,
# the profile summaries, nvidia-smi's report and the package versions.
# `prewarm`, run before them on the same machine, compiles their inductor cases and times
# nothing: STEER_PREWARM_JOBS processes at once (default 6, each given its share of the cores
# for inductor's compile workers), each running its cases' warm-up edits (`--warm-only`) until
# STEER_GPU_SECONDS. Inductor's on-disk cache (TORCHINDUCTOR_CACHE_DIR, by default under /tmp)
# then holds their kernels and a timed case's compile takes a fraction of a cold one's (tiny
# model, CPU: 37 s against 170 s for SteerMusic, 107 s against 713 s for SteerMusic+). The
# kernels' autotuning (inductor's configs; `max-autotune`'s choice of matmul kernels) then ran
# while the other processes shared the GPU; what the timed cases measure is the chosen kernels.
# `agree` measures no time: each path's first-step gradient against `reference` in full fp32
# (benchmarks/agreement.py), SteerMusic then SteerMusic+, on the GPU's kernels (cuBLAS and
# cuDNN in bf16, inductor's Triton code, the fused Triton kernel), which no run has compared
# yet; its extra options go to the agreement script (`--seeds 0` for one seed).
# Every plan refuses a machine where torch finds no CUDA GPU. The exit status is not 0 when a
# run (a prewarm job, an agreement run, the step benchmarks, `first`'s GPU tests) failed or was
# stopped at STEER_GPU_SECONDS, or when the budget was spent before a run could start.
set -uo pipefail
if [[ $# -lt 1 || ${1:0:1} == "-" ]]; then
    echo "usage: bash benchmarks/gpu_figures.sh OUT_DIR [prewarm|first|rest|agree] [pytest options...]" >&2
    exit 2
fi
out=$1
plan=${2:-first}
shift $(( $# >= 2 ? 2 : 1 ))
python=${PYTHON:-python3}

# The H100 run of 2026-11-26 (benchmarks/README.md) measured SteerMusic B=1 on every path but
# with an edit's fixed cost spread over its 20 steps, and inductor at B=8. First now: the step
# graphs (never run on a GPU; the eager ones compile nothing), each step replayed as one CUDA
# graph, against the reference and inductor without them, SteerMusic B=1 and SteerMusic+ (whose
# host work a step the step graph removes); then SteerMusic+ on inductor with checkpointing (the
# memory goal on the fused default).
first=(
    steermusic-reference-1 steermusic-bf16-step-graph-1 steermusic_plus-bf16-step-graph-1
    steermusic-fused-step-graph-1 steermusic-fused-1 steermusic_plus-reference-1
    steermusic_plus-fused-checkpointed-step-graph-1 steermusic_plus-fused-checkpointed-1
)
# `rest` opens with the fused attention projections (`fuse_projections`: 160 fewer matmuls a
# call) in a step graph, and SteerMusic+ with its LoRA merged into ε′'s weights (`merge_lora`:
# 768 fewer matmuls in ε′'s call) and then with the merged projections fused too (ε's and ε′'s
# calls 160 fewer each), against `first`'s steermusic-fused-step-graph-1 and
# steermusic_plus-fused-checkpointed-step-graph-1 on the same machine, then inductor's autotuned
# kernels (`--autotune`, not yet run on a GPU; its compile time is unknown) at batch 1 and 8,
# against `fused` in `first` and below.
rest=(
    steermusic-fused-projections-step-graph-1 steermusic_plus-fused-checkpointed-merge-lora-step-graph-1
    steermusic_plus-fused-checkpointed-merge-lora-fuse-projections-step-graph-1
    steermusic-fused-autotune-1 steermusic-fused-autotune-8 steermusic-fused-steer-cudagraphs-8
    steermusic_plus-fused-checkpointed-steer-cudagraphs-1 steermusic-fused-steer-cudagraphs-1
    steermusic-reference-8 steermusic-fused-8 steermusic_plus-checkpointed-1
    steermusic_plus-fused-1 steermusic_plus-fused-steer-cudagraphs-1
)
# the cases of `first` and `rest` that inductor compiles (SteerMusic+'s, the longest, and the step
# graphs first), dealt out to the jobs in turn
prewarm=(
    steermusic_plus-fused-checkpointed-step-graph-1
    steermusic_plus-fused-checkpointed-merge-lora-fuse-projections-step-graph-1
    steermusic_plus-fused-checkpointed-1 steermusic_plus-fused-checkpointed-merge-lora-step-graph-1
    steermusic-fused-step-graph-1 steermusic-fused-autotune-1 steermusic-fused-1
    steermusic-fused-projections-step-graph-1 steermusic-fused-8 steermusic-fused-autotune-8
    steermusic_plus-fused-1
)
case $plan in
    first) cases=("${first[@]}") ;;
    rest) cases=("${rest[@]}") ;;
    prewarm) cases=("${prewarm[@]}") ;;
    agree) cases=() ;;
    *) echo "unknown plan '$plan': use prewarm, first, rest or agree" >&2; exit 2 ;;
esac
jobs=${STEER_PREWARM_JOBS:-6}
if ! [[ $jobs =~ ^[1-9][0-9]*$ ]]; then
    echo "STEER_PREWARM_JOBS must be a number of processes ≥ 1, got '$jobs'" >&2
    exit 2
fi
budget=${STEER_GPU_SECONDS:-540}
if ! [[ $budget =~ ^[1-9][0-9]*$ ]]; then
    echo "STEER_GPU_SECONDS must be a number of seconds ≥ 1, got '$budget'" >&2
    exit 2
fi
if ! "$python" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    echo "no CUDA GPU here ($python finds none): gpu_figures.sh measures on a GPU" >&2
    exit 2
fi

# the seconds of STEER_GPU_SECONDS left, or, when none are, a line saying what is not run and a
# non-zero status
left() {
    local seconds=$(( budget - (SECONDS - start) ))
    if (( seconds <= 0 )); then
        echo "STEER_GPU_SECONDS=$budget spent: $1 not run" | tee -a "$out/log.txt" >&2
        return 1
    fi
    echo "$seconds"
}

mkdir -p "$out"
ids=()
for c in "${cases[@]}"; do ids+=("benchmarks/test_bench_steps.py::test_step_time[$c]"); done
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
"$python" -c 'import diffusers, torch, transformers
triton = __import__("importlib.util").util.find_spec("triton") and __import__("triton").__version__
print(f"torch {torch.__version__}, triton {triton}, diffusers {diffusers.__version__}, transformers {transformers.__version__}")' \
    | tee "$out/versions.txt"
start=$SECONDS
if [[ $plan == prewarm ]]; then
    threads=$(( $(nproc) / jobs > 0 ? $(nproc) / jobs : 1 ))
    pids=()
    for (( j = 0; j < jobs && j < ${#ids[@]}; j++ )); do
        share=()
        for (( i = j; i < ${#ids[@]}; i += jobs )); do share+=("${ids[i]}"); done
        TORCHINDUCTOR_COMPILE_THREADS=$threads PYTHONUNBUFFERED=1 timeout -s INT -k 30 "$budget" \
            "$python" -m pytest "${share[@]}" --real-size --steps 20 --warm-only -p no:cacheprovider "$@" \
            >"$out/prewarm-$j.txt" 2>&1 &
        pids+=($!)
    done
    failed=0
    for j in "${!pids[@]}"; do
        wait "${pids[j]}" && continue
        status=$?
        failed=1
        if (( status == 124 || status == 137 )); then
            echo "prewarm job $j stopped at STEER_GPU_SECONDS=$budget before its last case: see prewarm-$j.txt" >&2
        else
            echo "prewarm job $j failed (exit $status): see prewarm-$j.txt" >&2
        fi
    done
    grep -h -e "warm-up edit" -e " passed" -e " failed" -e "error" "$out"/prewarm-*.txt | tee "$out/log.txt"
    exit "$failed"
fi
if [[ $plan == agree ]]; then
    runs=(
        "--paths batched bf16 fp16 fused --seeds 0 1"
        "--recipe steermusic_plus --merge-lora --fuse-projections --lora-std 0.05 --paths batched bf16 checkpointed fused-checkpointed --seeds 0 1"
    )
    failed=0
    for i in "${!runs[@]}"; do
        seconds=$(left "agreement run $i (${runs[i]})") || exit 1
        # shellcheck disable=SC2086  # each run's options, split into words
        PYTHONUNBUFFERED=1 timeout -s INT -k 30 "$seconds" "$python" -m benchmarks.agreement --real-size ${runs[i]} \
            --json "$out/agreement-$i.json" --overwrite "$@" 2>&1 | tee -a "$out/log.txt"
        status=${PIPESTATUS[0]}
        if (( status != 0 )); then
            echo "agreement run $i failed (exit $status; 124: stopped at STEER_GPU_SECONDS): see log.txt" >&2
            failed=1
        fi
    done
    exit "$failed"
fi
gpu_tests=0
if [[ $plan == first ]]; then  # the step graphs' correctness on CUDA first (tiny models, seconds)
    timeout 120 "$python" -m pytest tests/steer/test_step_graph.py -m gpu -q -p no:cacheprovider 2>&1 \
        | tee "$out/gpu_tests.txt"
    gpu_tests=${PIPESTATUS[0]}
fi
seconds=$(left "the step benchmarks of '$plan'") || exit 1
PYTHONUNBUFFERED=1 timeout -s INT -k 30 "$seconds" \
    "$python" -m pytest "${ids[@]}" --real-size --steps 20 --rounds 2 -p no:cacheprovider \
    --benchmark-json "$out/bench.json" --profile-file "$out/profiles.txt" "$@" 2>&1 | tee "$out/log.txt"
status=${PIPESTATUS[0]}
if (( gpu_tests != 0 )); then
    echo "the step graphs' GPU tests failed (exit $gpu_tests): see gpu_tests.txt" >&2
fi
exit $(( status != 0 ? status : gpu_tests ))
