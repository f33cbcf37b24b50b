#!/usr/bin/env bash
# Issue #15: time from the end of a partition to "exactly the plan on every
# node", for partitions longer than CI can wait, with the agents' default
# timers (a 4-node fleet in network namespaces, one node cut off).
#
#	bench/resilience.sh                      # 1m, 3m and 10m partitions
#	PARTITIONS=3m,30m bench/resilience.sh
#
# Needs root (network namespaces, containerd). Serialized with the e2e
# suites by the same lock, so two fleets never run at once. Output goes to
# bench/out/resilience-<time>.txt; the figures are the RESILIENCE FIGURES
# lines.
set -euo pipefail
PARTITIONS=${PARTITIONS:-1m,3m,10m}
source "$(dirname "$0")/lib.sh"
bench_init
mkdir -p bench/out
out=bench/out/resilience-$(date +%Y%m%d-%H%M%S).txt
SHOAL_RESIL_PARTITIONS=$PARTITIONS flock /tmp/shoal-e2e.lock \
	go test -race -count=1 -timeout 60m -run 'TestResilienceLongPartition$' -v ./e2e | tee "$out"
echo
grep -A20 'RESILIENCE FIGURES' "$out" || true
