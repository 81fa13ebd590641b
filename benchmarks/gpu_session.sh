#!/usr/bin/env bash
# What a session with a lent GPU runs, one stage per device command (each stays under the
# device tool's 10-minute limit). Everything it writes lands in $OUT (default ./gpu_out).
#
#   bash benchmarks/gpu_session.sh tests        # every GPU test (-m gpu), verbose, junit XML
#   bash benchmarks/gpu_session.sh gen1024      # bench_generate llada-8b, B=1, gen 1024, 6 modes
#   bash benchmarks/gpu_session.sh gen1024b8    # B=8 at gen 1024's sequence length (see below)
#   bash benchmarks/gpu_session.sh gen256b1     # gen 256, B=1, every mode but the prompt cache's
#   bash benchmarks/gpu_session.sh gen256b8     # gen 256, B=8, the same
#   bash benchmarks/gpu_session.sh op           # bench_credit_op (fused op vs eager chain)
#   bash benchmarks/gpu_session.sh buckets      # 6 requests of varied prompt lengths, bucket 0/256
#   bash benchmarks/gpu_session.sh compile      # cold 8B compile, with and without compile_layers_once
#   bash benchmarks/gpu_session.sh suite        # the whole test suite with CUDA available
#   bash benchmarks/gpu_session.sh llada2       # bench_generate llada2-mini, B=1, gen 256
#   bash benchmarks/gpu_session.sh llada2b8     # llada2-mini, B=8, gen 256
#   bash benchmarks/gpu_session.sh llada2g1024  # llada2-mini, B=1, gen 1024
#   bash benchmarks/gpu_session.sh peers        # bench_peers llada-8b, B=1: Fast-dLLM and dInfer
#   bash benchmarks/gpu_session.sh peersb8      # the same at B=8
#
# A session is lent 15 minutes of device time in all, the start (about 1.5 min) and idle waits
# included, and a machine goes back 30 s after a call: run the stages back to back, and
# give_back after the last. Stage times are estimates (~): tests (~3 min) and gen1024 (~7) fill
# one session (about 11.5 of the 15 minutes with the start, no room to rerun either); gen1024b8
# (~9, with the caches' eager and graphed modes) needs a session to itself. Then gen256b1 (~7),
# gen256b8 (~8), compile (~4), op (~2), buckets (~7: one 8B compile per distinct length without
# a bucket) and suite. gen256b1/b8 run every mode but the prompt cache's, the two
# compile_layers_once modes included (~1 min each). Each compiled 8B mode compiles for 27-52 s
# (measured, docs/performance.md). Rows are appended as measured, so a stage cut by the limit
# keeps what it finished.
# Each step runs the model over the whole sequence, so a step's cost depends on the batch and the
# sequence length T = prompt + gen, not on how much is generated. A full gen-1024 run at B=8
# takes about 6 minutes per eager mode (1024 steps of ~340 ms), more than one command may run;
# gen1024b8 therefore measures the same step shapes (T = 1056) with an 800-token prompt and 256
# generated tokens, and its rows say so (prompt_length 800). gen1024 leaves out the sparse
# compiled and dense graphed modes (measured at gen 256) to stay inside the limit.
#
# The device image has no .git: set CREDIT_COMPILE_COMMIT to the commit being measured so the
# result rows record it. Copy $OUT/*.jsonl rows into benchmarks/results/ afterwards.
# The lent image (torch 2.11, triton 3.6, transformers 5.17; hypothesis and pytest included)
# lacks optimum and has no network: carry its wheel (pip download --no-deps --only-binary=:all:
# -d .whl optimum) and begin each device command with
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site
# No install of this package there: `pip install -e .` needs setuptools >= 77 (pyproject's
# license form), which the image may predate. Where `credit_compile.passes` does not import,
# this script copies the package, passes/ joined under it as installs do, to a temporary
# folder put first on PYTHONPATH (FROM_SOURCE=1 forces it; the first line printed says which).
# The tests stage stops at the third failure: each failing equality test decodes and compiles
# again to report its first divergence, and one capture bug fails dozens of them.
#
# The llada2 stages (LLaDA2.0-mini's shapes, random bf16 weights: about 33 GB, so an H100's 80 GB
# hold it) compare LLaDA2's own generate() (eager, no cache) with optimize() on the exact block
# cache, CUDA-graphed; rows go to $OUT/generate_llada2.jsonl. Not yet timed on a GPU: the experts
# run densely (every expert on every token), and each optimized mode compiles three step
# functions (prefill, a block's entering step, its cached steps) of 20 MoE layers.
#
# The peers stages (bench_peers.py: Fast-dLLM's and dInfer's own decoding code beside optimize(),
# gen 256, block 32, every pair) need the peers' checkouts in the working tree, ignored by git:
# clone them to .peers/Fast-dLLM and .peers/dInfer (or set FASTDLLM and DINFER) and carry .peers;
# Fast-dLLM's model needs einops: carry its wheel in .whl as optimum's. Not yet timed on a GPU:
# each side runs once untimed, then once timed; Fast-dLLM decodes a batch row after row (B=8:
# eight 256-step decodes per call, ~1 min each for its uncached pair at ~30 ms a step) and each of
# ours compiles (~30-50 s), so B=1 and B=8 are a stage each.
#
# DRY_RUN=1 runs every stage's command on the CPU at toy sizes (flags appended after the stage's
# own override them): a stage whose flags a script no longer takes fails here, in CI
# (benchmarks/tests/test_gpu_session.py), rather than on a lent GPU. The scripts that compile get
# --cheap-compile (benchutil): dynamo and the FX passes run, Inductor's code generation (most of a
# CPU compile) does not, and their rows say backend "cheap". DRY_RUN=flags, for the bench_generate
# stages (gen*, llada2*), appends --check-flags alone: the stage's own flags (its lengths and modes,
# which DRY_RUN=1 overrides) are checked as a run would, and nothing runs.
set -uo pipefail
cd "$(dirname "$0")/.."
STAGES="tests, gen1024, gen1024b8, gen256b1, gen256b8, compile, op, buckets, suite, llada2, llada2b8,
    llada2g1024, peers or peersb8"
