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

# bench_need installs the Debian packages of commands that are missing:
# bench_need command:package ...
bench_need() {
	local need=() pair
	for pair in "$@"; do
		command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
	done
	if ((${#need[@]})); then
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
	fi
}
