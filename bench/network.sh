#!/usr/bin/env bash
# Issue #14: what a network namespace of its own costs a container
# (runtime/bench_test.go), two figures as ratios of medians:
#   - create → healthy, 5 replicas, bridge vs host networking: goal ≤ 1.3×
#   - requests/s through the mesh balancer (a new connection each) to two
#     bridged replicas, dialed at their container addresses (a node's own
#     instances) and through their host ports (as peers reach them),
#     against host-networked replicas: goal ≥ 0.9× each.
# A failed request fails the benchmark, and so the script.
#
#	bench/network.sh                  # COUNT=5 rounds
#	COUNT=8 bench/network.sh
set -euo pipefail

COUNT=${COUNT:-5}

source "$(dirname "$0")/lib.sh"
bench_init
bench_need # containerd, runc, the CNI plugins

out=bench/out
mkdir -p "$out"
stamp=$(date +%Y%m%d-%H%M%S)
raw=$out/network-$stamp.txt
bin=$out/network.test
go test -c -o "$bin" ./runtime

: >"$raw"
for ((i = 1; i <= COUNT; i++)); do
	echo "== round $i/$COUNT" >&2
	"$bin" -test.run '^$' -test.bench '^BenchmarkStartHealthy$' -test.benchtime=2x -test.count=1 -test.timeout=20m | tee -a "$raw"
	"$bin" -test.run '^$' -test.bench '^BenchmarkBalancerBackends$' -test.benchtime=3s -test.count=1 -test.timeout=20m | tee -a "$raw"
done
echo "raw results: $raw"

# Each round measures both modes back to back, so a ratio per round
# compares like with like on a machine whose load drifts; the figure is
# the median of the rounds' ratios.
awk '
	function median(a, n,   i, j, t) {
		for (i = 2; i <= n; i++)
			for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
		return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
	}
	$4 != "ns/op" { next }
	$1 ~ /StartHealthy\/network=host/                { sh = $3 }
	$1 ~ /StartHealthy\/network=bridge/              { start[++ns] = $3 / sh; sb = $3 }
	$1 ~ /BalancerBackends\/backends=host/           { bh = $3 }
	$1 ~ /BalancerBackends\/backends=bridge-direct/   { direct[++nd] = bh / $3 }
	$1 ~ /BalancerBackends\/backends=bridge-hostport/ { hostport[++np] = bh / $3 }
	END {
		if (!ns || !nd || !np) { print "missing results" > "/dev/stderr"; exit 1 }
		ok = 1
		r = median(start, ns); if (r > 1.3) ok = 0
		printf "\ncreate → healthy, 5 replicas, bridge vs host: %.2f× (median of %d rounds; goal ≤ 1.3: %s)\n", r, ns, (r <= 1.3 ? "met" : "NOT met")
		r = median(direct, nd); if (r < 0.9) ok = 0
		printf "balancer requests/s, bridged backends at their container address vs host: %.2f× (goal ≥ 0.9: %s)\n", r, (r >= 0.9 ? "met" : "NOT met")
		r = median(hostport, np); if (r < 0.9) ok = 0
		printf "balancer requests/s, bridged backends through host ports vs host: %.2f× (goal ≥ 0.9: %s)\n", r, (r >= 0.9 ? "met" : "NOT met")
		exit ok ? 0 : 3
	}
' "$raw" | tee "$out/network-$stamp.summary"