case "${1:-tests}" in
tests|gen1024|gen1024b8|gen256b1|gen256b8|compile|op|buckets|suite|llada2|llada2b8|llada2g1024\
    |peers|peersb8) ;;
*) echo "unknown stage ${1}: use $STAGES" >&2; exit 2 ;;
esac
OUT=${OUT:-gpu_out}
DRY_RUN=${DRY_RUN:-0}
case "$DRY_RUN:${1:-tests}" in
0:*|1:*|flags:gen*|flags:llada2*) ;;
*) echo "DRY_RUN is 0, 1, or flags (for the gen* and llada2* stages)" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
GEN_DRY=() BUCKETS_DRY=() OP_DRY=() TESTS_DRY=() SUITE_DRY=() COMPILE_DRY=() LLADA2_DRY=() PEERS_DRY=()
if [ "$DRY_RUN" = 1 ]; then
    GEN_DRY=(--preset tiny --gen-length 8 --block-length 4 --prompt-length 4 --repeats 1
             --modes llada-eager credit-eager --device cpu --cheap-compile)
    LLADA2_DRY=(--preset tiny-llada2 --gen-length 8 --block-length 4 --prompt-length 4 --repeats 1
                --modes llada2-eager credit-block-eager --device cpu --cheap-compile)
    BUCKETS_DRY=(--preset tiny --requests 2 --min-length 2 --max-length 3 --buckets 0 4
                 --gen-length 4 --block-length 4 --warm-cache --device cpu --cheap-compile)
    OP_DRY=(--quick --no-compile --device cpu)
    COMPILE_DRY=(--preset tiny --layers 1 --prompt-length 2 --gen-length 4 --block-length 4
                 --repeats 1 --device cpu --cheap-compile)
    PEERS_DRY=(--preset tiny --batch 1 --gen-length 8 --block-length 4 --prompt-length 4
               --repeats 1 --device cpu --cheap-compile)
    TESTS_DRY=(--collect-only)
    # The suite's command line (options, paths, conftests) with one small module collected: the
    # tests stage's dry run already imports every module of tests/, and CI runs them all.
    SUITE_DRY=(--collect-only -o python_files=test_provenance.py)
elif [ "$DRY_RUN" = flags ]; then
    GEN_DRY=(--check-flags) LLADA2_DRY=(--check-flags)
else
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
fi
versions() {  # one process both probes the install and names the versions, from the packages'
    # metadata and where the import system finds the passes, importing nothing (the package
    # imports torch, the passes dynamo and Inductor: seconds on every stage)
    python3 -P -c "import importlib.metadata as m, importlib.util as u, sys
package = u.find_spec('credit_compile')
passes = next(filter(None, (f.find_spec('credit_compile.passes', package.submodule_search_locations)
                            for f in sys.meta_path if hasattr(f, 'find_spec'))))
print('torch', m.version('torch'), 'triton', m.version('triton'), 'credit_compile', passes.origin)"
}
if [ "${FROM_SOURCE:-0}" = 1 ] || ! VERSIONS=$(versions 2>/dev/null); then
    SOURCE_COPY=$(mktemp -d)
    trap 'rm -rf "$SOURCE_COPY"' EXIT
    cp -r credit_compile "$SOURCE_COPY/" && rm -rf "$SOURCE_COPY/credit_compile/passes" \
        && cp -r passes "$SOURCE_COPY/credit_compile/passes" || exit 1
    export PYTHONPATH="$SOURCE_COPY${PYTHONPATH:+:$PYTHONPATH}"
    VERSIONS=$(versions)
fi
echo "$VERSIONS" | tee "$OUT/versions.txt"

