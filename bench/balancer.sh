#!/usr/bin/env bash
# Issue #6: Shoal's balancer against HAProxy on the same three local HTTP
# backends, measured with wrk: requests/s and p99 latency, with keep-alive
# connections (forwarding) and with a new connection per request (accept,
# pick, dial). Goal: ≥ 0.9× HAProxy's throughput, p99 ≤ 1.2×; a verdict
# line per mode says whether the medians meet it. Any response not 2xx or
# 3xx, or any socket error, fails the script.
#
#	bench/balancer.sh                  # 10 s per run
#	DURATION=30s bench/balancer.sh
#
# Runs from the repository root; installs haproxy and wrk when missing
# (Debian). Every process it starts is stopped by PID on exit.
set -euo pipefail

DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-5}
# THREADS: the agent's --balancer-threads (its default: one per CPU); 0 for
# the lean setting that was the agent's default before: one loop fewer than the
# CPUs and no Ps added.
THREADS=${THREADS:-$(nproc)}
source "$(dirname "$0")/lib.sh"
bench_init
bench_need haproxy:haproxy wrk:wrk
bench_ports_free 19001 19002 19003 18080 18081

go build -o "$tmp/meshbench" ./bench/cmd/meshbench
backends=127.0.0.1:19001,127.0.0.1:19002,127.0.0.1:19003
for port in 19001 19002 19003; do
	"$tmp/meshbench" backend --addr 127.0.0.1:$port &
	pids+=($!)
done
"$tmp/meshbench" lb --host 127.0.0.1 --port 18080 --backends $backends --balancer-threads "$THREADS" &
pids+=($!)
cat >"$tmp/haproxy.cfg" <<CFG
global
	nbthread 2
	maxconn 4096
defaults
	mode tcp
	timeout connect 1s
	timeout client 30s
	timeout server 30s
frontend web
	bind 127.0.0.1:18081
	default_backend web
backend web
	balance leastconn
	server b1 127.0.0.1:19001
	server b2 127.0.0.1:19002
	server b3 127.0.0.1:19003
CFG
haproxy -f "$tmp/haproxy.cfg" -db >"$tmp/haproxy.log" 2>&1 &
pids+=($!)

# Wait for every listener, with a deadline.
for port in 19001 19002 19003 18080 18081; do
	for i in $(seq 100); do
		if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then break; fi
		if ((i == 100)); then echo "nothing listens on $port" >&2; cat "$tmp/haproxy.log" >&2; exit 1; fi
		sleep 0.1
	done
done

# run PORT [wrk args...] prints "requests/s p99-ms", and fails (the
# script with it) on any error response or socket error.
run() {
	local port=$1
	shift
	wrk -t2 -c"$CONNS" -d"$DURATION" --latency "$@" "http://127.0.0.1:$port/" >"$tmp/wrk.out"
	if ! bench_wrk "$tmp/wrk.out"; then
		echo "balancer.sh: the run on port $port had errors:" >&2
		cat "$tmp/wrk.out" >&2
		return 1
	fi
}

echo "wrk -t2 -c$CONNS -d$DURATION, three backends, 2 cores shared by everything; median of $ROUNDS pairs"
for mode in keepalive close; do
	args=()
	[[ $mode == close ]] && args=(-H "Connection: close")
	run 18080 "${args[@]}" >/dev/null # warm up both
	run 18081 "${args[@]}" >/dev/null
	# ROUNDS pairs, the order alternating, so drifting load falls on both
	# alike; the ratios are the median of the pairs' (one pair is noisy:
	# wrk, the backends and the balancer share two cores).
	rows=()
	for ((r = 0; r < ROUNDS; r++)); do
		if ((r % 2 == 0)); then s=$(run 18080 "${args[@]}"); h=$(run 18081 "${args[@]}"); else h=$(run 18081 "${args[@]}"); s=$(run 18080 "${args[@]}"); fi
		rows+=("$s $h")
	done
	printf '%s\n' "${rows[@]}" | awk -v mode="$mode" '
		function median(x, n,   i, j, t) {
			for (i = 2; i <= n; i++) for (j = i; j > 1 && x[j - 1] > x[j]; j--) { t = x[j]; x[j] = x[j - 1]; x[j - 1] = t }
			return (n % 2) ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2
		}
		{ n++; srps += $1; sp99 += $2; hrps += $3; hp99 += $4; tr[n] = $1 / $3; pr[n] = $2 / $4 }
		END {
			t = median(tr, n); p = median(pr, n)
			printf "%-9s  shoal %7.0f req/s p99 %6.2f ms | haproxy %7.0f req/s p99 %6.2f ms (means) | ratio throughput %.2fx (%.2fx-%.2fx), p99 %.2fx (%.2fx-%.2fx)\n",
				mode, srps / n, sp99 / n, hrps / n, hp99 / n, t, tr[1], tr[n], p, pr[1], pr[n]
			printf "%-9s  goal (throughput >= 0.9x, p99 <= 1.2x): %s\n", mode, (t >= 0.9 && p <= 1.2) ? "met" : "NOT MET"
		}'
done
echo "no error responses and no socket errors in any run"
