#!/usr/bin/env bash
# Issue #6: Shoal's balancer against HAProxy on the same three local HTTP
# backends, measured with wrk: requests/s and p99 latency, with keep-alive
# connections (forwarding) and with a new connection per request (accept,
# pick, dial). Goal: ≥ 0.9× HAProxy's throughput, p99 ≤ 1.2×.
#
#	bench/balancer.sh                  # 10 s per run
#	DURATION=30s bench/balancer.sh
#
# Runs from the repository root; installs haproxy and wrk when missing
# (Debian). Every process it starts is stopped by PID on exit.
set -euo pipefail

DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
# THREADS: the agent's --balancer-threads; default one per CPU, 0 for the
# agent's default.
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

# run PORT [wrk args...] prints "requests/s p99-ms".
run() {
	local port=$1
	shift
	wrk -t2 -c"$CONNS" -d"$DURATION" --latency "$@" "http://127.0.0.1:$port/" | awk '
		/Requests\/sec/ { rps = $2 }
		$1 == "99%" { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
			ms = (u == "us") ? v / 1000 : (u == "s") ? v * 1000 : v }
		END { printf "%.0f %.3f\n", rps, ms }'
}

echo "wrk -t2 -c$CONNS -d$DURATION, three backends, 2 cores shared by everything"
for mode in keepalive close; do
	args=()
	[[ $mode == close ]] && args=(-H "Connection: close")
	run 18080 "${args[@]}" >/dev/null # warm up both
	run 18081 "${args[@]}" >/dev/null
	# Interleaved, twice each, so drifting load falls on both alike.
	s1=$(run 18080 "${args[@]}")
	h1=$(run 18081 "${args[@]}")
	h2=$(run 18081 "${args[@]}")
	s2=$(run 18080 "${args[@]}")
	awk -v mode="$mode" -v s1="$s1" -v s2="$s2" -v h1="$h1" -v h2="$h2" 'BEGIN {
		split(s1, a, " "); split(s2, b, " "); split(h1, c, " "); split(h2, d, " ")
		srps = (a[1] + b[1]) / 2; sp99 = (a[2] + b[2]) / 2
		hrps = (c[1] + d[1]) / 2; hp99 = (c[2] + d[2]) / 2
		printf "%-9s  shoal %7.0f req/s p99 %6.2f ms | haproxy %7.0f req/s p99 %6.2f ms | ratio throughput %.2fx, p99 %.2fx\n",
			mode, srps, sp99, hrps, hp99, srps / hrps, sp99 / hp99
	}'
done