# Every mode but the prompt cache's, which pays on long prompts only: gen1024b8 (prompt 800)
# measures it.
GEN256_MODES=(llada-eager threshold-eager credit-eager credit-compiled credit-compiled-sparse
    credit-compiled-layers-once credit-graphs credit-graphs-dense credit-graphs-layers-once
    credit-dual-cache-eager credit-compiled-dual-cache credit-graphs-dual-cache)

# LLaDA2's own generate(), the credit reference on the block cache, and optimize() graphed:
# CreditDecoding and LLaDA2's own sampler (the baseline's rules).
LLADA2_MODES=(llada2-eager credit-block-eager credit-graphs-block llada2-graphs-block)

llada2() {  # llada2 NAME ARGS...: one bench_generate llada2-mini run
    local name=$1; shift
    python3 benchmarks/bench_generate.py --preset llada2-mini --block-length 32 \
        --modes "${LLADA2_MODES[@]}" --out "$OUT/generate_llada2.jsonl" "$@" "${LLADA2_DRY[@]}" \
        2>&1 | tee "$OUT/$name.log"
}

peers() {  # peers NAME ARGS...: one bench_peers llada-8b run, every pair
    local name=$1; shift
    python3 benchmarks/bench_peers.py --preset llada-8b --gen-length 256 --block-length 32 \
        --fastdllm "${FASTDLLM:-.peers/Fast-dLLM}" --dinfer "${DINFER:-.peers/dInfer}" \
        --out "$OUT/peers.jsonl" "$@" "${PEERS_DRY[@]}" 2>&1 | tee "$OUT/$name.log"
}

gen() {  # gen NAME ARGS...: one bench_generate run, rows appended to $OUT/generate.jsonl
    local name=$1; shift
    python3 benchmarks/bench_generate.py --preset llada-8b --block-length 32 \
        --out "$OUT/generate.jsonl" "$@" "${GEN_DRY[@]}" 2>&1 | tee "$OUT/$name.log"
}

case "${1:-tests}" in
tests)
    # The GPU tests only (marked gpu: tests/cuda_marks.py); -rA prints every outcome and the
    # diagnostics.
    # -P: the checkout is not put first on sys.path, where credit_compile lacks its passes/
    # (they join the package when installed).
    python3 -P -m pytest -q -rA -p no:cacheprovider --maxfail=3 -m gpu tests --junitxml="$OUT/gpu_tests.xml" \
        "${TESTS_DRY[@]}" 2>&1 | tee "$OUT/gpu_tests.log"
    ;;
suite)
    python3 -P -m pytest -q -p no:cacheprovider tests benchmarks/tests --junitxml="$OUT/suite.xml" \
        "${SUITE_DRY[@]}" \
        2>&1 | tee "$OUT/suite.log"
    ;;
op)
    python3 benchmarks/bench_credit_op.py --out "$OUT/credit_op.jsonl" "${OP_DRY[@]}" 2>&1 \
        | tee "$OUT/op.log"
    ;;
gen256b1)
    gen gen256_b1 --batch 1 --gen-length 256 --modes "${GEN256_MODES[@]}"
    ;;
gen256b8)
    gen gen256_b8 --batch 8 --gen-length 256 --modes "${GEN256_MODES[@]}"
    ;;
gen1024)
    gen gen1024_b1 --batch 1 --gen-length 1024 \
        --modes llada-eager threshold-eager credit-eager credit-compiled credit-graphs \
        credit-graphs-dual-cache
    ;;
buckets)
    python3 benchmarks/bench_prompt_buckets.py --preset llada-8b --requests 6 --min-length 16 \
        --max-length 240 --buckets 0 256 --gen-length 64 --block-length 32 \
        --out "$OUT/prompt_buckets.jsonl" "${BUCKETS_DRY[@]}" 2>&1 | tee "$OUT/buckets.log"
    ;;
compile)
    python3 benchmarks/bench_compile_time.py --preset llada-8b --layers 32 --prompt-length 32 \
        --gen-length 64 --block-length 32 --out "$OUT/compile_time.jsonl" "${COMPILE_DRY[@]}" \
        2>&1 | tee "$OUT/compile.log"
    ;;
gen1024b8)
    gen gen1024_b8 --batch 8 --gen-length 256 --prompt-length 800 \
        --modes llada-eager threshold-eager credit-graphs credit-dual-cache-eager \
        credit-graphs-dual-cache credit-prompt-cache-eager credit-graphs-prompt-cache
    ;;
llada2)
    llada2 llada2_b1 --batch 1 --gen-length 256
    ;;
llada2b8)
    llada2 llada2_b8 --batch 8 --gen-length 256
    ;;
llada2g1024)
    llada2 llada2_g1024 --batch 1 --gen-length 1024
    ;;
peers)
    peers peers_b1 --batch 1
    ;;
peersb8)
    peers peers_b8 --batch 8
    ;;
esac
