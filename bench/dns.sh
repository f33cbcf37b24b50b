#!/usr/bin/env bash
# Issue #6: queries per second of Shoal's DNS against unbound answering the
# same names from local data, measured with dnsperf. Goal: ≥ 1.0× unbound;
# a verdict line says whether the median meets it. A lost query or an
# answer other than NOERROR fails the script.
#
#	bench/dns.sh                 # 10 s per run, 20 services
#	DURATION=30 bench/dns.sh
#
# Runs from the repository root; installs dnsperf and unbound when missing
# (Debian). Every process it starts is stopped by PID on exit.
set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-5}
SERVICES=${SERVICES:-20}
CLIENTS=${CLIENTS:-8}
# THREADS: the agent's --balancer-threads (its default: one per CPU); 0 for
# the lean setting that was the agent's default before: one loop fewer than the
# CPUs and no Ps added.
THREADS=${THREADS:-$(nproc)}
source "$(dirname "$0")/lib.sh"
bench_init
bench_need dnsperf:dnsperf unbound:unbound dig:bind9-dnsutils
bench_ports_free 18600 18601
# Debian starts unbound as a service on install; this script runs its own.

go build -o "$tmp/meshbench" ./bench/cmd/meshbench
"$tmp/meshbench" dns --addr 127.0.0.1:18600 --services "$SERVICES" --balancer-threads "$THREADS" &
pids+=($!)

# The same names and addresses as meshbench dns: svcN.service.shoal has
# three A records, 10.0.N.1-3; TTL 5 like Shoal's.
{
	cat <<CONF
server:
	interface: 127.0.0.1@18601
	do-daemonize: no
	num-threads: 2
	username: ""
	chroot: ""
	directory: "$tmp"
	pidfile: "$tmp/unbound.pid"
	use-syslog: no
	logfile: ""
	verbosity: 0
	do-ip6: no
	access-control: 127.0.0.0/8 allow
	module-config: "iterator"
	local-zone: "service.shoal." static
CONF
	for ((s = 0; s < SERVICES; s++)); do
		for i in 1 2 3; do
			echo "	local-data: \"svc$s.service.shoal. 5 IN A 10.0.$s.$i\""
		done
	done
	echo "remote-control:"
	echo "	control-enable: no"
} >"$tmp/unbound.conf"
unbound -d -c "$tmp/unbound.conf" >"$tmp/unbound.log" 2>&1 &
pids+=($!)

for ((s = 0; s < SERVICES; s++)); do echo "svc$s.service.shoal A"; done >"$tmp/queries"

# Wait for both to answer, with a deadline.
for port in 18600 18601; do
	for i in $(seq 100); do
		if dig +short +time=1 +tries=1 -p $port @127.0.0.1 svc0.service.shoal A 2>/dev/null | grep -q 10.0.0; then break; fi
		if ((i == 100)); then echo "no answer on $port" >&2; cat "$tmp/unbound.log" >&2; exit 1; fi
		sleep 0.1
	done
done

# qps PORT prints queries per second, and fails (the script with it) on a
# lost query or an answer other than NOERROR.
qps() {
	dnsperf -s 127.0.0.1 -p "$1" -d "$tmp/queries" -l "$DURATION" -c "$CLIENTS" -T 2 -q 200 >"$tmp/dnsperf.out"
	if ! bench_dnsperf "$tmp/dnsperf.out"; then
		echo "dns.sh: the run on port $1 had errors:" >&2
		cat "$tmp/dnsperf.out" >&2
		return 1
	fi
}
echo "dnsperf -l $DURATION -c $CLIENTS, $SERVICES services × 3 A records, 2 cores shared by everything"
qps 18600 >/dev/null # warm up both
qps 18601 >/dev/null
# ROUNDS pairs, the order alternating, so drifting load falls on both
# alike; the ratio is the median of the pairs' (one pair is noisy: both
# share two cores with dnsperf).
ratios=() ss=() us=()
for ((r = 0; r < ROUNDS; r++)); do
	if ((r % 2 == 0)); then s=$(qps 18600); u=$(qps 18601); else u=$(qps 18601); s=$(qps 18600); fi
	ss+=("$s") us+=("$u") ratios+=("$(awk -v s="$s" -v u="$u" 'BEGIN { printf "%.3f", s / u }')")
	echo "round $((r + 1)): shoal $s, unbound $u queries/s"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk -v s="${ss[*]}" -v u="${us[*]}" '
	{ r[NR] = $1 }
	END {
		ns = split(s, a, " "); split(u, b, " ")
		for (i = 1; i <= ns; i++) { st += a[i]; ut += b[i] }
		med = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2
		printf "shoal %.0f queries/s | unbound %.0f queries/s (means) | ratio %.2fx (median of %d pairs; %.2fx-%.2fx)\n", st / ns, ut / ns, med, NR, r[1], r[NR]
		printf "goal (>= 1.0x unbound): %s\n", (med >= 1.0) ? "met" : "NOT MET"
	}'
echo "no query lost and every answer NOERROR in every run"
