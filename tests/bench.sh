#!/usr/bin/env bash
# Runs every configwatch-bench workload against etcd in the same run and draws the
# W1 chart. Installs nothing: it stops and says what to install when etcd is missing.
#
#   tests/bench.sh                 # everything: W1 at 1k/10k/100k, W2..W5 (about 15 min on 2 cores)
#   BENCH_REPEAT=1 tests/bench.sh  # one run of each instead of three
#
# Environment: BENCH_REPEAT (3), BENCH_W1_SIZES ("1000 10000 100000"),
# BENCH_ETCD_MAX (10000: above it W1 runs configwatch alone, see BENCHMARKS.md),
# BENCH_OUT (a new directory under the cargo target dir). Logs go to BENCH_OUT;
# the summary lines (one per run, `ratio=` at the end) to BENCH_OUT/summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcd >/dev/null 2>&1; then
    echo "bench: etcd is not on the PATH; install it with: apt-get install etcd-server" >&2
    exit 1
fi

# The server and the bench (its own crate, tests/bench), side by side.
cargo build --release -p configwatch -p configwatch-bench
target=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bench="$target/release/configwatch-bench"

# 100k watchers are 100k HTTP/2 streams over a few hundred connections, not 100k
# sockets; still raise the soft file limit to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

repeat=${BENCH_REPEAT:-3}
sizes=${BENCH_W1_SIZES:-"1000 10000 100000"}
etcd_max=${BENCH_ETCD_MAX:-10000}
out=${BENCH_OUT:-"$target/bench-results/$(date +%Y%m%d-%H%M%S)"}
mkdir -p "$out"

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc: $(nproc)"
    grep -m1 'model name' /proc/cpuinfo || true
    grep MemTotal /proc/meminfo || true
    echo "etcd: $(etcd --version 2>/dev/null | head -1)"
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo none) $(git status --porcelain 2>/dev/null | wc -l) changed files"
} | tee "$out/machine.txt"

run() { # run NAME ARGS...
    local name=$1
    shift
    echo "+ configwatch-bench $*" | tee -a "$out/commands.txt"
    "$bench" "$@" 2>&1 | tee "$out/$name.txt"
}

for n in $sizes; do
    peer=etcd
    conns=100
    if [ "$n" -gt 10000 ]; then conns=$((n / 100)); fi
    if [ "$n" -gt "$etcd_max" ]; then peer=none; fi
    reps=$repeat
    if [ "$n" -gt 10000 ]; then reps=1; fi
    for i in $(seq "$reps"); do
        run "w1-$n-$i" fanout --watchers "$n" --connections "$conns" --changes 200 --peer "$peer"
    done
done
# The same 10k watchers all on one tenant: every put reaches all of them (the
# shape of the etcd reference figure, one key watched by everyone).
for i in $(seq "$repeat"); do
    run "w1t1-10000-$i" fanout --watchers 10000 --tenants 1 --peer etcd
done
for i in $(seq "$repeat"); do run "w2-$i" get --peer etcd; done
for i in $(seq "$repeat"); do run "w3-10000-$i" memory --watchers 10000 --peer etcd; done
run "w3-100000-1" memory --watchers 100000 --connections 1000 --peer none
for i in $(seq "$repeat"); do run "w4-$i" reconnect --watchers 10000 --peer etcd; done
run "w5" slow --watchers 10000 --rounds "$repeat" --peer etcd

python3 tests/bench_w1_svg.py "$out"/w1-*.txt >tests/bench-w1.svg
grep -hE '^W[1-5] (N=|configwatch)' "$out"/*.txt | tee "$out/summary.txt"
echo "bench: logs in $out; chart in tests/bench-w1.svg"
