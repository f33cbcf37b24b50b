#!/usr/bin/env bash
# Issue #5: converge 20 replicas from nothing on one node through the
# runtime, against a plain loop of containerd client calls doing the same
# work (runtime/bench_test.go). Goal: runtime ≤ 1.2× plain loop.
#
# Run from the repository root, as root (the benchmarks start a private
# containerd):
#
#	bench/runtime.sh                 # COUNT=6 rounds, BENCHTIME=3x
#	COUNT=10 BENCHTIME=5x bench/runtime.sh
#
# Each round runs both benchmarks in separate test processes (a fresh
# containerd each), alternating which goes first, so drifting machine
# load and warm-up fall on both alike. Every round is one -count sample
# per benchmark: COUNT rounds give the same samples as -count=COUNT.
set -euo pipefail

COUNT=${COUNT:-6}
BENCHTIME=${BENCHTIME:-3x}
BENCHSTAT=golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da

source "$(dirname "$0")/lib.sh"
bench_init
bench_need # containerd and runc

out=bench/out
mkdir -p "$out"
stamp=$(date +%Y%m%d-%H%M%S)
raw=$out/runtime-$stamp.txt
bin=$out/runtime.test

go test -c -o "$bin" ./runtime

run() {
	"$bin" -test.run '^$' -test.bench "^$1\$" -test.benchtime="$BENCHTIME" \
		-test.count=1 -test.timeout=20m | tee -a "$raw"
}

: >"$raw"
for ((i = 1; i <= COUNT; i++)); do
	echo "== round $i/$COUNT" >&2
	if ((i % 2)); then
		run BenchmarkConvergeRuntime
		run BenchmarkConvergePlainLoop
	else
		run BenchmarkConvergePlainLoop
		run BenchmarkConvergeRuntime
	fi
done

echo
echo "raw results: $raw"
echo
# One column per benchmark, the plain loop as the base: "vs base" is the
# runtime's overhead.
go run "$BENCHSTAT" -col '.name@(ConvergePlainLoop ConvergeRuntime)' "$raw" | tee "$out/runtime-$stamp.benchstat"

# The ratio of the medians, as benchstat compares them.
awk '
	function median(a, n,   i, j, t) {
		for (i = 2; i <= n; i++)
			for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
		return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
	}
	$1 ~ /^BenchmarkConvergeRuntime(-[0-9]+)?$/   && $4 == "ns/op" { rt[++nr] = $3 }
	$1 ~ /^BenchmarkConvergePlainLoop(-[0-9]+)?$/ && $4 == "ns/op" { pl[++np] = $3 }
	END {
		if (!nr || !np) { print "no results" > "/dev/stderr"; exit 1 }
		r = median(rt, nr); p = median(pl, np)
		printf "\nruntime %.0f ms/op (n=%d), plain loop %.0f ms/op (n=%d): ratio %.3f (goal <= 1.2: %s)\n",
			r / 1e6, nr, p / 1e6, np, r / p, (r / p <= 1.2 ? "met" : "NOT met")
	}
' "$raw" | tee -a "$out/runtime-$stamp.benchstat"
