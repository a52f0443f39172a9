#!/usr/bin/env bash
# The GPU checks as one prepared run: the transformers parity tests, the gradient check
# and the generation/scoring tests on the GPU, `goosepipe score` on the GPU against the
# CPU, the routed-forward and model benchmarks, and the training step against PyTorch
# eager and torch.compile on the same GPU. Then, apart, the larger content study. Two
# halves, because the GPU machine has no Rust toolchain:
#
#   scripts/gpu-check.sh build     # here: a --features cuda build of those test and bench
#                                  # binaries and goosepipe, into .gpu-kit/ (git ignores it)
#   scripts/gpu-check.sh device    # there, from the repository root, with .gpu-kit/ carried:
#                                  # runs everything on cuda:0, log in ${OUT:-.}/gpu-check.log
#   scripts/gpu-check.sh study     # there too: `goosepipe run pipelines/study-large.kdl`
#                                  # on cuda:0 into the store .goosepipe (so a second call
#                                  # on a still-warm machine resumes it), then its report;
#                                  # log and report in ${OUT:-.}/study*.{log,md}
#
# `build` prepares the CUDA 13.0 toolchain with ../shared/tools/cuda-toolchain.sh (about
# 10 minutes the first time) and builds into target/cuda, apart from the CPU build.
# `device` finds the CUDA libraries in the image's python (site-packages/nvidia/cu13/lib)
# unless LD_LIBRARY_PATH already has libcublas.so.13, runs every part even when one
# fails, and exits 1 if any did. Each part is bounded (timeout) and all of them share a
# 9-minute budget (GPU_BUDGET seconds), so one device command (10 minutes at most) holds
# the whole check; on an H100/H200 it should take a few minutes. `study` stops the run
# after STUDY_BUDGET seconds (default 540): what finished stays in the store.
set -uo pipefail
cd "$(dirname "$0")/.."
KIT=.gpu-kit
# The integration tests are one binary (tests/integration.rs); its GPU parts by module.
TESTS=(integration)
GPU_TESTS=(model_parity model_inference model_grad)
BENCHES=(routed_ratio model_forward train_step)

# Builds the named test or bench targets (KIND test|bench) with --features cuda and
# copies their executables into the kit, named by target.
kit_binaries() {
  local kind=$1 args=() t name exe
  shift
  # `cargo bench` always builds the bench profile; tests are asked for release.
  [ "$kind" = bench ] || args+=(--release)
  for t in "$@"; do args+=("--$kind" "$t"); done
  cargo "$kind" --features cuda --locked --no-run "${args[@]}" --message-format=json \
    | python3 -c 'import json, sys
kind = sys.argv[1]
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == [kind]:
        print(m["target"]["name"], m["executable"])' "$kind" > "$KIT/$kind.txt"
  while read -r name exe; do cp "$exe" "$KIT/$name"; done < "$KIT/$kind.txt"
}

