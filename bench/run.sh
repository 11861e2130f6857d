#!/usr/bin/env bash
# bench/run.sh NAME... | all: run benchmarks, each on its own throwaway stack (docs/benchmarks.md).
# Names: makespan (with the naive client), throughput, calls, submit, push, priority, fairshare,
# lawsim (the control law's trade-off, simulated), memory, estimates, render.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_packages
ensure_venv
ALL=(makespan throughput calls submit push priority fairshare lawsim memory estimates render)
[ $# -eq 0 ] && set -- all
[ "$1" = all ] && set -- "${ALL[@]}"
mkdir -p .local/bench
for name in "$@"; do
    say "bench $name"
    started=$SECONDS
    "$PY" -m "bench.$name" 2>.local/bench/"$name".stderr | tee .local/bench/"$name".out \
        || { tail -40 .local/bench/"$name".stderr; exit 1; }
    say "bench $name took $((SECONDS - started)) s"
done
# One JSON line per bench, for machines.
grep -h '^{"bench"' $(printf '.local/bench/%s.out ' "$@") >.local/bench/results.jsonl || true
