#!/usr/bin/env bash
# Runs every cargo-fuzz target of Drover for a bounded number of executions, one target at a
# time, and prints per target: executions, seconds, executions per second and crashes found.
# Exits non-zero if any target crashed (or failed to build). Not run by CI; see docs/fuzzing.md.
#
#   fuzz/run.sh                      # 10,000,000 executions per target
#   RUNS=20000 fuzz/run.sh           # a short smoke run
#   TARGETS="units coord_acl" fuzz/run.sh
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`). Builds without
# a sanitizer (`-s none`): the code is safe Rust, and twice the executions per second find more
# than ASan would; debug assertions and overflow checks stay on. One fuzzing process at a time,
# and CARGO_BUILD_JOBS defaults to 1, so the machine stays usable.
set -uo pipefail
cd "$(dirname "$0")"

RUNS=${RUNS:-10000000}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}
export CARGO_TARGET_DIR="$PWD/target"
ALL="units coord_acl cert_identity coord_txn peer_msg coord_snapshot coord_client master_wire
     services_spec coord_log agent_checkpoint"
TARGETS=${TARGETS:-$ALL}

# Longest input per target: enough for the structures each decodes, small enough to stay fast.
declare -A MAX_LEN=(
  [units]=256 [coord_acl]=4096 [cert_identity]=8192 [coord_txn]=8192 [peer_msg]=16384
  [coord_snapshot]=16384 [coord_client]=8192 [master_wire]=8192 [services_spec]=8192
  [coord_log]=16384 [agent_checkpoint]=8192
)

cargo +nightly fuzz build -s none || { echo "fuzz build failed" >&2; exit 2; }

mkdir -p logs
declare -A EXECS SECS RATE CRASHES
failed=0
for t in $TARGETS; do
  max_len=${MAX_LEN[$t]:-4096}
  mkdir -p "corpus/$t" "artifacts/$t"
  seeds=()
  [[ -d "seeds/$t" ]] && seeds=("seeds/$t")
  before=$(find "artifacts/$t" -type f | wc -l)
  echo "== $t: $RUNS runs, max_len $max_len (log: fuzz/logs/$t.log)"
  start=$(date +%s.%N)
  cargo +nightly fuzz run -s none "$t" "corpus/$t" "${seeds[@]}" -- \
    -runs="$RUNS" -max_len="$max_len" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 -print_pcs=0 >"logs/$t.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  rm -rf /dev/shm/drover-fuzz-* # the targets' scratch dirs
  after=$(find "artifacts/$t" -type f | wc -l)
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "logs/$t.log" | grep -o '[0-9]*$')
  if [[ -z "$execs" ]]; then # stopped early (crash): the last status line says how far it got
    execs=$(grep -o '^#[0-9]*' "logs/$t.log" | tail -1 | tr -d '#')
  fi
  EXECS[$t]=${execs:-0}
  SECS[$t]=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  RATE[$t]=$(awk -v n="${EXECS[$t]}" -v s="${SECS[$t]}" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')
  CRASHES[$t]=$((after - before))
  if [[ $rc -ne 0 && ${CRASHES[$t]} -eq 0 ]]; then CRASHES[$t]="rc=$rc"; fi
  if [[ $rc -ne 0 || ${CRASHES[$t]} != 0 ]]; then
    failed=1
    grep -m1 -A12 -E '^==[0-9]+==|panicked at|SUMMARY' "logs/$t.log" || tail -20 "logs/$t.log"
  fi
  echo "   ${EXECS[$t]} executions in ${SECS[$t]} s (${RATE[$t]}/s), crashes: ${CRASHES[$t]}"
done

echo
printf '%-18s %12s %8s %9s %8s\n' target executions seconds exec/s crashes
for t in $TARGETS; do
  printf '%-18s %12s %8s %9s %8s\n' "$t" "${EXECS[$t]}" "${SECS[$t]}" "${RATE[$t]}" "${CRASHES[$t]}"
done
exit $failed
