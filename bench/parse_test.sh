#!/usr/bin/env bash
# Checks the bench scripts' readers of wrk and dnsperf output on captured
# samples (bench/testdata): a clean run gives its figures, and a run with
# an error response, a socket error, a lost query or a failing rcode fails.
#
#	bench/parse_test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
d=bench/testdata
fails=0
expect() { # expect WANT GOT WHAT
	if [[ $1 != "$2" ]]; then
		echo "FAIL $3: got '$2', want '$1'" >&2
		fails=$((fails + 1))
	fi
}
refused() { # refused FUNC FILE WORDS: FUNC fails on FILE and says WORDS
	local err
	if err=$("$1" "$2" 2>&1 >/dev/null); then
		echo "FAIL $1 $2: accepted" >&2
		fails=$((fails + 1))
	elif [[ $err != *"$3"* ]]; then
		echo "FAIL $1 $2: said '$err', want '$3'" >&2
		fails=$((fails + 1))
	fi
}
expect "111848 4.590" "$(bench_wrk $d/wrk-ok.txt)" "wrk clean run"
refused bench_wrk $d/wrk-non2xx.txt "5 responses not 2xx or 3xx"
refused bench_wrk $d/wrk-socket.txt "socket errors: connect 0, read 12"
refused bench_wrk /dev/null "no Requests/sec"
expect "165019.184789" "$(bench_dnsperf $d/dnsperf-ok.txt)" "dnsperf clean run"
refused bench_dnsperf $d/dnsperf-lost.txt "10 queries lost"
refused bench_dnsperf $d/dnsperf-rcode.txt "other than NOERROR: SERVFAIL 10"
refused bench_dnsperf /dev/null "no response codes"
if ((fails > 0)); then
	exit 1
fi
echo "ok  	bench parsers"