build() {
  set -e
  # shellcheck disable=SC1091
  source ../shared/tools/cuda-toolchain.sh .cuda/toolchain
  export CARGO_TARGET_DIR=target/cuda
  rm -rf "$KIT" && mkdir -p "$KIT"
  local t
  kit_binaries test "${TESTS[@]}"
  kit_binaries bench "${BENCHES[@]}"
  cargo build --release --features cuda --locked --bin goosepipe
  cp "$CARGO_TARGET_DIR/release/goosepipe" "$KIT/goosepipe"
  strip "$KIT"/* 2>/dev/null || true
  for t in "${TESTS[@]}" "${BENCHES[@]}" goosepipe; do
    [ -x "$KIT/$t" ] || { echo "gpu-check: $KIT/$t was not built" >&2; exit 1; }
  done
  # The kit travels compressed: the binaries carry candle's CUDA kernels as PTX text.
  tar -C "$KIT" -I "xz -T0" -cf "$KIT.tar.xz" "${TESTS[@]}" "${BENCHES[@]}" goosepipe
  rm -rf "$KIT" && mkdir -p "$KIT" && mv "$KIT.tar.xz" "$KIT/kit.tar.xz"
  ls -l "$KIT"
  echo "gpu-check: carry $KIT and run: bash scripts/gpu-check.sh device"
}

# One bounded part of the device run: its output goes to the log (and, with PART_OUT
# set, to that file too); a failure is counted. The parts share BUDGET seconds: a
# part's limit is cut to what is left, and a part with under 10 s left is skipped
# (and counted as failed).
FAILED=()
BUDGET=${GPU_BUDGET:-540}
part() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt 10 ]; then
    echo "=== $name: skipped, the time budget is spent" | tee -a "$LOG"
    FAILED+=("$name (skipped)")
    return
  fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  local rc
  if [ -n "${PART_OUT:-}" ]; then
    timeout -k 10 "$limit" "$@" >"$PART_OUT" 2>>"$LOG"
    rc=$?
    cat "$PART_OUT" >>"$LOG"
  else
    timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
  fi
  echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
  [ "$rc" -eq 0 ] || FAILED+=("$name")
}

# Unpacks the kit into a fresh folder ($BIN) and puts the CUDA libraries of the
# image's python on LD_LIBRARY_PATH unless the loader already finds them.
unpack_kit() {
  [ -f "$KIT/kit.tar.xz" ] || { echo "gpu-check: no $KIT/kit.tar.xz: run 'scripts/gpu-check.sh build' and carry $KIT" >&2; exit 2; }
  BIN=$(mktemp -d)
  tar -C "$BIN" -xJf "$KIT/kit.tar.xz"
  local known
  known=$(ldconfig -p 2>/dev/null || true)
  if [[ "$known" != *libcublas.so.13* && ":${LD_LIBRARY_PATH:-}:" != *cu13* ]]; then
    local lib
    lib=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null)
    [ -d "$lib" ] && export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  { date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1; echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"; } >>"$LOG"
}

device() {
  local out=${OUT:-.}
  LOG=$out/gpu-check.log
  : >"$LOG"
  unpack_kit
  local bin=$BIN
  export GOOSEPIPE_REPO=$PWD GOOSEPIPE_TEST_DEVICE=cuda:0 GOOSEPIPE_BENCH_DEVICE=cuda:0
  local t
  for t in "${GPU_TESTS[@]}"; do part "test $t" 90 "$bin/integration" "$t::" --test-threads 1; done
  local fx=tests/fixtures/t5/v1_1
  local experts=(--experts "$fx/expert_a.safetensors" "$fx/expert_b.safetensors" "$fx/expert_c.safetensors" --router phatgoose --top-k 2)
  local d
  for d in cpu cuda:0; do
    PART_OUT=$bin/score-$d.json part "score $d" 30 "$bin/goosepipe" score --model "$fx" --input "the cat sat on the mat" --target "yes it did" --json --device "$d"
    PART_OUT=$bin/routed-$d.json part "score $d routed" 30 "$bin/goosepipe" score --model "$fx" "${experts[@]}" --input "the cat sat on the mat" --target "yes it did" --json --device "$d"
  done
  # The GPU's per-token log-probabilities against the CPU's, plain and routed.
  part "score cuda = cpu" 10 python3 - "$bin" <<'PY'
import json, sys
d = sys.argv[1]
worst = 0.0
for kind in ("score", "routed"):
    cpu, gpu = (json.load(open(f"{d}/{kind}-{dev}.json")) for dev in ("cpu", "cuda:0"))
    if len(cpu["tokens"]) != len(gpu["tokens"]):
        sys.exit(f"{kind}: {len(gpu['tokens'])} tokens on the GPU, {len(cpu['tokens'])} on the CPU")
    pairs = [(cpu["total"], gpu["total"])] + [
        (a["logprob"], b["logprob"]) for a, b in zip(cpu["tokens"], gpu["tokens"])
    ]
    gap = max(abs(a - b) for a, b in pairs)
    print(f"{kind}: {len(pairs) - 1} tokens, total {gpu['total']:.6f} (cpu {cpu['total']:.6f}), largest gap {gap:.2e}")
    worst = max(worst, gap)
sys.exit(0 if worst < 1e-3 else 1)
PY
  # The training step first (issue 22's GPU comparison), goosepipe right before PyTorch;
  # torch.compile's warm-up at T5-small size took over 130 s on the H200.
  part "bench train_step" 90 "$bin/train_step" --bench --warm-up-time 2 --measurement-time 5
  part "torch train_step" 300 env PYTHONUNBUFFERED=1 python3 scripts/bench_torch_train_step.py --device cuda:0 --steps 30
  part "bench routed_ratio" 60 "$bin/routed_ratio" --rounds 10 2 8 36 166
  part "bench model_forward" 90 "$bin/model_forward" --bench --warm-up-time 1 --measurement-time 2
  rm -rf "$bin"
  if [ ${#FAILED[@]} -gt 0 ]; then
    echo "gpu-check: failed: ${FAILED[*]} (see $LOG)"
    exit 1
  fi
  echo "gpu-check: all parts passed (see $LOG)"
}

# The larger content study on the GPU, bounded by STUDY_BUDGET seconds, STUDY_JOBS steps
# at a time (default 2: on the H200, ten experts at once trained at 0.6 steps/s each,
# 6 in all, less than the pretraining alone before them; benches/README.md "On a GPU").
# When the budget is spent the run is stopped with SIGINT (steps in flight keep their
# checkpoints, nothing half-written is published; the next run resumes them), and the
# report shows what finished.
study() {
  local out=${OUT:-.} budget=${STUDY_BUDGET:-540}
  LOG=$out/study.log
  : >"$LOG"
  unpack_kit
  local rc
  SECONDS=0
  timeout -s INT -k 20 "$budget" "$BIN/goosepipe" run pipelines/study-large.kdl --device cuda:0 -j "${STUDY_JOBS:-2}" --keep-going >>"$LOG" 2>&1
  rc=$?
  echo "=== study run: exit $rc after $SECONDS s" | tee -a "$LOG"
  "$BIN/goosepipe" plan pipelines/study-large.kdl >"$out/study-plan.txt" 2>&1
  "$BIN/goosepipe" report pipelines/study-large.kdl >"$out/study-report.md" 2>&1
  echo "=== report: exit $?" | tee -a "$LOG"
  rm -rf "$BIN"
}

case "${1:-}" in
  build) build ;;
  device) device ;;
  study) study ;;
  *) echo "usage: scripts/gpu-check.sh build|device|study" >&2; exit 2 ;;
esac
