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
