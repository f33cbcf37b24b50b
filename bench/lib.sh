# Shared by the bench scripts: source it from the repository root.

# bench_init checks the working directory, makes $tmp and arranges for
# every PID in $pids to be stopped, and $tmp removed, on exit.
bench_init() {
	if [[ ! -f go.mod ]] || ! grep -q '^module github.com/shoal-run/shoal$' go.mod; then
		echo "run from the repository root: bench/$(basename "$0")" >&2
		exit 2
	fi
	tmp=$(mktemp -d)
	pids=()
	trap bench_cleanup EXIT
}

bench_cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$tmp"
}

# bench_need installs what Shoal needs and the Debian packages of missing
# commands: bench_need command:package ...
bench_need() {
	./scripts/install-deps "$@"
}

# bench_ports_free fails when anything listens on a port the script is
# about to use: it would otherwise measure that instead.
bench_ports_free() {
	local p
	for p in "$@"; do
		if [[ -n $(ss -HltunO "sport = :$p") ]]; then
			echo "port $p is in use; stop what listens there first:" >&2
			ss -ltunp "sport = :$p" >&2
			exit 1
		fi
	done
}

# bench_wrk FILE reads the output of wrk --latency and prints
# "requests/s p99-ms". It fails, naming why, when any response was not
# 2xx or 3xx, any socket error happened, or no rate was printed: a
# throughput counted over failed requests measures nothing.
bench_wrk() {
	awk '
		/Requests\/sec/ { rps = $2 }
		$1 == "99%" { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
			ms = (u == "us") ? v / 1000 : (u == "s") ? v * 1000 : v }
		/Non-2xx or 3xx responses:/ { bad += $NF }
		/Socket errors:/ { sock = $0; sub(/^ *Socket errors: */, "", sock)
			n = split($0, f, /[ ,]+/); for (i = 1; i <= n; i++) if (f[i] ~ /^[0-9]+$/) errs += f[i] }
		END {
			if (bad > 0) { printf "wrk: %d responses not 2xx or 3xx\n", bad > "/dev/stderr"; exit 1 }
			if (errs > 0) { printf "wrk: socket errors: %s\n", sock > "/dev/stderr"; exit 1 }
			if (rps == "" || ms == "") { print "wrk: no Requests/sec or 99% latency in its output" > "/dev/stderr"; exit 1 }
			printf "%.0f %.3f\n", rps, ms
		}' "$1"
}

# bench_dnsperf FILE reads dnsperf's output and prints queries per second.
# It fails, naming why, when a query was lost or answered with any rcode
# but NOERROR.
bench_dnsperf() {
	awk '
		/Queries per second:/ { qps = $4 }
		/Queries lost:/ { lost += $3 }
		/Response codes:/ { codes = $0; sub(/^ *Response codes: */, "", codes)
			n = split(codes, c, /, */)
			for (i = 1; i <= n; i++) { split(c[i], f, " "); if (f[1] != "NOERROR" && f[2] > 0) bad = bad " " f[1] " " f[2] } }
		END {
			if (lost > 0) { printf "dnsperf: %d queries lost\n", lost > "/dev/stderr"; exit 1 }
			if (bad != "") { printf "dnsperf: answers other than NOERROR:%s\n", bad > "/dev/stderr"; exit 1 }
			if (codes == "" || qps == "") { print "dnsperf: no response codes or queries per second in its output" > "/dev/stderr"; exit 1 }
			print qps
		}' "$1"
}
